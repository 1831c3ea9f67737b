"""The asyncio client reads replies in batches while many calls are in flight (aio.BATCH_AT, BATCH_DELAY).

With at least ``BATCH_AT`` calls in flight after handling a read, the
connection stops reading for ``BATCH_DELAY`` and then reads what the daemon
wrote meanwhile in one go.  Checked here: every caller still gets its own,
right answer, over unix and TLS against the real daemon; below the
threshold nothing pauses; and against the fake daemon (which can be told
when to answer, and to die), replies, events and an EOF that arrive during
a pause are all handled once reading resumes, and a call's timeout still
fires on time while reading is paused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import pyvirtrpc as libvirt
import pyvirtrpc.aio as aio
from pyvirtrpc._gen import remote as R
from tests.fakedaemon import Call, FakeDaemon, domain
from tests.harness.lab import Lab

libvirt.registerErrorHandler(lambda ctx, err: None, None)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each time a connection stops reading to batch: the number of calls then in flight."""
    seen: list[int] = []
    real = aio.AsyncConnection._pause

    def spy(self: aio.AsyncConnection) -> None:
        seen.append(len(self.rpc.calls))
        real(self)

    monkeypatch.setattr(aio.AsyncConnection, "_pause", spy)
    return seen


async def expected_answers(conn: aio.AsyncConnect) -> dict[str, Any]:
    return {
        "getHostname": await conn.getHostname(),
        "getType": await conn.getType(),
        "getCapabilities": await conn.getCapabilities(),
        "listAllDomains": sorted(d.name() for d in await conn.listAllDomains()),
    }


async def mixed_load(conn: aio.AsyncConnect, workers: int, per_worker: int, expected: dict[str, Any]) -> int:
    """``workers`` coroutines each making ``per_worker`` calls of mixed procedures; every answer checked."""
    names = sorted(expected)
    checked = 0

    async def worker(k: int) -> None:
        nonlocal checked
        for i in range(per_worker):
            name = names[(k + i) % len(names)]
            got = await getattr(conn, name)()
            if name == "listAllDomains":
                got = sorted(d.name() for d in got)
            assert got == expected[name], (name, k, i)
            checked += 1

    # bounded: a connection that stopped reading for good must fail the test, not hang it
    await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(workers))), 60)
    return checked


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_many_calls_in_flight_are_read_in_batches(lab: Lab, transport: str, pauses: list[int]) -> None:
    uri = lab.uris[transport]

    async def main() -> None:
        conn = await aio.open(uri)
        try:
            expected = await expected_answers(conn)
            assert pauses == []  # one call at a time: no pause
            # below the threshold: calls in flight together, no pause
            assert await mixed_load(conn, aio.BATCH_AT // 2, 20, expected) == aio.BATCH_AT // 2 * 20
            assert pauses == []
            # above it: reading pauses, and every caller gets its own answer
            assert await mixed_load(conn, 96, 25, expected) == 96 * 25
            assert pauses and min(pauses) >= aio.BATCH_AT
            # back to serial calls: no pause
            n = len(pauses)
            for _ in range(20):
                assert await conn.getHostname() == expected["getHostname"]
            assert len(pauses) == n
            assert conn.isAlive() == 1
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(main())


async def until(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def pause_with_calls_held(
    conn: aio.AsyncConnect, fake: FakeDaemon, n: int, pauses: list[int]
) -> tuple[list[Call], list[asyncio.Future[Any]]]:
    """``n`` getHostname calls in flight, held by the fake; the first is answered
    ("first"), so reading pauses with n - 1 still in flight."""
    held = fake.hold("CONNECT_GET_HOSTNAME")
    tasks = [asyncio.ensure_future(conn.getHostname()) for _ in range(n)]
    await until(lambda: len(held) == n)
    fake.peer().reply(held[0], R.remote_connect_get_hostname_ret("first"))
    await until(lambda: tasks[0].done())
    assert pauses == [n - 1]
    return held, tasks


def test_replies_events_and_eof_during_a_pause(fake: FakeDaemon, pauses: list[int], monkeypatch: Any) -> None:
    """What arrives while reading is paused is handled when it resumes: replies, an event, then EOF."""
    monkeypatch.setattr(aio, "BATCH_DELAY", 1.5)  # long enough to act inside the pause
    n = aio.BATCH_AT + 8

    async def main() -> None:
        conn = await aio.open(fake.uri)
        peer = fake.peer()
        seen: list[tuple[str, int]] = []
        await conn.domainEventRegisterAny(None, 0, lambda c, d, e, x, o: seen.append((d.name(), e)), None)
        rid = peer.registration("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY", 0)
        held, tasks = await pause_with_calls_held(conn, fake, n, pauses)
        # inside the pause: more replies, an event and a PING
        for i, call in enumerate(held[1:5], 1):
            peer.reply(call, R.remote_connect_get_hostname_ret(f"r{i}"))
        peer.send_event(
            "DOMAIN_EVENT_CALLBACK_LIFECYCLE",
            R.remote_domain_event_callback_lifecycle_msg(rid, R.remote_domain_event_lifecycle_msg(domain(), 3, 0)),
        )
        peer.ping()
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in tasks[1:]) and seen == [] and peer.pongs == 0  # still paused
        # then all handled at once; n - 5 calls are still in flight, so reading pauses again
        await until(lambda: tasks[4].done() and peer.pongs == 1)
        assert [t.result() for t in tasks[:5]] == ["first", "r1", "r2", "r3", "r4"]
        assert seen == [("fakedom", 3)]
        assert pauses == [n - 1, n - 5]
        # the daemon goes away inside this second pause: the rest fail with EOF when it ends
        peer.die()
        t_died = time.monotonic()
        failed = await asyncio.wait_for(asyncio.gather(*tasks[5:], return_exceptions=True), 10)
        assert time.monotonic() - t_died < 5.0
        assert len(failed) == n - 5
        for exc in failed:
            assert isinstance(exc, libvirt.libvirtError)
            assert exc.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR
            assert exc.get_error_domain() == libvirt.VIR_FROM_RPC
            assert str(exc) == "End of file while reading data: Input/output error"
        assert conn.isAlive() == 0
        await asyncio.wait_for(conn.close(), 10)

    asyncio.run(main())


def test_a_call_timeout_fires_while_reading_is_paused(fake: FakeDaemon, pauses: list[int], monkeypatch: Any) -> None:
    monkeypatch.setattr(aio, "BATCH_DELAY", 2.0)
    n = aio.BATCH_AT + 2

    async def main() -> None:
        conn = await aio.open(fake.uri)
        try:
            peer = fake.peer()
            held, tasks = await pause_with_calls_held(conn, fake, n, pauses)
            t0 = time.monotonic()
            with pytest.raises(libvirt.libvirtError) as ei:
                await conn.rpc_call("CONNECT_GET_HOSTNAME", timeout=0.2)
            assert time.monotonic() - t0 < 1.5  # not held up by the 2 s pause
            assert ei.value.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT
            # the others are answered (after the pause) and the connection stays in sync
            for i, call in enumerate(held[1:], 1):
                peer.reply(call, R.remote_connect_get_hostname_ret(f"r{i}"))
            assert await asyncio.wait_for(asyncio.gather(*tasks[1:]), 10) == [f"r{i}" for i in range(1, n)]
            fake.handlers.pop("CONNECT_GET_HOSTNAME")
            assert await conn.getHostname() == "fakehost"
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(main())
