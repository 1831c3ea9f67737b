"""A small C-like tokenizer shared by the ``.x`` and header parsers.

Contract: turns text into ``Token``s with ``file:line:col`` positions.
Comments become ``comment`` tokens (the ``.x`` parser reads procedure
annotations out of them); lines starting with ``%`` (rpcgen pass-through) are
dropped; preprocessor lines become single ``pp`` tokens.  Any character it
does not know is a :class:`GenError` at its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .model import GenError, Loc

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>/\*.*?\*/)
  | (?P<badcomment>/\*)
  | (?P<linecomment>//[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><<|>>|[{}()\[\]<>;:,=*|&~+\-/%^])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str  # ident, number, string, op, comment, pp
    text: str
    loc: Loc


def tokenize(text: str, path: str, *, percent_lines: bool) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    line = 1
    line_start = 0
    at_line_start = True
    n = len(text)
    while pos < n:
        col = pos - line_start + 1
        if at_line_start:
            # rpcgen pass-through ('%...') and preprocessor ('#...') lines are
            # whole-line constructs; find them before tokenizing the line.
            j = pos
            while j < n and text[j] in " \t":
                j += 1
            if j < n and (text[j] == "#" or (percent_lines and text[j] == "%")):
                end = j
                # a preprocessor line may continue with backslash-newline
                while True:
                    nl = text.find("\n", end)
                    if nl == -1:
                        nl = n
                    if text[j] == "#" and nl > 0 and text[nl - 1] == "\\" and nl < n:
                        end = nl + 1
                        line += 1
                        line_start = end
                        continue
                    break
                if text[j] == "#":
                    tokens.append(Token("pp", text[j:nl], Loc(path, line, j - line_start + 1)))
                pos = nl
                at_line_start = False
                continue
        m = _TOKEN.match(text, pos)
        if m is None:
            raise GenError(Loc(path, line, col), f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        assert kind is not None
        value = m.group()
        if kind == "badcomment":
            raise GenError(Loc(path, line, col), "unterminated comment")
        if kind == "nl":
            line += 1
            line_start = m.end()
            at_line_start = True
            pos = m.end()
            continue
        at_line_start = False
        if kind == "comment":
            tokens.append(Token("comment", value, Loc(path, line, col)))
            nls = value.count("\n")
            if nls:
                line += nls
                line_start = pos + value.rfind("\n") + 1
        elif kind not in ("ws", "linecomment"):
            tokens.append(Token(kind, value, Loc(path, line, col)))
        pos = m.end()
    return tokens


def parse_int(tok: Token) -> int:
    text = tok.text.rstrip("uUlL")
    if text.lower().startswith("0x"):
        return int(text, 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text, 8)
    return int(text)
