"""Public ``VIR_*`` constants read from libvirt's C headers.

Contract: :func:`read_header` returns the integer and string constants a
header defines, in file order: enumerators of ``enum`` blocks (values worked
out as C does, auto-increment included) and object-like ``#define``s whose
value is a string literal or an integer expression.  Enumerators inside
``#ifdef VIR_ENUM_SENTINELS`` (the ``_LAST`` values libvirt keeps private)
are left out unless given an explicit value, as libvirt-python does.  Function-like macros and
defines that are not constant expressions are ignored.  A constant defined
twice with different values is a :class:`GenError`.
"""

from __future__ import annotations

import ast
from typing import Union

from .cexpr import evaluate
from .lexer import Token, tokenize
from .model import Const, GenError, Loc

_PREFIXES = ("VIR_", "LIBVIR_")


def _pp_words(tok: Token) -> list[str]:
    body = tok.text.lstrip()[1:].strip()
    return body.split(None, 2)


def read_header(
    path: str, text: str, known: dict[str, Union[int, str]]
) -> list[Const]:
    """Parse one header; ``known`` (constants from earlier headers) is updated."""
    toks = tokenize(text, path, percent_lines=False)
    out: list[Const] = []
    # Stack of booleans: True where the enclosing #if block is a sentinel block.
    stack: list[bool] = []
    opened: list[Loc] = []  # where each open #if of this level began
    skipping = False

    def define(name: str, value: Union[int, str], loc: Loc) -> None:
        old = known.get(name)
        if old is not None and old != value:
            raise GenError(loc, f"{name} redefined as {value!r} (was {old!r})")
        if old is None:
            known[name] = value
            out.append(Const(name, value, loc))

    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.kind == "pp":
            words = _pp_words(tok)
            directive = words[0] if words else ""
            if directive in ("if", "ifdef", "ifndef"):
                sentinel = directive == "ifdef" and len(words) > 1 and words[1] == "VIR_ENUM_SENTINELS"
                stack.append(sentinel)
                opened.append(tok.loc)
            elif directive == "endif":
                if not stack:
                    raise GenError(tok.loc, "#endif without #if")
                stack.pop()
                opened.pop()
            elif directive == "define" and not any(stack) and len(words) > 1:
                _define(tok, words, known, define)
            skipping = any(stack)
            i += 1
            continue
        if skipping or tok.kind != "ident" or tok.text != "enum":
            i += 1
            continue
        i = _enum(toks, i + 1, known, define, stack)
    if stack:
        raise GenError(opened[-1], "unterminated #if block")
    return out


def _define(tok: Token, words: list[str], known: dict[str, Union[int, str]], define) -> None:  # type: ignore[no-untyped-def]
    # "# define NAME(args) ..." is function-like: NAME is directly followed by "(".
    body = tok.text.lstrip()[1:].strip()[len("define"):].lstrip()
    name_end = 0
    while name_end < len(body) and (body[name_end].isalnum() or body[name_end] == "_"):
        name_end += 1
    name = body[:name_end]
    if not name.startswith(_PREFIXES) or body[name_end:name_end + 1] == "(":
        return
    rest = body[name_end:]
    vtoks = [t for t in tokenize(rest, tok.loc.file, percent_lines=False) if t.kind != "comment"]
    vtoks = [Token(t.kind, t.text, Loc(tok.loc.file, tok.loc.line, tok.loc.col)) for t in vtoks]
    if not vtoks:
        return
    if len(vtoks) == 1 and vtoks[0].kind == "string":
        define(name, ast.literal_eval(vtoks[0].text), tok.loc)
        return
    try:
        value = evaluate(vtoks, known)
    except GenError:
        # Not a constant expression (attributes, casts, ...): not a constant.
        return
    define(name, value, tok.loc)


def _enum(toks: list[Token], i: int, known: dict[str, Union[int, str]], define, stack: list[bool]) -> int:  # type: ignore[no-untyped-def]
    # optional tag name
    if i < len(toks) and toks[i].kind == "ident":
        i += 1
    if i >= len(toks) or toks[i].text != "{":
        return i  # "enum foo x;" usage, not a definition
    i += 1
    next_value = 0
    local_stack = 0
    while i < len(toks):
        tok = toks[i]
        if tok.kind == "comment":
            i += 1
            continue
        if tok.kind == "pp":
            words = _pp_words(tok)
            directive = words[0] if words else ""
            if directive in ("if", "ifdef", "ifndef"):
                stack.append(directive == "ifdef" and len(words) > 1 and words[1] == "VIR_ENUM_SENTINELS")
                local_stack += 1
            elif directive == "endif":
                stack.pop()
                local_stack -= 1
            i += 1
            continue
        if tok.text == "}":
            return i + 1
        if tok.kind != "ident":
            raise GenError(tok.loc, f"expected an enumerator name, found {tok.text!r}")
        name = tok.text
        i += 1
        value = next_value
        explicit = i < len(toks) and toks[i].text == "="
        if explicit:
            j = i + 1
            depth = 0
            while j < len(toks):
                t = toks[j]
                if t.kind in ("comment", "pp"):
                    break
                if t.text == "(":
                    depth += 1
                elif t.text == ")":
                    depth -= 1
                elif depth == 0 and t.text in (",", "}"):
                    break
                j += 1
            expr = [t for t in toks[i + 1:j] if t.kind != "comment"]
            value = evaluate(expr, known)
            i = j
        # libvirt-python (via apibuild) keeps a sentinel only when it is
        # an explicit alias, e.g. VIR_DOMAIN_MEMORY_STAT_LAST = ..._NR.
        if not any(stack) or explicit:
            define(name, value, tok.loc)
        else:
            known.setdefault(name, value)
        next_value = value + 1
        while i < len(toks) and toks[i].kind == "comment":
            i += 1
        if i < len(toks) and toks[i].text == ",":
            i += 1
    raise GenError(toks[-1].loc, "unterminated enum")
