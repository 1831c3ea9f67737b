"""Write Python modules from the parsed specs.

Contract: pure functions from the model to source text; nothing here touches
the file system.  The output is deterministic (same input, same bytes), so a
test can regenerate and compare.

For each program the emitter writes

* ``<module>.py``: constants, enum classes, one ``__slots__`` class per struct
  and union (the XDR text in its docstring), a specialised decoder
  ``_d_<type>(b, o, n) -> (value, o)`` and encoder ``_e_<type>(v, w)`` per
  named type, a :class:`~pyvirtrpc._xdr.Codec` per type (``CODECS``) and,
  for programs, the procedure table (``PROCEDURES``);
* ``<module>_schema.py``: the type table (``TYPES``, ``ENUMS``) that the
  schema interpreter, the hypothesis strategies and the fuzzers read.

The decoders are the fast path (see docs/codec.md for the measurements
behind each choice):

* consecutive fixed-size fields are read with one precompiled
  ``struct.unpack_from`` (a following length word included), bound once at
  module level (``_U_<fmt>``);
* instances are made with ``object.__new__`` and their ``__slots__`` filled
  directly (no Python ``__init__`` call per value);
* small nested structs, and small unions whose arms are scalars, strings
  or small structs, are decoded inline, also inside arrays (array
  elements do not count towards ``INLINE_DEPTH``);
* loops over arrays of composite elements bind the globals they use to
  locals first;
* a ``<max>`` of at least ``BIG`` is only compared when more than ``BIG``
  bytes were left at the start of the function (otherwise ``e <= n``
  implies it);
* only the checks that bound memory and keep the value exact are made
  inline (``<max>``, length against remaining bytes, zero padding,
  optional flags, bool and char ranges).  Anything else that is wrong
  surfaces as ``struct.error`` or ``Bad`` and is explained by the
  interpreter.
"""

from __future__ import annotations

import keyword
import re
from typing import Callable, Union

from .model import (
    PRIMS,
    Array,
    Chars,
    Const,
    Definition,
    Enum,
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
from .resolve import PRIM_SIZE, Universe

#: Nested structs with at most this many leaf fields are decoded inline.
INLINE_LEAVES = 8
#: ... and at most this deep.
INLINE_DEPTH = 4
#: Unions with at most this many arms (each simple) are decoded inline.
INLINE_ARMS = 12
#: Length checks against a ``<max>`` of at least this (libvirt's
#: REMOTE_STRING_MAX) are skipped when the whole input left is smaller.
BIG = 4194304

_RANGES = {
    "char": (-128, 255),  # signed on x86, unsigned on ARM
    "uchar": (0, 255),
    "short": (-32768, 65535),
    "ushort": (0, 65535),
}
# Primitive kinds whose arrays need no per-element check.
_PLAIN = {"int", "uint", "hyper", "uhyper", "float", "double"}


def pyname(name: str) -> str:
    """A field name usable as a Python attribute (``from`` becomes ``from_``)."""
    return name + "_" if keyword.iskeyword(name) else name


def _fmt_ident(fmt: str) -> str:
    return fmt.lstrip(">")


class Emitter:
    def __init__(self, universe: Universe, module: str) -> None:
        self.u = universe
        self.module = module
        self.structs: dict[str, str] = {}  # format -> name of Struct object
        self.bound: dict[str, str] = {}  # name of a bound pack/unpack_from -> its expression
        self.foreign: set[str] = set()  # names imported from other modules

    # ------------------------------------------------------------ helpers
    def unpacker(self, fmt: str) -> str:
        """The module-level bound ``unpack_from`` of a precompiled ``Struct`` (one lookup less per call)."""
        name = "_U_" + _fmt_ident(fmt)
        self.structs[fmt] = "_S_" + _fmt_ident(fmt)
        self.bound[name] = self.structs[fmt] + ".unpack_from"
        return name

    def packer(self, fmt: str) -> str:
        name = "_P_" + _fmt_ident(fmt)
        self.structs[fmt] = "_S_" + _fmt_ident(fmt)
        self.bound[name] = self.structs[fmt] + ".pack"
        return name

    def use(self, name: str) -> str:
        """Reference a definition (class, codec or enum table) by name, importing it if foreign."""
        base = name
        for prefix in ("_d_", "_e_", "_EM_"):
            if name.startswith(prefix):
                base = name[len(prefix):]
        if self.u.module_of.get(base, self.module) != self.module:
            self.foreign.add(name)
        return name

    def is_proc_enum(self, d: Definition) -> bool:
        return isinstance(d, Enum) and d.name.endswith("_procedure")

    def leaves(self, t: Union[Type, Definition], depth: int = 0) -> int:
        u = self.u.underlying(t) if isinstance(t, Ref) else t
        if isinstance(u, Typedef):
            u = self.u.underlying(u.type)
        if isinstance(u, Struct):
            if depth > INLINE_DEPTH:
                return 10**6
            return sum(self.leaves(f.type, depth + 1) for f in u.fields)
        return 1

    def inline_struct(self, s: Struct, depth: int) -> bool:
        return depth < INLINE_DEPTH and self.leaves(s) <= INLINE_LEAVES

    def inline_union(self, d: Union_, depth: int) -> bool:
        """Small unions whose arms are scalars, strings or small structs are decoded inline."""
        if depth >= INLINE_DEPTH or len(d.arms) > INLINE_ARMS:
            return False
        arms = list(d.arms) + ([d.default] if d.default else [])
        return all(a.field is None or self.simple(a.field.type, depth + 1) for a in arms)

    def simple(self, t: Union[Type, Definition], depth: int) -> bool:
        u = self.u.underlying(t) if isinstance(t, Ref) else t
        if isinstance(u, Optional_):
            return self.simple(u.elem, depth)
        if isinstance(u, Struct):
            return self.inline_struct(u, depth)
        return isinstance(u, (Prim, Enum, String, Opaque, Chars))

    def enum_expr(self, d: Enum, raw: str) -> str:
        """The member for the wire value ``raw``; values we do not know become open pseudo-members."""
        table = self.use("_EM_" + d.name)
        return f"{table}[{raw}] if {raw} in {table} else {self.use(d.name)}({raw})"

    # ------------------------------------------------------ python types
    def pytype(self, t: Union[Type, Definition]) -> str:
        if isinstance(t, Prim):
            if t.kind in ("float", "double"):
                return "float"
            if t.kind == "bool":
                return "bool"
            return "int"
        if isinstance(t, Ref):
            d = self.u.defs[t.name]
            if isinstance(d, Typedef):
                return self.pytype(d.type)
            if isinstance(d, Enum):
                return "int" if self.is_proc_enum(d) else self.use(d.name)
            return self.use(d.name)
        if isinstance(t, String):
            return "str"
        if isinstance(t, (Opaque, Chars)):
            return "bytes"
        if isinstance(t, Array):
            return f"list[{self.pytype(t.elem)}]"
        if isinstance(t, Optional_):
            return f"Optional[{self.pytype(t.elem)}]"
        if isinstance(t, Typedef):
            return self.pytype(t.type)
        raise TypeError(t)

    # ---------------------------------------------------------- schema
    def schema(self, t: Type) -> str:
        if isinstance(t, Prim):
            return f"({t.kind!r},)"
        if isinstance(t, Ref):
            return f"('ref', {t.name!r})"
        if isinstance(t, String):
            return f"('string', {t.max!r})"
        if isinstance(t, Opaque):
            return f"('opaque', {t.size!r})" if t.fixed else f"('vopaque', {t.size!r})"
        if isinstance(t, Chars):
            return f"('chars', {t.size!r})" if t.fixed else f"('vchars', {t.size!r})"
        if isinstance(t, Array):
            kind = "array" if t.fixed else "varray"
            return f"({kind!r}, {self.schema(t.elem)}, {t.size!r})"
        if isinstance(t, Optional_):
            return f"('optional', {self.schema(t.elem)})"
        raise TypeError(t)

    def schema_def(self, d: Definition) -> str:
        if isinstance(d, Struct):
            fields = ", ".join(f"({pyname(f.name)!r}, {self.schema(f.type)})" for f in d.fields)
            return f"('struct', ({fields},))"
        if isinstance(d, Union_):
            disc = f"({pyname(d.discriminant.name)!r}, {self.schema(d.discriminant.type)})"
            arms = []
            for arm in d.arms:
                if arm.field is None:
                    arms.append(f"({arm.values!r}, None, None)")
                else:
                    arms.append(f"({arm.values!r}, {pyname(arm.field.name)!r}, {self.schema(arm.field.type)})")
            if d.default is None:
                default = "None"
            elif d.default.field is None:
                default = "(None, None)"
            else:
                default = f"({pyname(d.default.field.name)!r}, {self.schema(d.default.field.type)})"
            return f"('union', {disc}, ({', '.join(arms)},), {default})"
        if isinstance(d, Enum):
            return f"('enum', {d.name!r})"
        if isinstance(d, Typedef):
            return f"('typedef', {self.schema(d.type)})"
        raise TypeError(d)


# ====================================================================
# decoders
# ====================================================================


class _Fn:
    """Builds one function body, batching fixed-size reads or writes."""

    def __init__(self, em: Emitter, indent: int = 1) -> None:
        self.em = em
        self.lines: list[str] = []
        self.ind = indent
        self.counter = 0
        self.pending: list[tuple[str, str, int]] = []
        self.post: list[str] = []

    def tmp(self, base: str) -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.ind + line)


_GLOBAL_REF = re.compile(r"\b(_new\((\w+)\)|(?:_U_\w+|_new|_ZPAD)\b)")


class DecFn(_Fn):
    uses_big = False
    loops = 0

    def localize(self, head: int) -> None:
        """Bind the module globals that the loop starting at ``self.lines[head]`` uses to locals.

        A local is cheaper than a global lookup on every element of a
        large array; the bindings cost a few lines once per array.
        """
        names: dict[str, str] = {}

        def local(m: "re.Match[str]") -> str:
            if m.group(2):
                names["_new"] = "L_new"
                names[m.group(2)] = "L_" + m.group(2)
                return f"L_new(L_{m.group(2)})"
            names[m.group(1)] = "L" + m.group(1) if m.group(1).startswith("_") else "L_" + m.group(1)
            return names[m.group(1)]

        body = [_GLOBAL_REF.sub(local, line) for line in self.lines[head + 1:]]
        if not names:
            return
        indent = self.lines[head][: len(self.lines[head]) - len(self.lines[head].lstrip())]
        binds = [f"{indent}{loc} = {glob}" for glob, loc in sorted(names.items())]
        self.lines[head + 1:] = body
        self.lines[head:head] = binds


    def prologue(self) -> list[str]:
        """The function's lines, with the ``big`` flag computed first when a check uses it."""
        if self.uses_big:
            return [f"    big = n - o > {BIG}"] + self.lines
        return self.lines

    def flush(self) -> None:
        if self.pending:
            fmt = ">" + "".join(p[0] for p in self.pending)
            names = [p[1] for p in self.pending]
            size = sum(p[2] for p in self.pending)
            u = self.em.unpacker(fmt)
            self.emit(f"{', '.join(names)}, = {u}(b, o)" if len(names) == 1 else f"{', '.join(names)} = {u}(b, o)")
            self.emit(f"o += {size}")
            self.pending = []
        for line in self.post:
            self.emit(line)
        self.post = []

    def block_begin(self, header: str) -> None:
        self.flush()
        self.emit(header)
        self.ind += 1

    def block_end(self) -> None:
        self.flush()
        self.ind -= 1

    def target(self, var: str) -> str:
        """A plain local name for ``var`` (a new one when ``var`` is an attribute)."""
        return var if var.isidentifier() else self.tmp("x")

    def prefix(self) -> str:
        """Queue the 4-byte length/flag word of a variable-size value and read it."""
        ln = self.tmp("n")
        self.pending.append(("I", ln, 4))
        self.flush()
        return ln

    def dec(self, t: Union[Type, Definition], var: str, depth: int = 0) -> None:
        em = self.em
        u = em.u
        if isinstance(t, Ref):
            d = u.defs[t.name]
            if isinstance(d, Typedef):
                self.dec(d.type, var, depth)
                return
            t = d
        if isinstance(t, Prim):
            fmt = PRIMS[t.kind]
            size = PRIM_SIZE.get(t.kind, 4)
            if t.kind == "bool":
                raw = self.tmp("r")
                self.pending.append((fmt, raw, size))
                self.post.append(f"if {raw} > 1: raise _Bad")
                self.post.append(f"{var} = {raw} == 1")
            elif t.kind in _RANGES:
                lo, hi = _RANGES[t.kind]
                self.pending.append((fmt, var, size))
                self.post.append(f"if not {lo} <= {var} <= {hi}: raise _Bad")
            else:
                self.pending.append((fmt, var, size))
        elif isinstance(t, Enum):
            if em.is_proc_enum(t):
                self.pending.append(("i", var, 4))
            else:
                raw = self.tmp("r")
                self.pending.append(("i", raw, 4))
                self.post.append(f"{var} = {em.enum_expr(t, raw)}")
        elif isinstance(t, Opaque) and t.fixed:
            size = t.size or 0
            if size % 4 == 0:
                self.pending.append((f"{size}s", var, size))
            else:
                self.flush()
                e = self.tmp("e")
                pad = -size & 3
                self.emit(f"{e} = o + {size}")
                self.emit(f"if {e} + {pad} > n or b[{e}:{e} + {pad}] != _ZPAD[{pad}]: raise _Bad")
                self.emit(f"{var} = b[o:{e}]")
                self.emit(f"o = {e} + {pad}")
        elif isinstance(t, Chars) and t.fixed:
            self.flush()
            self.emit(f"{var} = _dec_chars({em.unpacker(f'>{t.size}i')}(b, o))")
            self.emit(f"o += {4 * (t.size or 0)}")
        elif isinstance(t, (String, Opaque)):
            ln = self.prefix()
            e = self.tmp("e")
            mx = t.max if isinstance(t, String) else t.size
            self.emit(f"{e} = o + {ln}")
            if mx is None:
                cond = f"{e} > n"
            elif mx >= BIG:
                # When fewer than BIG bytes were left at the start of the
                # function, ``e <= n`` already implies ``ln <= mx``.
                self.uses_big = True
                cond = f"{e} > n or big and {ln} > {mx}"
            else:
                cond = f"{e} > n or {ln} > {mx}"
            self.emit(f"if {cond}: raise _Bad")
            if isinstance(t, String):
                self.emit(f"{var} = b[o:{e}].decode()")
            else:
                self.emit(f"{var} = b[o:{e}]")
            # Most lengths in libvirt traffic are unaligned names; the branch
            # keeps the aligned case to one test.
            self.emit(f"if {ln} & 3:")
            self.emit(f"    o = {e} + 4 - ({ln} & 3)")
            self.emit(f"    if b[{e}:o] != _ZPAD[o - {e}]: raise _Bad")
            self.emit("else:")
            self.emit(f"    o = {e}")
        elif isinstance(t, Chars):
            ln = self.prefix()
            cond = f"{ln} * 4 > n - o" if t.size is None else f"{ln} > {t.size} or {ln} * 4 > n - o"
            self.emit(f"if {cond}: raise _Bad")
            self.emit(f"{var} = _dec_chars(_unpack_from('>%di' % {ln}, b, o))")
            self.emit(f"o += 4 * {ln}")
        elif isinstance(t, Array):
            elem = u.underlying(t.elem)
            esize = max(u.min_size(t.elem), 1)  # never 0: a count cannot outrun the input
            if t.fixed:
                count = str(t.size)
                self.flush()
                self.emit(f"if {t.size} * {esize} > n - o: raise _Bad")
            else:
                count = self.prefix()
                cond = f"{count} * {esize} > n - o"
                if t.size is not None:
                    cond = f"{count} > {t.size} or " + cond
                self.emit(f"if {cond}: raise _Bad")
            if isinstance(elem, Prim) and elem.kind in _PLAIN:
                fmt = PRIMS[elem.kind]
                self.emit(f"{var} = list(_unpack_from('>%d{fmt}' % {count}, b, o))")
                self.emit(f"o += {esize} * {count}")
            else:
                item = self.tmp("it")
                lst = self.target(var)
                self.emit(f"{lst}: list[Any] = []")
                if lst != var:
                    self.emit(f"{var} = {lst}")
                self.block_begin(f"for _ in range({count}):")
                head = len(self.lines) - 1
                self.loops += 1
                self.dec(t.elem, item, depth)
                self.flush()
                self.emit(f"{lst}.append({item})")
                self.block_end()
                self.loops -= 1
                if not self.loops:
                    self.localize(head)
        elif isinstance(t, Optional_):
            flag = self.prefix()
            self.emit(f"if {flag} == 0:")
            self.emit(f"    {var} = None")
            self.block_begin(f"elif {flag} == 1:")
            self.dec(t.elem, var, depth)
            self.block_end()
            self.emit("else:")
            self.emit("    raise _Bad")
        elif isinstance(t, Struct):
            cls = em.use(t.name)
            if em.inline_struct(t, depth):
                # Build the instance first and decode straight into its
                # slots: cheaper than calling the class's Python __init__.
                x = self.target(var)
                self.emit(f"{x} = _new({cls})")
                if x != var:
                    self.emit(f"{var} = {x}")
                for f in t.fields:
                    self.dec(f.type, f"{x}.{pyname(f.name)}", depth + 1)
            else:
                self.flush()
                self.emit(f"{var}, o = {em.use('_d_' + t.name)}(b, o, n)")
        elif isinstance(t, Union_):
            if em.inline_union(t, depth):
                self.flush()
                x = self.target(var)
                _union_body(self, t, x, depth)
                if x != var:
                    self.emit(f"{var} = {x}")
            else:
                self.flush()
                self.emit(f"{var}, o = {em.use('_d_' + t.name)}(b, o, n)")
        else:
            raise TypeError(t)


class EncFn(_Fn):
    def flush(self) -> None:
        if self.pending:
            fmt = ">" + "".join(p[0] for p in self.pending)
            exprs = [p[1] for p in self.pending]
            self.emit(f"w += {self.em.packer(fmt)}({', '.join(exprs)})")
            self.pending = []

    def block_begin(self, header: str) -> None:
        self.flush()
        self.emit(header)
        self.ind += 1

    def block_end(self) -> None:
        self.flush()
        self.ind -= 1

    def bind(self, expr: str) -> str:
        if expr.isidentifier():
            return expr
        v = self.tmp("x")
        self.emit(f"{v} = {expr}")
        return v

    def enc(self, t: Union[Type, Definition], expr: str, depth: int = 0) -> None:
        em = self.em
        u = em.u
        if isinstance(t, Ref):
            d = u.defs[t.name]
            if isinstance(d, Typedef):
                self.enc(d.type, expr, depth)
                return
            t = d
        if isinstance(t, Prim):
            fmt = PRIMS[t.kind]
            if t.kind == "bool":
                x = self.bind(expr)
                self.emit(f"if {x} not in (0, 1): raise _Bad")
                self.pending.append((fmt, x, 4))
            elif t.kind in _RANGES:
                lo, hi = _RANGES[t.kind]
                x = self.bind(expr)
                self.emit(f"if not {lo} <= {x} <= {hi}: raise _Bad")
                self.pending.append((fmt, x, 4))
            else:
                self.pending.append((fmt, expr, 4))
        elif isinstance(t, Enum):
            self.pending.append(("i", expr, 4))
        elif isinstance(t, Opaque) and t.fixed:
            x = self.bind(expr)
            size = t.size or 0
            self.emit(f"if len({x}) != {size}: raise _Bad")
            if size % 4 == 0:
                self.pending.append((f"{size}s", x, size))
            else:
                self.flush()
                self.emit(f"w += {x}")
                self.emit(f"w += _ZPAD[{-size & 3}]")
        elif isinstance(t, Chars) and t.fixed:
            x = self.bind(expr)
            self.emit(f"if len({x}) != {t.size}: raise _Bad")
            self.flush()
            self.emit(f"w += _enc_chars({x})")
        elif isinstance(t, (String, Opaque, Chars)):
            x = self.tmp("s")
            if isinstance(t, String):
                self.emit(f"{x} = {expr}.encode('utf-8', 'surrogateescape')")
                mx = t.max
            else:
                self.emit(f"{x} = {expr}")
                mx = t.size
            ln = self.tmp("n")
            self.emit(f"{ln} = len({x})")
            if mx is not None:
                self.emit(f"if {ln} > {mx}: raise _Bad")
            self.pending.append(("I", ln, 4))
            self.flush()
            if isinstance(t, Chars):
                self.emit(f"w += _enc_chars({x})")
            else:
                # bytearray += str raises TypeError: no silent coercion of str to bytes
                self.emit(f"w += {x}")
                self.emit(f"if {ln} & 3: w += _ZPAD[-{ln} & 3]")
        elif isinstance(t, Array):
            x = self.bind(expr)
            elem = u.underlying(t.elem)
            if t.fixed:
                self.emit(f"if len({x}) != {t.size}: raise _Bad")
            else:
                ln = self.tmp("n")
                self.emit(f"{ln} = len({x})")
                if t.size is not None:
                    self.emit(f"if {ln} > {t.size}: raise _Bad")
                self.pending.append(("I", ln, 4))
            self.flush()
            if isinstance(elem, Prim) and elem.kind in _PLAIN:
                fmt = PRIMS[elem.kind]
                self.emit(f"w += _pack('>%d{fmt}' % len({x}), *{x})")
            else:
                item = self.tmp("it")
                self.block_begin(f"for {item} in {x}:")
                self.enc(t.elem, item, depth + 1)
                self.block_end()
        elif isinstance(t, Optional_):
            x = self.bind(expr)
            self.flush()
            self.emit(f"if {x} is None:")
            self.emit("    w += _FLAG0")
            self.block_begin("else:")
            self.emit("w += _FLAG1")
            self.enc(t.elem, x, depth + 1)
            self.block_end()
        elif isinstance(t, Struct):
            if em.inline_struct(t, depth):
                x = self.bind(expr)
                for f in t.fields:
                    self.enc(f.type, f"{x}.{pyname(f.name)}", depth + 1)
            else:
                self.flush()
                self.emit(f"{em.use('_e_' + t.name)}({expr}, w)")
        elif isinstance(t, Union_):
            self.flush()
            self.emit(f"{em.use('_e_' + t.name)}({expr}, w)")
        else:
            raise TypeError(t)


# ====================================================================
# modules
# ====================================================================


def _docstring(text: str, indent: str) -> str:
    body = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = ["XDR definition::", ""] + ["    " + line if line.strip() else "" for line in body.splitlines()]
    out = f'{indent}"""' + lines[0] + "\n"
    for line in lines[1:]:
        out += (indent + line if line else "") + "\n"
    return out + f'{indent}"""\n'


#: A program file with more named types than this is split into shards
#: (see :func:`partition`) so that importing it stays cheap.
SHARD_THRESHOLD = 100
#: Procedures per shard: shard ``<module>_pNN`` holds the types used only by
#: procedures ``NN*PROCS_PER_SHARD .. (NN+1)*PROCS_PER_SHARD-1``.
PROCS_PER_SHARD = 32


def proc_types(u: Universe, spec: Spec, prefix: str) -> dict[int, list[str]]:
    """Procedure number -> the names of its args/ret/msg types."""
    penum = next(d for d in spec.types if isinstance(d, Enum) and d.name.endswith("_procedure"))
    proc_prefix = prefix.upper() + "_PROC_"
    out = {}
    for m in penum.members:
        base = prefix + "_" + m.name[len(proc_prefix):].lower()
        out[m.value] = [f"{base}_{s}" for s in ("args", "ret", "msg") if f"{base}_{s}" in u.defs]
    return out


def partition(u: Universe, spec: Spec, module: str, prefix: str, hot: frozenset[str] = frozenset()) -> dict[str, str]:
    """Assign each named type of ``spec`` to ``module`` or to one of its shards.

    A type goes to shard ``<module>_pNN`` when every procedure that reaches
    it lies in that shard's number range; everything else (types shared
    between shards, enums, and types no procedure reaches, with all they
    reference) stays in the core module, which therefore never imports a
    shard.  The types of the procedures named in ``hot`` (names without the
    ``<PREFIX>_PROC_`` prefix) stay in the core too.
    """
    names = [d.name for d in spec.types]
    if len(names) <= SHARD_THRESHOLD:
        return {n: module for n in names}
    reach: dict[str, set[int]] = {n: set() for n in names}

    def closure(name: str, acc: set[str]) -> None:
        if name in acc or u.module_of.get(name) != module:
            return
        acc.add(name)
        d = u.defs[name]
        for t in u._types_in(d):
            for r in _refs_of(t):
                closure(r, acc)

    for number, tnames in proc_types(u, spec, prefix).items():
        acc: set[str] = set()
        for t in tnames:
            closure(t, acc)
        for n in acc:
            reach[n].add(number // PROCS_PER_SHARD)
    core: set[str] = set()
    for n in names:
        if len(reach[n]) != 1 or isinstance(u.defs[n], Enum):
            closure(n, core)
    for pname in sorted(hot):
        for suffix in ("args", "ret", "msg"):
            tname = f"{prefix}_{pname.lower()}_{suffix}"
            if tname in u.defs:
                closure(tname, core)
    out = {}
    for n in names:
        if n in core:
            out[n] = module
        else:
            (shard,) = reach[n]
            out[n] = f"{module}_p{shard:02d}"
    return out


def _refs_of(t: Type) -> list[str]:
    if isinstance(t, Ref):
        return [t.name]
    if isinstance(t, (Array, Optional_)):
        return _refs_of(t.elem)
    return []


def _classes_and_codecs(em: Emitter, defs: list[Definition], out: "Callable[[str], None]", body: list[str]) -> None:
    for d in defs:
        if isinstance(d, Struct):
            names = [pyname(f.name) for f in d.fields]
            out("")
            out(f"class {d.name}(_XdrStruct):")
            out(_docstring(d.source, "    ").rstrip("\n"))
            out("")
            out(f"    __slots__ = ({', '.join(repr(n) for n in names)}{',' if len(names) == 1 else ''})")
            out("    _fields = __slots__")
            for f, n in zip(d.fields, names):
                out(f"    {n}: {em.pytype(f.type)}")
            params = ", ".join(f"{n}: {em.pytype(f.type)}" for f, n in zip(d.fields, names))
            out("")
            out(f"    def __init__(self, {params}) -> None:")
            for n in names:
                out(f"        self.{n} = {n}")
            out("")
        elif isinstance(d, Union_):
            disc = pyname(d.discriminant.name)
            all_arms = list(d.arms) + ([d.default] if d.default else [])
            arm_types = sorted({em.pytype(a.field.type) for a in all_arms if a.field})
            vtype = "Union[" + ", ".join(arm_types + ["None"]) + "]" if arm_types else "None"
            arms = {}
            for a in d.arms:
                for v in a.values:
                    arms[v] = pyname(a.field.name) if a.field else None
            out("")
            out(f"class {d.name}(_XdrUnion):")
            out(_docstring(d.source, "    ").rstrip("\n"))
            out("")
            out(f"    __slots__ = ({disc!r}, 'value')")
            out(f"    _disc = {disc!r}")
            out(f"    _arms = {arms!r}")
            if d.default is not None:
                out("    _has_default = True")
                out(f"    _default = {pyname(d.default.field.name) if d.default.field else None!r}")
            out(f"    {disc}: {em.pytype(d.discriminant.type)}")
            out(f"    value: {vtype}")
            out("")
            out(f"    def __init__(self, {disc}: {em.pytype(d.discriminant.type)}, value: {vtype} = None) -> None:")
            out(f"        self.{disc} = {disc}")
            out("        self.value = value")
            out("")
        elif isinstance(d, Typedef):
            out("if TYPE_CHECKING:")
            out(f"    {d.name} = {em.pytype(d.type)}  # typedef")

    out("")
    out("# ------------------------------------------------------------------- codecs")
    for d in defs:
        pt = "int" if em.is_proc_enum(d) else (em.pytype(d.type) if isinstance(d, Typedef) else d.name)
        fn = DecFn(em)
        if isinstance(d, Union_):
            _union_decoder(fn, d)
        elif isinstance(d, Struct):
            fn.emit(f"v = _new({d.name})")
            for f in d.fields:
                fn.dec(f.type, f"v.{pyname(f.name)}", 1)
            fn.flush()
            fn.emit("return v, o")
        else:
            fn.dec(d.type if isinstance(d, Typedef) else d, "v", 0)
            fn.flush()
            fn.emit("return v, o")
        out("")
        out(f"def _d_{d.name}(b: bytes, o: int, n: int) -> tuple[{pt}, int]:")
        body.extend(fn.prologue())
        fe = EncFn(em)
        if isinstance(d, Union_):
            _union_encoder(fe, d)
        elif isinstance(d, Struct):
            for f in d.fields:
                fe.enc(f.type, f"v.{pyname(f.name)}", 1)
            fe.flush()
        else:
            fe.enc(d.type if isinstance(d, Typedef) else d, "v", 0)
            fe.flush()
        if not fe.lines:
            fe.emit("pass")
        out("")
        out("")
        out(f"def _e_{d.name}(v: {pt}, w: bytearray) -> None:")
        body.extend(fe.lines)
        out("")
    out("")
    for d in defs:
        out(f"_c_{d.name} = _Codec({d.name!r}, _e_{d.name}, _d_{d.name})")


def _header(em: Emitter, rel_path: str, sha: str, doc: str, extra_imports: list[str]) -> list[str]:
    u = em.u
    head = [
        f"# Generated by tools/xdrgen from {rel_path} (sha256 {sha}).",
        "# Do not edit: run `python -m tools.xdrgen` to regenerate.",
        "# mypy: disable-error-code=no-any-return",
        f'"""{doc}',
        "",
        "Generated code: see tools/xdrgen/emit.py for the contract of these functions.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from struct import Struct as _Struct",
        "from struct import pack as _pack",
        "from struct import unpack_from as _unpack_from",
        "",
        "_new = object.__new__  # decoders fill __slots__ directly instead of calling __init__",
        "",
        "TYPE_CHECKING = False",
        "if TYPE_CHECKING:  # typing is not imported at run time: it costs milliseconds at start-up",
        "    from typing import Any, ClassVar, Optional, Union",
        "",
    ]
    for n, alias in (
        ("FLAG0", "_FLAG0"), ("FLAG1", "_FLAG1"), ("ZPAD", "_ZPAD"), ("Bad", "_Bad"), ("Codec", "_Codec"),
        ("OpenEnum", "_OpenEnum"), ("Procedure", "_Procedure"), ("XdrStruct", "_XdrStruct"),
        ("XdrUnion", "_XdrUnion"), ("dec_chars", "_dec_chars"), ("enc_chars", "_enc_chars"),
    ):
        head.append(f"from .._xdr import {n} as {alias}")
    by_module: dict[str, list[str]] = {}
    for name in sorted(em.foreign):
        base = name
        for pfx in ("_d_", "_e_", "_EM_"):
            if base.startswith(pfx):
                base = base[len(pfx):]
        by_module.setdefault(u.module_of[base], []).append(name)
    for mod in sorted(by_module):
        for name in by_module[mod]:
            head.append(f"from .{mod} import {name}")
    head += extra_imports
    head.append("")
    head.append("__all__: list[str] = []  # import names explicitly")
    head.append("")
    for fmt in sorted(em.structs):
        head.append(f"{em.structs[fmt]} = _Struct({fmt!r})")
    for name in sorted(em.bound):
        head.append(f"{name} = {em.bound[name]}")
    head.append("")
    return head


def _tidy(text: str) -> str:
    while "\n\n\n\n" in text:
        text = text.replace("\n\n\n\n", "\n\n\n")
    return text


def emit_program(
    universe: Universe,
    module: str,
    spec: Spec,
    rel_path: str,
    program: tuple[str, str, str] | None,
    hot: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Return {module name: source} for one ``.x`` file (core, shards, schema).

    ``program`` is (program-constant, version-constant, prefix) when the file
    defines a program with procedures, e.g. ("REMOTE_PROGRAM",
    "REMOTE_PROTOCOL_VERSION", "remote").
    """
    u = universe
    fname = rel_path.rsplit("/", 1)[-1]
    where = partition(u, spec, module, program[2], hot) if program else {d.name: module for d in spec.types}
    for name, mod in where.items():
        u.module_of[name] = mod
    shards = sorted({m for m in where.values() if m != module})
    files: dict[str, str] = {}

    # ------------------------------------------------------------ shards
    for shard in shards:
        em = Emitter(u, shard)
        body: list[str] = []
        defs = [d for d in spec.types if where[d.name] == shard]
        _classes_and_codecs(em, defs, body.append, body)
        first = int(shard.rsplit("_p", 1)[1]) * PROCS_PER_SHARD
        doc = (f"Types of ``{fname}`` used only by procedures {first}..{first + PROCS_PER_SHARD - 1}"
               f" (a lazily imported shard of :mod:`pyvirtrpc._gen.{module}`).")
        head = _header(em, rel_path, spec.sha256, doc, [])
        files[shard] = _tidy("\n".join(head + body) + "\n")

    # -------------------------------------------------------------- core
    em = Emitter(u, module)
    body = []
    out = body.append
    if spec.consts:
        out("# ---------------------------------------------------------------- constants")
        for c in spec.consts:
            out(f"{c.name} = {c.value!r}")
        out("")
    for d in spec.types:
        if isinstance(d, Enum):
            if em.is_proc_enum(d):
                out(f"# {d.name}: procedure numbers (see PROCEDURES)")
                for m in d.members:
                    out(f"{m.name} = {m.value}")
                out("")
                continue
            out("")
            members = ", ".join(f"{m.name!r}: {m.value}" for m in d.members)
            out(f"class {d.name}(_OpenEnum, members={{{members}}}):")
            out(_docstring(d.source, "    ").rstrip("\n"))
            out("")
            for m in d.members:
                out(f"    {m.name}: ClassVar[{d.name}]")
            out("")
            out("")
            out(f"_EM_{d.name}: dict[int, {d.name}] = dict({d.name}._value2member_map_)")
            for m in d.members:
                out(f"{m.name}: {d.name} = {d.name}.{m.name}")
            out("")
    core_defs = [d for d in spec.types if where[d.name] == module]
    _classes_and_codecs(em, core_defs, out, body)

    lazy = {d.name: where[d.name] for d in spec.types if where[d.name] != module}
    out("")
    out("# ------------------------------------------------------------------- tables")
    if lazy:
        out("#: names defined in lazily imported shards: type name -> shard module")
        out("_LAZY: dict[str, str] = {")
        for name, shard in lazy.items():
            out(f"    {name!r}: {shard!r},")
        out("}")
        out("")
        out("")
        out("def __getattr__(name: str) -> Any:")
        out('    """Import the shard that defines ``name`` (a type, or its _c_/_d_/_e_ codec)."""')
        out("    base = name[3:] if name[:3] in ('_c_', '_d_', '_e_') else name")
        out("    shard = _LAZY.get(base)")
        out("    if shard is None:")
        out("        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')")
        out("    from importlib import import_module")
        out("")
        out("    value = getattr(import_module(f'{__package__}.{shard}'), name)")
        out("    globals()[name] = value")
        out("    return value")
        out("")
    else:
        out("_LAZY: dict[str, str] = {}")
    out("")
    out("")
    out("def codecs() -> dict[str, _Codec]:")
    out('    """Every named type of this file, by name (imports every shard)."""')
    if lazy:
        out("    return {")
        out("        name: globals()[f'_c_{name}'] if name not in _LAZY else __getattr__(f'_c_{name}')")
        out("        for name in _NAMES")
        out("    }")
    else:
        out("    return {name: globals()[f'_c_{name}'] for name in _NAMES}")
    out("")
    out("")
    out("_NAMES: tuple[str, ...] = (")
    for d in spec.types:
        out(f"    {d.name!r},")
    out(")")

    if program is not None:
        prog_const, vers_const, prefix = program
        out("")
        out(f"PROGRAM: int = {prog_const}")
        out(f"VERSION: int = {vers_const}")
        out(f"NAME: str = {prefix.upper()!r}")
        out("")
        out("#: procedure number -> Procedure (codecs resolved on first use, annotations)")
        out("PROCEDURES: dict[int, _Procedure] = {")
        penum = next(d for d in spec.types if isinstance(d, Enum) and em.is_proc_enum(d))
        types_of = proc_types(u, spec, prefix)
        proc_prefix = prefix.upper() + "_PROC_"
        for m in penum.members:
            base = prefix + "_" + m.name[len(proc_prefix):].lower()
            refs = []
            for suffix in ("args", "ret", "msg"):
                tname = f"{base}_{suffix}"
                refs.append(repr(tname) if tname in types_of[m.value] else "None")
            out(f"    {m.value}: _Procedure({m.value}, {m.name!r}, __name__, {', '.join(refs)}, {m.annotations!r}),")
        out("}")
        out("PROC_BY_NAME: dict[str, _Procedure] = {p.name: p for p in PROCEDURES.values()}")

    extra: list[str] = []
    if lazy:
        extra.append("")
        extra.append("if TYPE_CHECKING:  # the shards' names for type checkers; at run time __getattr__ imports them")
        for shard in shards:
            for d in spec.types:
                if where[d.name] == shard:
                    extra.append(f"    from .{shard} import {d.name} as {d.name}")
    doc = f"Types, codecs{' and procedures' if program else ''} of libvirt's ``{fname}``."
    head = _header(em, rel_path, spec.sha256, doc, extra)
    files[module] = _tidy("\n".join(head + body) + "\n")
    files[module + "_schema"] = _emit_schema(em, spec, rel_path)
    return files


def _union_decoder(fn: DecFn, d: Union_) -> None:
    _union_body(fn, d, "u", 0)
    fn.flush()
    fn.emit("return u, o")


def _union_body(fn: DecFn, d: Union_, x: str, depth: int) -> None:
    """Decode union ``d`` into a new instance bound to the local name ``x``."""
    em = fn.em
    disc_t = em.u.underlying(d.discriminant.type)
    is_bool = isinstance(disc_t, Prim) and disc_t.kind == "bool"
    signed = not (isinstance(disc_t, Prim) and disc_t.kind in ("uint", "bool"))
    dv = fn.tmp("d")
    fn.emit(f"{x} = _new({em.use(d.name)})")
    fn.pending.append(("i" if signed else "I", dv, 4))
    fn.flush()
    if is_bool:
        fn.emit(f"if {dv} > 1: raise _Bad")
    first = True
    for arm in d.arms:
        cond = " or ".join(f"{dv} == {v}" for v in arm.values)
        fn.block_begin(("if " if first else "elif ") + cond + ":")
        first = False
        if arm.field is None:
            fn.emit(f"{x}.value = None")
        else:
            fn.dec(arm.field.type, f"{x}.value", depth + 1)
        fn.block_end()
    fn.block_begin("else:")
    if d.default is None:
        fn.emit("raise _Bad")
    elif d.default.field is None:
        fn.emit(f"{x}.value = None")
    else:
        fn.dec(d.default.field.type, f"{x}.value", depth + 1)
    fn.block_end()
    disc = f"{x}.{pyname(d.discriminant.name)}"
    if isinstance(disc_t, Enum) and not em.is_proc_enum(disc_t):
        fn.emit(f"{disc} = {em.enum_expr(disc_t, dv)}")
    elif is_bool:
        fn.emit(f"{disc} = {dv} == 1")
    else:
        fn.emit(f"{disc} = {dv}")


def _union_encoder(fe: EncFn, d: Union_) -> None:
    disc = pyname(d.discriminant.name)
    fe.emit(f"d = v.{disc}")
    fe.emit("x: Any = v.value")
    fe.enc(d.discriminant.type, "d", 1)
    fe.flush()
    first = True
    for arm in d.arms:
        cond = " or ".join(f"d == {val}" for val in arm.values)
        fe.block_begin(("if " if first else "elif ") + cond + ":")
        first = False
        if arm.field is None:
            fe.emit("if x is not None: raise _Bad")
        else:
            fe.enc(arm.field.type, "x", 1)
        fe.block_end()
    fe.block_begin("else:")
    if d.default is None:
        fe.emit("raise _Bad")
    elif d.default.field is None:
        fe.emit("if x is not None: raise _Bad")
    else:
        fe.enc(d.default.field.type, "x", 1)
    fe.block_end()


def _emit_schema(em: Emitter, spec: Spec, rel_path: str) -> str:
    lines = [
        f"# Generated by tools/xdrgen from {rel_path} (sha256 {spec.sha256}).",
        "# Do not edit: run `python -m tools.xdrgen` to regenerate.",
        f'"""The type table of ``{rel_path.rsplit("/", 1)[-1]}`` for the schema interpreter, tests and fuzzers.',
        "",
        "``TYPES[name]`` describes each named type as nested tuples: a primitive",
        "``(kind,)``; ``('ref', name)``; ``('string', max)``; ``('opaque', size)``;",
        "``('vopaque', max)``; ``('chars', size)``; ``('vchars', max)``;",
        "``('array', elem, size)``; ``('varray', elem, max)``; ``('optional', elem)``;",
        "``('struct', ((field, spec), ...))``; ``('union', (disc, spec),",
        "((values, arm, spec), ...), default)``; ``('enum', name)``;",
        "``('typedef', spec)``.  ``ENUMS[name]`` maps values to member names.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "MODULE = " + repr(em.module),
        "",
        "TYPES: dict[str, tuple[Any, ...]] = {",
    ]
    for d in spec.types:
        lines.append(f"    {d.name!r}: {em.schema_def(d)},")
    lines.append("}")
    lines.append("")
    lines.append("ENUMS: dict[str, dict[int, str]] = {")
    for d in spec.types:
        if isinstance(d, Enum):
            members = ", ".join(f"{m.value}: {m.name!r}" for m in d.members)
            lines.append(f"    {d.name!r}: {{{members}}},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def emit_constants(consts: list[Const], sources: list[tuple[str, str]], doc: str) -> str:
    lines = [
        "# Generated by tools/xdrgen from libvirt's public C headers:",
    ]
    for path, sha in sources:
        lines.append(f"#   {path} (sha256 {sha})")
    lines += [
        "# Do not edit: run `python -m tools.xdrgen` to regenerate.",
        f'"""{doc}"""',
        "",
        "from __future__ import annotations",
        "",
    ]
    for c in consts:
        # no annotations: the literal tells type checkers the type, and 1,200
        # annotated assignments cost start-up time (each fills __annotations__)
        lines.append(f"{c.name} = {c.value!r}")
    return "\n".join(lines) + "\n"
