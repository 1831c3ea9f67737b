"""Integer constant expressions, as they appear in the headers and ``.x`` files.

Contract: evaluates a token slice made of integers, names of known constants,
parentheses and the C operators ``| ^ & << >> + - * / % ~``; anything else is
a :class:`GenError` at the offending token.  Never calls ``eval``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

from .lexer import Token, parse_int
from .model import GenError

_BINARY = [("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/", "%")]


class _Parser:
    def __init__(self, toks: list[Token], names: Mapping[str, Union[int, str]]) -> None:
        self.toks = toks
        self.i = 0
        self.names = names

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            last = self.toks[-1]
            raise GenError(last.loc, "expression ends too early")
        self.i += 1
        return tok

    def binary(self, level: int) -> int:
        if level == len(_BINARY):
            return self.unary()
        value = self.binary(level + 1)
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text in _BINARY[level]:
            self.i += 1
            rhs = self.binary(level + 1)
            op = tok.text
            if op == "|":
                value |= rhs
            elif op == "^":
                value ^= rhs
            elif op == "&":
                value &= rhs
            elif op == "<<":
                value <<= rhs
            elif op == ">>":
                value >>= rhs
            elif op == "+":
                value += rhs
            elif op == "-":
                value -= rhs
            elif op == "*":
                value *= rhs
            elif rhs == 0:
                raise GenError(tok.loc, "division by zero")
            elif op == "/":
                value = int(value / rhs)
            else:
                value = value - int(value / rhs) * rhs
        return value

    def unary(self) -> int:
        tok = self.take()
        if tok.kind == "op" and tok.text == "-":
            return -self.unary()
        if tok.kind == "op" and tok.text == "+":
            return self.unary()
        if tok.kind == "op" and tok.text == "~":
            return ~self.unary()
        if tok.kind == "op" and tok.text == "(":
            value = self.binary(0)
            close = self.take()
            if close.text != ")":
                raise GenError(close.loc, f"expected ')', found {close.text!r}")
            return value
        if tok.kind == "number":
            return parse_int(tok)
        if tok.kind == "ident":
            if tok.text not in self.names:
                raise GenError(tok.loc, f"unknown constant {tok.text!r}")
            named = self.names[tok.text]
            if not isinstance(named, int):
                raise GenError(tok.loc, f"constant {tok.text!r} is not an integer")
            return named
        raise GenError(tok.loc, f"unexpected {tok.text!r} in a constant expression")


def evaluate(toks: list[Token], names: Mapping[str, Union[int, str]]) -> int:
    if not toks:
        raise GenError(None, "empty expression")
    parser = _Parser(toks, names)
    value = parser.binary(0)
    extra = parser.peek()
    if extra is not None:
        raise GenError(extra.loc, f"unexpected {extra.text!r} after a constant expression")
    return value
