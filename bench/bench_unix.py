"""Benchmark: pyvirtrpc against the C binding (python3-libvirt) over a unix socket.

Run by hand, not by the test suite (timings are not assertions)::

    /usr/bin/python3 bench/bench_unix.py [--quick] [--lab DIR]

It starts a throwaway libvirtd with the project's harness (or uses
``--lab DIR`` of a running one), writes a test-driver node file with
10,000 domains, and measures, alternating between the two libraries in one
run, both under the same interpreter (Debian's /usr/bin/python3, the one
python3-libvirt is built for):

* serial ``getHostname``, ``getCapabilities``, ``listAllDomains`` and
  ``open``+``close``;
* ``listAllDomains`` of the 10,000-domain daemon;
* concurrency on one connection: 16 threads (sync, both libraries; the C
  binding also at 1/4/8/32 threads to find its best figure) and 64 calls in
  flight with pyvirtrpc.aio;
* process cold start of ``python -c "import X; X.open(uri).getHostname()"``,
  the import alone, and peak RSS of that process.

Each figure is the best of ``--rounds`` rounds (default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyvirtrpc  # noqa: E402
import pyvirtrpc.aio  # noqa: E402

try:
    import libvirt  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the bench needs the C binding
    sys.exit("python3-libvirt is not importable: run this with /usr/bin/python3 (apt-get install python3-libvirt)")

libvirt.registerErrorHandler(lambda *a: None, None)


def node_xml(path: Path, n: int) -> None:
    """A test-driver node file with ``n`` small domains."""
    parts = ["<node>", "<cpu><mhz>1400</mhz><model>i686</model></cpu>", "<memory>3145728</memory>"]
    for i in range(n):
        parts.append(
            f"<domain type='test'><name>d{i:05d}</name><memory>1024</memory><os><type>hvm</type></os></domain>"
        )
    parts.append("</node>")
    path.write_text("\n".join(parts))


def rate(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def threaded(conn_call, threads: int, per_thread: int) -> float:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            conn_call()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return threads * per_thread / (time.perf_counter() - t0)


async def aio_inflight(uri: str, inflight: int, total: int) -> float:
    conn = await pyvirtrpc.aio.open(uri)
    try:
        per = total // inflight

        async def worker() -> None:
            for _ in range(per):
                await conn.getHostname()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return per * inflight / (time.perf_counter() - t)
    finally:
        await conn.close()


def cold(module: str, uri: str, runs: int) -> tuple[float, float, float]:
    """(median seconds to run the one-liner, median import seconds, max RSS MiB)."""
    code = f"import {module} as m; m.open({uri!r}).getHostname()"
    imp = f"import {module}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's Python caches bytecode
    for c in (code, imp):  # warm the page cache and the .pyc files
        subprocess.run([sys.executable, "-c", c], env=env, check=True, capture_output=True)
    times, imps = [], []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", imp], env=env, check=True, capture_output=True)
        imps.append(time.perf_counter() - t)
    # peak RSS of that process: VmHWM (ru_maxrss would include the forked
    # parent's own peak, carried across exec)
    hwm = "; print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    out = subprocess.run([sys.executable, "-c", code + hwm], env=env, check=True, capture_output=True, text=True)
    return statistics.median(times), statistics.median(imps), int(out.stdout.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", help="use a running lab dir (lab.json) instead of starting one")
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    scale = 0.2 if args.quick else 1.0

    tmp = Path(tempfile.mkdtemp(prefix="pyvirtrpc-bench-"))
    lab = None
    if args.lab:
        info = json.loads((Path(args.lab) / "lab.json").read_text())
    else:
        from tests.harness.lab import Lab

        lab = Lab.start(tmp / "lab")
        info = lab.info
    sock = info["sockets"]["rw"]
    uri = f"test+unix:///default?socket={sock}"
    big = tmp / "node10k.xml"
    node_xml(big, 10000)
    big_uri = f"test+unix://{big}?socket={sock}"

    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}  python {sys.version.split()[0]} ({sys.executable})")
    print(f"# libvirt-python {libvirt.getVersion()}  pyvirtrpc {pyvirtrpc.__version__}  {os.cpu_count()} cpus")
    rows: list[tuple[str, float, float, str]] = []

    def best(fn) -> float:  # type: ignore[no-untyped-def]
        return max(fn() for _ in range(args.rounds))

    def both(label: str, n: int, make) -> None:  # type: ignore[no-untyped-def]
        # alternate: C, ours, C, ours ... keep the best of each
        c_best = p_best = 0.0
        for _ in range(args.rounds):
            c_best = max(c_best, make(libvirt, n))
            p_best = max(p_best, make(pyvirtrpc, n))
        rows.append((label, c_best, p_best, "calls/s"))
        print(f"{label:42s} C {c_best:10.0f}/s   pyvirtrpc {p_best:10.0f}/s   x{p_best / c_best:5.2f}", flush=True)

    def serial(method: str, args_: tuple = ()):  # type: ignore[no-untyped-def,type-arg]
        def make(mod, n):  # type: ignore[no-untyped-def]
            conn = mod.open(uri)
            try:
                fn = getattr(conn, method)
                for _ in range(50):
                    fn(*args_)
                return rate(lambda: fn(*args_), n)
            finally:
                conn.close()

        return make

    both("getHostname (serial)", int(20000 * scale), serial("getHostname"))
    both("getCapabilities (serial)", int(2000 * scale), serial("getCapabilities"))
    both("listAllDomains (serial, 1 domain)", int(2000 * scale), serial("listAllDomains"))

    def openclose(mod, n):  # type: ignore[no-untyped-def]
        return rate(lambda: mod.open(uri).close(), n)

    both("open+close", int(200 * scale) or 20, openclose)

    def biglist(mod, n):  # type: ignore[no-untyped-def]
        conn = mod.open(big_uri)
        try:
            assert len(conn.listAllDomains()) == 10000
            return rate(conn.listAllDomains, n)
        finally:
            conn.close()

    both("listAllDomains (10,000 domains)", max(int(20 * scale), 5), biglist)

    def threads16(mod, n):  # type: ignore[no-untyped-def]
        conn = mod.open(uri)
        try:
            return threaded(conn.getHostname, 16, n // 16)
        finally:
            conn.close()

    both("getHostname, 16 threads, 1 connection", int(32000 * scale), threads16)

    c_threads = {}
    for t in (1, 4, 8, 32):

        def make(mod, n, t=t):  # type: ignore[no-untyped-def]
            conn = mod.open(uri)
            try:
                return threaded(conn.getHostname, t, n // t)
            finally:
                conn.close()

        c_threads[t] = best(lambda: make(libvirt, int(32000 * scale)))
    c_best_threaded = max(c_threads.values())
    aio64 = best(lambda: asyncio.run(aio_inflight(uri, 64, int(64000 * scale))))
    print(
        "C binding threaded getHostname/s by threads: "
        + ", ".join(f"{t}: {v:.0f}" for t, v in sorted(c_threads.items()))
    )
    print(
        f"{'getHostname, 64 in flight (aio)':42s} C best threaded {c_best_threaded:10.0f}/s"
        f"   pyvirtrpc.aio {aio64:10.0f}/s   x{aio64 / c_best_threaded:5.2f}"
    )

    runs = max(int(20 * scale), 5)
    c_cold, c_imp, c_rss = cold("libvirt", uri, runs)
    p_cold, p_imp, p_rss = cold("pyvirtrpc", uri, runs)
    base = cold_pass(runs)
    print(
        f"{'cold start: import+open+getHostname':42s} C {c_cold * 1000:8.1f} ms"
        f"   pyvirtrpc {p_cold * 1000:8.1f} ms   x{p_cold / c_cold:5.2f}"
    )
    print(
        f"{'  import only':42s} C {c_imp * 1000:8.1f} ms   pyvirtrpc {p_imp * 1000:8.1f} ms"
        f"   (python -c pass: {base * 1000:.1f} ms)"
    )
    print(f"{'  peak RSS':42s} C {c_rss:8.1f} MiB  pyvirtrpc {p_rss:8.1f} MiB")
    if lab is not None:
        lab.stop()


def cold_pass(runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


if __name__ == "__main__":
    main()
