"""Timeouts and cancellation: a call gives up cleanly and its late reply is dropped without desync.

Sync: a timeout per connection (``open(timeout=)``, ``setCallTimeout``) or per
call (``rpc_call(timeout=)``).  Asyncio: ordinary cancellation
(``task.cancel()``, ``asyncio.wait_for``) and ``timeout=``.  Against the fake
daemon (which answers late, or never) and the real one (frozen with SIGSTOP,
then thawed: it answers the abandoned calls, and those replies must vanish).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest

import pyvirtrpc as libvirt
import pyvirtrpc.aio as aio
from pyvirtrpc._gen import remote as R
from tests.fakedaemon import Call, FakeDaemon, Peer, default_loop_thread

libvirt.registerErrorHandler(lambda ctx, err: None, None)


def late(peer: Peer, call: Call, text: str = "late") -> None:
    peer.reply(call, R.remote_connect_get_hostname_ret(text))


def _is_timeout(exc: BaseException) -> bool:
    return (
        isinstance(exc, libvirt.libvirtError)
        and exc.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT
        and exc.get_error_domain() == libvirt.VIR_FROM_RPC
    )


# ---------------------------------------------------------------- sync
def test_per_call_timeout_then_late_reply_is_dropped(fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        held = fake.hold("CONNECT_GET_HOSTNAME")
        t0 = time.monotonic()
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert _is_timeout(ei.value)
        assert "CONNECT_GET_HOSTNAME" in str(ei.value)
        late(peer, held[0], "too late")  # arrives now: must be dropped
        fake.handlers.pop("CONNECT_GET_HOSTNAME")
        assert conn.getHostname() == "fakehost"
        assert conn.getHostname() == "fakehost"
        assert conn.isAlive() == 1
    finally:
        conn.close()


def test_per_connection_timeout(fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri, timeout=0.3)
    try:
        held = fake.hold("CONNECT_GET_HOSTNAME")
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.getHostname()
        assert _is_timeout(ei.value)
        assert libvirt.virGetLastErrorCode() == libvirt.VIR_ERR_OPERATION_TIMEOUT
        conn.setCallTimeout(None)
        fake.handlers.pop("CONNECT_GET_HOSTNAME")
        late(fake.peer(), held[0])
        assert conn.getHostname() == "fakehost"
    finally:
        conn.close()


def test_many_abandoned_calls_and_interleaved_late_replies(fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        held = fake.hold("CONNECT_GET_HOSTNAME")
        for _ in range(50):
            with pytest.raises(libvirt.libvirtError):
                conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.01)
        assert len(held) == 50
        fake.handlers.pop("CONNECT_GET_HOSTNAME")
        # late replies interleave with the answers to new calls, in reverse order
        results = []
        for call in reversed(held):
            late(peer, call)
            results.append(conn.getHostname())
        assert results == ["fakehost"] * 50
        assert conn.isAlive() == 1
    finally:
        conn.close()


def test_timeout_of_a_waiter_while_another_thread_reads(fake: FakeDaemon) -> None:
    """Thread A is the reader (its call is slow), thread B waits behind it and times out."""
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        held = fake.hold("CONNECT_GET_HOSTNAME")
        a_result: list[Any] = []
        a = threading.Thread(target=lambda: a_result.append(conn.getHostname()))
        a.start()
        peer.wait_call("CONNECT_GET_HOSTNAME")
        t0 = time.monotonic()
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.3)
        assert _is_timeout(ei.value) and time.monotonic() - t0 < 2.0
        late(peer, held[1], "for B: dropped")
        late(peer, held[0], "for A")
        a.join(5)
        assert a_result == ["for A"]
        fake.handlers.pop("CONNECT_GET_HOSTNAME")
        assert conn.getHostname() == "fakehost"
    finally:
        conn.close()


def test_late_reply_read_by_the_event_loop_is_dropped(fake: FakeDaemon) -> None:
    with default_loop_thread():
        conn = libvirt.open(fake.uri)
        try:
            peer = fake.peer()
            held = fake.hold("CONNECT_GET_HOSTNAME")
            with pytest.raises(libvirt.libvirtError):
                conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.2)
            late(peer, held[0])  # nobody calls: the loop reads it, and drops it
            time.sleep(0.3)
            assert conn.isAlive() == 1
            fake.handlers.pop("CONNECT_GET_HOSTNAME")
            assert conn.getHostname() == "fakehost"
        finally:
            conn.close()


def test_timeout_against_a_frozen_real_daemon(make_lab: Any) -> None:
    lab = make_lab(tcp=False, tls=False)
    conn = libvirt.open(lab.uris["unix"])
    try:
        assert conn.getHostname()
        os.kill(lab.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                with pytest.raises(libvirt.libvirtError) as ei:
                    conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.3)
                assert _is_timeout(ei.value)
        finally:
            os.kill(lab.pid, signal.SIGCONT)
        # the daemon now answers the three abandoned calls; those replies are dropped
        for _ in range(20):
            assert conn.getHostname()
        assert conn.getLibVersion() > 0
        assert conn.isAlive() == 1
    finally:
        conn.close()


# ------------------------------------------------------------- asyncio
def test_asyncio_cancellation_and_timeouts(fake: FakeDaemon) -> None:
    async def main() -> None:
        conn = await aio.open(fake.uri)
        try:
            peer = fake.peer()
            held = fake.hold("CONNECT_GET_HOSTNAME")
            # ordinary cancellation
            task = asyncio.ensure_future(conn.getHostname())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # asyncio.wait_for
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.getHostname(), 0.1)
            # timeout= of the call
            with pytest.raises(libvirt.libvirtError) as ei:
                await conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.1)
            assert _is_timeout(ei.value)
            assert len(held) == 3
            for call in held:
                late(peer, call)
            fake.handlers.pop("CONNECT_GET_HOSTNAME")
            # many in flight, with the late replies in between
            names = await asyncio.gather(*(conn.getHostname() for _ in range(20)))
            assert names == ["fakehost"] * 20
            assert conn.isAlive() == 1
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncio_cancellation_against_a_frozen_real_daemon(make_lab: Any) -> None:
    lab = make_lab(tcp=False, tls=False)

    async def main() -> None:
        conn = await aio.open(lab.uris["unix"])
        try:
            os.kill(lab.pid, signal.SIGSTOP)
            try:
                tasks = [asyncio.ensure_future(conn.getHostname()) for _ in range(5)]
                await asyncio.sleep(0.2)
                for t in tasks:
                    t.cancel()
                res = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in res)
            finally:
                os.kill(lab.pid, signal.SIGCONT)
            names = await asyncio.gather(*(conn.getHostname() for _ in range(10)))
            assert len(set(names)) == 1
            assert conn.isAlive() == 1
        finally:
            await conn.close()

    asyncio.run(main())
