"""Benchmark: pyvirtrpc against the C binding (python3-libvirt) over tcp+SASL and tls.

Run by hand, not by the test suite (timings are not assertions)::

    PYTHONPATH=. /usr/bin/python3 bench/bench_remote.py [--quick] [--lab DIR] [--rounds N]

It starts a throwaway libvirtd with the project's harness (or uses ``--lab
DIR`` of a running one: its ``lab.json``) and measures, alternating between
the two libraries round by round, both under the same interpreter (Debian's
/usr/bin/python3, the one python3-libvirt is built for):

* serial ``getHostname`` and ``getCapabilities`` over TCP with SASL
  DIGEST-MD5 (the daemon negotiates rc4, SSF 128: every packet goes through
  the security layer) and over TLS (client certificate, no SASL);
* ``openAuth`` + ``close`` over both (the SASL credentials come from the
  lab's auth.conf through ``LIBVIRT_AUTH_FILE``; both libraries read it).

Each figure is the best of ``--rounds`` rounds (default 3); ``x`` is
pyvirtrpc's rate over the C binding's (the targets: calls >= 1.0, open+close
>= 1.0).

pyvirtrpc's DIGEST-MD5 layer takes RC4 from ``cryptography``: from
``hazmat.decrepit`` (>= 43), or from the old location in older releases such
as Debian 12's python3-cryptography 38, which /usr/bin/python3 sees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyvirtrpc  # noqa: E402

try:
    import libvirt  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the bench needs the C binding
    sys.exit("python3-libvirt is not importable: run this with /usr/bin/python3 (apt-get install python3-libvirt)")

libvirt.registerErrorHandler(lambda *a: None, None)


def _callback(creds, opaque):  # type: ignore[no-untyped-def]
    # never called when auth.conf answers; kept so that SASL has a callback
    return -1


AUTH_TYPES = [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE]


def open_c(uri: str):  # type: ignore[no-untyped-def]
    return libvirt.openAuth(uri, [AUTH_TYPES, _callback, None], 0)


def open_p(uri: str):  # type: ignore[no-untyped-def]
    return pyvirtrpc.openAuth(uri, [AUTH_TYPES, _callback, None], 0)


def rate(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lab", help="use a running lab dir (lab.json) instead of starting one")
    ap.add_argument("--quick", action="store_true", help="fewer calls per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the table as JSON too")
    args = ap.parse_args()

    lab = None
    if args.lab:
        info = json.loads((Path(args.lab) / "lab.json").read_text())
    else:
        from tests.harness.lab import Lab

        tmp = Path(tempfile.mkdtemp(prefix="pvr-bench-", dir="/tmp"))
        lab = Lab.start(tmp / "lab")
        info = lab.info
    os.environ["LIBVIRT_AUTH_FILE"] = info["sasl"]["authfile"]
    uris = {"tcp+sasl(rc4)": info["uris"]["tcp"], "tls": info["uris"]["tls"]}

    scale = 0.2 if args.quick else 1.0
    n_host = int(3000 * scale)
    n_caps = int(2000 * scale)
    n_open = int(100 * scale)
    rows: list[tuple[str, float, float]] = []

    def best(label: str, make) -> None:  # type: ignore[no-untyped-def]
        c_rates: list[float] = []
        p_rates: list[float] = []
        for _ in range(args.rounds):  # alternate, so drifts hit both alike
            c_rates.append(make(open_c, libvirt))
            p_rates.append(make(open_p, pyvirtrpc))
        c_best, p_best = max(c_rates), max(p_rates)
        rows.append((label, c_best, p_best))
        print(f"{label:36s} C {c_best:9.0f}/s   pyvirtrpc {p_best:9.0f}/s   x{p_best / c_best:5.2f}", flush=True)

    for name, uri in uris.items():
        # check both work (and warm up imports, caches, the daemon)
        for opener in (open_c, open_p):
            conn = opener(uri)
            conn.getHostname()
            conn.close()

        def serial(method: str, n: int, uri: str = uri):  # type: ignore[no-untyped-def]
            def make(open_, mod) -> float:  # type: ignore[no-untyped-def]
                conn = open_(uri)
                fn = getattr(conn, method)
                for _ in range(20):
                    fn()
                r = rate(fn, n)
                conn.close()
                return r

            return make

        def openclose(open_, mod, uri: str = uri) -> float:  # type: ignore[no-untyped-def]
            def one() -> None:
                open_(uri).close()

            one()
            return rate(one, n_open)

        best(f"{name}: getHostname", serial("getHostname", n_host))
        best(f"{name}: getCapabilities", serial("getCapabilities", n_caps))
        best(f"{name}: open+close", openclose)

    if args.json:
        print(json.dumps([{"case": r[0], "c_per_s": r[1], "pyvirtrpc_per_s": r[2], "x": r[2] / r[1]} for r in rows]))
    if lab is not None:
        lab.stop()


if __name__ == "__main__":
    main()
