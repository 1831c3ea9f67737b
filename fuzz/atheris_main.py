"""What the atheris harnesses share: instrumented imports and the libFuzzer entry.

``run(name)`` fuzzes ``xdrfuzz.<name>(data)``.  Only
:class:`pyvirtrpc.errors.DecodeError` may escape it; anything else is
reported by libFuzzer as a crash (see fuzz/xdrfuzz.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Instrumenting the ~1.5 MB of generated code takes ~10 s of start-up: worth it
# for a long campaign, not for the test suite's short run (XDRFUZZ_LIGHT=1),
# which instruments the runtime, framing and the small protocol modules only.
LIGHT = os.environ.get("XDRFUZZ_LIGHT") == "1"
with atheris.instrument_imports(include=["pyvirtrpc", "xdrfuzz"], exclude=["pyvirtrpc._gen.remote"] if LIGHT else []):
    import xdrfuzz

    if not LIGHT:
        xdrfuzz.preload()  # the lazily imported shards too
if LIGHT:
    xdrfuzz.preload()


def run(name: str) -> None:
    atheris.Setup(sys.argv, getattr(xdrfuzz, name))
    atheris.Fuzz()
