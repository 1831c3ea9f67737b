"""Small ``.x`` and header fixtures for the generator's snapshot tests.

:func:`generate` runs the generator's stages (header reader, parser,
resolver, emitter) on ``fixture.h`` and ``fixture.x`` and returns
``{file name: text}``; the committed expected output is in ``expected/``.
:func:`load` imports the expected modules as ``pyvirtrpc._gen._fx_fixture``
(so that their relative imports reach the real runtime) and registers their
type table with the schema interpreter, so that decode errors are explained
as for the real protocol.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Union

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
EXPECTED = HERE / "expected"
REL = "tests/fixtures_x"
MODULE = "pyvirtrpc._gen._fx_fixture"


def generate() -> dict[str, str]:
    from tools.xdrgen.cheaders import read_header
    from tools.xdrgen.emit import emit_constants, emit_program
    from tools.xdrgen.resolve import Universe
    from tools.xdrgen.xparser import parse

    known: dict[str, Union[int, str]] = {}
    htext = (HERE / "fixture.h").read_text()
    consts = read_header(f"{REL}/fixture.h", htext, known)
    files = {
        "fixture_constants.py": emit_constants(
            consts, [(f"{REL}/fixture.h", hashlib.sha256(htext.encode()).hexdigest())], "Constants of fixture.h."
        )
    }
    spec = parse(f"{REL}/fixture.x", (HERE / "fixture.x").read_text(), known)
    universe = Universe([("_fx_fixture", spec)])
    program = ("FX_PROGRAM", "FX_PROTOCOL_VERSION", "fx")
    for name, text in emit_program(universe, "_fx_fixture", spec, f"{REL}/fixture.x", program).items():
        files[name.replace("_fx_fixture", "fixture") + ".py"] = text
    return files


def _import(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load() -> ModuleType:
    """The generated fixture module (imported once), with its schema registered."""
    from pyvirtrpc import _xdrcheck

    fresh = MODULE not in sys.modules
    module = _import(MODULE, EXPECTED / "fixture.py")
    schema = _import(MODULE + "_schema", EXPECTED / "fixture_schema.py")
    if fresh:
        _xdrcheck.register(schema, MODULE)
    return module
