"""The XDR schema interpreter: slow, exact, and the source of error messages.

Contract:

* :func:`decode_value` decodes bytes by walking the generated type tables
  (``pyvirtrpc._gen.*_schema``).  It accepts exactly what the generated fast
  decoders accept, plus strings that are not valid UTF-8 (kept with
  ``surrogateescape``, so they encode back to the same bytes), and builds
  the same Python objects.  On bad input it raises
  :class:`~pyvirtrpc.errors.DecodeError` naming the field path, the offset,
  what was expected and what came.
* :func:`explain_decode` / :func:`explain_encode` are what the fast path
  calls after it failed, to turn the failure into that precise error.
* :func:`validate` checks a Python value against a type without encoding it.

Imported lazily (only on error paths, by tests and by fuzzers), so it may
be slow to import.  No I/O.
"""

from __future__ import annotations

import struct
from importlib import import_module

from ._gen import MODULES
from .errors import DecodeError, EncodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._xdr import Codec

    Spec = tuple[Any, ...]

_PRIM = {
    "int": (">i", 4, -(2**31), 2**31 - 1),
    "uint": (">I", 4, 0, 2**32 - 1),
    "hyper": (">q", 8, -(2**63), 2**63 - 1),
    "uhyper": (">Q", 8, 0, 2**64 - 1),
    "float": (">f", 4, None, None),
    "double": (">d", 8, None, None),
    "bool": (">I", 4, 0, 1),
    "char": (">i", 4, -128, 255),
    "uchar": (">I", 4, 0, 255),
    "short": (">i", 4, -32768, 65535),
    "ushort": (">I", 4, 0, 65535),
}

_types: dict[str, Spec] | None = None
_enums: dict[str, dict[int, str]] = {}
_module_of: dict[str, str] = {}
_min: dict[str, int] = {}


def types() -> dict[str, Spec]:
    """Every named type of every generated module, by name."""
    global _types
    if _types is None:
        merged: dict[str, Spec] = {}
        for mod in MODULES:
            schema = import_module(f"pyvirtrpc._gen.{mod}_schema")
            for name, spec in schema.TYPES.items():
                merged[name] = spec
                _module_of[name] = f"pyvirtrpc._gen.{mod}"
            _enums.update(schema.ENUMS)
        _types = merged
    return _types


def register(schema: Any, module: str) -> None:
    """Add the type table of a module generated elsewhere (the generator's test fixtures).

    ``schema`` is its ``*_schema`` module and ``module`` the full name of the
    imported module that holds its classes and codecs.
    """
    merged = types()
    for name, spec in schema.TYPES.items():
        if name in merged and _module_of[name] != module:
            raise ValueError(f"type {name} is already defined by {_module_of[name]}")
        merged[name] = spec
        _module_of[name] = module
    _enums.update(schema.ENUMS)


def enums() -> dict[str, dict[int, str]]:
    types()
    return _enums


def module_of(name: str) -> str:
    """The full name of the module that defines a named type."""
    types()
    return _module_of[name]


def pyclass(name: str) -> Any:
    """The generated class (or enum) for a named type."""
    return getattr(import_module(module_of(name)), name)


def codec(name: str) -> Codec:
    """The generated :class:`~pyvirtrpc._xdr.Codec` of a named type."""
    c: Codec = getattr(import_module(module_of(name)), "_c_" + name)
    return c


def min_size(spec: Spec) -> int:
    kind = spec[0]
    if kind in _PRIM:
        return _PRIM[kind][1]
    if kind == "ref":
        name = spec[1]
        if name not in _min:
            _min[name] = min_size(types()[name])
        return _min[name]
    if kind in ("string", "vopaque", "vchars", "varray", "optional", "enum"):
        return 4
    if kind == "opaque":
        return int(spec[1] + (-spec[1] & 3))
    if kind == "chars":
        return int(4 * spec[1])
    if kind == "array":
        return int(spec[2] * min_size(spec[1]))
    if kind == "typedef":
        return min_size(spec[1])
    if kind == "struct":
        return sum(min_size(f) for _, f in spec[1])
    if kind == "union":
        arms = [a[2] for a in spec[2]]
        if spec[3] is not None:
            arms.append(spec[3][1])
        return 4 + min(0 if a is None else min_size(a) for a in arms)
    raise ValueError(f"unknown schema kind {kind!r}")


# =====================================================================
# decoding
# =====================================================================


class _Reader:
    __slots__ = ("data", "pos", "end", "start")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.start = pos

    def fail(self, path: str, what: str) -> DecodeError:
        return DecodeError(f"{path}: {what} (at byte {self.pos - self.start} of {self.end - self.start})")

    def take(self, k: int, path: str, what: str) -> bytes:
        remain = self.end - self.pos
        if k > remain:
            raise self.fail(path, f"expected {k} bytes for {what}, only {remain} remain")
        chunk = self.data[self.pos:self.pos + k]
        self.pos += k
        return chunk

    def unpack(self, fmt: str, size: int, path: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(size, path, what))[0]

    def length(self, path: str, what: str, limit: int | None, unit: int) -> int:
        """Read a length word and check it against ``limit`` and the bytes left.

        ``unit`` is the fewest bytes one element takes (at least 1, so that
        even elements of size 0 cannot make a short input loop for long):
        the check happens before anything is allocated.
        """
        at = self.pos
        n: int = self.unpack(">I", 4, path, f"the length of {what}")
        if limit is not None and n > limit:
            self.pos = at
            raise self.fail(path, f"{what} has length {n}, more than its maximum {limit}")
        remain = self.end - self.pos
        unit = max(unit, 1)
        if n * unit > remain:
            self.pos = at
            need = f"{n} elements need at least {n * unit} bytes" if unit != 1 else f"length {n} needs {n} bytes"
            raise self.fail(path, f"{what}: {need}, only {remain} remain")
        return n

    def padding(self, n: int, path: str) -> None:
        pad = -n & 3
        if pad:
            chunk = self.take(pad, path, "padding")
            if chunk != b"\0" * pad:
                self.pos -= pad
                raise self.fail(path, f"padding must be zero bytes, got {chunk.hex()}")


def _chars(r: _Reader, count: int, path: str) -> bytes:
    out = bytearray()
    for i in range(count):
        v = r.unpack(">i", 4, f"{path}[{i}]", "a char")
        if not -128 <= v <= 255:
            r.pos -= 4
            raise r.fail(f"{path}[{i}]", f"char value {v} is out of range -128..255")
        out.append(v & 255)
    return bytes(out)


def _dec(r: _Reader, spec: Spec, path: str) -> Any:
    kind = spec[0]
    if kind in _PRIM:
        fmt, size, lo, hi = _PRIM[kind]
        v = r.unpack(fmt, size, path, kind)
        if lo is not None and not lo <= v <= hi:
            r.pos -= size
            raise r.fail(path, f"{kind} value {v} is out of range {lo}..{hi}")
        if kind == "bool":
            return v == 1
        return v
    if kind == "ref":
        return _dec_named(r, spec[1], path)
    if kind == "string":
        n = r.length(path, "the string", spec[1], 1)
        text = r.take(n, path, "the string").decode("utf-8", "surrogateescape")
        r.padding(n, path)
        return text
    if kind == "opaque":
        fixed = r.take(spec[1], path, "fixed-length opaque data")
        r.padding(spec[1], path)
        return fixed
    if kind == "vopaque":
        n = r.length(path, "the opaque data", spec[1], 1)
        data = r.take(n, path, "opaque data")
        r.padding(n, path)
        return data
    if kind == "chars":
        return _chars(r, spec[1], path)
    if kind == "vchars":
        n = r.length(path, "the char array", spec[1], 4)
        return _chars(r, n, path)
    if kind in ("array", "varray"):
        elem = spec[1]
        if kind == "array":
            n = spec[2]
            need = n * min_size(elem)
            if need > r.end - r.pos:
                raise r.fail(path, f"{n} elements need at least {need} bytes, only {r.end - r.pos} remain")
        else:
            n = r.length(path, "the array", spec[2], min_size(elem))
        return [_dec(r, elem, f"{path}[{i}]") for i in range(n)]
    if kind == "optional":
        flag = r.unpack(">I", 4, path, "an optional-data flag")
        if flag == 0:
            return None
        if flag != 1:
            r.pos -= 4
            raise r.fail(path, f"optional-data flag must be 0 or 1, got {flag}")
        return _dec(r, spec[1], path)
    raise ValueError(f"unknown schema kind {kind!r}")


def _dec_named(r: _Reader, name: str, path: str) -> Any:
    spec = types()[name]
    kind = spec[0]
    if kind == "typedef":
        return _dec(r, spec[1], path)
    if kind == "enum":
        v = r.unpack(">i", 4, path, f"enum {name}")
        if name.endswith("_procedure"):
            return v
        return pyclass(name)(v)
    if kind == "struct":
        values = [_dec(r, fspec, f"{path}.{fname}") for fname, fspec in spec[1]]
        return pyclass(name)(*values)
    if kind == "union":
        dname, dspec = spec[1]
        d = _dec(r, dspec, f"{path}.{dname}")
        for values, arm, aspec in spec[2]:
            if d in values:
                v = None if aspec is None else _dec(r, aspec, f"{path}.{arm}")
                return pyclass(name)(d, v)
        if spec[3] is None:
            r.pos -= 4
            cases = ", ".join(str(v) for values, _, _ in spec[2] for v in values)
            raise r.fail(f"{path}.{dname}", f"expected a case of union {name} ({cases}), got {int(d)}")
        arm, aspec = spec[3]
        v = None if aspec is None else _dec(r, aspec, f"{path}.{arm}")
        return pyclass(name)(d, v)
    raise ValueError(f"unknown schema kind {kind!r}")


def decode_value(name: str, data: bytes, offset: int = 0, end: int | None = None) -> Any:
    """Decode ``data[offset:end]`` as one value of the named type, strictly."""
    if type(data) is not bytes:
        data = bytes(data)
    if end is None:
        end = len(data)
    if not 0 <= offset <= end <= len(data):
        raise ValueError(f"decode_value: offset {offset} and end {end} do not lie inside {len(data)} bytes")
    r = _Reader(data, offset, end)
    value = _dec_named(r, name, name)
    if r.pos != end:
        raise DecodeError(
            f"{name}: {end - r.pos} unexpected trailing byte(s) after the value "
            f"(the value ends at byte {r.pos - offset} of {end - offset})"
        )
    return value


def explain_decode(name: str, data: bytes, offset: int, end: int) -> Any:
    """Called after the fast decoder failed: raise the precise error, or return the value.

    The fast decoder insists on UTF-8 strings; the interpreter keeps other
    bytes with ``surrogateescape``, so such a value decodes here.
    """
    return decode_value(name, bytes(data), offset, end)


# =====================================================================
# encoding checks
# =====================================================================


def _kind_name(v: Any) -> str:
    return type(v).__name__


def _check(spec: Spec, v: Any, path: str) -> None:
    kind = spec[0]
    if kind in _PRIM:
        if kind in ("float", "double"):
            if not isinstance(v, (int, float)):
                raise EncodeError(f"{path}: expected a number for {kind}, got {_kind_name(v)}")
            return
        if not isinstance(v, int):
            raise EncodeError(f"{path}: expected an int for {kind}, got {_kind_name(v)}")
        _, _, lo, hi = _PRIM[kind]
        if lo is not None and hi is not None and not lo <= v <= hi:
            raise EncodeError(f"{path}: expected {kind} in {lo}..{hi}, got {v}")
        return
    if kind == "ref":
        _check_named(spec[1], v, path)
        return
    if kind == "string":
        if not isinstance(v, str):
            raise EncodeError(f"{path}: expected a str, got {_kind_name(v)}")
        try:
            n = len(v.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError as exc:
            # Only U+DC80..U+DCFF stand for raw bytes; other lone surrogates have no UTF-8 form.
            raise EncodeError(
                f"{path}: expected a str encodable as UTF-8, got a lone surrogate "
                f"{v[exc.start]!r} at index {exc.start}"
            ) from None
        if spec[1] is not None and n > spec[1]:
            raise EncodeError(f"{path}: expected a string of at most {spec[1]} bytes, got {n} bytes")
        return
    if kind in ("opaque", "vopaque", "chars", "vchars"):
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise EncodeError(f"{path}: expected bytes, got {_kind_name(v)}")
        n = len(v)
        if kind in ("opaque", "chars") and n != spec[1]:
            raise EncodeError(f"{path}: expected exactly {spec[1]} bytes, got {n}")
        if kind in ("vopaque", "vchars") and spec[1] is not None and n > spec[1]:
            raise EncodeError(f"{path}: expected at most {spec[1]} bytes, got {n}")
        return
    if kind in ("array", "varray"):
        if not isinstance(v, (list, tuple)):
            raise EncodeError(f"{path}: expected a list, got {_kind_name(v)}")
        if kind == "array" and len(v) != spec[2]:
            raise EncodeError(f"{path}: expected exactly {spec[2]} elements, got {len(v)}")
        if kind == "varray" and spec[2] is not None and len(v) > spec[2]:
            raise EncodeError(f"{path}: expected at most {spec[2]} elements, got {len(v)}")
        for i, item in enumerate(v):
            _check(spec[1], item, f"{path}[{i}]")
        return
    if kind == "optional":
        if v is not None:
            _check(spec[1], v, path)
        return
    raise ValueError(f"unknown schema kind {kind!r}")


def _check_named(name: str, v: Any, path: str) -> None:
    spec = types()[name]
    kind = spec[0]
    if kind == "typedef":
        _check(spec[1], v, path)
    elif kind == "enum":
        _check(("int",), v, path)
    elif kind == "struct":
        for fname, fspec in spec[1]:
            if not hasattr(v, fname):
                raise EncodeError(f"{path}: expected a {name} with field {fname!r}, got {_kind_name(v)}")
            _check(fspec, getattr(v, fname), f"{path}.{fname}")
    elif kind == "union":
        dname, dspec = spec[1]
        if not hasattr(v, dname) or not hasattr(v, "value"):
            raise EncodeError(f"{path}: expected a {name} union, got {_kind_name(v)}")
        d = getattr(v, dname)
        _check(dspec, d, f"{path}.{dname}")
        for values, arm, aspec in spec[2]:
            if d in values:
                _check_arm(aspec, v.value, f"{path}.{arm}" if arm else path)
                return
        if spec[3] is None:
            cases = ", ".join(str(x) for values, _, _ in spec[2] for x in values)
            raise EncodeError(f"{path}.{dname}: expected a case of union {name} ({cases}), got {d!r}")
        arm, aspec = spec[3]
        _check_arm(aspec, v.value, f"{path}.{arm}" if arm else path)


def _check_arm(aspec: Spec | None, value: Any, path: str) -> None:
    if aspec is None:
        if value is not None:
            raise EncodeError(f"{path}: a void arm takes no value, got {_kind_name(value)}")
        return
    _check(aspec, value, path)


def validate(name: str, value: Any) -> None:
    """Raise :class:`EncodeError` if ``value`` is not a valid ``name``."""
    _check_named(name, value, name)


def explain_encode(name: str, value: Any, exc: BaseException) -> EncodeError:
    """The precise error for a value the fast encoder refused."""
    try:
        validate(name, value)
    except EncodeError as err:
        return err
    return EncodeError(f"{name}: cannot encode {_kind_name(value)}: {exc}")
