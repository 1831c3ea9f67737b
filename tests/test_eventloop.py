"""The event loop API: the default poll() loop, custom loops (virEventRegisterImpl), libvirtaio.

Semantics checked against libvirt's (virevent.c, vireventglib.c) and, where the
C binding can show them, against python3-libvirt side by side.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import event
from pyvirtrpc import libvirtaio as aioimpl
from tests.fakedaemon import FakeDaemon

libvirt.registerErrorHandler(lambda ctx, err: None, None)

R = libvirt.VIR_EVENT_HANDLE_READABLE
W = libvirt.VIR_EVENT_HANDLE_WRITABLE
HUP = libvirt.VIR_EVENT_HANDLE_HANGUP
DOMXML = (
    "<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
    "<os><type arch='i686'>hvm</type></os></domain>"
)


@pytest.fixture
def loop() -> Iterator[event.DefaultLoop]:
    lp = event.DefaultLoop()
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """No event loop registered before and after (registration is process-global and permanent)."""
    event._reset_for_tests()
    try:
        yield
    finally:
        event._reset_for_tests()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


# ------------------------------------------------------------ default loop
def test_ids_start_at_one_and_are_not_reused(loop: event.DefaultLoop, pipe: tuple[int, int]) -> None:
    r, _ = pipe
    assert loop.add_handle(r, R, lambda *a: None, None) == 1
    assert loop.add_handle(r, R, lambda *a: None, None) == 2
    assert loop.remove_handle(2) == 0
    assert loop.add_handle(r, R, lambda *a: None, None) == 3
    assert loop.add_timeout(-1, lambda *a: None, None) == 1
    assert loop.add_timeout(-1, lambda *a: None, None) == 2
    assert loop.remove_timeout(99) == -1
    assert loop.remove_handle(99) == -1
    loop.update_handle(99, R)  # unknown ids are ignored
    loop.update_timeout(99, 10)


def test_handle_fires_with_libvirts_arguments(loop: event.DefaultLoop, pipe: tuple[int, int]) -> None:
    r, w = pipe
    seen: list[tuple[Any, ...]] = []
    watch = loop.add_handle(r, R, lambda *a: seen.append(a), "op")
    loop.run_once(0.05)
    assert seen == []
    os.write(w, b"x")
    loop.run_once(1)
    assert seen == [(watch, r, R, "op")]
    loop.update_handle(watch, 0)  # 0: still registered, not watched
    seen.clear()
    loop.run_once(0.05)
    assert seen == []
    loop.update_handle(watch, R)
    loop.run_once(1)
    assert seen == [(watch, r, R, "op")]


def test_hangup_is_reported_unasked(loop: event.DefaultLoop, pipe: tuple[int, int]) -> None:
    r, w = pipe
    seen: list[int] = []
    loop.add_handle(r, R, lambda watch, fd, events, op: seen.append(events), None)
    os.close(w)
    loop.run_once(1)
    assert seen and seen[0] & HUP


def test_writable(loop: event.DefaultLoop, pipe: tuple[int, int]) -> None:
    _, w = pipe
    seen: list[int] = []
    loop.add_handle(w, W, lambda watch, fd, events, op: seen.append(events), None)
    loop.run_once(1)
    assert seen == [W]


def test_free_callback_runs_later_not_inside_remove(loop: event.DefaultLoop, pipe: tuple[int, int]) -> None:
    r, _ = pipe
    freed: list[Any] = []
    watch = loop.add_handle(r, R, lambda *a: None, "h", lambda op: freed.append(op))
    timer = loop.add_timeout(-1, lambda *a: None, "t", lambda op: freed.append(op))
    assert loop.remove_handle(watch) == 0
    assert loop.remove_timeout(timer) == 0
    assert freed == []
    loop.run_once(0)
    assert sorted(freed) == ["h", "t"]


def test_timeouts_disabled_every_iteration_and_periodic(loop: event.DefaultLoop) -> None:
    fired: dict[str, int] = {"off": 0, "zero": 0, "p": 0}
    off = loop.add_timeout(-1, lambda t, op: fired.__setitem__(op, fired[op] + 1), "off")
    zero = loop.add_timeout(0, lambda t, op: fired.__setitem__(op, fired[op] + 1), "zero")
    p = loop.add_timeout(50, lambda t, op: fired.__setitem__(op, fired[op] + 1), "p")
    for _ in range(5):
        loop.run_once()  # never blocks while a 0 timer exists
    assert fired["zero"] == 5 and fired["off"] == 0
    loop.remove_timeout(zero)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.55:
        loop.run_once()
    assert 7 <= fired["p"] <= 12
    loop.update_timeout(p, -1)
    n = fired["p"]
    loop.run_once(0.2)
    assert fired["p"] == n
    loop.update_timeout(off, 0)
    loop.run_once()
    assert fired["off"] == 1


def test_timer_callback_gets_id_and_opaque(loop: event.DefaultLoop) -> None:
    seen: list[tuple[Any, ...]] = []
    timer = loop.add_timeout(0, lambda *a: seen.append(a), {"x": 1})
    loop.run_once()
    assert seen == [(timer, {"x": 1})]


def test_another_thread_wakes_a_blocked_iteration(loop: event.DefaultLoop) -> None:
    fired = threading.Event()
    done = threading.Event()

    def run() -> None:
        loop.run_once()  # nothing registered: blocks until woken
        loop.run_once(5)
        done.set()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(0.2)
    assert not done.is_set()
    loop.add_timeout(10, lambda t, op: fired.set(), None)
    assert done.wait(5)
    assert fired.is_set()


def test_callback_exception_is_printed_and_the_loop_goes_on(loop: event.DefaultLoop, capfd: Any) -> None:
    seen: list[int] = []

    def bad(timer: int, opaque: Any) -> None:
        raise ValueError("boom")

    loop.add_timeout(0, bad, None)
    loop.add_timeout(0, lambda t, op: seen.append(t), None)
    assert loop.run_once() == 0
    assert seen
    assert "ValueError: boom" in capfd.readouterr().err


# ------------------------------------------------------- module functions
def test_no_loop_registered(clean_registry: None) -> None:
    # libvirtError('...() failed') carries the thread's last error, if any (as in
    # libvirt-python): start from none, whatever earlier tests left behind
    libvirt.virResetLastError()
    for fn, args in (
        (libvirt.virEventAddHandle, (0, R, lambda *a: None, None)),
        (libvirt.virEventAddTimeout, (100, lambda *a: None, None)),
        (libvirt.virEventRemoveHandle, (1,)),
        (libvirt.virEventRemoveTimeout, (1,)),
    ):
        with pytest.raises(libvirt.libvirtError, match=rf"{fn.__name__}\(\) failed"):
            fn(*args)
    libvirt.virEventUpdateHandle(1, R)
    libvirt.virEventUpdateTimeout(1, 10)


def test_no_loop_registered_matches_the_c_binding(clean_registry: None, peer: Any) -> None:
    code = r"""
out = []
for name, a in (("virEventAddHandle", (0, 1, lambda *x: None, None)),
                ("virEventAddTimeout", (100, lambda *x: None, None)),
                ("virEventRemoveHandle", (1,)), ("virEventRemoveTimeout", (1,)),
                ("virEventUpdateHandle", (1, 1)), ("virEventUpdateTimeout", (1, 10))):
    libvirt.virResetLastError()
    try:
        out.append([name, "ok", getattr(libvirt, name)(*a)])
    except libvirt.libvirtError as e:
        out.append([name, "err", str(e), e.err])
result = out
"""
    theirs = peer(code)
    ours = []
    for name, a in (
        ("virEventAddHandle", (0, 1, lambda *x: None, None)),
        ("virEventAddTimeout", (100, lambda *x: None, None)),
        ("virEventRemoveHandle", (1,)),
        ("virEventRemoveTimeout", (1,)),
        ("virEventUpdateHandle", (1, 1)),
        ("virEventUpdateTimeout", (1, 10)),
    ):
        libvirt.virResetLastError()
        try:
            ours.append([name, "ok", getattr(libvirt, name)(*a)])
        except libvirt.libvirtError as e:
            ours.append([name, "err", str(e), e.err])
    assert ours == theirs


def test_module_functions_on_the_default_loop(clean_registry: None, pipe: tuple[int, int]) -> None:
    assert libvirt.virEventRegisterDefaultImpl() == 0
    assert libvirt.virEventRegisterDefaultImpl() == 0  # once; later calls change nothing
    r, w = pipe
    seen: list[tuple[Any, ...]] = []
    watch = libvirt.virEventAddHandle(r, R, lambda *a: seen.append(("h",) + a), "ho")
    timer = libvirt.virEventAddTimeout(0, lambda *a: seen.append(("t",) + a), "to")
    os.write(w, b"x")
    assert libvirt.virEventRunDefaultImpl() == 0
    assert ("h", watch, r, R, "ho") in seen and ("t", timer, "to") in seen
    assert libvirt.virEventRemoveHandle(watch) == 0
    assert libvirt.virEventRemoveTimeout(timer) == 0
    with pytest.raises(libvirt.libvirtError, match=r"virEventRemoveHandle\(\) failed"):
        libvirt.virEventRemoveHandle(watch)
    with pytest.raises(libvirt.libvirtError, match=r"virEventRemoveTimeout\(\) failed"):
        libvirt.virEventRemoveTimeout(timer)


def test_only_one_registration(clean_registry: None, capfd: Any, caplog: Any) -> None:
    funcs = [lambda *a: 0] * 6
    libvirt.virEventRegisterDefaultImpl()
    libvirt.virEventRegisterImpl(*funcs)  # ignored, with libvirt's warning (to the log, or stderr)
    warned = capfd.readouterr().err + caplog.text
    assert "Ignoring attempt to replace registered event loop" in warned
    assert event.current_impl() is event.default_loop()
    with pytest.raises(RuntimeError, match="Event loop is already registered"):
        libvirt.virEventRegisterImpl(*funcs)


def test_register_impl_needs_callables(clean_registry: None) -> None:
    with pytest.raises(TypeError):
        libvirt.virEventRegisterImpl(1, 2, 3, 4, 5, 6)


# ----------------------------------------------------------- custom impl
class PollImpl:
    """A tiny custom event loop written against libvirt-python's protocol only."""

    def __init__(self) -> None:
        self.handles: dict[int, list[Any]] = {}
        self.timers: dict[int, list[Any]] = {}
        self.next = 1
        self.freed: list[Any] = []
        self.lock = threading.Lock()

    def add_handle(self, fd: int, events: int, cb: Any, opaque: Any) -> int:
        with self.lock:
            h = self.next
            self.next += 1
            self.handles[h] = [fd, events, cb, opaque]
            return h

    def update_handle(self, watch: int, events: int) -> None:
        with self.lock:
            if watch in self.handles:
                self.handles[watch][1] = events

    def remove_handle(self, watch: int) -> int:
        with self.lock:
            h = self.handles.pop(watch)
        self.freed.append(h[3])
        return 0

    def add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        with self.lock:
            t = self.next
            self.next += 1
            self.timers[t] = [timeout, cb, opaque, time.monotonic()]
            return t

    def update_timeout(self, timer: int, timeout: int) -> None:
        with self.lock:
            if timer in self.timers:
                self.timers[timer][0] = timeout
                self.timers[timer][3] = time.monotonic()

    def remove_timeout(self, timer: int) -> int:
        with self.lock:
            t = self.timers.pop(timer)
        self.freed.append(t[2])
        return 0

    def run_once(self, wait: float = 0.02) -> None:
        import select

        with self.lock:
            handles = [(w, list(h)) for w, h in self.handles.items() if h[1]]
            timers = [(t, list(v)) for t, v in self.timers.items() if v[0] >= 0]
        poller = select.poll()
        for _w, (fd, ev, _cb, _op) in handles:
            poller.register(fd, select.POLLIN if ev & R else 0)
        ready = dict(poller.poll(int(wait * 1000)))
        now = time.monotonic()
        for t, (ms, cb, op, start) in timers:
            if now - start >= ms / 1000.0:
                with self.lock:
                    if t in self.timers:
                        self.timers[t][3] = now
                cb(t, op)
        for w, (fd, _ev, cb, op) in handles:
            if fd in ready:
                cb(w, fd, R, op)

    def free_all(self) -> None:
        for op in self.freed:
            libvirt.virEventInvokeFreeCallback(op)
        self.freed.clear()


def test_custom_impl_drives_connections(clean_registry: None, lab: Any) -> None:
    impl = PollImpl()
    libvirt.virEventRegisterImpl(
        impl.add_handle, impl.update_handle, impl.remove_handle, impl.add_timeout, impl.update_timeout,
        impl.remove_timeout,
    )  # fmt: skip
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            impl.run_once()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    conn = libvirt.open(lab.uris["unix"])
    other = libvirt.open(lab.uris["unix"])
    try:
        # the connection watches its socket through the custom loop, with libvirt-python's opaque protocol
        assert any(h[2] is event._eventInvokeHandleCallback for h in impl.handles.values())
        seen: list[tuple[str, int, int]] = []
        cid = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda c, d, e, det, op: seen.append((d.name(), e, det)), None
        )
        assert conn.setKeepAlive(5, 3) == 0
        dom = other.defineXML(DOMXML.format(name="custom-impl-dom"))
        dom.undefine()
        del dom  # it holds a reference on `other` (as in C), which close() must drop
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == [
            ("custom-impl-dom", libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED),
            ("custom-impl-dom", libvirt.VIR_DOMAIN_EVENT_UNDEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED),
        ]
        conn.domainEventDeregisterAny(cid)
    finally:
        conn.close()
        other.close()
        stop.set()
        th.join(5)
    # the connection's handle and timers were removed; freeing their opaques is the loop's job
    impl.free_all()
    assert not impl.handles


def test_invoke_free_callback_protocol() -> None:
    freed: list[Any] = []
    libvirt.virEventInvokeFreeCallback((None, "opaque", freed.append))
    libvirt.virEventInvokeFreeCallback((None, "other", None))
    assert freed == ["opaque"]
    got: list[tuple[Any, ...]] = []
    event._eventInvokeHandleCallback(3, 4, R, (lambda *a: got.append(a), "op", None))
    event._eventInvokeTimeoutCallback(5, (lambda *a: got.append(a), "op2", None))
    assert got == [(3, 4, R, "op"), (5, "op2")]


# -------------------------------------------------------------- libvirtaio
def test_libvirtaio_impl_semantics(pipe: tuple[int, int]) -> None:
    async def main() -> None:
        impl = aioimpl.virEventAsyncIOImpl(asyncio.get_running_loop())
        r, w = pipe
        seen: list[tuple[Any, ...]] = []
        freed: list[Any] = []

        def cb(*a: Any) -> None:
            seen.append(a)

        watch = impl._add_handle(r, R, event._eventInvokeHandleCallback, (cb, "h", freed.append))
        zero = impl._add_timeout(0, event._eventInvokeTimeoutCallback, (cb, "z", freed.append))
        periodic = impl._add_timeout(30, event._eventInvokeTimeoutCallback, (cb, "p", freed.append))
        off = impl._add_timeout(-1, event._eventInvokeTimeoutCallback, (cb, "off", freed.append))
        assert len({watch, zero, periodic, off}) == 4
        os.write(w, b"x")
        await asyncio.sleep(0.35)
        assert (watch, r, R, "h") in seen
        assert sum(1 for a in seen if a == (zero, "z")) > 10  # every iteration
        assert 6 <= sum(1 for a in seen if a == (periodic, "p")) <= 13
        assert (off, "off") not in seen
        os.read(r, 1)
        assert impl._remove_timeout(zero) == 0
        impl._update_timeout(periodic, -1)
        impl._update_handle(watch, 0)
        seen.clear()
        await asyncio.sleep(0.1)
        assert seen == []
        assert not impl.is_idle()
        for rm in (impl._remove_handle(watch), impl._remove_timeout(periodic), impl._remove_timeout(off)):
            assert rm == 0
        assert impl._remove_timeout(off) == -1
        await impl.drain()
        assert sorted(freed) == ["h", "off", "p", "z"]
        assert impl.is_idle()

    asyncio.run(main())


def test_libvirtaio_updates_from_other_threads(pipe: tuple[int, int]) -> None:
    async def main() -> None:
        impl = aioimpl.virEventAsyncIOImpl(asyncio.get_running_loop())
        fired = asyncio.Event()
        loop = asyncio.get_running_loop()
        timer = impl._add_timeout(-1, event._eventInvokeTimeoutCallback, (lambda t, op: fired.set(), None, None))
        await loop.run_in_executor(None, impl._update_timeout, timer, 10)
        await asyncio.wait_for(fired.wait(), 5)
        impl._remove_timeout(timer)
        await impl.drain()

    asyncio.run(main())


def test_libvirtaio_with_the_sync_api(clean_registry: None, lab: Any) -> None:
    """The libvirt-python pattern: register the asyncio impl, use the sync API from the loop."""

    async def main() -> list[tuple[str, int]]:
        impl = aioimpl.virEventRegisterAsyncIOImpl()
        assert aioimpl.getCurrentImpl() is impl
        conn = libvirt.open(lab.uris["unix"])
        other = libvirt.open(lab.uris["unix"])
        seen: list[tuple[str, int]] = []
        got = asyncio.Event()

        def cb(c: Any, dom: Any, ev: int, detail: int, opaque: Any) -> None:
            assert c is conn
            seen.append((dom.name(), ev))
            if len(seen) == 2:
                got.set()

        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
        assert conn.setKeepAlive(1, 3) == 0
        loop = asyncio.get_running_loop()
        # another thread makes the changes; this loop reads the socket and dispatches
        await loop.run_in_executor(None, lambda: other.defineXML(DOMXML.format(name="aio-impl-dom")).undefine())
        await asyncio.wait_for(got.wait(), 10)
        await asyncio.sleep(2.5)  # keepalive PINGs are answered meanwhile
        assert conn.isAlive() == 1
        conn.close()
        other.close()
        await asyncio.sleep(0.05)
        await impl.drain()
        return seen

    seen = asyncio.run(main())
    assert seen == [
        ("aio-impl-dom", libvirt.VIR_DOMAIN_EVENT_DEFINED),
        ("aio-impl-dom", libvirt.VIR_DOMAIN_EVENT_UNDEFINED),
    ]


def test_open_probes_keepalive_only_with_a_loop(clean_registry: None, tmp_path: Path) -> None:
    with FakeDaemon(tmp_path) as fake:
        c1 = libvirt.open(fake.uri)
        libvirt.virEventRegisterDefaultImpl()
        c2 = libvirt.open(fake.uri)
        try:
            feats = [[c.args.feature for c in p.calls if c.name == "CONNECT_SUPPORTS_FEATURE"] for p in fake.peers]
            assert feats == [[14, 15], [10, 14, 15]]
        finally:
            c1.close()
            c2.close()
