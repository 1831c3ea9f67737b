"""Pausing Python's cyclic garbage collector over a burst of object creation.

A large reply (a listing of 10,000 domains) is decoded into tens of
thousands of objects, none of them in a cycle; the collector, triggered by
the allocation count, would walk them ~28 times while they are built
(measured: 1.6 ms of a 10 ms client-side listing).

Contract:

* ``with PAUSED:`` turns the collector off for the block and on again after,
  unless it was already off when the outermost pause began (it then stays
  off).  Pauses may nest and overlap across threads (a count under a lock).
  Cycles made meanwhile are collected after the pause.
* Only around CPU-bound work that builds many objects: never across a wait
  (a reply that never comes must not leave the collector off).
* The drivers set ``rpc.bulk = PAUSED``: the core decodes a large reply
  (:data:`pyvirtrpc.core.rpc.BULK_BYTES` or more at hand) under it.
  ``with bulk(n):`` pauses when ``n`` objects (:data:`BULK_OBJECTS` or more)
  are about to be built (the API's wrappers of a listing).
"""

from __future__ import annotations

import gc
from _thread import allocate_lock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: building this many objects or more pauses it (the collector's first
#: generation runs every 700 allocations)
BULK_OBJECTS = 1000

_lock = allocate_lock()
_pauses = 0
_was_enabled = False


class _Paused:
    __slots__ = ()

    def __enter__(self) -> None:
        global _pauses, _was_enabled
        with _lock:
            if _pauses == 0:
                _was_enabled = gc.isenabled()
                gc.disable()
            _pauses += 1

    def __exit__(self, *exc: Any) -> None:
        global _pauses
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


class _NotPaused:
    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: Any) -> None:
        pass


PAUSED = _Paused()
_NOT_PAUSED = _NotPaused()


def bulk(n: int) -> _Paused | _NotPaused:
    """A pause for building ``n`` objects: a real one only for many."""
    return PAUSED if n >= BULK_OBJECTS else _NOT_PAUSED

