"""Parser for RFC 4506 XDR specifications in libvirt's dialect.

Contract: :func:`parse` takes the text of one ``.x`` file and the constants
known so far (from the C headers and earlier ``.x`` files, which it extends)
and returns a :class:`~.model.Spec`.  It accepts the RFC 4506 section 6.3
grammar plus what libvirt's files use: ``%`` pass-through lines,
``unsigned`` alone (meaning ``unsigned int``), ``char``/``short`` scalars and
arrays, and ``@key: value`` annotations inside the comment before each
enumerator (kept for the procedure enums).  Sizes and case values may name
constants from the C headers.  Every error is a :class:`GenError` with
``file:line:col``.  Type names are not resolved here (see ``resolve``).
"""

from __future__ import annotations

import hashlib
import re
from collections import ChainMap
from typing import Union

from .cexpr import evaluate
from .lexer import Token, tokenize
from .model import (
    Arm,
    Array,
    Chars,
    Const,
    Enum,
    EnumMember,
    Field,
    GenError,
    Opaque,
    Optional_,
    Prim,
    Ref,
    Spec,
    String,
    Struct,
    Type,
    Typedef,
    Union_,
)

_ANNOTATION = re.compile(r"^\s*\*?\s*@(\w+)\s*:\s*(.*?)\s*$")
#: RFC 4506 section 4.4: ``bool`` is ``enum { FALSE = 0, TRUE = 1 }``, so case labels may name them.
_BOOL_CONSTANTS: dict[str, Union[int, str]] = {"FALSE": 0, "TRUE": 1}
_KEYWORDS = {
    "bool", "case", "const", "default", "double", "quadruple", "enum", "float",
    "hyper", "int", "opaque", "string", "struct", "switch", "typedef", "union",
    "unsigned", "void", "char", "short",
}


def read_annotations(comment: str) -> tuple[tuple[str, str], ...]:
    """The ``@key: value`` lines of a comment, in order."""
    body = comment[2:-2]
    found = []
    for line in body.splitlines():
        m = _ANNOTATION.match(line)
        if m:
            found.append((m.group(1), m.group(2)))
    return tuple(found)


class _Parser:
    def __init__(self, path: str, text: str, known: dict[str, Union[int, str]]) -> None:
        self.path = path
        self.lines = text.splitlines()
        all_toks = tokenize(text, path, percent_lines=True)
        # Comments are kept aside: only the one right before an enumerator matters.
        self.toks: list[Token] = []
        self.comment_before: dict[int, str] = {}
        pending: str | None = None
        for tok in all_toks:
            if tok.kind == "comment":
                pending = tok.text
                continue
            if tok.kind == "pp":
                raise GenError(tok.loc, "preprocessor lines are not part of XDR (use '%' pass-through)")
            if pending is not None:
                self.comment_before[len(self.toks)] = pending
                pending = None
            self.toks.append(tok)
        self.i = 0
        self.known = known
        self.eof_loc = all_toks[-1].loc if all_toks else None

    # -------------------------------------------------------------- tokens
    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, what: str = "a token") -> Token:
        tok = self.peek()
        if tok is None:
            raise GenError(self.eof_loc, f"expected {what}, found end of file")
        self.i += 1
        return tok

    def expect(self, text: str) -> Token:
        tok = self.take(repr(text))
        if tok.text != text:
            raise GenError(tok.loc, f"expected {text!r}, found {tok.text!r}")
        return tok

    def ident(self, what: str = "an identifier") -> Token:
        tok = self.take(what)
        if tok.kind != "ident" or tok.text in _KEYWORDS:
            raise GenError(tok.loc, f"expected {what}, found {tok.text!r}")
        return tok

    def value(self, stop: tuple[str, ...]) -> int:
        start = self.i
        depth = 0
        while True:
            tok = self.peek()
            if tok is None:
                raise GenError(self.eof_loc, "expression runs to end of file")
            if tok.text == "(":
                depth += 1
            elif tok.text == ")":
                depth -= 1
            elif depth == 0 and tok.text in stop:
                break
            self.i += 1
        toks = self.toks[start:self.i]
        if not toks:
            tok = self.peek()
            raise GenError(tok.loc if tok else self.eof_loc, "expected a value")
        return evaluate(toks, ChainMap(self.known, _BOOL_CONSTANTS))

    def source(self, first: Token, last: Token) -> str:
        return "\n".join(self.lines[first.loc.line - 1:last.loc.line])

    # ------------------------------------------------------------- grammar
    def parse(self, spec: Spec) -> None:
        while self.peek() is not None:
            tok = self.take()
            if tok.text == "const":
                name = self.ident("a constant name")
                self.expect("=")
                value = self.value((";",))
                self.expect(";")
                self.define_const(name, value)
                spec.consts.append(Const(name.text, value, name.loc))
            elif tok.text == "typedef":
                decl = self.declaration()
                end = self.expect(";")
                if decl is None:
                    raise GenError(tok.loc, "typedef of void")
                spec.types.append(Typedef(decl.name, decl.type, decl.loc, self.source(tok, end)))
            elif tok.text == "enum":
                name = self.ident("an enum name")
                members = self.enum_body()
                end = self.expect(";")
                spec.types.append(Enum(name.text, members, name.loc, self.source(tok, end)))
            elif tok.text == "struct":
                name = self.ident("a struct name")
                fields = self.struct_body()
                end = self.expect(";")
                spec.types.append(Struct(name.text, fields, name.loc, self.source(tok, end)))
            elif tok.text == "union":
                name = self.ident("a union name")
                disc, arms, default = self.union_body()
                end = self.expect(";")
                spec.types.append(Union_(name.text, disc, arms, default, name.loc, self.source(tok, end)))
            else:
                raise GenError(
                    tok.loc, f"expected a definition (const, typedef, enum, struct, union), found {tok.text!r}"
                )

    def define_const(self, name: Token, value: int) -> None:
        old = self.known.get(name.text)
        if old is not None and old != value:
            raise GenError(name.loc, f"constant {name.text} redefined as {value} (was {old!r})")
        self.known[name.text] = value

    def enum_body(self) -> tuple[EnumMember, ...]:
        self.expect("{")
        members: list[EnumMember] = []
        seen: set[str] = set()
        while True:
            index = self.i
            name = self.ident("an enumerator")
            if name.text in seen:
                raise GenError(name.loc, f"duplicate enumerator {name.text}")
            seen.add(name.text)
            self.expect("=")
            value = self.value((",", "}"))
            comment = self.comment_before.get(index)
            members.append(EnumMember(name.text, value, name.loc, read_annotations(comment) if comment else ()))
            self.define_const(name, value)
            tok = self.take("',' or '}'")
            if tok.text == "}":
                return tuple(members)
            if tok.text != ",":
                raise GenError(tok.loc, f"expected ',' or '}}', found {tok.text!r}")

    def struct_body(self) -> tuple[Field, ...]:
        open_tok = self.expect("{")
        fields: list[Field] = []
        names: set[str] = set()
        while True:
            tok = self.peek()
            if tok is not None and tok.text == "}":
                self.i += 1
                if not fields:
                    raise GenError(open_tok.loc, "a struct needs at least one field")
                return tuple(fields)
            decl = self.declaration()
            self.expect(";")
            if decl is None:
                raise GenError(tok.loc if tok else None, "void is not allowed as a struct field")
            if decl.name in names:
                raise GenError(decl.loc, f"duplicate field {decl.name}")
            names.add(decl.name)
            fields.append(decl)

    def union_body(self) -> tuple[Field, tuple[Arm, ...], Arm | None]:
        self.expect("switch")
        self.expect("(")
        disc = self.declaration()
        if disc is None:
            raise GenError(self.toks[self.i - 1].loc, "a union discriminant cannot be void")
        scalar = isinstance(disc.type, Prim) and disc.type.kind in ("int", "uint", "bool")
        if not scalar and not isinstance(disc.type, Ref):
            raise GenError(disc.loc, "a union discriminant must be int, unsigned int, bool or an enum")
        self.expect(")")
        self.expect("{")
        arms: list[Arm] = []
        default: Arm | None = None
        seen: set[int] = set()
        while True:
            tok = self.take("'case', 'default' or '}'")
            if tok.text == "}":
                break
            if tok.text == "default":
                if default is not None:
                    raise GenError(tok.loc, "a union has one default arm at most")
                self.expect(":")
                decl = self.declaration()
                self.expect(";")
                default = Arm((), decl)
                continue
            if tok.text != "case":
                raise GenError(tok.loc, f"expected 'case', 'default' or '}}', found {tok.text!r}")
            values = []
            while True:
                vtok = self.peek()
                value = self.value((":",))
                if value in seen:
                    raise GenError(vtok.loc if vtok else None, f"duplicate case value {value}")
                seen.add(value)
                values.append(value)
                self.expect(":")
                nxt = self.peek()
                if nxt is not None and nxt.text == "case":
                    self.i += 1
                    continue
                break
            decl = self.declaration()
            self.expect(";")
            arms.append(Arm(tuple(values), decl))
        if not arms:
            raise GenError(tok.loc, "a union needs at least one case")
        return disc, tuple(arms), default

    def type_spec(self) -> tuple[Type, Token]:
        tok = self.take("a type")
        text = tok.text
        if text == "unsigned":
            nxt = self.peek()
            if nxt is not None and nxt.text in ("int", "hyper", "char", "short"):
                self.i += 1
                return Prim({"int": "uint", "hyper": "uhyper", "char": "uchar", "short": "ushort"}[nxt.text]), tok
            return Prim("uint"), tok  # rpcgen: bare "unsigned" is unsigned int
        if text in ("int", "hyper", "float", "double", "bool", "char", "short"):
            return Prim(text), tok
        if text == "quadruple":
            raise GenError(tok.loc, "quadruple is not supported (no Python equivalent; libvirt does not use it)")
        if text in ("struct", "union", "enum"):
            nxt = self.peek()
            if nxt is not None and nxt.text == "{":
                raise GenError(nxt.loc, f"inline {text} definitions are not supported; name the type")
            name = self.ident(f"a {text} name")
            return Ref(name.text, name.loc), tok
        if tok.kind == "ident" and text not in _KEYWORDS:
            return Ref(text, tok.loc), tok
        raise GenError(tok.loc, f"expected a type, found {text!r}")

    def declaration(self) -> Field | None:
        tok = self.peek()
        if tok is not None and tok.text == "void":
            self.i += 1
            return None
        if tok is not None and tok.text in ("opaque", "string"):
            self.i += 1
            name = self.ident("a field name")
            bracket = self.take("'[' or '<'")
            if bracket.text == "[" and tok.text == "opaque":
                size = self.value(("]",))
                self.expect("]")
                self.check_size(bracket, size)
                return Field(name.text, Opaque(True, size), name.loc)
            if bracket.text == "<":
                limit = self.opt_max()
                if tok.text == "opaque":
                    return Field(name.text, Opaque(False, limit), name.loc)
                return Field(name.text, String(limit), name.loc)
            if tok.text == "opaque":
                raise GenError(bracket.loc, "opaque needs a size: '[N]' or '<N>'")
            raise GenError(bracket.loc, "string needs '<N>' or '<>'")
        base, btok = self.type_spec()
        nxt = self.peek()
        if nxt is not None and nxt.text == "*":
            self.i += 1
            name = self.ident("a field name")
            return Field(name.text, Optional_(base), name.loc)
        name = self.ident("a field name")
        nxt = self.peek()
        is_char = isinstance(base, Prim) and base.kind in ("char", "uchar")
        if nxt is not None and nxt.text == "[":
            self.i += 1
            size = self.value(("]",))
            self.expect("]")
            self.check_size(nxt, size)
            if is_char:
                return Field(name.text, Chars(True, size), name.loc)
            return Field(name.text, Array(base, True, size), name.loc)
        if nxt is not None and nxt.text == "<":
            self.i += 1
            limit = self.opt_max()
            if is_char:
                return Field(name.text, Chars(False, limit), name.loc)
            return Field(name.text, Array(base, False, limit), name.loc)
        return Field(name.text, base, name.loc)

    def opt_max(self) -> int | None:
        tok = self.peek()
        if tok is not None and tok.text == ">":
            self.i += 1
            return None
        size = self.value((">",))
        self.check_size(tok, size)
        self.expect(">")
        return size

    @staticmethod
    def check_size(tok: Token | None, size: int) -> None:
        if not 0 <= size <= 0xFFFFFFFF:
            raise GenError(tok.loc if tok else None, f"size {size} is not an unsigned 32-bit value")


def parse(path: str, text: str, known: dict[str, Union[int, str]]) -> Spec:
    spec = Spec(path, hashlib.sha256(text.encode()).hexdigest())
    _Parser(path, text, known).parse(spec)
    return spec
