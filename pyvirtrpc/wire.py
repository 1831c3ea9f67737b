"""Decode a captured libvirt RPC byte stream, for people debugging the protocol.

Contract::

    for m in pyvirtrpc.wire.decode(data):   # one direction of one connection
        print(m.procedure_name, m.type, m.serial, m.body)
        assert m.encode() == <the bytes of that packet>

:func:`decode` returns every message in ``data`` (which must end on a
packet boundary) or raises :class:`~pyvirtrpc.errors.DecodeError`.  Each
:class:`WireMessage` has the header fields, ``procedure_name`` (None for a
program or procedure we do not know), and ``body``:

* CALL: the decoded arguments; REPLY with status OK: the return value;
  MESSAGE: the event; REPLY (or STREAM) with status ERROR: the
  ``remote_error`` (as ``virNetMessageError``); STREAM with CONTINUE: the raw
  data bytes; STREAM_HOLE: a ``virNetStreamHole``;
* ``None`` where the procedure has no value of that kind (void);
* the raw payload bytes for an unknown program or procedure.

Struct fields keep their names from the ``.x`` files (``from`` is ``from_``).
"""

from __future__ import annotations

from importlib import import_module

from . import _xdr
from ._gen import PROGRAMS
from ._gen import virnet as _virnet
from .errors import DecodeError
from .packet import (
    CALL,
    CALL_WITH_FDS,
    CONTINUE,
    ERROR,
    MESSAGE,
    OK,
    REPLY,
    REPLY_WITH_FDS,
    STATUS_NAMES,
    STREAM,
    STREAM_HOLE,
    TYPE_NAMES,
    Deframer,
    Message,
    encode_packet,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._xdr import Codec, Procedure

_RAW = object()  # body kind: payload bytes as they are


def _procedure(program: int, procedure: int) -> Procedure | None:
    entry = PROGRAMS.get(program)
    if entry is None:
        return None
    module = import_module(f"pyvirtrpc._gen.{entry[0]}")
    p: Procedure | None = module.PROCEDURES.get(procedure)
    return p


def body_codec(m: Message) -> Any:
    """The codec of ``m``'s payload, None for void, or ``_RAW`` for raw bytes."""
    if m.status == ERROR and m.type in (REPLY, REPLY_WITH_FDS, STREAM):
        # A client's stream abort is an ERROR packet with an empty payload.
        if m.type == STREAM and len(m.data) == m.offset:
            return None
        return _virnet._c_virNetMessageError
    if m.type == STREAM:
        return _RAW if m.status == CONTINUE else None
    if m.type == STREAM_HOLE:
        return _virnet._c_virNetStreamHole
    proc = _procedure(m.program, m.procedure)
    if proc is None:
        return _RAW
    if m.type in (CALL, CALL_WITH_FDS):
        return proc.args
    if m.type in (REPLY, REPLY_WITH_FDS):
        return proc.ret
    if m.type == MESSAGE:
        return proc.msg
    return _RAW


class WireMessage:
    """A decoded packet (see the module docstring)."""

    __slots__ = (
        "program", "version", "procedure", "type", "serial", "status", "nfds", "procedure_name", "body", "_codec",
    )

    def __init__(self, m: Message) -> None:
        self.program = m.program
        self.version = m.version
        self.procedure = m.procedure
        self.type = _virnet.virNetMessageType(m.type)
        self.serial = m.serial
        self.status = _virnet.virNetMessageStatus(m.status)
        self.nfds = m.nfds
        proc = _procedure(m.program, m.procedure)
        self.procedure_name = proc.name if proc is not None else None
        codec = body_codec(m)
        self._codec = codec
        if codec is None:
            if len(m.data) != m.offset:
                raise DecodeError(
                    f"{self.procedure_name or m.procedure} {TYPE_NAMES[m.type] if 0 <= m.type < 7 else m.type}: "
                    f"expected an empty payload, got {len(m.data) - m.offset} bytes"
                )
            self.body: Any = None
        elif codec is _RAW:
            self.body = m.payload
        else:
            self.body = _xdr.decode(codec, m.data, m.offset)

    def encode(self) -> bytes:
        """The packet's bytes, re-encoded from the decoded fields."""
        if self._codec is None:
            payload = b""
        elif self._codec is _RAW:
            payload = bytes(self.body)
        else:
            codec: Codec = self._codec
            payload = _xdr.encode(codec, self.body)
        nfds = self.nfds if self.type in (CALL_WITH_FDS, REPLY_WITH_FDS) else None
        return encode_packet(
            self.program, self.version, self.procedure, int(self.type), self.serial, int(self.status), payload, nfds
        )

    def __repr__(self) -> str:
        status = STATUS_NAMES[self.status] if 0 <= self.status < 3 else str(int(self.status))
        return (
            f"<WireMessage {self.procedure_name or self.procedure} {self.type.name} serial={self.serial} "
            f"status={status} body={self.body!r}>"
        )


def decode(data: bytes) -> list[WireMessage]:
    """Every message in one direction's byte stream (see the module docstring)."""
    d = Deframer()
    d.feed(bytes(data))
    out = [WireMessage(m) for m in d]
    if d.buffered:
        raise DecodeError(f"stream ends inside a packet: {d.buffered} bytes left over, {d.wanted()} more expected")
    return out


__all__ = ["WireMessage", "decode", "body_codec", "OK", "ERROR", "CONTINUE"]
