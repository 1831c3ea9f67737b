"""Write the seed corpora in fuzz/seeds/ from the golden vectors: ``python fuzz/make_seeds.py``.

* ``seeds/deframer/``: each direction of each capture in ``tests/vectors``
  (RPC part only), behind a chunk-size byte, plus one packet per message
  type (fds included).
* ``seeds/decode/``: every message body of the captures, behind the 4-byte
  header that selects its procedure and kind (see fuzz/xdrfuzz.py), plus a
  full ``remote_error`` and a stream hole.

File names are content hashes, so rerunning is idempotent.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

from captures import CAPTURES, rpc_streams  # noqa: E402
from xdrfuzz import header_for  # noqa: E402

from pyvirtrpc import packet, wire  # noqa: E402
from pyvirtrpc._gen import PROGRAMS  # noqa: E402
from pyvirtrpc._gen import remote as R  # noqa: E402
from pyvirtrpc._gen import virnet as V  # noqa: E402
from pyvirtrpc._xdr import encode  # noqa: E402


def write(kind: str, data: bytes) -> None:
    d = HERE / "seeds" / kind
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main() -> None:
    error = V.virNetMessageError(
        42, 10, "Domain not found", 2, V.virNetMessageNonnullDomain("d", bytes(16), 1),
        "s1", None, "s3", 1, 2, None,
    )
    for short in CAPTURES:
        for stream in rpc_streams(short).values():
            write("deframer", bytes([3]) + stream)
            for m in wire.decode(stream):
                if m.procedure_name is None or m.body is None:
                    continue
                kind = {packet.CALL: "args", packet.REPLY: "ret", packet.MESSAGE: "msg"}[int(m.type)]
                module = PROGRAMS[m.program][0]
                raw = m.encode()[28:]
                write("decode", header_for(module, m.procedure, kind) + raw)
    for mtype in range(7):
        nfds = 2 if mtype in packet.WITH_FDS else None
        write("deframer", bytes([63]) + packet.encode_packet(0x20008086, 1, 59, mtype, 1, 0, b"\0\0\0\2vm\0\0", nfds))
    failed = encode(V._c_virNetMessageError, error)
    write("deframer", bytes([0]) + packet.encode_packet(0x20008086, 1, 1, packet.REPLY, 1, packet.ERROR, failed))
    write("decode", header_for("remote", 1, "error") + encode(V._c_virNetMessageError, error))
    write("decode", header_for("remote", 1, "hole") + encode(V._c_virNetStreamHole, V.virNetStreamHole(1 << 40, 0)))
    listing = R.PROCEDURES[R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS].ret
    listings = ([], ["test"], ["a", "bb", "ccc", "dddd"], ["\u00e9" * 140, "x" * 300], [f"d{i:05d}" for i in range(50)])
    for names in listings:
        doms = [R.remote_nonnull_domain(n, bytes(range(i, i + 16)), i - 1) for i, n in enumerate(names)]
        write("domlist", encode(listing, R.remote_connect_list_all_domains_ret(doms, len(doms))))


if __name__ == "__main__":
    main()
