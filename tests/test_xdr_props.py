"""Property tests over EVERY generated type, with strategies derived from the type table.

* round trip: ``encode(decode(encode(v))) == encode(v)`` and ``decode(encode(v)) == v``;
* differential: on random and mutated bytes, the fast generated decoder and the
  schema interpreter (``_xdrcheck.decode_value``) agree: both fail, or both give
  equal values (the fast path may fail alone only on strings that are not UTF-8,
  which only the interpreter decodes).

Strategies are built from ``pyvirtrpc._xdrcheck.types()`` (the generated
``*_schema`` modules), never written per type.  Example counts are kept small
per type (the table has ~780 types) so that the file runs in a few seconds;
raise ``XDR_PROPS_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import os
import random
from struct import error as StructError
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtrpc import _xdrcheck as X
from pyvirtrpc._xdr import Bad, decode, encode
from pyvirtrpc.errors import DecodeError

TYPES = X.types()
NAMES = sorted(TYPES)
EXAMPLES = int(os.environ.get("XDR_PROPS_EXAMPLES", "3"))
CHUNK = 40  # types per test function: hypothesis' per-test overhead is then paid ~20 times, not ~780

INT_RANGES = {
    "int": (-(2**31), 2**31 - 1), "uint": (0, 2**32 - 1), "hyper": (-(2**63), 2**63 - 1),
    "uhyper": (0, 2**64 - 1), "char": (-128, 255), "uchar": (0, 255), "short": (-32768, 65535),
    "ushort": (0, 65535),
}
# Variable-length values are kept short: the limits are tested in test_xdr.py.
SHORT = 4

_cache: dict[str, st.SearchStrategy[Any]] = {}


def text_within(limit: int | None) -> st.SearchStrategy[str]:
    n = SHORT * 2 if limit is None else min(limit, SHORT * 2)
    utf8 = st.text(max_size=n)
    if limit is not None and limit < 4 * n:  # a character takes up to 4 bytes in UTF-8
        utf8 = utf8.filter(lambda s: len(s.encode()) <= limit)
    raw = st.binary(max_size=n).map(lambda b: b.decode("utf-8", "surrogateescape"))  # not UTF-8: surrogateescape
    return st.one_of(utf8, raw)


def strategy(spec: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    kind = spec[0]
    if kind in INT_RANGES:
        lo, hi = INT_RANGES[kind]
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))
    if kind == "bool":
        return st.booleans()
    if kind == "double":
        return st.floats(allow_nan=False)
    if kind == "float":
        return st.floats(allow_nan=False, width=32)
    if kind == "ref":
        return named(spec[1])
    if kind == "string":
        return text_within(spec[1])
    if kind in ("opaque", "chars"):
        return st.binary(min_size=spec[1], max_size=spec[1])
    if kind in ("vopaque", "vchars"):
        return st.binary(max_size=SHORT * 4 if spec[1] is None else min(spec[1], SHORT * 4))
    if kind == "array":
        return st.lists(strategy(spec[1]), min_size=spec[2], max_size=spec[2])
    if kind == "varray":
        return st.lists(strategy(spec[1]), max_size=SHORT if spec[2] is None else min(spec[2], SHORT))
    if kind == "optional":
        return st.none() | strategy(spec[1])
    raise AssertionError(f"unknown schema kind {kind!r}")


def named(name: str) -> st.SearchStrategy[Any]:
    if name not in _cache:
        _cache[name] = st.deferred(lambda: _named(name))
    return _cache[name]


def _named(name: str) -> st.SearchStrategy[Any]:
    spec = TYPES[name]
    kind = spec[0]
    if kind == "typedef":
        return strategy(spec[1])
    if kind == "enum":
        if name.endswith("_procedure"):
            return st.integers(-(2**31), 2**31 - 1)
        cls = X.pyclass(name)
        # known members, and now and then a value a newer daemon might send
        return st.one_of(st.sampled_from(list(cls)), st.integers(-(2**31), 2**31 - 1).map(cls))
    if kind == "struct":
        cls = X.pyclass(name)
        return st.builds(cls, *[strategy(f) for _, f in spec[1]])
    if kind == "union":
        cls = X.pyclass(name)
        (_, dspec), arms, default = spec[1], spec[2], spec[3]
        options = []
        cased: set[int] = set()
        for values, _, aspec in arms:
            cased.update(values)
            value = st.none() if aspec is None else strategy(aspec)
            options.append(st.builds(cls, st.sampled_from(values).map(lambda d, ds=dspec: disc(ds, d)), value))
        if default is not None:
            _, aspec = default
            value = st.none() if aspec is None else strategy(aspec)
            others = strategy(dspec).filter(lambda d: d not in cased)
            options.append(st.builds(cls, others, value))
        return st.one_of(options)
    raise AssertionError(f"unknown schema kind {kind!r}")


def disc(dspec: tuple[Any, ...], value: int) -> Any:
    """A discriminant as decoding gives it: an enum member where the discriminant is an enum."""
    while dspec[0] == "ref":
        target = TYPES[dspec[1]]
        if target[0] == "enum":
            return value if dspec[1].endswith("_procedure") else X.pyclass(dspec[1])(value)
        dspec = target[1]
    if dspec[0] == "bool":
        return bool(value)
    return value


CHUNKS = [NAMES[i:i + CHUNK] for i in range(0, len(NAMES), CHUNK)]
IDS = [f"{c[0]}..{c[-1]}" for c in CHUNKS]
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_the_table_is_complete() -> None:
    assert len(NAMES) == 778
    assert sum(len(c) for c in CHUNKS) == len(NAMES)


def round_trip(name: str, value: Any) -> bytes:
    codec = X.codec(name)
    wire = encode(codec, value)
    back = decode(codec, wire)
    assert back == value, name
    assert encode(codec, back) == wire, name
    assert X.decode_value(name, wire) == value, name
    return wire


# ================================================================ differential


def fast(name: str, data: bytes) -> tuple[bool, Any]:
    """The generated decoder alone (no interpreter fallback): (ok, value)."""
    codec = X.codec(name)
    try:
        value, end = codec.dec(data, 0, len(data))
    except (Bad, StructError, IndexError, UnicodeDecodeError, ValueError, OverflowError):
        return False, None
    return end == len(data), value


def slow(name: str, data: bytes) -> tuple[bool, Any]:
    try:
        return True, X.decode_value(name, data)
    except DecodeError:
        return False, None


def has_escaped_text(v: Any) -> bool:
    if isinstance(v, str):
        return any("\udc80" <= c <= "\udcff" for c in v)
    if isinstance(v, list):
        return any(has_escaped_text(x) for x in v)
    if hasattr(v, "_fields"):
        return any(has_escaped_text(getattr(v, f)) for f in v._fields)
    if hasattr(v, "_disc"):
        return has_escaped_text(v.value)
    return False


def agree(name: str, data: bytes) -> None:
    codec = X.codec(name)
    ok_fast, v_fast = fast(name, data)
    ok_slow, v_slow = slow(name, data)
    if ok_fast:
        assert ok_slow, (name, data.hex())
        # Strict decoding is canonical: both values encode back to the input.  (Comparing
        # the values themselves would trip over NaN, which is not equal to itself.)
        # (A char >= 0x80 sent unsigned comes back signed: same length, not always same bytes.)
        again = encode(codec, v_fast)
        assert again == encode(codec, v_slow) and len(again) == len(data), (name, data.hex())
        assert again == data or "chars" in repr(TYPES[name]) or has_chars(name), (name, data.hex())
    elif ok_slow:
        # only a string that is not UTF-8 makes the fast path hand over to the interpreter
        assert has_escaped_text(v_slow), (name, data.hex())
        assert encode(codec, v_slow) == data, (name, data.hex())
    # and the public decoder is exactly one of the two
    try:
        v = decode(codec, data)
    except DecodeError:
        assert not ok_slow, (name, data.hex())
    else:
        assert ok_slow and encode(codec, v) == encode(codec, v_slow), (name, data.hex())


def has_chars(name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a type contains a char array anywhere."""
    text = repr(TYPES[name])
    if "chars" in text:
        return True
    import re

    return any(has_chars(ref, seen | {name}) for ref in re.findall(r"'ref', '(\w+)'", text) if ref not in seen)


def mutate(wire: bytes, rng: random.Random) -> bytes:
    """A near-miss of a valid encoding: a flipped byte, a hostile word, a cut, or extra bytes."""
    n = len(wire)
    how = rng.randrange(4)
    if how == 0 and n:
        i = rng.randrange(n)
        return wire[:i] + bytes([wire[i] ^ rng.randrange(1, 256)]) + wire[i + 1:]
    if how == 1 and n >= 4:
        i = 4 * rng.randrange(n // 4)
        word = rng.choice([2, 3, 0x7F, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])
        return wire[:i] + word.to_bytes(4, "big") + wire[i + 4:]
    if how == 2:
        return wire[:rng.randrange(n + 1)]
    return wire + rng.randbytes(rng.randrange(1, 9))


@pytest.mark.parametrize("names", CHUNKS, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_every_type(names: list[str], data: st.DataObject) -> None:
    """Round trip of a drawn value, then the differential check on random and on mutated bytes."""
    for name in names:
        wire = round_trip(name, data.draw(named(name), label=name))
        # Byte noise comes from a seeded generator: one draw instead of two keeps the file fast.
        rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label=f"seed for {name}"))
        agree(name, rng.randbytes(rng.randrange(49)))
        agree(name, mutate(wire, rng))
