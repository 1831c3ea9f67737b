"""libvirt's event loop API (``virEvent*``), as libvirt-python has it.

Contract:

* One event loop implementation per process, registered once:
  :func:`virEventRegisterDefaultImpl` (the built-in ``poll()`` loop, run by
  calling :func:`virEventRunDefaultImpl` in a loop, usually in a thread) or
  :func:`virEventRegisterImpl` (an application's own loop: six callables
  called exactly as libvirt-python calls them; :mod:`pyvirtrpc.libvirtaio`
  is one).  Like libvirt, a second registration is ignored with a warning
  (after a custom one, :func:`virEventRegisterImpl` raises RuntimeError
  "Event loop is already registered", as libvirt-python's does).
  Register before opening connections: a connection opened afterwards
  watches its socket on the loop (so events and keepalive are handled
  while no call is in progress), probes the server's keepalive support,
  and runs its keepalive and event-dispatch timers on the loop.
* Handles and timeouts have libvirt's semantics: ids start at 1 and are
  never reused; ``virEventAddHandle(fd, events, cb, opaque)`` calls
  ``cb(watch, fd, events, opaque)`` with the VIR_EVENT_HANDLE_* bits that
  occurred (ERROR and HANGUP are reported even when not asked for);
  ``virEventAddTimeout(ms, cb, opaque)`` calls ``cb(timer, opaque)`` every
  ``ms`` milliseconds, ``-1`` disables the timer and ``0`` fires it on
  every loop iteration.  Updating or removing an unknown id is silently
  ignored by the update functions; the add and remove functions raise
  ``libvirtError('virEventAddHandle() failed')`` etc. where libvirt
  returns -1 (no loop registered, unknown id).  These functions may be
  called from any thread; the default loop wakes up to notice.
* :func:`virEventRunDefaultImpl` runs one iteration: it waits (without
  limit when nothing is due) for a handle to become ready, a timer to
  expire or another thread to change the loop, dispatches everything that
  is ready, and returns 0.  A callback's exception is printed to stderr and
  the loop goes on, as with the C binding.  Free callbacks of removed
  handles and timeouts run on a later iteration, never inside the remove.
* Internal interface for pyvirtrpc's own use: :func:`add_handle`,
  :func:`update_handle`, :func:`remove_handle`, :func:`add_timeout`,
  :func:`update_timeout`, :func:`remove_timeout` (libvirt's C signatures:
  ``cb(watch, fd, events, opaque)``, an optional free callback, -1 for
  failure, no exceptions) and :func:`impl_registered`.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from time import monotonic

from ._gen import constants as C
from .errors import libvirtError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Protocol

    HandleCallback = Callable[[int, int, int, Any], Any]
    TimeoutCallback = Callable[[int, Any], Any]
    FreeCallback = Optional[Callable[[Any], Any]]

    class _Impl(Protocol):
        """The six functions of the registered implementation, in libvirt's C shape."""

        def add_handle(self, fd: int, events: int, cb: HandleCallback, opaque: Any, ff: FreeCallback) -> int: ...

        def update_handle(self, watch: int, events: int) -> None: ...

        def remove_handle(self, watch: int) -> int: ...

        def add_timeout(self, interval: int, cb: TimeoutCallback, opaque: Any, ff: FreeCallback) -> int: ...

        def update_timeout(self, timer: int, interval: int) -> None: ...

        def remove_timeout(self, timer: int) -> int: ...


READABLE = C.VIR_EVENT_HANDLE_READABLE
WRITABLE = C.VIR_EVENT_HANDLE_WRITABLE
ERROR = C.VIR_EVENT_HANDLE_ERROR
HANGUP = C.VIR_EVENT_HANDLE_HANGUP

__all__ = [
    "virEventRegisterDefaultImpl",
    "virEventRunDefaultImpl",
    "virEventRegisterImpl",
    "virEventAddHandle",
    "virEventUpdateHandle",
    "virEventRemoveHandle",
    "virEventAddTimeout",
    "virEventUpdateTimeout",
    "virEventRemoveTimeout",
    "virEventInvokeFreeCallback",
    "DefaultLoop",
]


def _report_exception() -> None:
    """Print the current exception as the C binding does (PyErr_Print) and go on."""
    import traceback

    try:
        traceback.print_exc()
    except (OSError, ValueError):  # stderr closed
        pass


# ----------------------------------------------------------------------------
# the default implementation
class _Handle:
    __slots__ = ("watch", "fd", "events", "cb", "opaque", "ff", "removed")

    def __init__(self, watch: int, fd: int, events: int, cb: HandleCallback, opaque: Any, ff: FreeCallback) -> None:
        self.watch = watch
        self.fd = fd
        self.events = events
        self.cb = cb
        self.opaque = opaque
        self.ff = ff
        self.removed = False


class _Timeout:
    __slots__ = ("timer", "interval", "due", "cb", "opaque", "ff", "removed")

    def __init__(self, timer: int, interval: int, cb: TimeoutCallback, opaque: Any, ff: FreeCallback) -> None:
        self.timer = timer
        self.interval = interval
        self.due = 0.0
        self.cb = cb
        self.opaque = opaque
        self.ff = ff
        self.removed = False


def _poll_mask(events: int) -> int:
    mask = 0
    if events & READABLE:
        mask |= select.POLLIN
    if events & WRITABLE:
        mask |= select.POLLOUT
    return mask


def _events_of(revents: int) -> int:
    events = 0
    if revents & select.POLLIN:
        events |= READABLE
    if revents & select.POLLOUT:
        events |= WRITABLE
    if revents & (select.POLLERR | select.POLLNVAL):
        events |= ERROR
    if revents & select.POLLHUP:
        events |= HANGUP
    return events


class DefaultLoop:
    """The ``poll()`` loop behind :func:`virEventRegisterDefaultImpl` (libvirt's vireventglib)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._timeouts: dict[int, _Timeout] = {}
        self._next_watch = 1
        self._next_timer = 1
        self._free: list[tuple[Callable[[Any], Any], Any]] = []
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self._rfd = rfd
        self._wfd = wfd
        #: the loop thread is (about to be) blocked in poll(): changes must wake it
        self._polling = False
        self._woken = False

    def _wake(self) -> None:
        # lock held
        if self._polling and not self._woken:
            self._woken = True
            try:
                os.write(self._wfd, b"\0")
            except OSError:  # pipe full: the loop is awake anyway
                pass

    # ----------------------------------------------------------- handles
    def add_handle(self, fd: int, events: int, cb: HandleCallback, opaque: Any, ff: FreeCallback = None) -> int:
        with self._lock:
            watch = self._next_watch
            self._next_watch += 1
            self._handles[watch] = _Handle(watch, fd, events, cb, opaque, ff)
            if events:
                self._wake()
            return watch

    def update_handle(self, watch: int, events: int) -> None:
        with self._lock:
            h = self._handles.get(watch)
            if h is None or h.removed or h.events == events:
                return
            h.events = events
            self._wake()

    def remove_handle(self, watch: int) -> int:
        with self._lock:
            h = self._handles.pop(watch, None)
            if h is None:
                return -1
            h.removed = True
            if h.ff is not None:
                self._free.append((h.ff, h.opaque))
            self._wake()
            return 0

    # ---------------------------------------------------------- timeouts
    def add_timeout(self, interval: int, cb: TimeoutCallback, opaque: Any, ff: FreeCallback = None) -> int:
        with self._lock:
            timer = self._next_timer
            self._next_timer += 1
            t = _Timeout(timer, interval, cb, opaque, ff)
            if interval >= 0:
                t.due = monotonic() + interval / 1000.0
                self._wake()
            self._timeouts[timer] = t
            return timer

    def update_timeout(self, timer: int, interval: int) -> None:
        with self._lock:
            t = self._timeouts.get(timer)
            if t is None or t.removed:
                return
            if interval < 0 and t.interval < 0:
                return
            t.interval = interval
            if interval >= 0:
                # as glib's timeout source: restarted from now
                t.due = monotonic() + interval / 1000.0
            self._wake()

    def remove_timeout(self, timer: int) -> int:
        with self._lock:
            t = self._timeouts.pop(timer, None)
            if t is None:
                return -1
            t.removed = True
            if t.ff is not None:
                self._free.append((t.ff, t.opaque))
            self._wake()
            return 0

    # --------------------------------------------------------------- run
    def run_once(self, max_wait: Optional[float] = None) -> int:
        """One iteration; ``max_wait`` (seconds) bounds the wait (None: no bound, as libvirt)."""
        with self._run_lock:
            self._iterate(max_wait)
        return 0

    def _iterate(self, max_wait: Optional[float]) -> None:
        poller = select.poll()
        poller.register(self._rfd, select.POLLIN)
        with self._lock:
            free, self._free = self._free, []
            masks: dict[int, int] = {}
            for h in self._handles.values():
                if h.events:
                    m = _poll_mask(h.events)
                    masks[h.fd] = masks.get(h.fd, 0) | m
            due: Optional[float] = None
            for t in self._timeouts.values():
                if t.interval >= 0 and (due is None or t.due < due):
                    due = t.due
            if free:
                wait: Optional[float] = 0.0
            elif due is None:
                wait = max_wait
            else:
                wait = max(due - monotonic(), 0.0)
                if max_wait is not None and max_wait < wait:
                    wait = max_wait
            self._polling = True
        for ff, opaque in free:  # the "idle" free callbacks of earlier removals
            try:
                ff(opaque)
            except Exception:  # noqa: BLE001 - a callback must not stop the loop
                _report_exception()
        for fd, m in masks.items():
            try:
                poller.register(fd, m)
            except (OSError, ValueError):
                # a negative fd is never ready (poll() ignores it); others report NVAL
                pass
        try:
            ready = poller.poll(None if wait is None else int(wait * 1000 + 0.999))
        finally:
            with self._lock:
                self._polling = False
                if self._woken:
                    self._woken = False
                    try:
                        while os.read(self._rfd, 512):
                            pass
                    except OSError:
                        pass
        now = monotonic()
        with self._lock:
            timers = [t for t in self._timeouts.values() if t.interval >= 0 and t.due <= now]
            for t in timers:
                t.due = now + t.interval / 1000.0
            revents = {fd: ev for fd, ev in ready if fd != self._rfd}
            handles = [(h, revents[h.fd]) for h in self._handles.values() if h.events and h.fd in revents]
        for t in timers:
            if t.removed or t.interval < 0:
                continue
            try:
                t.cb(t.timer, t.opaque)
            except Exception:  # noqa: BLE001
                _report_exception()
        for h, rev in handles:
            if h.removed or not h.events:
                continue
            events = _events_of(rev) & (h.events | ERROR | HANGUP)
            if not events:
                continue
            try:
                h.cb(h.watch, h.fd, events, h.opaque)
            except Exception:  # noqa: BLE001
                _report_exception()

    def close(self) -> None:
        """Release the wake-up pipe (tests that make private loops use this)."""
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass


# ----------------------------------------------------------------------------
# registration
def _int_result(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class _CustomImpl:
    """Calls an application's functions as libvirt-python does (libvirt-override.c).

    ``addHandle(fd, events, _eventInvokeHandleCallback, (cb, opaque, ff))``:
    the application calls the function it was given with the watch, fd,
    events and that opaque tuple, and frees the tuple with
    :func:`virEventInvokeFreeCallback` after removing the handle.  An
    exception in one of the functions is printed and counts as failure for
    add (-1); remove succeeds whenever the function returns.
    """

    def __init__(self, funcs: tuple[Any, ...]) -> None:
        self.funcs = funcs

    def add_handle(self, fd: int, events: int, cb: HandleCallback, opaque: Any, ff: FreeCallback) -> int:
        try:
            return _int_result(self.funcs[0](fd, events, _eventInvokeHandleCallback, (cb, opaque, ff)))
        except Exception:  # noqa: BLE001
            _report_exception()
            return -1

    def update_handle(self, watch: int, events: int) -> None:
        try:
            self.funcs[1](watch, events)
        except Exception:  # noqa: BLE001
            _report_exception()

    def remove_handle(self, watch: int) -> int:
        try:
            self.funcs[2](watch)
        except Exception:  # noqa: BLE001
            _report_exception()
            return -1
        return 0

    def add_timeout(self, interval: int, cb: TimeoutCallback, opaque: Any, ff: FreeCallback) -> int:
        try:
            return _int_result(self.funcs[3](interval, _eventInvokeTimeoutCallback, (cb, opaque, ff)))
        except Exception:  # noqa: BLE001
            _report_exception()
            return -1

    def update_timeout(self, timer: int, interval: int) -> None:
        try:
            self.funcs[4](timer, interval)
        except Exception:  # noqa: BLE001
            _report_exception()

    def remove_timeout(self, timer: int) -> int:
        try:
            self.funcs[5](timer)
        except Exception:  # noqa: BLE001
            _report_exception()
            return -1
        return 0


_lock = threading.Lock()
#: the active implementation (None: no loop registered)
_impl: Optional[_Impl] = None
#: the default loop, once virEventRegisterDefaultImpl was called
_default: Optional[DefaultLoop] = None
#: the functions given to virEventRegisterImpl (libvirt-python keeps them even when ignored)
_custom_funcs: Optional[tuple[Any, ...]] = None


def _warn_replace() -> None:
    """libvirt's VIR_WARN (its default log output is stderr at warning level)."""
    from . import _log

    msg = "Ignoring attempt to replace registered event loop"
    lg = _log.logger("util.event")
    if lg is not None:
        lg.warning(msg)
        return
    try:
        sys.stderr.write(f"libvirt: warning : virEventRegisterImpl : {msg}\n")
    except (OSError, ValueError):
        pass


def _activated() -> None:
    """A loop is now registered: later opens probe keepalive (libvirt does so only with a loop)."""
    try:
        from . import _open
    except ImportError:  # pragma: no cover - the URI layer is not installed yet
        return
    _open.keepalive_possible = True


def impl_registered() -> bool:
    """True once an event loop implementation is registered."""
    return _impl is not None


def current_impl() -> Optional[_Impl]:
    """The registered implementation (its six functions in libvirt's C shape), or None.

    Connections keep the object they registered with and talk to it directly.
    """
    return _impl


def default_loop() -> Optional[DefaultLoop]:
    """The default loop, if :func:`virEventRegisterDefaultImpl` was called."""
    return _default


def virEventRegisterDefaultImpl() -> int:
    """Register the built-in poll() loop (once; later calls change nothing). Returns 0."""
    global _impl, _default
    with _lock:
        if _default is None:
            _default = DefaultLoop()
            if _impl is None:
                _impl = _default
                activated = True
            else:
                activated = False
                _warn_replace()
        else:
            activated = False
    if activated:
        _activated()
    return 0


def virEventRunDefaultImpl() -> int:
    """Run one iteration of the default loop (see the module docstring); returns 0."""
    loop = _default
    if loop is None:
        # libvirt runs the (empty) glib default context: it blocks until woken
        loop = _empty_loop()
    return loop.run_once()


_empty: Optional[DefaultLoop] = None


def _empty_loop() -> DefaultLoop:
    global _empty
    with _lock:
        if _empty is None:
            _empty = DefaultLoop()
        return _empty


def virEventRegisterImpl(
    addHandle: Any, updateHandle: Any, removeHandle: Any, addTimeout: Any, updateTimeout: Any, removeTimeout: Any
) -> None:
    """Register an application's event loop (six callables, libvirt-python's signatures)."""
    global _impl, _custom_funcs
    funcs = (addHandle, updateHandle, removeHandle, addTimeout, updateTimeout, removeTimeout)
    with _lock:
        if _custom_funcs is not None:
            raise RuntimeError("Event loop is already registered")
        for f in funcs:
            if not callable(f):
                raise TypeError("virEventRegisterImpl: every argument must be callable")
        _custom_funcs = funcs
        if _impl is not None:
            activated = False
            replace = True
        else:
            _impl = _CustomImpl(funcs)
            activated = True
            replace = False
    if replace:
        _warn_replace()
    if activated:
        _activated()


# ----------------------------------------------------------------------------
# libvirt's C-level functions (no exceptions; -1 on failure)
def add_handle(fd: int, events: int, cb: HandleCallback, opaque: Any = None, ff: FreeCallback = None) -> int:
    impl = _impl
    return -1 if impl is None else impl.add_handle(fd, events, cb, opaque, ff)


def update_handle(watch: int, events: int) -> None:
    impl = _impl
    if impl is not None:
        impl.update_handle(watch, events)


def remove_handle(watch: int) -> int:
    impl = _impl
    return -1 if impl is None else impl.remove_handle(watch)


def add_timeout(interval: int, cb: TimeoutCallback, opaque: Any = None, ff: FreeCallback = None) -> int:
    impl = _impl
    return -1 if impl is None else impl.add_timeout(interval, cb, opaque, ff)


def update_timeout(timer: int, interval: int) -> None:
    impl = _impl
    if impl is not None:
        impl.update_timeout(timer, interval)


def remove_timeout(timer: int) -> int:
    impl = _impl
    return -1 if impl is None else impl.remove_timeout(timer)


# ----------------------------------------------------------------------------
# libvirt-python's module functions
def _dispatchEventHandleCallback(watch: int, fd: int, events: int, cbData: dict[str, Any]) -> int:
    cbData["cb"](watch, fd, events, cbData["opaque"])
    return 0


def _dispatchEventTimeoutCallback(timer: int, cbData: dict[str, Any]) -> int:
    cbData["cb"](timer, cbData["opaque"])
    return 0


def _eventInvokeHandleCallback(watch: int, fd: int, event: int, opaque: Any, opaquecompat: Any = None) -> None:
    """What a custom loop calls for a ready handle (libvirt-python's name and protocol)."""
    if opaquecompat:
        # libvirt 0.9.2 and older: the loop passed (cb, opaque) separately
        callback, opaque_ = opaque, opaquecompat
    else:
        callback, opaque_ = opaque[0], opaque[1]
    callback(watch, fd, event, opaque_)


def _eventInvokeTimeoutCallback(timer: int, opaque: Any, opaquecompat: Any = None) -> None:
    """What a custom loop calls for an expired timer."""
    if opaquecompat:
        callback, opaque_ = opaque, opaquecompat
    else:
        callback, opaque_ = opaque[0], opaque[1]
    callback(timer, opaque_)


def virEventInvokeFreeCallback(opaque: Any) -> None:
    """Free the opaque a custom loop got from addHandle/addTimeout (after removing it).

    Call it from the loop's own stack, never from inside the remove function.
    """
    ff = opaque[2]
    if ff is not None:
        ff(opaque[1])


def virEventAddHandle(fd: int, events: int, cb: HandleCallback, opaque: Any) -> int:
    """Watch ``fd`` for ``events``; ``cb(watch, fd, events, opaque)``; returns the watch id."""
    ret = add_handle(fd, events, _dispatchEventHandleCallback, {"cb": cb, "opaque": opaque})
    if ret == -1:
        raise libvirtError("virEventAddHandle() failed")
    return ret


def virEventUpdateHandle(watch: int, events: int) -> None:
    """Change the events watched (0 stops watching without removing). Never fails."""
    update_handle(watch, events)


def virEventRemoveHandle(watch: int) -> int:
    """Stop watching; raises libvirtError for an unknown watch (or no loop)."""
    ret = remove_handle(watch)
    if ret == -1:
        raise libvirtError("virEventRemoveHandle() failed")
    return ret


def virEventAddTimeout(timeout: int, cb: TimeoutCallback, opaque: Any) -> int:
    """A timer every ``timeout`` ms (-1: disabled, 0: every iteration); ``cb(timer, opaque)``."""
    ret = add_timeout(timeout, _dispatchEventTimeoutCallback, {"cb": cb, "opaque": opaque})
    if ret == -1:
        raise libvirtError("virEventAddTimeout() failed")
    return ret


def virEventUpdateTimeout(timer: int, timeout: int) -> None:
    """Change a timer's period (-1 disables it). Never fails."""
    update_timeout(timer, timeout)


def virEventRemoveTimeout(timer: int) -> int:
    """Remove a timer; raises libvirtError for an unknown timer (or no loop)."""
    ret = remove_timeout(timer)
    if ret == -1:
        raise libvirtError("virEventRemoveTimeout() failed")
    return ret


def _reset_for_tests() -> None:
    """Forget the registered implementation (test isolation only; libvirt has no such thing)."""
    global _impl, _default, _custom_funcs
    with _lock:
        old = _default
        _impl = None
        _default = None
        _custom_funcs = None
    if old is not None:
        old.close()
    try:
        from . import _open
    except ImportError:  # pragma: no cover
        return
    _open.keepalive_possible = False


if sys.platform == "win32":  # pragma: no cover - libvirt's remote client is POSIX-only here too
    raise ImportError("pyvirtrpc.event needs poll()")
