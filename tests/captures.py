"""Read the ``socat -x -v`` captures in ``tests/vectors/`` (real C client <-> libvirtd traffic).

Contract:

* :func:`read_capture` returns the chunks each side sent, in order, as
  ``(direction, bytes)`` pairs (``'>'`` client to daemon, ``'<'`` daemon to
  client), exactly as socat logged them.  Every chunk's byte count is checked
  against the ``length=`` socat wrote in its header line, so a mangled
  capture fails loudly instead of yielding shifted bytes.
* :func:`streams` joins the chunks per direction.
* :func:`rpc_streams` gives, per direction, only the part that is libvirt
  RPC packets: without the TLS confirmation byte the daemon sends first on a
  TLS connection, and without the SASL-encoded frames that follow a SASL
  handshake which negotiated a security layer (their plaintext cannot be
  recovered from a capture).

The captures and their provenance are described in ``tests/vectors/README.md``.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"

#: every capture, by short name
CAPTURES = {
    "unix": "capture-unix-hostname.txt",
    "tls": "capture-tls-plaintext-hostname.txt",
    "tcp-sasl": "capture-tcp-sasl-hostname.txt",
}

# "> 2026/11/24 19:21:28.000570203  length=28 from=0 to=27"
_HEAD = re.compile(r"^([<>]) \S+ \S+\s+length=(\d+) from=(\d+) to=(\d+)$")
# socat -x prints up to 16 bytes per row as " hh hh ...", padded to column 49,
# then the printable rendering; only the hex columns are read.
_HEX_COLUMNS = 49
_BYTE = re.compile(r"^[0-9a-f]{2}$")


class CaptureError(ValueError):
    """The capture file does not have the shape socat writes."""


def read_capture(name: str) -> list[tuple[str, bytes]]:
    """The ``(direction, bytes)`` chunks of a capture file in ``tests/vectors``."""
    path = VECTORS / name
    chunks: list[tuple[str, bytes]] = []
    direction = ""
    expected = 0
    current = bytearray()
    started = False

    def finish(lineno: int) -> None:
        if started:
            if len(current) != expected:
                raise CaptureError(f"{path.name}:{lineno}: chunk has {len(current)} bytes, header says {expected}")
            chunks.append((direction, bytes(current)))

    lineno = 0
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        if line.startswith("#"):
            continue
        m = _HEAD.match(line)
        if m:
            finish(lineno)
            direction, expected = m.group(1), int(m.group(2))
            if int(m.group(4)) - int(m.group(3)) + 1 != expected:
                raise CaptureError(f"{path.name}:{lineno}: from/to do not match length")
            current = bytearray()
            started = True
            continue
        if line == "--" or not line.strip():
            continue
        if not started:
            raise CaptureError(f"{path.name}:{lineno}: hex dump before the first chunk header")
        for tok in line[:_HEX_COLUMNS].split():
            if not _BYTE.match(tok):
                raise CaptureError(f"{path.name}:{lineno}: {tok!r} is not a hex byte")
            current.append(int(tok, 16))
    finish(lineno)
    return chunks


def streams(name: str) -> dict[str, bytes]:
    """Everything each direction sent, joined: ``{'>': ..., '<': ...}``."""
    out = {">": b"", "<": b""}
    for d, chunk in read_capture(name):
        out[d] += chunk
    return out


def _packets_end(data: bytes) -> list[int]:
    """Offsets where each whole RPC packet at the start of ``data`` ends."""
    ends = []
    pos = 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        if n < 28 or pos + n > len(data):
            break
        pos += n
        ends.append(pos)
    return ends


def rpc_streams(short: str) -> dict[str, bytes]:
    """Per direction, the RPC packets of a capture (see the module docstring)."""
    out = streams(CAPTURES[short])
    if short == "tls":
        if out["<"][:1] != b"\x01":
            raise CaptureError("the TLS capture does not start with the daemon's confirmation byte")
        out["<"] = out["<"][1:]
    if short == "tcp-sasl":
        # The security layer starts after AUTH_SASL_STEP's final reply: serial 3
        # is the last RPC packet of each direction (see the decoded copy).
        for d in out:
            data = out[d]
            keep = 0
            for end in _packets_end(data):
                serial = struct.unpack_from(">I", data, keep + 20)[0]
                keep = end
                if serial == 3:
                    break
            out[d] = data[:keep]
    return out


def sasl_frames(short: str = "tcp-sasl") -> dict[str, list[bytes]]:
    """Per direction, the SASL-encoded frames after the RPC part (4-byte length, not counting itself)."""
    raw = streams(CAPTURES[short])
    rpc = rpc_streams(short)
    out: dict[str, list[bytes]] = {}
    for d in raw:
        rest = raw[d][len(rpc[d]):]
        frames = []
        while rest:
            (n,) = struct.unpack_from(">I", rest, 0)
            if 4 + n > len(rest):
                raise CaptureError(f"truncated SASL frame in direction {d}")
            frames.append(rest[4:4 + n])
            rest = rest[4 + n:]
        out[d] = frames
    return out
