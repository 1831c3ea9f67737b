"""Many calls in flight on one sync connection: combined writes, batched replies, the reader role.

The sync client lets several threads share a connection (client.py): a
thread that finds another one writing leaves its packet in a queue for the
writer (one write for several packets), and the reader completes every
reply a read brought, several per read when they come together.  Against
the real daemon (threads, mixed procedures, every result checked) and, for
what a daemon cannot be made to do on demand (all replies in one write,
a reply behind an event or an error in the same read), the fake one.  The
core's batch path is also checked without I/O.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import _xdr
from pyvirtrpc import client as client_module
from pyvirtrpc._gen import constants as K
from pyvirtrpc._gen import remote as R
from pyvirtrpc._gen import virnet as V
from pyvirtrpc.client import Connection
from pyvirtrpc.core.rpc import RPC, ReceiveError
from pyvirtrpc.packet import ERROR, MESSAGE, OK, REPLY, encode_packet
from tests.fakedaemon import Call, FakeDaemon, Peer
from tests.harness.lab import Lab
from tests.polling import wait_until

libvirt.registerErrorHandler(lambda ctx, err: None, None)

HOSTNAME = R.PROC_BY_NAME["REMOTE_PROC_CONNECT_GET_HOSTNAME"]
GET_TYPE = R.PROC_BY_NAME["REMOTE_PROC_CONNECT_GET_TYPE"]


def unix_uri(lab: Lab) -> str:
    return f"test+unix:///default?socket={lab.info['sockets']['rw']}"


def reply_packet(serial: int, proc: Any, value: Any) -> bytes:
    return encode_packet(R.PROGRAM, 1, proc.number, REPLY, serial, OK, _xdr.encode(proc.ret, value))


# ------------------------------------------------------------ real daemon
@pytest.mark.parametrize("threads", [2, 16, 48])
def test_threads_share_one_connection(lab: Lab, threads: int) -> None:
    """Every thread gets its own, right answers (no packet stranded, none crossed)."""
    conn = libvirt.open(unix_uri(lab))
    expected = {
        "getHostname": conn.getHostname(),
        "getType": conn.getType(),
        "getCapabilities": conn.getCapabilities(),
        "getInfo": conn.getInfo(),
        "listAllDomains": [d.name() for d in conn.listAllDomains()],
    }
    errors: list[BaseException] = []
    counts = [0] * threads
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            start.wait()
            for k in range(60):
                name = list(expected)[(i + k) % len(expected)]
                got = getattr(conn, name)()
                if name == "listAllDomains":
                    got = [d.name() for d in got]
                assert got == expected[name], (name, got)
                counts[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    alive = [t for t in ts if t.is_alive()]
    try:
        assert not alive, f"{len(alive)} threads still waiting: a packet was stranded or a reply lost"
        assert not errors, errors[:3]
        assert counts == [60] * threads
        assert conn.getHostname() == expected["getHostname"]  # still in step afterwards
    finally:
        conn.close()


# ------------------------------------------------------------ fake daemon
def hostname_reply(c: Call) -> bytes:
    return reply_packet(c.serial, HOSTNAME, R.remote_connect_get_hostname_ret(f"h{c.serial}"))


def run_held_hostname_calls(
    fake: FakeDaemon, n: int, deliver: Callable[[Peer, list[Call], dict[int, str]], None]
) -> None:
    """``n`` threads call getHostname on one connection; the fake holds every call
    until ``deliver(peer, held, results)`` answers them; each thread must get its own answer."""
    held = fake.hold("CONNECT_GET_HOSTNAME")
    conn = libvirt.open(fake.uri)
    peer = fake.peer()
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = conn.getHostname()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    try:
        for t in ts:
            t.start()
        peer.wait_for(lambda: len(held) == n)
        deliver(peer, held, results)
        for t in ts:
            t.join(10)
        assert not any(t.is_alive() for t in ts)
        assert sorted(results.values()) == sorted(f"h{c.serial}" for c in held)
        assert conn.isAlive() == 1
    finally:
        fake.handlers.pop("CONNECT_GET_HOSTNAME")
        conn.close()


def test_replies_in_one_write_complete_every_waiting_thread(fake: FakeDaemon) -> None:
    """Eight calls are held, then all replies arrive in one write, in reverse order."""

    def deliver(peer: Peer, held: list[Call], results: dict[int, str]) -> None:
        peer.send_raw(b"".join(hostname_reply(c) for c in reversed(held)))

    run_held_hostname_calls(fake, 8, deliver)


def test_reader_role_passes_from_thread_to_thread_as_replies_come_one_by_one(fake: FakeDaemon) -> None:
    """Replies in serial order, one write each, the next only after the previous caller returned.

    The first caller reads; the others entered their calls while it was
    reading and sleep.  Each reply completes the call of the thread that
    holds the reader role, so the role must pass on every time, or the
    remaining callers would wait for ever.
    """

    def deliver(peer: Peer, held: list[Call], results: dict[int, str]) -> None:
        for n, c in enumerate(sorted(held, key=lambda c: c.serial), 1):
            peer.send_raw(hostname_reply(c))
            assert wait_until(lambda n=n: len(results) == n), f"reply {n} did not complete its call"

    run_held_hostname_calls(fake, 5, deliver)


def test_reply_after_an_event_and_an_error_in_the_same_read(fake: FakeDaemon) -> None:
    """reply, event, error reply, reply in one write: each goes where it belongs."""
    held = fake.hold("CONNECT_GET_HOSTNAME")
    conn = libvirt.open(fake.uri)
    peer = fake.peer()
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        try:
            results[i] = conn.getHostname()
        except libvirt.libvirtError as exc:
            results[i] = exc

    ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    try:
        for t in ts:
            t.start()
        peer.wait_for(lambda: len(held) == 3)
        ping = encode_packet(0x6B656570, 1, 1, MESSAGE, 0, OK, b"")
        err = V.virNetMessageError(
            K.VIR_ERR_NO_DOMAIN, K.VIR_FROM_TEST, "no such thing", K.VIR_ERR_ERROR, None, "x", None, None, -1, -1, None
        )
        error_packet = encode_packet(
            R.PROGRAM, 1, HOSTNAME.number, REPLY, held[1].serial, ERROR, _xdr.encode(V._c_virNetMessageError, err)
        )
        peer.send_raw(
            reply_packet(held[0].serial, HOSTNAME, R.remote_connect_get_hostname_ret("first"))
            + ping
            + error_packet
            + reply_packet(held[2].serial, HOSTNAME, R.remote_connect_get_hostname_ret("third"))
        )
        for t in ts:
            t.join(10)
        assert not any(t.is_alive() for t in ts)
        values = sorted(str(v) if isinstance(v, str) else f"error {v.get_error_code()}" for v in results.values())
        assert values == ["error 42", "first", "third"]
        peer.wait_for(lambda: peer.pongs == 1)  # the PING in the middle was answered
        assert conn.isAlive() == 1
    finally:
        fake.handlers.pop("CONNECT_GET_HOSTNAME")
        conn.close()


# --------------------------------------------------- the write side, alone
class _SlowChannel:
    """A channel whose first write blocks until released: the writer is busy while others send."""

    poll_first = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def sendall(self, data: bytes) -> None:
        if not self.writes and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        self.writes.append(bytes(data))

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def test_packets_of_other_threads_are_combined_into_one_write() -> None:
    channel = _SlowChannel()
    conn = Connection(channel)  # type: ignore[arg-type]
    first = threading.Thread(target=conn.send_packet, args=(b"A" * 28,))
    first.start()
    assert channel.entered.wait(10)
    # the writer is busy: these return at once, their packets queued
    for p in (b"B" * 28, b"C" * 28, b"D" * 28):
        conn.send_packet(p)
    assert channel.writes == []
    channel.release.set()
    first.join(10)
    assert channel.writes == [b"A" * 28, b"B" * 28 + b"C" * 28 + b"D" * 28]
    conn.send_packet(b"E" * 28)  # and the next one is written at once
    assert channel.writes[-1] == b"E" * 28


def test_a_failed_combined_write_fails_the_connection() -> None:
    """The write that carries other threads' packets fails: their calls fail with it."""

    class Broken(_SlowChannel):
        def sendall(self, data: bytes) -> None:
            super().sendall(data)
            if len(self.writes) == 2:
                raise BrokenPipeError(32, "Broken pipe")

    channel = Broken()
    conn = Connection(channel)  # type: ignore[arg-type]
    raised: list[BaseException] = []

    def first() -> None:
        try:
            conn.send_packet(b"X" * 28)
        except libvirt.libvirtError as exc:
            raised.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert channel.entered.wait(10)
    call = conn.start(HOSTNAME)  # queued behind the busy writer: returns at once
    channel.release.set()
    t.join(10)
    assert channel.writes == [b"X" * 28, call.packet]
    assert not conn.alive
    assert raised and "Cannot write data" in str(raised[0])
    with pytest.raises(libvirt.libvirtError) as ei:
        conn.finish(call, timeout=5)
    assert ei.value.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR
    assert "Cannot write data" in str(ei.value)


class _PausingLock:
    """A send lock whose thread B, once it let go of it, is held up before it looks at the queue."""

    def __init__(self, resume: threading.Event) -> None:
        self._lock = threading.Lock()
        self._resume = resume
        self.paused = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()
        if threading.current_thread().name == "B" and not self.paused:
            self.paused = True
            assert self._resume.wait(10)


def test_one_threads_packets_go_out_in_order() -> None:
    """A's first packet is queued behind B's write; B lets go of the send lock but has not
    looked at the queue yet when A sends its second packet: that one must not overtake the first."""
    channel = _SlowChannel()
    conn = Connection(channel)  # type: ignore[arg-type]
    resume = threading.Event()
    conn._send_lock = _PausingLock(resume)  # type: ignore[assignment]
    b = threading.Thread(target=conn.send_packet, args=(b"B" * 28,), name="B")
    b.start()
    assert channel.entered.wait(10)
    conn.send_packet(b"1" * 28)  # the lock is busy: queued
    channel.release.set()
    assert wait_until(lambda: conn._send_lock.paused)  # type: ignore[attr-defined]
    conn.send_packet(b"2" * 28)
    resume.set()
    b.join(10)
    wire = b"".join(channel.writes)
    assert sorted(wire) == sorted(b"B" * 28 + b"1" * 28 + b"2" * 28)
    assert wire.index(b"1") < wire.index(b"2"), channel.writes


# ------------------------------------------------------------- the core
def test_core_completes_every_reply_of_one_read_and_keeps_order() -> None:
    rpc = RPC({R.PROGRAM: R.PROCEDURES})
    calls = [rpc.request(R.PROGRAM, 1, HOSTNAME) for _ in range(4)]
    typ = rpc.request(R.PROGRAM, 1, GET_TYPE)
    data = b"".join(
        reply_packet(c.serial, HOSTNAME, R.remote_connect_get_hostname_ret(f"h{c.serial}")) for c in calls[:3]
    )
    # a PING between, then a reply split across two reads
    data += encode_packet(0x6B656570, 1, 1, MESSAGE, 0, OK, b"")
    tail = reply_packet(calls[3].serial, HOSTNAME, R.remote_connect_get_hostname_ret("last"))
    tail += reply_packet(typ.serial, GET_TYPE, R.remote_connect_get_type_ret("TEST"))
    done = rpc.receive(data + tail[:10])
    assert [c.serial for c in done] == [c.serial for c in calls[:3]]
    assert [c.result.hostname for c in done] == [f"h{c.serial}" for c in calls[:3]]
    assert rpc.outgoing and rpc.pings_received == 1
    done = rpc.receive(tail[10:])
    assert [c.serial for c in done] == [calls[3].serial, typ.serial]
    assert calls[3].result.hostname == "last" and typ.result.type == "TEST"
    assert rpc.calls == {} and not rpc.deframer.buffered


def test_core_batch_stops_at_a_reply_nobody_waits_for() -> None:
    rpc = RPC({R.PROGRAM: R.PROCEDURES})
    call = rpc.request(R.PROGRAM, 1, HOSTNAME)
    data = reply_packet(call.serial, HOSTNAME, R.remote_connect_get_hostname_ret("ok"))
    data += reply_packet(call.serial + 99, HOSTNAME, R.remote_connect_get_hostname_ret("stray"))
    with pytest.raises(ReceiveError) as ei:
        rpc.receive(data)
    assert ei.value.error.get_error_code() == libvirt.VIR_ERR_RPC
    assert "no call with that serial" in str(ei.value.error)
    # the reply before the stray one completed its call: the driver must still hand it over
    assert ei.value.completed == [call] and call.done and call.result.hostname == "ok"


# ------------------------------------------------------ batching under load
@pytest.fixture
def batch_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Each sleep of a batching reader (client.BATCH_AT calls or more in flight)."""
    seen: list[float] = []
    real = client_module._sleep

    def spy(seconds: float) -> None:
        seen.append(seconds)
        real(seconds)

    monkeypatch.setattr(client_module, "_sleep", spy)
    return seen


def test_reader_batches_under_load(lab: Lab, batch_sleeps: list[float]) -> None:
    """24 threads, mixed calls: the reader batches, callers queue their packets, every answer is right."""
    conn = libvirt.open(unix_uri(lab))
    try:
        expected = {"getHostname": conn.getHostname(), "getType": conn.getType(), "getInfo": conn.getInfo()}
        assert batch_sleeps == []
        errors: list[BaseException] = []
        done = [0] * 24

        def work(i: int) -> None:
            try:
                for k in range(50):
                    name = list(expected)[(i + k) % len(expected)]
                    assert getattr(conn, name)() == expected[name]
                    done[i] += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(24)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not any(t.is_alive() for t in ts) and not errors, errors[:3]
        assert done == [50] * 24
        assert batch_sleeps and set(batch_sleeps) == {client_module.BATCH_DELAY}
        # batched callers were woken one after another (see Connection._pass), not all at once
        assert conn._o is not None and conn._o.client._passes > 0
        n = len(batch_sleeps)
        for _ in range(20):  # one caller: no batching
            assert conn.getHostname() == expected["getHostname"]
        assert len(batch_sleeps) == n
    finally:
        conn.close()


def test_queued_packets_go_out_while_the_readers_own_call_is_held(fake: FakeDaemon, batch_sleeps: list[float]) -> None:
    """The reader's own call gets no answer for a while; other threads' calls, queued for the
    batching reader, are still sent (and answered) meanwhile, not when the reader's reply comes."""
    held = fake.hold("CONNECT_GET_TYPE")
    conn = libvirt.open(fake.uri)
    peer = fake.peer()
    got_type: list[str] = []
    reader = threading.Thread(target=lambda: got_type.append(conn.getType()), daemon=True)
    reader.start()
    peer.wait_for(lambda: len(held) == 1)
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        results[i] = [conn.getHostname() for _ in range(30)]

    ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(12)]
    try:
        for t in ts:
            t.start()
        deadline = time.monotonic() + 20
        for t in ts:
            t.join(max(deadline - time.monotonic(), 0))
        if any(t.is_alive() for t in ts):
            peer.die()  # free the stuck threads, then fail
            pytest.fail("a queued packet was not sent while the reader's call was held")
        assert results == {i: ["fakehost"] * 30 for i in range(12)}
        assert batch_sleeps  # the reader did batch
        assert reader.is_alive() and got_type == []
        peer.reply(held[0], R.remote_connect_get_type_ret("FAKE"))
        reader.join(10)
        assert got_type == ["FAKE"]
        assert conn.getHostname() == "fakehost"
    finally:
        fake.handlers.pop("CONNECT_GET_TYPE", None)
        conn.close()


def test_reader_stops_batching_while_the_daemon_is_slow(fake: FakeDaemon, batch_sleeps: list[float]) -> None:
    """Eight calls held for a second: the batching reader gives up after BATCH_IDLE empty sleeps
    and waits in poll() (a handful of sleeps, not one per 0.1 ms), and every call is answered."""

    def deliver(peer: Peer, held: list[Call], results: dict[int, str]) -> None:
        peer.ping()  # wakes the reader with all eight in flight: it starts batching
        peer.wait_for(lambda: peer.pongs == 1)
        time.sleep(1.0)
        # a reader that kept batching would have slept ~6000 times by now
        assert 1 <= len(batch_sleeps) <= 10, len(batch_sleeps)
        peer.send_raw(b"".join(hostname_reply(c) for c in held))

    run_held_hostname_calls(fake, 8, deliver)


def test_a_stalled_wake_up_chain_is_woken_at_once(
    fake: FakeDaemon, batch_sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batching reader wakes the callers its replies completed one at a time, each woken
    caller waking the next when it blocks in its next call.  Callers that make no next call
    break that chain: after one sleep without progress the reader wakes all the rest, rather
    than one per sleep."""
    # the reader keeps batching while its own call is held (no idle fallback to poll()),
    # and sleeps long enough for the sleeps to be counted from here
    monkeypatch.setattr(client_module, "BATCH_IDLE", 10**6)
    monkeypatch.setattr(client_module, "BATCH_DELAY", 0.02)

    def deliver(peer: Peer, held: list[Call], results: dict[int, str]) -> None:
        peer.ping()  # wakes the reader with all sixteen in flight: it starts batching
        peer.wait_for(lambda: peer.pongs == 1)
        first = sorted(held, key=lambda c: c.serial)
        # the lowest serial is the reader's own call (the first caller takes the role);
        # eight other callers get their replies, and make no further call
        before = len(batch_sleeps)
        peer.send_raw(b"".join(hostname_reply(c) for c in first[1:9]))
        deadline = time.monotonic() + 10
        while len(results) < 8 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(results) == 8
        # one sleep to see the chain stall, one more at most for timing; one per caller otherwise
        assert len(batch_sleeps) - before <= 4, len(batch_sleeps) - before
        peer.send_raw(b"".join(hostname_reply(c) for c in first[9:] + first[:1]))

    run_held_hostname_calls(fake, 16, deliver)


class _ChainStealingLock:
    """The connection lock, but whoever enters it by ``with`` finds the chain of waiters
    already woken, as if another thread had woken them while it waited for the lock."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._inner = threading.Lock()
        self.stolen = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._inner.acquire(blocking, timeout)

    def release(self) -> None:
        self._inner.release()

    def __enter__(self) -> bool:
        ok = self._inner.acquire()
        chain = self._conn._chain
        if chain:
            self.stolen += 1
            self._conn._wake_all()
        return ok

    def __exit__(self, *exc: object) -> None:
        self._inner.release()


def test_a_reader_that_finds_the_chain_emptied_while_it_waited_for_the_lock_goes_on(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batching reader sees waiters in the chain, then waits for the lock to wake the
    first; meanwhile a woken caller wakes the last of them.  The reader must find the chain
    empty and go on (it used to pop from the empty list: IndexError in its caller)."""
    monkeypatch.setattr(client_module, "BATCH_IDLE", 10**6)
    locks: list[_ChainStealingLock] = []
    real_init = Connection.__init__

    def init(self: Connection, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self._lock = _ChainStealingLock(self)  # type: ignore[assignment]
        locks.append(self._lock)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "__init__", init)

    def deliver(peer: Peer, held: list[Call], results: dict[int, str]) -> None:
        peer.ping()  # all sixteen in flight: the reader batches
        peer.wait_for(lambda: peer.pongs == 1)
        first = sorted(held, key=lambda c: c.serial)
        peer.send_raw(b"".join(hostname_reply(c) for c in first[1:9]))
        assert wait_until(lambda: len(results) == 8)
        peer.send_raw(b"".join(hostname_reply(c) for c in first[9:] + first[:1]))

    run_held_hostname_calls(fake, 16, deliver)
    assert sum(lock.stolen for lock in locks) > 0
