"""Keepalive: the sans-I/O state machine, and the sync client against the fake and the real daemon.

libvirt's rules (virkeepalive.c, remote_driver.c): a PING after ``interval``
seconds without a packet from the server, the connection closed (reason
KEEPALIVE, "connection closed due to keepalive timeout") after ``count``
PINGs without an answer; any packet resets the count; the server's PINGs are
always answered; ``setKeepAlive`` needs an event loop registered before the
open, and returns 1 when the server does not support keepalive.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc.core import keepalive as ka
from tests.fakedaemon import NO_REPLY, FakeDaemon
from tests.polling import wait_until

libvirt.registerErrorHandler(lambda ctx, err: None, None)

CORE = Path(libvirt.__file__).parent / "core" / "keepalive.py"
FORBIDDEN = {"socket", "ssl", "asyncio", "threading", "select", "time", "logging", "subprocess"}


# ------------------------------------------------------------ sans-I/O core
def test_core_keepalive_imports_no_io() -> None:
    tree = ast.parse(CORE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_ping_after_interval_then_dead_after_count() -> None:
    k = ka.KeepAlive(now=100.0)
    assert k.start(5, 3, now=100.0) == 5000
    assert k.trigger(105.0) == (ka.PING, 5000)
    assert k.trigger(110.0) == (ka.PING, 5000)
    assert k.trigger(115.0) == (ka.PING, 5000)
    # interval * (count + 1) after the last packet
    assert k.trigger(120.0) == (ka.DEAD, -1)


def test_any_packet_resets_the_count_and_the_interval() -> None:
    k = ka.KeepAlive(now=0.0)
    k.start(5, 2, now=0.0)
    assert k.trigger(5.0)[0] == ka.PING
    k.received(7.0)  # the PONG (or anything)
    action, delay = k.trigger(10.0)  # the timer fired early: wait for the rest
    assert action == ka.NOTHING and delay == 2000
    assert k.trigger(12.0) == (ka.PING, 5000)
    assert k.trigger(17.0) == (ka.PING, 5000)
    assert k.trigger(22.0) == (ka.DEAD, -1)


def test_count_zero_dies_after_one_silent_interval() -> None:
    k = ka.KeepAlive(now=0.0)
    k.start(3, 0, now=0.0)
    assert k.trigger(3.0) == (ka.DEAD, -1)


def test_start_accounts_for_the_silence_so_far() -> None:
    k = ka.KeepAlive(now=0.0)
    k.received(10.0)
    assert k.start(5, 1, now=12.0) == 3000
    k2 = ka.KeepAlive(now=0.0)
    assert k2.start(5, 1, now=60.0) == 0  # silent for longer than the interval: at once
    assert k2.trigger(60.0) == (ka.PING, 5000)


def test_start_stop_restart_as_libvirt() -> None:
    k = ka.KeepAlive(now=0.0)
    assert k.start(5, 1, now=0.0) == 5000
    assert k.start(7, 1, now=0.0) is None  # already enabled
    k.stop()
    with pytest.raises(libvirt.libvirtError) as ei:
        k.start(5, 1, now=1.0)
    assert ei.value.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
    assert ei.value.get_error_domain() == libvirt.VIR_FROM_RPC
    assert str(ei.value) == "internal error: keepalive interval already set"
    with pytest.raises(libvirt.libvirtError) as ei:
        ka.KeepAlive().start(ka.INTERVAL_MAX + 1, 1, now=0.0)
    assert "too large" in str(ei.value)


def test_timeout_and_disabled_states() -> None:
    k = ka.KeepAlive(now=0.0)
    assert k.timeout(1.0) == -1
    assert k.trigger(1.0) == (ka.NOTHING, -1)
    k.start(4, 1, now=0.0)
    assert k.timeout(1.0) == 3000
    assert k.timeout(9.0) == 0


def test_dead_error_is_libvirts() -> None:
    e = ka.dead_error()
    assert e.err == (
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_FROM_RPC,
        "internal error: connection closed due to keepalive timeout",
        2,
        "internal error: %s",
        "connection closed due to keepalive timeout",
        None,
        -1,
        -1,
    )


# --------------------------------------------------------------- fake daemon
def test_open_with_a_loop_probes_keepalive(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        features = [c.args.feature for c in peer.calls if c.name == "CONNECT_SUPPORTS_FEATURE"]
        # libvirt's order: keepalive before CONNECT_OPEN, then 14 and 15 after it
        assert features == [10, 14, 15]
        names = [c.name for c in peer.calls]
        assert names.index("CONNECT_SUPPORTS_FEATURE") < names.index("CONNECT_OPEN")
    finally:
        conn.close()


def test_pings_after_silence_and_stays_up_while_answered(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        assert conn.setKeepAlive(1, 2) == 0
        assert conn.setKeepAlive(1, 2) == 0  # already running: no change, as libvirt
        assert wait_until(lambda: peer.pings >= 3, 6)
        assert conn.isAlive() == 1
        assert conn.getHostname() == "fakehost"
        # stopping it: no more PINGs
        assert conn.setKeepAlive(0, 0) == 0
        n = peer.pings
        time.sleep(2.2)
        assert peer.pings == n
        # a second start with an interval is refused after a stop, as in libvirt
        with pytest.raises(libvirt.libvirtError, match="keepalive interval already set"):
            conn.setKeepAlive(1, 2)
    finally:
        conn.close()


def test_frozen_server_closes_with_keepalive_and_fails_calls(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    peer = fake.peer()
    reasons: list[tuple[int, float]] = []
    conn.registerCloseCallback(lambda c, reason, opaque: reasons.append((reason, time.monotonic())), None)
    assert conn.setKeepAlive(1, 1) == 0
    fake.handlers["CONNECT_GET_HOSTNAME"] = lambda p, call: NO_REPLY
    failure: list[Any] = []

    def call() -> None:
        try:
            conn.getHostname()
        except libvirt.libvirtError as exc:
            failure.append((exc, time.monotonic()))

    t0 = time.monotonic()
    peer.freeze()
    th = threading.Thread(target=call)
    th.start()
    th.join(10)
    assert not th.is_alive()
    assert wait_until(lambda: reasons, 5)
    reason, t_close = reasons[0]
    exc, t_fail = failure[0]
    assert reason == libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE
    assert exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
    assert exc.get_error_domain() == libvirt.VIR_FROM_RPC
    assert str(exc) == "internal error: connection closed due to keepalive timeout"
    # interval * (count + 1) = 2 s, give or take the loop's granularity
    assert 1.5 < t_close - t0 < 3.5
    assert abs(t_fail - t_close) < 0.5
    assert conn.isAlive() == 0
    assert len(reasons) == 1
    # once closed, keepalive cannot be set again (libvirt drops its keepalive object)
    with pytest.raises(libvirt.libvirtError, match="the caller doesn't support keepalive protocol"):
        conn.setKeepAlive(1, 1)
    peer.thaw()
    conn.close()


def test_held_call_survives_while_the_server_answers_pings(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        assert conn.setKeepAlive(1, 1) == 0
        fake.handlers["CONNECT_GET_HOSTNAME"] = lambda p, call: NO_REPLY
        result: list[str] = []
        th = threading.Thread(target=lambda: result.append(conn.getHostname()))
        th.start()
        call = peer.wait_call("CONNECT_GET_HOSTNAME")
        time.sleep(3.5)  # longer than interval * (count + 1): the PONGs keep it alive
        assert conn.isAlive() == 1
        assert peer.pings >= 2
        from pyvirtrpc._gen import remote as R

        peer.reply(call, R.remote_connect_get_hostname_ret("late but fine"))
        th.join(5)
        assert result == ["late but fine"]
    finally:
        conn.close()


def test_server_without_keepalive_returns_1(loop: Any, tmp_path: Path) -> None:
    with FakeDaemon(tmp_path, features=(14, 15)) as fake:
        conn = libvirt.open(fake.uri)
        try:
            assert conn.setKeepAlive(5, 3) == 1
            assert conn.setKeepAlive(0, 0) == 1
        finally:
            conn.close()


def test_ping_storm_is_answered_and_does_not_desync(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        peer.ping(5000)
        # answered by the loop thread (no call in progress)
        assert wait_until(lambda: peer.pongs == 5000, 20)
        peer.ping(2000)
        assert conn.getHostname() == "fakehost"  # and by a caller that reads
        assert wait_until(lambda: peer.pongs == 7000, 20)
        assert conn.isAlive() == 1
    finally:
        conn.close()


def test_server_pings_are_answered_without_a_loop(fake: FakeDaemon) -> None:
    # no event loop: nobody reads between calls, but a call answers what came meanwhile
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        assert [c.args.feature for c in peer.calls if c.name == "CONNECT_SUPPORTS_FEATURE"] == [14, 15]
        peer.ping(300)
        time.sleep(0.3)
        assert peer.pongs == 0
        assert conn.getHostname() == "fakehost"
        assert wait_until(lambda: peer.pongs == 300, 5)
    finally:
        conn.close()


def test_set_keepalive_without_a_loop_fails_as_libvirt(fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.setKeepAlive(5, 3)
        assert ei.value.err == (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_REMOTE,
            "internal error: the caller doesn't support keepalive protocol; perhaps it's missing event loop "
            "implementation",
            2,
            "internal error: %s",
            "the caller doesn't support keepalive protocol; perhaps it's missing event loop implementation",
            None,
            -1,
            -1,
        )
        assert libvirt.virGetLastErrorCode() == libvirt.VIR_ERR_INTERNAL_ERROR
    finally:
        conn.close()


# --------------------------------------------------------------- real daemon
def test_real_daemon_keepalive_both_ways(loop: Any, make_lab: Any) -> None:
    """The daemon PINGs us every second (keepalive 1:1): the loop answers; ours are answered too."""
    lab = make_lab(keepalive=(1, 1), tcp=False, tls=False)
    conn = libvirt.open(lab.uris["unix"])
    try:
        client = conn._o.client  # type: ignore[union-attr]
        assert conn.setKeepAlive(1, 1) == 0
        time.sleep(4.5)  # idle: no call reads anything, only the loop
        assert conn.isAlive() == 1
        assert client.rpc.pings_received >= 2
        assert client.rpc.pongs_received >= 2
        assert conn.getHostname()
    finally:
        conn.close()


def test_real_daemon_drops_a_client_that_does_not_answer(make_lab: Any) -> None:
    """Without a loop nothing reads between calls; the daemon never PINGs us (no probe), so all is well.

    The C client behaves the same: no event loop, no keepalive probe, no PINGs.
    """
    lab = make_lab(keepalive=(1, 1), tcp=False, tls=False)
    conn = libvirt.open(lab.uris["unix"])
    try:
        time.sleep(3.5)
        assert conn.getHostname()
        assert conn._o.client.rpc.pings_received == 0  # type: ignore[union-attr]
    finally:
        conn.close()


def test_set_keepalive_matches_the_c_binding(loop: Any, lab: Any, peer: Any) -> None:
    code = r"""
libvirt.virEventRegisterDefaultImpl()
c = libvirt.open(args["uri"])
out = [c.setKeepAlive(5, 3), c.setKeepAlive(5, 3), c.setKeepAlive(0, 3)]
try:
    c.setKeepAlive(5, 3)
except libvirt.libvirtError as e:
    out.append(list(e.err))
out.append(c.setKeepAlive(-1, 0))
result = out
"""
    theirs = peer(code, uri=lab.uris["unix"])
    conn = libvirt.open(lab.uris["unix"])
    try:
        ours: list[Any] = [conn.setKeepAlive(5, 3), conn.setKeepAlive(5, 3), conn.setKeepAlive(0, 3)]
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as e:
            ours.append(list(e.err or ()))
        ours.append(conn.setKeepAlive(-1, 0))
    finally:
        conn.close()
    assert ours == theirs


def test_set_keepalive_without_loop_matches_the_c_binding(lab: Any, peer: Any) -> None:
    code = r"""
c = libvirt.open(args["uri"])
try:
    c.setKeepAlive(5, 3)
except libvirt.libvirtError as e:
    result = list(e.err)
"""
    theirs = peer(code, uri=lab.uris["unix"])
    conn = libvirt.open(lab.uris["unix"])
    try:
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.setKeepAlive(5, 3)
    finally:
        conn.close()
    assert list(ei.value.err or ()) == theirs
