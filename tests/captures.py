"""Read the socat ``-x -v`` captures in ``tests/vectors/`` (real C client <-> libvirtd traffic).

Contract: :func:`read_capture` returns the bytes each side sent, in order, as
``(direction, chunk)`` pairs (``'>'`` client to daemon, ``'<'`` daemon to
client), exactly as socat logged them; :func:`streams` joins them per
direction.  The captures were taken with the lab harness (see
``tests/vectors/README.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"
_HEAD = re.compile(r"^([<>]) \S+ \S+\s+length=(\d+)")
_BYTE = re.compile(r"^[0-9a-f]{2}$")


def read_capture(name: str) -> list[tuple[str, bytes]]:
    chunks: list[tuple[str, bytearray]] = []
    for line in (VECTORS / name).read_text(encoding="latin-1").splitlines():
        m = _HEAD.match(line)
        if m:
            chunks.append((m.group(1), bytearray()))
            expected = int(m.group(2))
            chunks[-1][1].extend(b"")
            chunks[-1] = (m.group(1), bytearray())
            chunks[-1][1].extend(b"")
            _lengths.append(expected)
            continue
        if line.startswith(("--", "#")) or not chunks:
            continue
        for tok in line[:49].split():
            if _BYTE.match(tok):
                chunks[-1][1].append(int(tok, 16))
    return [(d, bytes(b)) for d, b in chunks]


_lengths: list[int] = []


def streams(name: str) -> dict[str, bytes]:
    out = {">": b"", "<": b""}
    for d, chunk in read_capture(name):
        out[d] += chunk
    return out
