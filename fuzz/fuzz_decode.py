"""atheris harness: decoding of every procedure's args/ret/msg (the input picks the procedure).

Run: `python fuzz/fuzz_decode.py fuzz/corpus/decode fuzz/seeds/decode` (see fuzz/README.md).
"""

from atheris_main import run

if __name__ == "__main__":
    run("decode_value")
