"""Races and interruptions in the drivers' call paths, each forced where it can happen.

The fake daemon holds calls until the test answers them; where a thread
switch must land between two statements, a monkeypatched hook puts it
there (a real daemon cannot time a thread switch).  What is checked:

* replies that come in the same read as a protocol violation still
  complete their calls (sync and asyncio), the others get the error;
* a waiting caller that stops waiting (its timeout, KeyboardInterrupt)
  just as the reader hands it the reader role passes the role on, so the
  others are not left with nobody reading;
* a connection that dies between a single caller's send and the entry of
  its call in the table fails that call (it used to return None);
* a batching reader whose connection was killed while it slept reports
  what the connection died of, not the write into the closed socket.

(One thread's packets keep their order on the wire: tests/test_concurrency.py,
with the other tests of the write side.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import pyvirtrpc as libvirt
import pyvirtrpc.aio as aio
from pyvirtrpc import _xdr
from pyvirtrpc import client as client_module
from pyvirtrpc._gen import constants as K
from pyvirtrpc._gen import remote as R
from pyvirtrpc.client import Connection
from pyvirtrpc.errors import closed_error, make_error
from pyvirtrpc.packet import OK, REPLY, encode_packet
from tests.fakedaemon import FakeDaemon

libvirt.registerErrorHandler(lambda ctx, err: None, None)

HOSTNAME = R.PROC_BY_NAME["REMOTE_PROC_CONNECT_GET_HOSTNAME"]
GET_TYPE = R.PROC_BY_NAME["REMOTE_PROC_CONNECT_GET_TYPE"]


def hostname_reply(serial: int, text: str) -> bytes:
    body = _xdr.encode(HOSTNAME.ret, R.remote_connect_get_hostname_ret(text))
    return encode_packet(R.PROGRAM, 1, HOSTNAME.number, REPLY, serial, OK, body)


def run(out: dict[str, Any], name: str, fn: Any, *args: Any, **kwargs: Any) -> threading.Thread:
    """Start ``fn(*args, **kwargs)`` in a thread named ``name``; its result or exception goes to ``out[name]``."""

    def body() -> None:
        try:
            out[name] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[name] = exc

    t = threading.Thread(target=body, name=name)
    t.start()
    return t


def test_replies_in_the_read_of_a_protocol_violation_complete_their_calls(fake: FakeDaemon) -> None:
    """Two good replies, then one to a serial nobody waits for, in one write: the two calls
    get their answers (they used to wait for ever), the reader's call gets the RPC error."""
    held = fake.hold("CONNECT_GET_HOSTNAME")
    conn = libvirt.open(fake.uri)
    peer = fake.peer()
    out: dict[str, Any] = {}
    ts = []
    for i in range(3):  # the first takes the reader role, the others wait
        ts.append(run(out, str(i), conn.getHostname))
        peer.wait_for(lambda i=i: len(held) == i + 1)
    peer.send_raw(
        hostname_reply(held[1].serial, "one") + hostname_reply(held[2].serial, "two") + hostname_reply(999, "stray")
    )
    for t in ts:
        t.join(10)
    assert not any(t.is_alive() for t in ts)
    assert out["1"] == "one" and out["2"] == "two"
    assert isinstance(out["0"], libvirt.libvirtError)
    assert out["0"].get_error_code() == libvirt.VIR_ERR_RPC
    assert "no call with that serial" in str(out["0"])
    assert conn.isAlive() == 0
    fake.handlers.pop("CONNECT_GET_HOSTNAME")


def test_aio_replies_in_the_read_of_a_protocol_violation_complete_their_calls(fake: FakeDaemon) -> None:
    held = fake.hold("CONNECT_GET_HOSTNAME")

    async def main() -> None:
        conn = await aio.open(fake.uri)
        peer = fake.peer()
        tasks = [asyncio.ensure_future(conn.getHostname()) for _ in range(3)]
        deadline = time.monotonic() + 10
        while len(held) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        peer.send_raw(
            hostname_reply(held[0].serial, "zero") + hostname_reply(held[1].serial, "one") + hostname_reply(999, "x")
        )
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert results[:2] == ["zero", "one"]
        assert isinstance(results[2], libvirt.libvirtError)
        assert results[2].get_error_code() == libvirt.VIR_ERR_RPC
        assert conn.isAlive() == 0
        await asyncio.wait_for(conn.close(), 10)

    asyncio.run(main())
    fake.handlers.pop("CONNECT_GET_HOSTNAME")


def promoted_as_it_gives_up(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, give_up: Any, expected: type[BaseException]
) -> None:
    """R reads; T waits behind it and stops waiting (``give_up``: wait() returns False or
    raises) but is held up before it acts on that; R's reply comes and R hands the reader
    role to T, the oldest waiting call.  W, a third caller, must still get its reply."""
    real_wait = client_module._Waiter.wait
    t_stopped = threading.Event()
    t_go_on = threading.Event()

    def wait(self: Any, timeout: Any) -> bool:
        if threading.current_thread().name != "T":
            return real_wait(self, timeout)
        real_wait(self, 0.2)  # T waits a while, then stops waiting
        t_stopped.set()
        assert t_go_on.wait(10)  # held up (a thread switch) before it acts on it
        return give_up()  # type: ignore[no-any-return]

    monkeypatch.setattr(client_module._Waiter, "wait", wait)
    hh = fake.hold("CONNECT_GET_HOSTNAME")
    ht = fake.hold("CONNECT_GET_TYPE")
    conn = libvirt.open(fake.uri)
    client = conn._o.client
    peer = fake.peer()
    out: dict[str, Any] = {}
    r = run(out, "R", conn.getHostname)
    peer.wait_for(lambda: len(hh) == 1)
    t = run(out, "T", client.call, GET_TYPE, timeout=0.1)
    peer.wait_for(lambda: len(ht) == 1)
    w = run(out, "W", conn.getHostname)
    peer.wait_for(lambda: len(hh) == 2)
    assert t_stopped.wait(10)
    peer.reply(hh[0], R.remote_connect_get_hostname_ret("r"))
    r.join(10)
    assert out["R"] == "r"
    t_go_on.set()
    t.join(10)
    assert isinstance(out["T"], expected), out["T"]
    peer.reply(hh[1], R.remote_connect_get_hostname_ret("w"))
    w.join(10)
    assert not w.is_alive(), "the reader role was lost: W waits for ever with its reply unread"
    assert out["W"] == "w"
    assert client._reading is False and client.rpc.calls == {}
    fake.handlers.pop("CONNECT_GET_HOSTNAME")
    peer.reply(ht[0], R.remote_connect_get_type_ret("late"))  # T's abandoned call: dropped
    assert conn.getHostname() == "fakehost" and conn.isAlive() == 1
    fake.handlers.pop("CONNECT_GET_TYPE")
    conn.close()


def test_a_caller_promoted_as_its_wait_times_out_passes_the_reader_role_on(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    promoted_as_it_gives_up(fake, monkeypatch, lambda: False, libvirt.libvirtError)


def test_a_caller_interrupted_in_its_wait_passes_the_reader_role_on(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted() -> bool:
        raise KeyboardInterrupt

    promoted_as_it_gives_up(fake, monkeypatch, interrupted, KeyboardInterrupt)


def test_a_death_between_the_send_and_the_entry_of_the_call_fails_the_call(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single caller (the fast path: send first, enter the call after); the connection is
    killed from another thread right after the send.  The call must fail with what the
    connection died of; it used to return None (AttributeError in getHostname)."""
    conn = libvirt.open(fake.uri)
    client = conn._o.client
    real_send = Connection._send
    armed = [True]

    def send(self: Connection, packet: bytes) -> None:
        real_send(self, packet)
        if armed[0] and self is client:
            armed[0] = False
            killer = threading.Thread(target=self.abort, args=(client_module.CLOSE_KEEPALIVE, closed_error()))
            killer.start()
            killer.join()

    monkeypatch.setattr(Connection, "_send", send)
    with pytest.raises(libvirt.libvirtError) as ei:
        conn.getHostname()
    assert not armed[0]
    assert ei.value.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
    assert str(ei.value) == "internal error: client socket is closed"
    assert client._reading is False


def test_a_batching_reader_reports_what_the_connection_died_of(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is killed (keepalive) while the batching reader sleeps with a packet
    queued for it: every caller, the reader's included, gets the keepalive error, not the
    reader's write into the closed socket."""
    monkeypatch.setattr(client_module, "BATCH_IDLE", 10**6)
    held = fake.hold("CONNECT_GET_HOSTNAME")
    conn = libvirt.open(fake.uri)
    client = conn._o.client
    peer = fake.peer()
    real_sleep = client_module._sleep
    armed = [False]
    keepalive = make_error(K.VIR_ERR_INTERNAL_ERROR, K.VIR_FROM_RPC, "connection closed due to keepalive timeout")

    def sleep(seconds: float) -> None:
        if armed[0] and client._batching:
            armed[0] = False
            queued = threading.Thread(target=client.start, args=(HOSTNAME,))  # left to the reader
            queued.start()
            queued.join()
            assert client._send_queue
            killer = threading.Thread(target=client.abort, args=(client_module.CLOSE_KEEPALIVE, keepalive))
            killer.start()
            killer.join()
        real_sleep(seconds)

    monkeypatch.setattr(client_module, "_sleep", sleep)
    out: dict[str, Any] = {}
    n = client_module.BATCH_AT + 2
    ts = [run(out, "0", conn.getHostname)]  # the reader
    peer.wait_for(lambda: len(held) == 1)
    ts += [run(out, str(i), conn.getHostname) for i in range(1, n)]
    peer.wait_for(lambda: len(held) == n)
    armed[0] = True
    peer.ping()  # wakes the reader with n calls in flight: it batches
    for t in ts:
        t.join(10)
    assert not any(t.is_alive() for t in ts) and not armed[0]
    for i in range(n):
        assert isinstance(out[str(i)], libvirt.libvirtError), out[str(i)]
        assert "keepalive timeout" in str(out[str(i)]), (i, str(out[str(i)]))
    fake.handlers.pop("CONNECT_GET_HOSTNAME")
