"""The parsed form of libvirt's ``.x`` files and C headers.

Contract: plain immutable data, produced by :mod:`xparser` and :mod:`cheaders`,
consumed by :mod:`emit`.  Every node remembers where it came from
(``Loc``) so that later stages can report ``file:line:col``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class GenError(Exception):
    """A problem in an input file, reported as ``file:line:col: message``."""

    def __init__(self, loc: Loc | None, message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{loc}: {message}" if loc else message)


# ---------------------------------------------------------------- types

#: Primitive scalar kinds and the Python ``struct`` format of each (4 or 8
#: bytes on the wire, RFC 4506 sections 4.1-4.7; chars and shorts are
#: widened to 4 bytes by rpcgen).
PRIMS = {
    "int": "i",
    "uint": "I",
    "hyper": "q",
    "uhyper": "Q",
    "float": "f",
    "double": "d",
    "bool": "I",
    "char": "i",
    "uchar": "I",
    "short": "i",
    "ushort": "I",
}


@dataclass(frozen=True)
class Prim:
    kind: str  # a key of PRIMS


@dataclass(frozen=True)
class Ref:
    name: str
    loc: Loc


@dataclass(frozen=True)
class String:
    max: int | None


@dataclass(frozen=True)
class Opaque:
    """``opaque x[N]`` (fixed) or ``opaque x<N>`` (variable)."""

    fixed: bool
    size: int | None


@dataclass(frozen=True)
class Chars:
    """``char x[N]`` / ``char x<N>``: libvirt's quirk, each byte is a 4-byte int."""

    fixed: bool
    size: int | None


@dataclass(frozen=True)
class Array:
    elem: "Type"
    fixed: bool
    size: int | None


@dataclass(frozen=True)
class Optional_:
    elem: "Type"


Type = Union[Prim, Ref, String, Opaque, Chars, Array, Optional_]


@dataclass(frozen=True)
class Field:
    name: str
    type: Type
    loc: Loc


@dataclass(frozen=True)
class Struct:
    name: str
    fields: tuple[Field, ...]
    loc: Loc
    source: str


@dataclass(frozen=True)
class Arm:
    values: tuple[int, ...]  # empty for the default arm
    field: Field | None  # None for a void arm


@dataclass(frozen=True)
class Union_:
    name: str
    discriminant: Field
    arms: tuple[Arm, ...]
    default: Arm | None
    loc: Loc
    source: str


@dataclass(frozen=True)
class EnumMember:
    name: str
    value: int
    loc: Loc
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Enum:
    name: str
    members: tuple[EnumMember, ...]
    loc: Loc
    source: str


@dataclass(frozen=True)
class Typedef:
    name: str
    type: Type
    loc: Loc
    source: str


@dataclass(frozen=True)
class Const:
    name: str
    value: Union[int, str]
    loc: Loc


Definition = Union[Struct, Union_, Enum, Typedef]


@dataclass
class Spec:
    """One parsed ``.x`` file."""

    path: str
    sha256: str
    consts: list[Const] = field(default_factory=list)
    types: list[Definition] = field(default_factory=list)
