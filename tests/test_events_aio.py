"""The asyncio client's own events, keepalive and close callbacks (pyvirtrpc.aio; no libvirt event loop needed).

Callbacks get the ``AsyncConnect`` and ``AsyncDomain`` objects and run on the
asyncio loop, scheduled after the data that carried them was processed; a
coroutine function may be a callback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import pyvirtrpc as libvirt
import pyvirtrpc.aio as aio
from pyvirtrpc._gen import remote as R
from tests.fakedaemon import NO_REPLY, FakeDaemon, domain

libvirt.registerErrorHandler(lambda ctx, err: None, None)

UUID = "5b7a3f7e-1a2b-4c3d-9e8f-0123456789ab"
DOMXML = (
    "<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory><vcpu>1</vcpu>"
    "<os><type arch='i686'>hvm</type></os></domain>"
)


async def until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return bool(pred())


def test_lifecycle_events_real_daemon(lab: Any) -> None:
    async def main() -> None:
        conn = await aio.open(lab.uris["unix"])
        other = libvirt.open(lab.uris["unix"])
        seen: list[tuple[Any, ...]] = []
        coro_seen: list[int] = []

        def cb(c: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
            seen.append((c is conn, type(dom).__name__, dom.name(), dom.UUIDString(), event, detail, opaque))

        async def coro_cb(c: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
            await asyncio.sleep(0)
            coro_seen.append(event)

        try:
            cid = await conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, "op")
            dom = await conn.lookupByName("test")
            cid2 = await conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, coro_cb, None)
            loop = asyncio.get_running_loop()

            def changes() -> None:
                d = other.defineXML(DOMXML.format(name="aioev", uuid=UUID))
                d.create()
                d.destroy()
                d.undefine()
                t = other.lookupByName("test")
                t.suspend()
                t.resume()

            await loop.run_in_executor(None, changes)
            assert await until(lambda: len(seen) == 6 and len(coro_seen) == 2)
            E = libvirt
            assert seen[:4] == [
                (True, "AsyncDomain", "aioev", UUID, E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED, "op"),  # noqa: E501
                (True, "AsyncDomain", "aioev", UUID, E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED, "op"),  # noqa: E501
                (True, "AsyncDomain", "aioev", UUID, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, "op"),  # noqa: E501
                (True, "AsyncDomain", "aioev", UUID, E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED, "op"),  # noqa: E501
            ]  # fmt: skip
            assert coro_seen == [E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_RESUMED]
            await conn.domainEventDeregisterAny(cid)
            await conn.domainEventDeregisterAny(cid2)
            with pytest.raises(libvirt.libvirtError, match="event callback id 0 not registered"):
                await conn.domainEventDeregisterAny(cid)
        finally:
            await conn.close()
            other.close()

    asyncio.run(main())


def test_events_while_a_call_waits_and_other_kinds(fake: FakeDaemon) -> None:
    async def main() -> None:
        conn = await aio.open(fake.uri)
        try:
            peer = fake.peer()
            seen: list[Any] = []
            await conn.domainEventRegisterAny(None, 0, lambda c, d, e, x, o: seen.append(("dom", d.name(), e)), None)
            await conn.networkEventRegisterAny(None, 0, lambda c, n, e, x, o: seen.append(("net", n.name(), e)), None)
            await conn.domainEventRegister(lambda c, d, e, x, o: seen.append(("legacy", d.name(), e, o)), "L")
            rid = peer.registration("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY", 0)
            nid = peer.registration("CONNECT_NETWORK_EVENT_REGISTER_ANY", 0)
            held = fake.hold("CONNECT_GET_HOSTNAME")
            task = asyncio.ensure_future(conn.getHostname())
            assert await until(lambda: held)
            peer.send_event(
                "DOMAIN_EVENT_CALLBACK_LIFECYCLE",
                R.remote_domain_event_callback_lifecycle_msg(rid, R.remote_domain_event_lifecycle_msg(domain(), 2, 0)),
            )
            peer.send_event(
                "NETWORK_EVENT_LIFECYCLE",
                R.remote_network_event_lifecycle_msg(nid, R.remote_nonnull_network("n0", bytes(16)), 2, 0),
            )
            assert await until(lambda: len(seen) == 3)
            assert not task.done()
            peer.reply(held[0], R.remote_connect_get_hostname_ret("late"))
            assert await task == "late"
            assert sorted(seen, key=str) == sorted(
                [("dom", "fakedom", 2), ("legacy", "fakedom", 2, "L"), ("net", "n0", 2)], key=str
            )
        finally:
            await conn.close()

    asyncio.run(main())


def test_keepalive_and_close_callback_with_a_frozen_fake(fake: FakeDaemon) -> None:
    async def main() -> None:
        conn = await aio.open(fake.uri)
        peer = fake.peer()
        assert [c.args.feature for c in peer.calls if c.name == "CONNECT_SUPPORTS_FEATURE"] == [10, 14, 15]
        closed: list[tuple[Any, int, Any, float]] = []

        async def on_close(c: Any, reason: int, opaque: Any) -> None:
            closed.append((c, reason, opaque, time.monotonic()))

        assert await conn.registerCloseCallback(on_close, "o") == 0
        with pytest.raises(libvirt.libvirtError, match="already registered"):
            await conn.registerCloseCallback(on_close, "o")
        assert conn.setKeepAlive(1, 1) == 0
        await asyncio.sleep(2.5)  # PINGs answered: alive
        assert conn.isAlive() == 1 and peer.pings >= 1
        t0 = time.monotonic()
        peer.freeze()
        pending = asyncio.ensure_future(conn.getHostname())
        with pytest.raises(libvirt.libvirtError) as ei:
            await pending
        t_fail = time.monotonic()
        assert str(ei.value) == "internal error: connection closed due to keepalive timeout"
        assert await until(lambda: closed)
        c, reason, opaque, t_close = closed[0]
        assert (c, reason, opaque) == (conn, libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE, "o")
        assert 1.5 < t_close - t0 < 3.5 and 1.5 < t_fail - t0 < 3.5
        assert conn.isAlive() == 0
        peer.thaw()
        await conn.close()

    asyncio.run(main())


def test_keepalive_unsupported_and_ping_storm(tmp_path: Path) -> None:
    async def main() -> None:
        with FakeDaemon(tmp_path, features=(14, 15)) as fake:
            conn = await aio.open(fake.uri)
            try:
                assert conn.setKeepAlive(5, 3) == 1
                peer = fake.peer()
                peer.ping(3000)
                assert await until(lambda: peer.pongs == 3000)
                assert await conn.getHostname() == "fakehost"
            finally:
                await conn.close()

    asyncio.run(main())


def test_daemon_killed_close_callback_and_pending_calls(make_lab: Any) -> None:
    lab = make_lab(tcp=False, tls=False)

    async def main() -> None:
        conn = await aio.open(lab.uris["unix"])
        closed: list[tuple[int, float]] = []
        await conn.registerCloseCallback(lambda c, r, o: closed.append((r, time.monotonic())), None)
        os.kill(lab.pid, signal.SIGSTOP)
        tasks = [asyncio.ensure_future(conn.getHostname()) for _ in range(5)]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        os.kill(lab.pid, signal.SIGKILL)
        res = await asyncio.gather(*tasks, return_exceptions=True)
        t_fail = time.monotonic()
        assert all(isinstance(r, libvirt.libvirtError) for r in res)
        assert {(r.get_error_code(), r.get_error_domain()) for r in res} == {  # type: ignore[union-attr]
            (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC)
        }
        assert await until(lambda: closed)
        assert closed[0][0] == libvirt.VIR_CONNECT_CLOSE_REASON_EOF
        print(f"\nMEASURE asyncio client, daemon SIGKILL: close callback {closed[0][1] - t0:.4f}s, "
              f"pending calls failed {t_fail - t0:.4f}s")  # fmt: skip
        assert closed[0][1] - t0 < 1.0 and t_fail - t0 < 1.0
        assert conn.isAlive() == 0
        await conn.close()

    asyncio.run(main())


def test_qemu_monitor_events_async(fake: FakeDaemon) -> None:
    from pyvirtrpc._gen import qemu as Q

    async def main() -> None:
        conn = await aio.open(fake.uri)
        try:
            peer = fake.peer()
            seen: list[tuple[Any, ...]] = []
            cid = await conn.qemuMonitorEventRegister(None, "STOP", lambda *a: seen.append(a[2:]), "q")
            (rid,) = peer.registrations
            peer.send_event(
                "DOMAIN_MONITOR_EVENT",
                Q.qemu_domain_monitor_event_msg(rid, domain(), "STOP", 1, 2, None),
                program=Q.PROGRAM,
            )
            assert await until(lambda: seen)
            assert seen == [("STOP", 1, 2, None, "q")]
            await conn.qemuMonitorEventDeregister(cid)
            assert peer.registrations == {}
        finally:
            await conn.close()

    asyncio.run(main())


def test_closed_connection_is_an_invalid_pointer(fake: FakeDaemon) -> None:
    async def main() -> None:
        conn = await aio.open(fake.uri)
        await conn.close()
        with pytest.raises(
            libvirt.libvirtError, match="invalid connection pointer in virConnectDomainEventRegisterAny"
        ):
            await conn.domainEventRegisterAny(None, 0, lambda *a: None, None)
        with pytest.raises(libvirt.libvirtError, match="eventID in virConnectDomainEventRegisterAny must be less than"):
            conn2 = await aio.open(fake.uri)
            try:
                await conn2.domainEventRegisterAny(None, 99, lambda *a: None, None)
            finally:
                await conn2.close()

    asyncio.run(main())


def test_cancelled_registration_leaves_nothing_behind(fake: FakeDaemon) -> None:
    async def main() -> None:
        conn = await aio.open(fake.uri)
        try:
            fake.handlers["CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"] = lambda p, call: NO_REPLY
            task = asyncio.ensure_future(conn.domainEventRegisterAny(None, 0, lambda *a: None, None))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            st = conn._event_st
            assert st is not None and st.registry.entries == {}
            del fake.handlers["CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"]
            assert await conn.domainEventRegisterAny(None, 0, lambda *a: None, None) == 1
        finally:
            await conn.close()

    asyncio.run(main())
