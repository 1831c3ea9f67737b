"""The bodies of the fuzz harnesses, shared by atheris (fuzz_*.py) and the test suite's fallback.

Invariant checked by both bodies: feeding any bytes to the decoders raises
nothing but :class:`pyvirtrpc.errors.DecodeError`; anything else escaping
(``struct.error``, ``IndexError``, ``RecursionError``, ``MemoryError``...)
is a crash.  On top of that, strict decoding is canonical: whatever decodes
re-encodes to exactly the bytes it came from, except that a char >= 0x80
sent in its unsigned form comes back in the signed form libvirt writes.

Input formats (stable, so that a corpus stays meaningful when procedures are
added):

* :func:`deframe`: byte 0 picks the chunk size (1..64) the rest is fed in;
  every message that comes out is decoded as :func:`pyvirtrpc.wire.decode`
  would decode it.
* :func:`decode_value`: byte 0 picks the program (``PROGRAMS``), bytes 1-2
  the procedure number (big-endian; a number the program lacks picks one of
  its procedures by position), byte 3 the kind (args, ret, msg, then
  ``virNetMessageError`` and ``virNetStreamHole``); the rest is the payload.
* :func:`domain_listing`: all of it is a CONNECT_LIST_ALL_DOMAINS reply body,
  decoded by the hand-written flat decoder (pyvirtrpc/_domref.py), which
  must also give what the generated decoder gives, or fail where it fails.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Optional

from pyvirtrpc import _domref, packet, wire
from pyvirtrpc._gen import virnet
from pyvirtrpc._xdr import Codec, decode, encode
from pyvirtrpc.errors import DecodeError

PROGRAMS = ("remote", "qemu", "lxc", "admin", "keepalive")
KINDS = ("args", "ret", "msg", "error", "hole")

_modules: dict[str, Any] = {}


def _module(name: str) -> Any:
    if name not in _modules:
        _modules[name] = import_module(f"pyvirtrpc._gen.{name}")
    return _modules[name]


def pick(head: bytes) -> Optional[Codec]:
    """The codec that a 4-byte input header selects (None: a procedure without a value of that kind)."""
    mod = _module(PROGRAMS[head[0] % len(PROGRAMS)])
    kind = KINDS[head[3] % len(KINDS)]
    if kind == "error":
        return virnet._c_virNetMessageError
    if kind == "hole":
        return virnet._c_virNetStreamHole
    number = int.from_bytes(head[1:3], "big")
    proc = mod.PROCEDURES.get(number)
    if proc is None:
        procs = list(mod.PROCEDURES.values())
        proc = procs[number % len(procs)]
    codec: Optional[Codec] = getattr(proc, kind)
    return codec


def header_for(module: str, number: int, kind: str) -> bytes:
    """The 4-byte input header that selects ``kind`` of procedure ``number`` of ``module``."""
    return bytes([PROGRAMS.index(module)]) + number.to_bytes(2, "big") + bytes([KINDS.index(kind)])


def decode_value(data: bytes) -> None:
    if len(data) < 4:
        return
    codec = pick(data[:4])
    payload = data[4:]
    if codec is None:
        return
    try:
        value = decode(codec, payload)
    except DecodeError:
        return
    again = encode(codec, value)
    if again != payload:
        _canonical(codec.name, payload, again)


def deframe(data: bytes) -> None:
    if not data:
        return
    size = data[0] % 64 + 1
    stream = data[1:]
    d = packet.Deframer()
    try:
        for i in range(0, len(stream), size):
            d.feed(stream[i:i + size])
            for m in d:
                _message(m)
    except DecodeError:
        return


def listing_outcome(codec: Codec, data: bytes) -> tuple[str, Any]:
    """``("ok", flat listing)`` or ``("error", message)``: what decoding ``data``
    as a CONNECT_LIST_ALL_DOMAINS reply with ``codec`` gives."""
    try:
        return ("ok", _domref.flat(decode(codec, data)))
    except DecodeError as exc:
        return ("error", str(exc))


def domain_listing(data: bytes) -> None:
    generated = pick(header_for("remote", 273, "ret"))
    ours = _domref.LIST_ALL_DOMAINS.ret
    assert generated is not None and ours is not None
    mine, theirs = listing_outcome(ours, data), listing_outcome(generated, data)
    if mine != theirs:
        raise AssertionError(f"flat listing decoder gives {mine!r:.200}, generated {theirs!r:.200}: {data.hex()}")


def _message(m: packet.Message) -> None:
    try:
        w = wire.WireMessage(m)
    except DecodeError:
        return
    again = w.encode()
    if again != m.data:
        _canonical(w.procedure_name or "message", m.data, again)


def _canonical(what: str, data: bytes, again: bytes) -> None:
    """A decoded value re-encoded to other bytes: only a char's unsigned form may do that.

    ``char`` arrays accept a byte >= 0x80 both as 0xFFFFFFxx (x86 libvirt)
    and as 0x000000xx (ARM) and always write the first; any other
    difference is a decoder that accepted a non-canonical encoding.
    """
    if len(again) != len(data):
        raise AssertionError(f"{what}: re-encodes to {len(again)} bytes, not {len(data)}: {data.hex()}")
    for i in range(0, len(data), 4):
        a, b = data[i:i + 4], again[i:i + 4]
        if a != b and not (a[:3] == b"\0\0\0" and b[:3] == b"\xff\xff\xff" and a[3] == b[3] >= 0x80):
            raise AssertionError(f"{what}: word at {i} re-encodes as {b.hex()}, was {a.hex()}: {data.hex()}")


def preload() -> None:
    """Import every generated module and shard, and the interpreter, now.

    Shards are otherwise imported on first use; atheris instruments only
    what is imported inside its ``instrument_imports()`` block, so the
    harnesses call this there.
    """
    from pyvirtrpc import _xdrcheck

    for name in PROGRAMS:
        _module(name).codecs()
    _xdrcheck.types()


HARNESSES = {"deframer": deframe, "decode": decode_value, "domlist": domain_listing}
