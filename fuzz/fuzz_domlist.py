"""atheris harness: the flat domain-listing decoder against the generated one.

Run: `python fuzz/fuzz_domlist.py fuzz/corpus/domlist fuzz/seeds/domlist` (see fuzz/README.md).
"""

from atheris_main import run

if __name__ == "__main__":
    run("domain_listing")
