"""The libvirt event loop on asyncio: libvirt-python's ``libvirtaio`` for pyvirtrpc.

Usage, as with libvirt-python::

    import asyncio
    import pyvirtrpc as libvirt
    import pyvirtrpc.libvirtaio as libvirtaio

    async def main():
        libvirtaio.virEventRegisterAsyncIOImpl()      # before opening connections
        conn = libvirt.open("qemu:///system")        # the sync API
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
        ...

Contract:

* :func:`virEventRegisterAsyncIOImpl` (``loop``: the loop to use, default
  the running one, else the current one) registers an
  :class:`virEventAsyncIOImpl` with :func:`pyvirtrpc.virEventRegisterImpl`
  and returns it; :func:`getCurrentImpl` returns it later.  Connections
  opened afterwards have their socket watched with ``add_reader``, and
  their keepalive and event-dispatch timers run as loop callbacks, so
  events and keepalive work while the application awaits other things.
* Handles and timeouts follow libvirt's semantics (see
  :mod:`pyvirtrpc.event`): several handles may watch one fd; timeout -1
  disables, 0 fires on every loop iteration, N fires every N ms.  Free
  callbacks run on a later loop iteration; :meth:`virEventAsyncIOImpl.drain`
  waits for them and :meth:`virEventAsyncIOImpl.is_idle` says whether
  anything is left.
* Unlike libvirt-python's module, the six functions may be called from any
  thread: from another thread the change is handed to the loop with
  ``call_soon_threadsafe`` (pyvirtrpc's sync client pauses and resumes its
  socket watch from whichever thread reads replies).  Ids are handed out
  at once.  Exceptions raised by callbacks are printed, as libvirt-python
  prints them, and the loop goes on.
* This is also the only event loop needed by the sync API inside an asyncio
  program; :mod:`pyvirtrpc.aio` connections need none.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

from . import event as _event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

__all__ = ["getCurrentImpl", "virEventAsyncIOImpl", "virEventRegisterAsyncIOImpl"]

READABLE = _event.READABLE
WRITABLE = _event.WRITABLE


class _Handle:
    __slots__ = ("watch", "fd", "events", "cb", "opaque")

    def __init__(self, watch: int, fd: int, events: int, cb: Callable[..., Any], opaque: Any) -> None:
        self.watch = watch
        self.fd = fd
        self.events = events
        self.cb = cb
        self.opaque = opaque


class _Timer:
    __slots__ = ("timer", "interval", "cb", "opaque", "handle")

    def __init__(self, timer: int, cb: Callable[..., Any], opaque: Any) -> None:
        self.timer = timer
        self.interval = -1
        self.cb = cb
        self.opaque = opaque
        self.handle: Any = None


class virEventAsyncIOImpl:  # noqa: N801 - libvirt-python's name
    """libvirt's event loop functions on an asyncio loop (see the module docstring)."""

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = asyncio.get_event_loop_policy().get_event_loop()
        self.loop = loop
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._fds: dict[int, list[int]] = {}
        self._timers: dict[int, _Timer] = {}
        #: free callbacks scheduled but not run yet
        self._pending = 0
        self._idle_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<virEventAsyncIOImpl handles={len(self._handles)} timers={len(self._timers)} pending={self._pending}>"

    def register(self) -> virEventAsyncIOImpl:
        """Register this object as the process's event loop implementation."""
        _event.virEventRegisterImpl(
            self._add_handle, self._update_handle, self._remove_handle,
            self._add_timeout, self._update_timeout, self._remove_timeout,
        )  # fmt: skip
        return self

    # ----------------------------------------------------------- threads
    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` now when on the loop's thread, else soon on it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    # ----------------------------------------------------------- handles
    def _add_handle(self, fd: int, event: int, cb: Callable[..., Any], opaque: Any) -> int:
        with self._lock:
            watch = next(self._ids)
            self._handles[watch] = _Handle(watch, fd, event, cb, opaque)
            self._fds.setdefault(fd, []).append(watch)
        self._on_loop(self._sync_fd, fd)
        return watch

    def _update_handle(self, watch: int, event: int) -> None:
        with self._lock:
            h = self._handles.get(watch)
            if h is None or h.events == event:
                return
            h.events = event
            fd = h.fd
        self._on_loop(self._sync_fd, fd)

    def _remove_handle(self, watch: int) -> int:
        with self._lock:
            h = self._handles.pop(watch, None)
            if h is None:
                return -1
            watches = self._fds.get(h.fd, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                self._fds.pop(h.fd, None)
            self._pending += 1
        self._on_loop(self._sync_fd, h.fd)
        self._on_loop(self._free, h.opaque)
        return 0

    def _sync_fd(self, fd: int) -> None:
        """Make the loop's reader/writer for ``fd`` match the handles' events (on the loop)."""
        with self._lock:
            wanted = 0
            for watch in self._fds.get(fd, ()):
                wanted |= self._handles[watch].events
        loop = self.loop
        try:
            if wanted & READABLE:
                loop.add_reader(fd, self._ready, fd, READABLE)
            else:
                loop.remove_reader(fd)
            if wanted & WRITABLE:
                loop.add_writer(fd, self._ready, fd, WRITABLE)
            else:
                loop.remove_writer(fd)
        except (OSError, ValueError):
            # a closed or invalid fd: libvirt's loop would report ERROR; nothing to watch here
            pass

    def _ready(self, fd: int, event: int) -> None:
        with self._lock:
            handles = [self._handles[w] for w in self._fds.get(fd, ()) if self._handles[w].events & event]
        for h in handles:
            if h.watch not in self._handles:
                continue  # removed by an earlier callback
            try:
                h.cb(h.watch, fd, event, h.opaque)
            except Exception:  # noqa: BLE001 - never stop the loop
                _event._report_exception()

    # ---------------------------------------------------------- timeouts
    def _add_timeout(self, timeout: int, cb: Callable[..., Any], opaque: Any) -> int:
        with self._lock:
            timer = next(self._ids)
            t = self._timers[timer] = _Timer(timer, cb, opaque)
            t.interval = timeout
        self._on_loop(self._arm, t)
        return timer

    def _update_timeout(self, timer: int, timeout: int) -> None:
        with self._lock:
            t = self._timers.get(timer)
            if t is None:
                return
            t.interval = timeout
        self._on_loop(self._arm, t)

    def _remove_timeout(self, timer: int) -> int:
        with self._lock:
            t = self._timers.pop(timer, None)
            if t is None:
                return -1
            t.interval = -1
            self._pending += 1
        self._on_loop(self._arm, t)
        self._on_loop(self._free, t.opaque)
        return 0

    def _arm(self, t: _Timer) -> None:
        """(Re)start or stop ``t`` according to its interval (on the loop)."""
        if t.handle is not None:
            t.handle.cancel()
            t.handle = None
        if t.interval < 0 or t.timer not in self._timers:
            return
        if t.interval == 0:
            t.handle = self.loop.call_soon(self._fire, t)
        else:
            t.handle = self.loop.call_later(t.interval / 1000.0, self._fire, t)

    def _fire(self, t: _Timer) -> None:
        t.handle = None
        if t.timer not in self._timers or t.interval < 0:
            return
        self._arm(t)  # periodic; a callback that changes the timer re-arms it itself
        try:
            t.cb(t.timer, t.opaque)
        except Exception:  # noqa: BLE001
            _event._report_exception()

    # -------------------------------------------------------------- free
    def _free(self, opaque: Any) -> None:
        # the loop's own stack, a later step than the remove (libvirt's rule)
        self.loop.call_soon(self._run_free, opaque)

    def _run_free(self, opaque: Any) -> None:
        try:
            _event.virEventInvokeFreeCallback(opaque)
        except Exception:  # noqa: BLE001
            _event._report_exception()
        finally:
            with self._lock:
                self._pending -= 1
                done = self._pending == 0
            if done:
                waiters, self._idle_waiters = self._idle_waiters, []
                for w in waiters:
                    if not w.done():
                        w.set_result(None)

    async def drain(self) -> None:
        """Wait until every free callback of removed handles and timeouts has run."""
        with self._lock:
            if self._pending == 0:
                return
            fut: asyncio.Future[None] = self.loop.create_future()
            self._idle_waiters.append(fut)
        await fut

    def is_idle(self) -> bool:
        """True when nothing is registered and no free callback is pending."""
        with self._lock:
            return not self._handles and not self._timers and self._pending == 0


_current_impl: Optional[virEventAsyncIOImpl] = None


def getCurrentImpl() -> Optional[virEventAsyncIOImpl]:
    """The implementation registered by :func:`virEventRegisterAsyncIOImpl`, or None."""
    return _current_impl


def virEventRegisterAsyncIOImpl(loop: Optional[asyncio.AbstractEventLoop] = None) -> virEventAsyncIOImpl:
    """Run libvirt's event loop on ``loop`` (default: the running/current loop); returns the impl."""
    global _current_impl
    _current_impl = virEventAsyncIOImpl(loop=loop).register()
    return _current_impl
