"""Runtime support for the generated XDR codecs in :mod:`pyvirtrpc._gen`.

Contract:

* :func:`decode` turns bytes into a value of a named XDR type and
  :func:`encode` does the reverse.  Both are strict (RFC 4506 plus libvirt's
  quirks): every ``<max>`` is enforced, every length is checked against the
  bytes that remain before anything is allocated, padding must be zero,
  optional-data flags must be 0 or 1, and trailing bytes are an error.
* Any malformed input ends as :class:`~pyvirtrpc.errors.DecodeError` (or
  :class:`~pyvirtrpc.errors.EncodeError` for a value that cannot be
  encoded): never ``struct.error``, ``IndexError`` or an unbounded
  allocation.
* The generated decoders are a fast path with minimal checks.  When they
  fail, the schema interpreter in :mod:`pyvirtrpc._xdrcheck` runs over the
  same bytes to say exactly what was wrong and where (it is also the decoder
  for the rare strings that are not valid UTF-8, which it keeps with
  ``surrogateescape`` so they re-encode to the same bytes).

This module does no I/O and keeps no global state beyond constants.
"""

from __future__ import annotations

from struct import Struct
from struct import error as StructError
from struct import pack as _pack
from struct import unpack as _unpack

from .errors import DecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations only
    from typing import Any, Callable, ClassVar, Iterator

    Decoder = Callable[[bytes, int, int], "tuple[Any, int]"]
    Encoder = Callable[[Any, bytearray], None]

#: Zero padding for 0..3 bytes (RFC 4506 section 3: pad to a multiple of 4).
ZPAD = (b"", b"\0", b"\0\0", b"\0\0\0")

#: Pre-built packers used by the generated code.
u32 = Struct(">I")
i32 = Struct(">i")
FLAG0 = b"\0\0\0\0"
FLAG1 = b"\0\0\0\1"


class Bad(Exception):
    """Internal signal from a fast-path codec; never escapes this package."""


class Codec:
    """A named XDR type with its generated encoder and decoder."""

    __slots__ = ("name", "enc", "dec")

    def __init__(self, name: str, enc: Encoder, dec: Decoder) -> None:
        self.name = name
        self.enc = enc
        self.dec = dec

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"


class Procedure:
    """One row of a program's procedure table.

    ``args``, ``ret`` and ``msg`` are the codecs of the call arguments, the
    reply and the event message (None for void).  They are looked up on
    first use, so that a program's procedure-specific types are imported
    only when a procedure needs them.
    """

    __slots__ = ("number", "name", "annotations", "_module", "_names", "args", "ret", "msg")

    args: Codec | None
    ret: Codec | None
    msg: Codec | None

    def __init__(
        self,
        number: int,
        name: str,
        module: str,
        args: str | None,
        ret: str | None,
        msg: str | None,
        annotations: tuple[tuple[str, str], ...],
    ) -> None:
        self.number = number
        self.name = name
        self.annotations = annotations
        self._module = module
        self._names = (args, ret, msg)

    def __getattr__(self, attr: str) -> Codec | None:
        # Only reached while a codec slot is still unset.
        if attr not in ("args", "ret", "msg"):
            raise AttributeError(attr)
        import sys

        module = sys.modules[self._module]
        for slot, name in zip(("args", "ret", "msg"), self._names):
            setattr(self, slot, None if name is None else getattr(module, "_c_" + name))
        value: Codec | None = object.__getattribute__(self, attr)
        return value

    def annotation(self, key: str) -> list[str]:
        """Every value of ``@key`` (e.g. ``acl``) in file order."""
        return [v for k, v in self.annotations if k == key]

    def __repr__(self) -> str:
        return f"<Procedure {self.number} {self.name}>"


class XdrStruct:
    """Base of generated struct classes: equality, repr and a dict view."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def _asdict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self._fields}


class XdrUnion:
    """Base of generated union classes: a discriminant and one arm's value.

    The discriminant keeps its name from the ``.x`` file (e.g. ``type``); the
    arm's value is ``value`` and :attr:`arm` names the arm.
    """

    __slots__ = ()
    _disc: ClassVar[str] = ""
    _arms: ClassVar[dict[int, str | None]] = {}
    _default: ClassVar[str | None] = None
    _has_default: ClassVar[bool] = False

    @property
    def arm(self) -> str | None:
        d = getattr(self, self._disc)
        if d in self._arms:
            return self._arms[d]
        return self._default

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(getattr(self, self._disc) == getattr(other, self._disc) and self.value == other.value)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        d = getattr(self, self._disc)
        arm = self.arm
        inner = f"{self._disc}={d!r}"
        if arm:
            inner += f", {arm}={self.value!r}"  # type: ignore[attr-defined]
        return f"{type(self).__name__}({inner})"


class _OpenEnumType(type):
    """The metaclass of :class:`OpenEnum`: ``members=`` become instances, the class iterates them."""

    _member_map_: dict[str, Any]
    _value2member_map_: dict[int, Any]

    def __new__(
        mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any], members: dict[str, int] | None = None
    ) -> _OpenEnumType:
        cls = super().__new__(mcs, name, bases, ns)
        by_name: dict[str, Any] = {}
        by_value: dict[int, Any] = {}
        new: Any = int.__new__
        for key, value in (members or {}).items():
            member = new(cls, value)
            member._name_ = key
            member._value_ = value
            setattr(cls, key, member)
            by_name[key] = member
            by_value.setdefault(value, member)
        cls._member_map_ = by_name
        cls._value2member_map_ = by_value
        return cls

    def __init__(
        cls, name: str, bases: tuple[type, ...], ns: dict[str, Any], members: dict[str, int] | None = None
    ) -> None:
        super().__init__(name, bases, ns)

    def __iter__(cls) -> Iterator[Any]:
        return iter(cls._member_map_.values())

    def __len__(cls) -> int:
        return len(cls._member_map_)

    def __contains__(cls, member: object) -> bool:
        return isinstance(member, cls) and cls._member_map_.get(getattr(member, "_name_", "")) is member

    def __getitem__(cls, name: str) -> Any:
        return cls._member_map_[name]


class OpenEnum(int, metaclass=_OpenEnumType):
    """An XDR enum that also holds values it does not know.

    Members are ints with a ``name`` (``REMOTE_AUTH_NONE``) and a ``value``,
    as IntEnum members are; ``Enum(value)`` finds a member, ``Enum["NAME"]``
    looks one up by name, and the class iterates its members.  (Not built on
    :mod:`enum`: importing it costs ~3.5 ms of start-up, a tenth of a
    process that opens a connection and makes one call.)

    A newer daemon may send a value added after our ``.x`` files; it decodes
    to a pseudo-member named ``<ENUM>_UNKNOWN_<value>`` (e.g.
    ``REMOTE_AUTH_TYPE_UNKNOWN_7``) instead of failing.  It equals the int,
    encodes back to the same value, and is not a member of the class.
    Pseudo-members are not cached, so a hostile peer cannot grow memory.
    """

    _name_: str
    _value_: int

    def __new__(cls, value: Any) -> OpenEnum:
        member = cls._value2member_map_.get(value)
        if member is not None:
            return member  # type: ignore[no-any-return]
        if type(value) is not int and isinstance(value, int):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not -0x80000000 <= value <= 0x7FFFFFFF:
            raise ValueError(f"{value!r} is not a valid {cls.__name__}")
        pseudo: Any = int.__new__(cls, value)
        pseudo._name_ = f"{cls.__name__.upper()}_UNKNOWN_{value}"
        pseudo._value_ = value
        result: OpenEnum = pseudo
        return result

    @property
    def name(self) -> str:
        return self._name_

    @property
    def value(self) -> int:
        return self._value_

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {int(self)}>"

    __str__ = int.__repr__  # as IntEnum in Python 3.11: the number
    __format__ = int.__format__

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (int(self),))


def enum_member(table: dict[int, Any], cls: type[OpenEnum], value: int) -> Any:
    member = table.get(value)
    if member is None:
        member = cls(value)
    return member


def dec_chars(ints: tuple[int, ...]) -> bytes:
    """``char x<N>``: each byte came as a 4-byte int (signed on x86, unsigned on ARM)."""
    if ints and (min(ints) < -128 or max(ints) > 255):
        raise Bad
    return bytes([i & 255 for i in ints])


def enc_chars(data: bytes) -> bytes:
    # x86 libvirt sends char as signed: 0xC3 travels as 0xFFFFFFC3, which is
    # what reading the bytes as signed chars ('b') and widening them gives.
    n = len(data)
    return _pack(f">{n}i", *_unpack(f"{n}b", data))


DECODE_FAILURES = (Bad, StructError, IndexError, UnicodeDecodeError, ValueError, OverflowError)
_ENCODE_FAILURES = (Bad, StructError, TypeError, AttributeError, ValueError, OverflowError, IndexError, KeyError)


def decode(codec: Codec, data: bytes, offset: int = 0, end: int | None = None) -> Any:
    """Decode ``data[offset:end]`` as exactly one value of ``codec``'s type.

    ``data`` may be any bytes-like object (it is copied to ``bytes`` unless
    it is one, so that opaque values always come out as ``bytes``).
    ``offset`` and ``end`` must lie inside ``data`` (else ``ValueError``:
    that is the caller's mistake, not bad input).
    """
    if type(data) is not bytes:
        data = bytes(data)
    if end is None:
        end = len(data)
    if not 0 <= offset <= end <= len(data):
        raise ValueError(f"decode: offset {offset} and end {end} do not lie inside {len(data)} bytes")
    try:
        value, o = codec.dec(data, offset, end)
    except DECODE_FAILURES:
        o = -1
    if o == end:
        return value
    if o < end and o >= 0:
        raise DecodeError(
            f"{codec.name}: {end - o} unexpected trailing byte(s) after the value "
            f"(the value ends at byte {o - offset} of {end - offset})"
        )
    # The fast path failed (or read past ``end``, which only ``unpack_from``
    # can do: it checks against len(data)).  The interpreter either raises a
    # precise DecodeError or, for the one case the fast path does not handle
    # (strings that are not UTF-8), returns the value.
    from ._xdrcheck import explain_decode

    return explain_decode(codec.name, data, offset, end)


def encode(codec: Codec, value: Any) -> bytes:
    """Encode ``value`` as ``codec``'s type, or raise :class:`EncodeError`."""
    w = bytearray()
    try:
        codec.enc(value, w)
    except _ENCODE_FAILURES as exc:
        from ._xdrcheck import explain_encode

        raise explain_encode(codec.name, value, exc) from None
    return bytes(w)


def encode_into(codec: Codec, value: Any, w: bytearray) -> None:
    """Append the encoding of ``value`` to ``w`` (left unchanged on failure)."""
    mark = len(w)
    try:
        codec.enc(value, w)
    except _ENCODE_FAILURES as exc:
        del w[mark:]
        from ._xdrcheck import explain_encode

        raise explain_encode(codec.name, value, exc) from None
