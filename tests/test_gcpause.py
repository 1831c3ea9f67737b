"""The collector pause for large replies (pyvirtrpc/_gcpause.py).

It is on only while a large reply is decoded and its objects are built:
never while a call waits (a reply that never comes must not leave the
collector off), restored after, left off if it was off, and shared by
overlapping pauses.  The real daemon's 10,000-domain listing is in the
benchmark; here the fake one holds a listing's reply while the test looks.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any, Iterator

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import _gcpause, _xdr, aio
from pyvirtrpc._gen import remote as R
from pyvirtrpc.core.rpc import BULK_BYTES
from pyvirtrpc.packet import OK, REPLY, encode_packet
from tests.fakedaemon import Call, FakeDaemon
from tests.polling import wait_until

libvirt.registerErrorHandler(lambda ctx, err: None, None)

LIST = R.PROC_BY_NAME["REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS"]
N = 5000  # ~200 KB of reply: over the core's BULK_BYTES and _gcpause.BULK_OBJECTS


@pytest.fixture
def gc_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def listing_reply(serial: int) -> bytes:
    doms = [R.remote_nonnull_domain(f"dom{i:05d}", i.to_bytes(16, "big"), i) for i in range(N)]
    body = _xdr.encode(LIST.ret, R.remote_connect_list_all_domains_ret(doms, N))
    assert len(body) >= BULK_BYTES
    return encode_packet(R.PROGRAM, 1, LIST.number, REPLY, serial, OK, body)


def held_listing(fake: FakeDaemon) -> list[Call]:
    return fake.hold("CONNECT_LIST_ALL_DOMAINS")


def test_pauses_nest_and_restore(gc_restored: None) -> None:
    gc.enable()
    with _gcpause.PAUSED:
        assert not gc.isenabled()
        with _gcpause.PAUSED:
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with _gcpause.PAUSED:
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(ZeroDivisionError), _gcpause.PAUSED:
        1 / 0  # noqa: B018
    assert gc.isenabled()
    with _gcpause.bulk(_gcpause.BULK_OBJECTS - 1):
        assert gc.isenabled()
    with _gcpause.bulk(_gcpause.BULK_OBJECTS):
        assert not gc.isenabled()
    assert gc.isenabled()


def test_sync_listing_waits_with_the_collector_on(fake: FakeDaemon, gc_restored: None) -> None:
    gc.enable()
    held = held_listing(fake)
    conn = libvirt.open(fake.uri)
    peer = fake.peer()
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(conn.listAllDomains()))
    try:
        t.start()
        peer.wait_for(lambda: len(held) == 1)
        assert gc.isenabled(), "the collector must not be paused while the call waits"
        reply = listing_reply(held[0].serial)
        half = len(reply) // 2
        peer.send_raw(reply[:half])  # the first half: read and buffered, nothing to decode yet
        assert wait_until(lambda: conn._o.client.rpc.deframer.buffered >= half)  # type: ignore[union-attr]
        assert gc.isenabled()
        peer.send_raw(reply[half:])
        t.join(10)
        assert not t.is_alive()
        doms = out[0]
        assert len(doms) == N
        assert [doms[0].name(), doms[-1].name(), doms[-1].ID()] == ["dom00000", f"dom{N - 1:05d}", N - 1]
        assert gc.isenabled()
    finally:
        fake.handlers.pop("CONNECT_LIST_ALL_DOMAINS")
        conn.close()


def test_asyncio_listing_waits_with_the_collector_on(fake: FakeDaemon, gc_restored: None) -> None:
    gc.enable()
    held = held_listing(fake)

    async def main() -> list[Any]:
        conn = await aio.open(fake.uri)
        try:
            task = asyncio.ensure_future(conn.listAllDomains())
            peer = fake.peer()
            while not held:
                await asyncio.sleep(0.01)
            assert gc.isenabled(), "the collector must not be paused while the call waits"
            peer.send_raw(listing_reply(held[0].serial))
            doms = await asyncio.wait_for(task, 10)
            assert gc.isenabled()
            return [len(doms), doms[0].name(), doms[-1].UUIDString()]
        finally:
            await conn.close()

    try:
        assert asyncio.run(main()) == [N, "dom00000", "00000000-0000-0000-0000-000000001387"]
    finally:
        fake.handlers.pop("CONNECT_LIST_ALL_DOMAINS")
