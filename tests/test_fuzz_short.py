"""A short fuzz run of the harnesses in fuzz/ (the long campaign is described in fuzz/README.md).

With atheris importable (Linux, CPython <= 3.11 wheels), each harness runs in
its own subprocess under libFuzzer for ``FUZZ_SECONDS`` (default 10) from a
copy of the committed seed corpus, all harnesses at once, with the light
instrumentation (``XDRFUZZ_LIGHT=1``: the generated shards are not
instrumented, which would take ~10 s of start-up each); a crash (anything
but DecodeError escaping, or a decoded value that does not re-encode to its
bytes) fails the test with libFuzzer's report.  The same harness bodies also
run in-process on seeded random mutations of the seeds; without atheris that
is the only run, so the invariant is still exercised.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
SECONDS = int(os.environ.get("FUZZ_SECONDS", "10"))
HARNESSES = ("deframer", "decode", "domlist")

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XDRFUZZ_LIGHT"] = "1"
    return env


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not importable here: see test_fuzz_fallback")
def test_atheris_short_run(tmp_path: Path) -> None:
    procs = {}
    for name in HARNESSES:
        corpus = tmp_path / name
        shutil.copytree(FUZZ / "seeds" / name, corpus)  # libFuzzer adds to its corpus: never the committed seeds
        artifacts = tmp_path / f"{name}-crash-"
        cmd = [
            sys.executable, str(FUZZ / f"fuzz_{name}.py"), f"-max_total_time={SECONDS}", "-max_len=4096", "-timeout=20",
            "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}", "-print_final_stats=1", str(corpus),
        ]
        procs[name] = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        tail = "\n".join(out.splitlines()[-40:])
        assert proc.returncode == 0, f"fuzz_{name} found a crash:\n{tail}"
        done = re.search(r"^Done (\d+) runs in", out, re.M)
        assert done and int(done.group(1)) >= 1000, tail
        assert not list(tmp_path.glob(f"{name}-crash-*")), tail


def _fallback_inputs(seeds: list[bytes], rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            how = rng.randrange(5)
            if how == 0 and data:
                i = rng.randrange(len(data))
                data[i] = rng.randrange(256)
            elif how == 1 and len(data) >= 4:
                i = rng.randrange(len(data) - 3)
                data[i:i + 4] = rng.choice([0, 1, 2, 27, 28, 0x7FFFFFFF, 0xFFFFFFFF, 33554436]).to_bytes(4, "big")
            elif how == 2:
                del data[rng.randrange(len(data) + 1):]
            elif how == 3:
                data += rng.randbytes(rng.randrange(1, 16))
            else:
                data = bytearray(rng.randbytes(rng.randrange(64)))
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_fallback(name: str) -> None:
    """The harness bodies on random mutations of the seeds: always runs, and is the only run without atheris."""
    sys.path.insert(0, str(FUZZ))
    try:
        import xdrfuzz
    finally:
        sys.path.remove(str(FUZZ))
    body = xdrfuzz.HARNESSES[name]
    seeds = [p.read_bytes() for p in sorted((FUZZ / "seeds" / name).iterdir())]
    assert seeds
    rng = random.Random(1234)
    count = 3000 if HAVE_ATHERIS else 3000 * SECONDS
    for data in seeds + _fallback_inputs(seeds, rng, count):
        body(data)  # raises (fails the test) on anything but DecodeError, or on a non-canonical decode


def test_harness_picks_every_procedure() -> None:
    sys.path.insert(0, str(FUZZ))
    try:
        import xdrfuzz
    finally:
        sys.path.remove(str(FUZZ))
    from importlib import import_module

    for module in xdrfuzz.PROGRAMS:
        mod = import_module(f"pyvirtrpc._gen.{module}")
        for number, proc in mod.PROCEDURES.items():
            for kind in ("args", "ret", "msg"):
                assert xdrfuzz.pick(xdrfuzz.header_for(module, number, kind)) is getattr(proc, kind)
