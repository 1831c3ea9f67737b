"""atheris harness: the incremental deframer and the decoding of every message it yields.

Run: `python fuzz/fuzz_deframer.py fuzz/corpus/deframer fuzz/seeds/deframer` (see fuzz/README.md).
"""

from atheris_main import run

if __name__ == "__main__":
    run("deframe")
