"""Cross-file name resolution and static checks over parsed specs.

Contract: :class:`Universe` indexes every named type of every ``.x`` file,
resolves references (an unknown name is a :class:`GenError` at the
reference), rejects recursive types (libvirt has none, and forbidding them
bounds nesting depth statically; see ``MAX_DEPTH``), and answers questions
the emitter needs: the underlying shape of a typedef, minimum wire sizes,
and which module defines a name.
"""

from __future__ import annotations

from .model import (
    Array,
    Chars,
    Definition,
    Enum,
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

#: Deepest nesting of composite types allowed in a definition.  libvirt's
#: deepest is 4 (remote_connect_get_all_domain_stats_ret: record, typed
#: parameter, value union); 32 leaves room while keeping the generated
#: decoders' recursion shallow.
MAX_DEPTH = 32

PRIM_SIZE = {"hyper": 8, "uhyper": 8, "double": 8}


class Universe:
    def __init__(self, specs: list[tuple[str, Spec]]) -> None:
        self.defs: dict[str, Definition] = {}
        self.module_of: dict[str, str] = {}
        for module, spec in specs:
            for d in spec.types:
                if d.name in self.defs:
                    raise GenError(d.loc, f"type {d.name} already defined at {self.defs[d.name].loc}")
                self.defs[d.name] = d
                self.module_of[d.name] = module
        for _, spec in specs:
            for d in spec.types:
                self._check_refs(d)
        for _, spec in specs:
            for d in spec.types:
                self.depth(d.name, ())

    # ---------------------------------------------------------- checks
    def _types_in(self, d: Definition) -> list[Type]:
        if isinstance(d, Struct):
            return [f.type for f in d.fields]
        if isinstance(d, Union_):
            out = [d.discriminant.type]
            for arm in list(d.arms) + ([d.default] if d.default else []):
                if arm.field is not None:
                    out.append(arm.field.type)
            return out
        if isinstance(d, Typedef):
            return [d.type]
        return []

    def _check_refs(self, d: Definition) -> None:
        for t in self._types_in(d):
            for ref in _refs(t):
                if ref.name not in self.defs:
                    raise GenError(ref.loc, f"unknown type {ref.name!r}")
        if isinstance(d, Union_):
            disc = d.discriminant.type
            if isinstance(disc, Ref):
                target = self.underlying(disc)
                scalar = isinstance(target, Prim) and target.kind in ("int", "uint", "bool")
                if not isinstance(target, Enum) and not scalar:
                    raise GenError(
                        d.discriminant.loc, "a union discriminant must be int, unsigned int, bool or an enum"
                    )

    def depth(self, name: str, stack: tuple[str, ...]) -> int:
        if name in stack:
            cycle = " -> ".join(stack[stack.index(name):] + (name,))
            d = self.defs[name]
            raise GenError(
                d.loc, f"recursive type ({cycle}): nesting depth must be bounded, so recursion is not supported"
            )
        d = self.defs[name]
        inner = 0
        for t in self._types_in(d):
            for ref in _refs(t):
                inner = max(inner, self.depth(ref.name, stack + (name,)))
        total = inner + (0 if isinstance(d, (Typedef, Enum)) else 1)
        if total > MAX_DEPTH:
            raise GenError(d.loc, f"type {name} nests {total} levels deep (limit {MAX_DEPTH})")
        return total

    # ---------------------------------------------------------- queries
    def underlying(self, t: Type) -> "Type | Struct | Union_ | Enum":
        """Follow typedefs until a non-typedef type or definition is reached."""
        while isinstance(t, Ref):
            d = self.defs[t.name]
            if isinstance(d, Typedef):
                t = d.type
                continue
            return d
        return t

    def min_size(self, t: "Type | Definition") -> int:
        """The fewest bytes a value of this type takes on the wire."""
        if isinstance(t, Prim):
            return PRIM_SIZE.get(t.kind, 4)
        if isinstance(t, Ref):
            return self.min_size(self.defs[t.name])
        if isinstance(t, Typedef):
            return self.min_size(t.type)
        if isinstance(t, Enum):
            return 4
        if isinstance(t, (String, Optional_)):
            return 4
        if isinstance(t, Opaque):
            return (t.size or 0) + (-(t.size or 0) & 3) if t.fixed else 4
        if isinstance(t, Chars):
            return 4 * (t.size or 0) if t.fixed else 4
        if isinstance(t, Array):
            return (t.size or 0) * self.min_size(t.elem) if t.fixed else 4
        if isinstance(t, Struct):
            return sum(self.min_size(f.type) for f in t.fields)
        if isinstance(t, Union_):
            arms = list(t.arms) + ([t.default] if t.default else [])
            return 4 + min(self.min_size(a.field.type) if a.field else 0 for a in arms)
        raise TypeError(t)

    def fixed_size(self, t: "Type | Definition") -> int | None:
        """The exact wire size when it does not depend on the value, else None."""
        if isinstance(t, Prim):
            return PRIM_SIZE.get(t.kind, 4)
        if isinstance(t, Ref):
            return self.fixed_size(self.defs[t.name])
        if isinstance(t, Typedef):
            return self.fixed_size(t.type)
        if isinstance(t, Enum):
            return 4
        if isinstance(t, Opaque) and t.fixed:
            return (t.size or 0) + (-(t.size or 0) & 3)
        if isinstance(t, Chars) and t.fixed:
            return 4 * (t.size or 0)
        if isinstance(t, Array) and t.fixed:
            e = self.fixed_size(t.elem)
            return None if e is None else e * (t.size or 0)
        if isinstance(t, Struct):
            total = 0
            for f in t.fields:
                s = self.fixed_size(f.type)
                if s is None:
                    return None
                total += s
            return total
        return None


def _refs(t: Type) -> list[Ref]:
    if isinstance(t, Ref):
        return [t]
    if isinstance(t, (Array, Optional_)):
        return _refs(t.elem)
    return []
