"""A domain's identity kept flat, and domain listings decoded straight into it.

A listing of 10,000 domains used to become 10,000 ``remote_nonnull_domain``
structs and then 10,000 wrappers around them.  The structs were a third of
the client's time for that call and half of its page faults: every listing's
objects are freed together, so their memory goes back to the system and is
faulted in again by the next one.  Here the wrappers hold the three fields
themselves and the struct is built only when a call needs it.

Contract:

* :class:`DomainRef` is the base of ``virDomain`` and ``AsyncDomain``.  It
  keeps the domain's name, UUID (16 bytes) and id in ``_name``, ``_uuid``
  and ``_id``.  ``_dom`` is the ``remote_nonnull_domain`` that calls carry:
  built on first use and kept; assigning ``_dom`` replaces all three fields
  (a started domain gets a new id).  ``_stopped()`` sets the id to -1.
* :data:`LIST_ALL_DOMAINS` is ``REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS`` with a
  reply codec that decodes to a flat list ``[name, uuid, id, name, uuid,
  id, ...]``.  It makes the generated decoder's checks (the count against
  ``REMOTE_DOMAIN_LIST_MAX`` and the bytes left, every length against the
  bytes left and ``REMOTE_STRING_MAX``, zero padding, no trailing bytes) and
  fails where it fails.  The core then falls back, as for every reply, to
  :func:`pyvirtrpc._xdr.decode`, which says exactly what was wrong or, for a
  name that is not UTF-8, returns the generated struct: :func:`flat` takes
  either form.
* Nothing here does I/O.
"""

from __future__ import annotations

from struct import Struct

from ._gen import remote as R
from ._xdr import ZPAD, Bad, Codec, Procedure, u32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

#: names up to this long decode with one cached unpack each (test-driver and
#: real domain names are short); longer ones build their format per element
_CACHED = 256
# _TAILS[k]: a name of k bytes, its padding, the UUID, the id and the next
# 4 bytes (the next name's length, or the reply's count after the last one)
_TAILS: list[Optional[Struct]] = [None] * _CACHED


def _tail(k: int) -> Struct:
    s = Struct(f">{k}s{-k & 3}s16siI")
    if k < _CACHED:
        _TAILS[k] = s
    return s


def _dec_flat(b: bytes, o: int, n: int) -> tuple[list[Any], int]:
    count, = u32.unpack_from(b, o)
    o += 4
    # each domain takes at least 24 bytes: checked before anything is built
    if count > R.REMOTE_DOMAIN_LIST_MAX or count * 24 > n - o:
        raise Bad
    out: list[Any] = []
    if count:
        app = out.append
        tails = _TAILS
        cached = _CACHED
        k, = u32.unpack_from(b, o)
        o += 4
        for _ in range(count):
            s = tails[k] if k < cached else None
            if s is None:
                if k > n - o or k > R.REMOTE_STRING_MAX:
                    raise Bad
                s = _tail(k)
            end = o + s.size
            if end > n:
                raise Bad
            name, pad, uuid, id_, k = s.unpack_from(b, o)
            if pad != ZPAD[len(pad)]:
                raise Bad
            app(name.decode())
            app(uuid)
            app(id_)
            o = end
        # the last element's look-ahead was the reply's ``ret`` field
        return out, o
    if n - o < 4:
        raise Bad
    return out, o + 4


def flat(ret: Any) -> list[Any]:
    """The flat ``[name, uuid, id, ...]`` of a listing reply in either form."""
    if type(ret) is list:
        return ret
    return [x for d in ret.domains for x in (d.name, d.uuid, d.id)]


def _list_all_domains() -> Procedure:
    base = R.PROCEDURES[R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS]
    p = Procedure(base.number, base.name, R.__name__, None, None, None, base.annotations)
    # all three set here: an unset one would make Procedure look them all up
    p.args = base.args
    p.msg = None
    p.ret = Codec("remote_connect_list_all_domains_ret", R._c_remote_connect_list_all_domains_ret.enc, _dec_flat)
    return p


LIST_ALL_DOMAINS = _list_all_domains()


class DomainRef:
    """Name, UUID and id of a domain; the wire struct built when first needed."""

    __slots__ = ("_name", "_uuid", "_id", "_ref")

    _name: str
    _uuid: bytes
    _id: int
    _ref: Any

    def _set(self, dom: Any) -> None:
        self._name = dom.name
        self._uuid = dom.uuid
        self._id = dom.id
        self._ref = dom

    @property
    def _dom(self) -> Any:
        ref = self._ref
        if ref is None:
            ref = self._ref = R.remote_nonnull_domain(self._name, self._uuid, self._id)
        return ref

    @_dom.setter
    def _dom(self, dom: Any) -> None:
        self._set(dom)

    def _stopped(self) -> None:
        """remoteDomainDestroy: a stopped domain has no id."""
        self._id = -1
        self._ref = None
