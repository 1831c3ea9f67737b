"""Events: registration on the wire, conversion to libvirt-python's callback arguments, delivery.

Against the real daemon (test driver: domain, network and storage pool events),
side by side with python3-libvirt, and against the fake daemon for the event
kinds the test driver cannot produce (every domain event id 0-27, node
device, secret and QEMU monitor events) and for timing (events while a call
waits, a slow callback).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import libvirt_qemu
from pyvirtrpc._gen import qemu as Q
from pyvirtrpc._gen import remote as R
from tests.fakedaemon import NO_REPLY, FakeDaemon, domain
from tests.polling import wait_until

libvirt.registerErrorHandler(lambda ctx, err: None, None)

UUID = "5b7a3f7e-1a2b-4c3d-9e8f-0123456789ab"
DOMXML = (
    "<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory><vcpu>1</vcpu>"
    "<os><type arch='i686'>hvm</type></os></domain>"
)


# ---------------------------------------------------------------------------
# one scenario, run by pyvirtrpc here and by the C binding in a subprocess
SCENARIO = r"""
import subprocess, threading, time
if args["start_loop"]:
    run_event_loop()  # the peer's helper (tests/harness/peer.py); our side runs with start_loop False
conn = libvirt.open(args["uri"])
log = []
def desc(x):
    if x is conn:
        return "conn"
    if hasattr(x, "UUIDString") and hasattr(x, "name"):
        return ["obj", x.name(), x.UUIDString()]
    return x
def rec(label):
    def cb(*a):
        log.append([label] + [desc(x) for x in a])
    return cb
ids = [
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, rec("lifecycle"), "op-life"),
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, rec("reboot"), "op-reboot"),
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, rec("metadata"), "op-meta"),
    conn.networkEventRegisterAny(None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, rec("net"), "op-net"),
    conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, rec("pool"), "op-pool"),
    conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, rec("refresh"), "op-refresh"),
]
conn.domainEventRegister(rec("legacy1"), "L1")
conn.domainEventRegister(rec("legacy2"), "L2")
for argv in args["commands"]:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
deadline = time.monotonic() + 10
while len(log) < args["expect"] and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.2)
for i in ids[:3]:
    conn.domainEventDeregisterAny(i)
conn.networkEventDeregisterAny(ids[3])
conn.storagePoolEventDeregisterAny(ids[4])
conn.storagePoolEventDeregisterAny(ids[5])
result = {"ids": ids, "log": log, "cbids": sorted(conn.domainEventCallbackID.items()),
          "legacy": sorted(str(v) for v in conn.domainEventCallbacks.values())}
"""

NETXML = (
    "<network><name>evnet</name><uuid>6b7a3f7e-1a2b-4c3d-9e8f-0123456789ab</uuid><bridge name='virbrev0'/></network>"
)
POOLXML = (
    "<pool type='dir'><name>evpool</name><uuid>7b7a3f7e-1a2b-4c3d-9e8f-0123456789ab</uuid>"
    "<target><path>/tmp/evpool</path></target></pool>"
)
#: 6 lifecycle events, each also to the two legacy callbacks, 1 metadata, 4 network, 4 pool + 1 refresh
EXPECTED_EVENTS = 28


def scenario_commands(uri: str, tmp: Path) -> list[list[str]]:
    """virsh commands that make the test driver emit the events (the same for both bindings)."""
    (tmp / "dom.xml").write_text(DOMXML.format(name="evdom", uuid=UUID))
    (tmp / "net.xml").write_text(NETXML)
    (tmp / "pool.xml").write_text(POOLXML)
    v = ["virsh", "-q", "-c", uri]
    return [
        v + ["define", str(tmp / "dom.xml")],
        v + ["start", "evdom"],
        v + ["suspend", "evdom"],
        v + ["resume", "evdom"],
        v + ["desc", "evdom", "--live", "--new-desc", "hello"],
        v + ["destroy", "evdom"],
        v + ["undefine", "evdom"],
        v + ["net-define", str(tmp / "net.xml")],
        v + ["net-start", "evnet"],
        v + ["net-destroy", "evnet"],
        v + ["net-undefine", "evnet"],
        v + ["pool-define", str(tmp / "pool.xml")],
        v + ["pool-start", "evpool"],
        v + ["pool-refresh", "evpool"],
        v + ["pool-destroy", "evpool"],
        v + ["pool-undefine", "evpool"],
    ]


def test_events_side_by_side_with_the_c_binding(loop: Any, lab: Any, peer: Any, tmp_path: Path) -> None:
    """Lifecycle (define, start, suspend, resume, destroy, undefine), metadata, network and pool events."""
    uri = lab.uris["unix"]
    commands = scenario_commands(uri, tmp_path)
    theirs = peer(SCENARIO, uri=uri, start_loop=True, commands=commands, expect=EXPECTED_EVENTS)
    ns: dict[str, Any] = {
        "libvirt": libvirt,
        "args": {"uri": uri, "start_loop": False, "commands": commands, "expect": EXPECTED_EVENTS},
    }
    exec(compile(SCENARIO, "<scenario>", "exec"), ns)
    ns["conn"].close()
    ours = json.loads(json.dumps(ns["result"]))
    assert len(theirs["log"]) == EXPECTED_EVENTS
    assert ours == theirs


def test_lifecycle_events_from_the_real_daemon(loop: Any, lab: Any) -> None:
    conn = libvirt.open(lab.uris["unix"])
    other = libvirt.open(lab.uris["unix"])
    seen: list[tuple[Any, ...]] = []
    threads: set[str] = set()

    def cb(c: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        threads.add(threading.current_thread().name)
        seen.append((c is conn, dom.name(), dom.UUIDString(), event, detail, opaque))

    try:
        cid = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, {"k": 1})
        assert conn.domainEventCallbackID == {cid: {"k": 1}}
        dom = other.defineXML(DOMXML.format(name="evlife", uuid=UUID))
        dom.create()
        dom.suspend()
        dom.resume()
        dom.destroy()
        dom.undefine()
        del dom
        assert wait_until(lambda: len(seen) == 6)
        E = libvirt
        assert seen == [
            (True, "evlife", UUID, E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED, {"k": 1}),
            (True, "evlife", UUID, E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED, {"k": 1}),
            (True, "evlife", UUID, E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, {"k": 1}),
            (True, "evlife", UUID, E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, {"k": 1}),
            (True, "evlife", UUID, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, {"k": 1}),
            (True, "evlife", UUID, E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED, {"k": 1}),
        ]
        # delivered by the event loop, never by a thread that reads replies
        assert threads == {"test-event-loop"}
        conn.domainEventDeregisterAny(cid)
        assert conn.domainEventCallbackID == {}
        other.defineXML(DOMXML.format(name="evlife", uuid=UUID)).undefine()
        time.sleep(0.3)
        assert len(seen) == 6
    finally:
        conn.close()
        other.close()


def test_per_domain_filter_is_sent_and_honoured(loop: Any, lab: Any) -> None:
    conn = libvirt.open(lab.uris["unix"])
    other = libvirt.open(lab.uris["unix"])
    try:
        watched = other.defineXML(DOMXML.format(name="evwatched", uuid=UUID))
        mine = conn.lookupByName("evwatched")
        seen_one: list[str] = []
        seen_all: list[str] = []
        a = conn.domainEventRegisterAny(
            mine, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda c, d, e, x, o: seen_one.append(d.name()), None
        )
        b = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda c, d, e, x, o: seen_all.append(d.name()), None
        )
        # the filter is on the wire: two server registrations, one with the domain
        st = conn._o.client.event_state  # type: ignore[union-attr]
        remote = {e.id: e.remote_id for e in st.registry.entries.values()}
        assert remote[a] >= 0 and remote[b] >= 0 and remote[a] != remote[b]
        other.defineXML(DOMXML.format(name="evother", uuid="8b7a3f7e-1a2b-4c3d-9e8f-0123456789ab")).undefine()
        watched.create()
        watched.destroy()
        assert wait_until(lambda: len(seen_all) == 4)
        time.sleep(0.2)
        assert seen_one == ["evwatched", "evwatched"]
        assert seen_all == ["evother", "evother", "evwatched", "evwatched"]
        watched.undefine()
        del watched, mine
    finally:
        conn.close()
        other.close()


def test_filter_on_the_wire_with_the_fake(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        dom = libvirt.virDomain(conn, domain("filtered"))
        cid = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, lambda *a: None, None)
        call = peer.wait_call("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY")
        assert call.args.eventID == libvirt.VIR_DOMAIN_EVENT_ID_REBOOT
        assert (call.args.dom.name, call.args.dom.uuid) == ("filtered", bytes(range(16)))
        conn.domainEventDeregisterAny(cid)
        call = peer.wait_call("CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY")
        assert call.args.callbackID == 100  # the server's id, not ours (0)
        assert peer.registrations == {}
        del dom
    finally:
        conn.close()


def test_registration_bookkeeping_matches_the_c_binding(loop: Any, lab: Any, peer: Any) -> None:
    code = r"""
import threading
if args["start_loop"]:
    libvirt.virEventRegisterDefaultImpl()
c = libvirt.open(args["uri"])
out = []
def attempt(f):
    libvirt.virResetLastError()
    try:
        out.append(["ok", f()])
    except libvirt.libvirtError as e:
        out.append(["err", str(e), e.err])
    except KeyError as e:
        out.append(["KeyError"])
cb = lambda *a: None
d = c.lookupByName("test")
attempt(lambda: c.domainEventRegisterAny(None, 0, cb, "a"))
attempt(lambda: c.domainEventRegisterAny(None, 0, cb, "b"))
attempt(lambda: c.domainEventRegisterAny(d, 0, cb, "c"))
attempt(lambda: c.domainEventRegisterAny(d, 0, cb, "d"))
attempt(lambda: c.domainEventRegisterAny(None, 99, cb, "e"))
attempt(lambda: c.domainEventRegisterAny(None, -1, cb, "f"))
attempt(lambda: c.networkEventRegisterAny(None, 0, cb, "g"))
attempt(lambda: c.storagePoolEventRegisterAny(None, 5, cb, "h"))
attempt(lambda: c.domainEventDeregisterAny(77))
attempt(lambda: c.domainEventDeregisterAny(-1))
attempt(lambda: c.networkEventDeregisterAny(0))
attempt(lambda: c.domainEventDeregisterAny(0))
attempt(lambda: c.domainEventDeregisterAny(0))
attempt(lambda: c.domainEventRegisterAny(None, 0, cb, "i"))
attempt(lambda: c.domainEventRegister(cb, "j"))
attempt(lambda: c.domainEventDeregister(lambda *a: None))
attempt(lambda: c.domainEventDeregister(cb))
attempt(lambda: sorted(c.domainEventCallbackID.items()))
result = out
"""
    theirs = peer(code, uri=lab.uris["unix"], start_loop=True)
    ns: dict[str, Any] = {"libvirt": libvirt, "args": {"uri": lab.uris["unix"], "start_loop": False}}
    exec(compile(code, "<bookkeeping>", "exec"), ns)
    ours = json.loads(json.dumps(ns["result"]))
    ns.pop("d")
    ns["c"].close()

    def nopointers(x: Any) -> Any:
        text = re.sub(r"0x[0-9a-f]+", "0xPTR", json.dumps(x))  # "event callback function %p not registered"
        # the daemon's own callback ids depend on what other clients registered before
        return json.loads(re.sub(r"network event callback \d+", "network event callback N", text))

    assert nopointers(ours) == nopointers(theirs)


def test_registering_without_a_loop_fails_as_libvirt(lab: Any, peer: Any) -> None:
    code = r"""
c = libvirt.open(args["uri"])
try:
    c.domainEventRegisterAny(None, 0, lambda *a: None, None)
except libvirt.libvirtError as e:
    result = list(e.err)
"""
    theirs = peer(code, uri=lab.uris["unix"])
    conn = libvirt.open(lab.uris["unix"])
    try:
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.domainEventRegisterAny(None, 0, lambda *a: None, None)
    finally:
        conn.close()
    assert list(ei.value.err or ()) == theirs
    assert theirs[2] == "internal error: could not initialize domain event timer"


def test_event_27_is_sent_and_the_daemon_answers(loop: Any, lab: Any) -> None:
    """NIC_MAC_CHANGE (27) is in the vendored protocol; a 9.0 daemon refuses it itself."""
    conn = libvirt.open(lab.uris["unix"])
    try:
        with pytest.raises(libvirt.libvirtError, match="unsupported event ID 27"):
            conn.domainEventRegisterAny(None, 27, lambda *a: None, None)
        assert conn.domainEventCallbackID == {}
        assert conn._o.client.event_state.registry.entries == {}  # type: ignore[union-attr]
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# timing: events during a call, slow callbacks
def test_events_arrive_while_a_call_waits(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        seen: list[tuple[int, float]] = []
        conn.domainEventRegisterAny(None, 0, lambda c, d, e, x, o: seen.append((e, time.monotonic())), None)
        rid = peer.registration("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY", 0)
        fake.handlers["CONNECT_GET_HOSTNAME"] = lambda p, call: NO_REPLY
        result: list[tuple[str, float]] = []
        th = threading.Thread(target=lambda: result.append((conn.getHostname(), time.monotonic())))
        th.start()
        call = peer.wait_call("CONNECT_GET_HOSTNAME")
        for ev in range(5):
            peer.send_event(
                "DOMAIN_EVENT_CALLBACK_LIFECYCLE",
                R.remote_domain_event_callback_lifecycle_msg(rid, R.remote_domain_event_lifecycle_msg(domain(), ev, 0)),
            )
        assert wait_until(lambda: len(seen) == 5, 5)
        assert th.is_alive()  # the call is still waiting: the events came first
        peer.reply(call, R.remote_connect_get_hostname_ret("answered"))
        th.join(5)
        assert result[0][0] == "answered"
        assert [e for e, _ in seen] == [0, 1, 2, 3, 4]
        assert max(t for _, t in seen) < result[0][1]
    finally:
        conn.close()


def test_events_arrive_while_calls_run_real_daemon(loop: Any, lab: Any) -> None:
    conn = libvirt.open(lab.uris["unix"])
    other = libvirt.open(lab.uris["unix"])
    seen: list[int] = []
    stop = threading.Event()
    calls = [0]

    def busy() -> None:
        while not stop.is_set():
            conn.getHostname()
            calls[0] += 1

    try:
        conn.domainEventRegisterAny(None, 0, lambda c, d, e, x, o: seen.append(e), None)
        workers = [threading.Thread(target=busy) for _ in range(3)]
        for w in workers:
            w.start()
        for i in range(10):
            d = other.defineXML(DOMXML.format(name=f"evbusy{i}", uuid=UUID[:-2] + f"{i:02d}"))
            d.undefine()
        assert wait_until(lambda: len(seen) == 20)
        stop.set()
        for w in workers:
            w.join(10)
        assert calls[0] > 20
        assert seen == [libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED] * 10
    finally:
        stop.set()
        conn.close()
        other.close()


def test_a_slow_callback_does_not_hold_up_replies(loop: Any, lab: Any) -> None:
    conn = libvirt.open(lab.uris["unix"])
    other = libvirt.open(lab.uris["unix"])
    entered = threading.Event()
    release = threading.Event()

    def slow(c: Any, d: Any, e: int, x: int, o: Any) -> None:
        entered.set()
        release.wait(10)

    try:
        conn.domainEventRegisterAny(None, 0, slow, None)
        other.defineXML(DOMXML.format(name="evslow", uuid=UUID)).undefine()
        assert entered.wait(5)
        # the loop thread is stuck in the callback; calls on the same connection still complete
        t0 = time.monotonic()
        for _ in range(50):
            assert conn.getHostname()
        assert time.monotonic() - t0 < 2.0
        results: list[str] = []
        ths = [threading.Thread(target=lambda: results.append(conn.getHostname())) for _ in range(8)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(5)
        assert len(results) == 8
    finally:
        release.set()
        conn.close()
        other.close()


def test_callback_exception_is_printed_and_others_still_run(loop: Any, fake: FakeDaemon, capfd: Any) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        seen: list[int] = []

        def bad(*a: Any) -> None:
            raise RuntimeError("callback failed")

        conn.domainEventRegisterAny(None, 1, bad, None)
        conn.domainEventRegisterAny(None, 7, lambda c, d, o: seen.append(7), None)
        r1 = peer.registration("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY", 1)
        r7 = peer.registration("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY", 7)
        peer.send_event(
            "DOMAIN_EVENT_CALLBACK_REBOOT",
            R.remote_domain_event_callback_reboot_msg(r1, R.remote_domain_event_reboot_msg(domain())),
        )
        peer.send_event(
            "DOMAIN_EVENT_CALLBACK_CONTROL_ERROR",
            R.remote_domain_event_callback_control_error_msg(r7, R.remote_domain_event_control_error_msg(domain())),
        )
        assert wait_until(lambda: seen == [7])
        assert "RuntimeError: callback failed" in capfd.readouterr().err
        assert conn.getHostname() == "fakehost"
    finally:
        conn.close()


def test_unknown_event_messages_are_dropped(loop: Any, fake: FakeDaemon) -> None:
    from pyvirtrpc.packet import MESSAGE, OK, encode_packet

    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        peer.send_raw(encode_packet(R.PROGRAM, 1, 9999, MESSAGE, 1, OK, b"\0" * 12))
        assert conn.getHostname() == "fakehost"
        assert conn.isAlive() == 1
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# every event message -> libvirt-python's callback arguments (fake daemon)
DOM = domain("fakedom", bytes(range(16)), 7)
DOM_UUID = "00010203-0405-0607-0809-0a0b0c0d0e0f"


def _tp(field: str, type_: int, value: Any) -> Any:
    return R.remote_typed_param(field, R.remote_typed_param_value(type_, value))


PARAMS = [
    _tp("i", libvirt.VIR_TYPED_PARAM_INT, -3),
    _tp("ui", libvirt.VIR_TYPED_PARAM_UINT, 4),
    _tp("l", libvirt.VIR_TYPED_PARAM_LLONG, -(2**40)),
    _tp("ul", libvirt.VIR_TYPED_PARAM_ULLONG, 2**63),
    _tp("d", libvirt.VIR_TYPED_PARAM_DOUBLE, 1.5),
    _tp("b", libvirt.VIR_TYPED_PARAM_BOOLEAN, 1),
    _tp("s", libvirt.VIR_TYPED_PARAM_STRING, "text"),
]
PARAMS_DICT = {"i": -3, "ui": 4, "l": -(2**40), "ul": 2**63, "d": 1.5, "b": True, "s": "text"}
ADDR_L = R.remote_domain_event_graphics_address(0, "127.0.0.1", "5900")
ADDR_R = R.remote_domain_event_graphics_address(1, "::1", "43210")
SUBJECT = [
    R.remote_domain_event_graphics_identity("x509dname", "CN=alice"),
    R.remote_domain_event_graphics_identity("saslUsername", "alice"),
]


def _wrapped(msg_cls: str, **inner: Any) -> Callable[[int], Any]:
    """A callback message that wraps the legacy one as ``.msg``."""

    def make(cid: int) -> Any:
        legacy = getattr(R, msg_cls.replace("_callback_", "_"))(dom=DOM, **inner)
        return getattr(R, msg_cls)(callbackID=cid, msg=legacy)

    return make


def _flat(msg_cls: str, **fields: Any) -> Callable[[int], Any]:
    def make(cid: int) -> Any:
        return getattr(R, msg_cls)(callbackID=cid, dom=DOM, **fields)

    return make


def _pm(msg_cls: str, reason: int) -> Callable[[int], Any]:
    def make(cid: int) -> Any:
        legacy = getattr(R, msg_cls.replace("_callback_", "_"))(dom=DOM)
        return getattr(R, msg_cls)(callbackID=cid, reason=reason, msg=legacy)

    return make


# (event id, message name, message builder, the arguments libvirt-python passes between dom and opaque)
DOMAIN_CASES: list[tuple[int, str, Callable[[int], Any], tuple[Any, ...]]] = [
    (0, "DOMAIN_EVENT_CALLBACK_LIFECYCLE", _wrapped("remote_domain_event_callback_lifecycle_msg", event=5, detail=1), (5, 1)),  # noqa: E501
    (1, "DOMAIN_EVENT_CALLBACK_REBOOT", _wrapped("remote_domain_event_callback_reboot_msg"), ()),
    (2, "DOMAIN_EVENT_CALLBACK_RTC_CHANGE", _wrapped("remote_domain_event_callback_rtc_change_msg", offset=-3600), (-3600,)),  # noqa: E501
    (3, "DOMAIN_EVENT_CALLBACK_WATCHDOG", _wrapped("remote_domain_event_callback_watchdog_msg", action=2), (2,)),
    (4, "DOMAIN_EVENT_CALLBACK_IO_ERROR",
     _wrapped("remote_domain_event_callback_io_error_msg", srcPath="/img", devAlias="virtio-disk0", action=1),
     ("/img", "virtio-disk0", 1)),
    (5, "DOMAIN_EVENT_CALLBACK_GRAPHICS",
     _wrapped("remote_domain_event_callback_graphics_msg", phase=1, local=ADDR_L, remote=ADDR_R, authScheme="vnc",
              subject=SUBJECT),
     (1, {"family": 0, "node": "127.0.0.1", "service": "5900"}, {"family": 1, "node": "::1", "service": "43210"}, "vnc",
      [("x509dname", "CN=alice"), ("saslUsername", "alice")])),
    (6, "DOMAIN_EVENT_CALLBACK_IO_ERROR_REASON",
     _wrapped("remote_domain_event_callback_io_error_reason_msg", srcPath="/img", devAlias="d0", action=2, reason="enospc"),  # noqa: E501
     ("/img", "d0", 2, "enospc")),
    (7, "DOMAIN_EVENT_CALLBACK_CONTROL_ERROR", _wrapped("remote_domain_event_callback_control_error_msg"), ()),
    (8, "DOMAIN_EVENT_CALLBACK_BLOCK_JOB",
     _wrapped("remote_domain_event_callback_block_job_msg", path="/img", type=2, status=0), ("/img", 2, 0)),
    (9, "DOMAIN_EVENT_CALLBACK_DISK_CHANGE",
     _wrapped("remote_domain_event_callback_disk_change_msg", oldSrcPath=None, newSrcPath="/new.iso", devAlias="cd0",
              reason=0),
     (None, "/new.iso", "cd0", 0)),
    (10, "DOMAIN_EVENT_CALLBACK_TRAY_CHANGE",
     _wrapped("remote_domain_event_callback_tray_change_msg", devAlias="cd0", reason=1), ("cd0", 1)),
    (11, "DOMAIN_EVENT_CALLBACK_PMWAKEUP", _pm("remote_domain_event_callback_pmwakeup_msg", 3), (3,)),
    (12, "DOMAIN_EVENT_CALLBACK_PMSUSPEND", _pm("remote_domain_event_callback_pmsuspend_msg", 4), (4,)),
    (13, "DOMAIN_EVENT_CALLBACK_BALLOON_CHANGE",
     _wrapped("remote_domain_event_callback_balloon_change_msg", actual=2**40), (2**40,)),
    (14, "DOMAIN_EVENT_CALLBACK_PMSUSPEND_DISK", _pm("remote_domain_event_callback_pmsuspend_disk_msg", 5), (5,)),
    (15, "DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED",
     _wrapped("remote_domain_event_callback_device_removed_msg", devAlias="net0"), ("net0",)),
    (16, "DOMAIN_EVENT_BLOCK_JOB_2", _flat("remote_domain_event_block_job_2_msg", dst="vda", type=4, status=3),
     ("vda", 4, 3)),
    (17, "DOMAIN_EVENT_CALLBACK_TUNABLE", _flat("remote_domain_event_callback_tunable_msg", params=PARAMS), (PARAMS_DICT,)),  # noqa: E501
    (18, "DOMAIN_EVENT_CALLBACK_AGENT_LIFECYCLE",
     _flat("remote_domain_event_callback_agent_lifecycle_msg", state=1, reason=2), (1, 2)),
    (19, "DOMAIN_EVENT_CALLBACK_DEVICE_ADDED", _flat("remote_domain_event_callback_device_added_msg", devAlias="hostdev0"),  # noqa: E501
     ("hostdev0",)),
    (20, "DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION",
     _flat("remote_domain_event_callback_migration_iteration_msg", iteration=9), (9,)),
    (21, "DOMAIN_EVENT_CALLBACK_JOB_COMPLETED", _flat("remote_domain_event_callback_job_completed_msg", params=PARAMS),
     (PARAMS_DICT,)),
    (22, "DOMAIN_EVENT_CALLBACK_DEVICE_REMOVAL_FAILED",
     _flat("remote_domain_event_callback_device_removal_failed_msg", devAlias="mem1"), ("mem1",)),
    (23, "DOMAIN_EVENT_CALLBACK_METADATA_CHANGE",
     _flat("remote_domain_event_callback_metadata_change_msg", type=2, nsuri="http://example.org/"),
     (2, "http://example.org/")),
    (24, "DOMAIN_EVENT_BLOCK_THRESHOLD",
     _flat("remote_domain_event_block_threshold_msg", dev="vda[1]", path=None, threshold=2**33, excess=512),
     ("vda[1]", None, 2**33, 512)),
    (25, "DOMAIN_EVENT_MEMORY_FAILURE", _flat("remote_domain_event_memory_failure_msg", recipient=1, action=2, flags=3),
     (1, 2, 3)),
    (26, "DOMAIN_EVENT_MEMORY_DEVICE_SIZE_CHANGE",
     _flat("remote_domain_event_memory_device_size_change_msg", alias="virtiomem0", size=2**30), ("virtiomem0", 2**30)),
    (27, "DOMAIN_EVENT_NIC_MAC_CHANGE",
     _flat("remote_domain_event_nic_mac_change_msg", alias="net0", oldMAC="52:54:00:00:00:01", newMAC="52:54:00:00:00:02"),  # noqa: E501
     ("net0", "52:54:00:00:00:01", "52:54:00:00:00:02")),
]  # fmt: skip


def test_every_domain_event_id_is_covered() -> None:
    assert sorted(c[0] for c in DOMAIN_CASES) == list(range(28))


def test_every_domain_event_converts_as_libvirt_python(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        seen: dict[int, tuple[Any, ...]] = {}

        def rec(event_id: int) -> Callable[..., None]:
            def cb(*a: Any) -> None:
                seen[event_id] = a

            return cb

        for event_id, _name, _make, _args in DOMAIN_CASES:
            conn.domainEventRegisterAny(None, event_id, rec(event_id), f"op{event_id}")
        for event_id, name, make, _args in DOMAIN_CASES:
            peer.send_event(name, make(peer.registration("CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY", event_id)))
        assert wait_until(lambda: len(seen) == 28)
        for event_id, name, _make, args in DOMAIN_CASES:
            got = seen[event_id]
            assert got[0] is conn, name
            assert isinstance(got[1], libvirt.virDomain), name
            assert (got[1].name(), got[1].UUIDString(), got[1].ID()) == ("fakedom", DOM_UUID, 7), name
            assert got[2:-1] == args, name
            assert got[-1] == f"op{event_id}", name
        assert isinstance(seen[17][2]["b"], bool) and isinstance(seen[17][2]["d"], float)
    finally:
        conn.close()


LEGACY_CASES: list[tuple[int, str, Any, tuple[Any, ...]]] = [
    (0, "DOMAIN_EVENT_LIFECYCLE", R.remote_domain_event_lifecycle_msg(DOM, 2, 0), (2, 0)),
    (1, "DOMAIN_EVENT_REBOOT", R.remote_domain_event_reboot_msg(DOM), ()),
    (2, "DOMAIN_EVENT_RTC_CHANGE", R.remote_domain_event_rtc_change_msg(DOM, 5), (5,)),
    (11, "DOMAIN_EVENT_PMWAKEUP", R.remote_domain_event_pmwakeup_msg(DOM), (0,)),
    (13, "DOMAIN_EVENT_BALLOON_CHANGE", R.remote_domain_event_balloon_change_msg(DOM, 1024), (1024,)),
]


def test_daemon_without_event_callbacks_uses_the_legacy_procedures(loop: Any, tmp_path: Path) -> None:
    """Feature 14 missing: REGISTER_ANY (167) by event id, messages without callbackID, client-side filter."""
    with FakeDaemon(tmp_path, features=(10, 15)) as fake:
        registered: list[int] = []
        fake.handlers["CONNECT_DOMAIN_EVENT_REGISTER_ANY"] = lambda p, call: registered.append(call.args.eventID)
        fake.handlers["CONNECT_DOMAIN_EVENT_DEREGISTER_ANY"] = lambda p, call: registered.remove(call.args.eventID)
        conn = libvirt.open(fake.uri)
        try:
            peer = fake.peer()
            seen: list[tuple[Any, ...]] = []
            ids = [
                conn.domainEventRegisterAny(None, eid, lambda *a: seen.append(a[2:-1]), None)
                for eid, *_ in LEGACY_CASES
            ]
            other = libvirt.virDomain(conn, domain("other", bytes(16), 2))
            filtered: list[Any] = []
            fid = conn.domainEventRegisterAny(other, 0, lambda *a: filtered.append(a), None)
            # one global server registration per event id: the filtered one reused it
            assert registered == [eid for eid, *_ in LEGACY_CASES]
            for _eid, name, msg, _args in LEGACY_CASES:
                peer.send_event(name, msg)
            assert wait_until(lambda: len(seen) == len(LEGACY_CASES))
            assert seen == [args for *_x, args in LEGACY_CASES]
            assert filtered == []  # not for "other": filtered here, by UUID
            conn.domainEventDeregisterAny(fid)
            assert 0 in registered  # the unfiltered lifecycle callback still needs it
            for i in ids:
                conn.domainEventDeregisterAny(i)
            assert registered == []
            del other
        finally:
            conn.close()


OTHER_CASES: list[tuple[str, int, str, Callable[[int], Any], Callable[[Any], Any], tuple[Any, ...]]] = [
    ("networkEventRegisterAny", 0, "NETWORK_EVENT_LIFECYCLE",
     lambda cid: R.remote_network_event_lifecycle_msg(cid, R.remote_nonnull_network("n", bytes(16)), 2, 0),
     lambda o: ("n", o.UUIDString()), (2, 0)),
    ("networkEventRegisterAny", 1, "NETWORK_EVENT_CALLBACK_METADATA_CHANGE",
     lambda cid: R.remote_network_event_callback_metadata_change_msg(cid, R.remote_nonnull_network("n", bytes(16)), 1, None),  # noqa: E501
     lambda o: ("n", o.UUIDString()), (1, None)),
    ("storagePoolEventRegisterAny", 0, "STORAGE_POOL_EVENT_LIFECYCLE",
     lambda cid: R.remote_storage_pool_event_lifecycle_msg(cid, R.remote_nonnull_storage_pool("p", bytes(16)), 4, 0),
     lambda o: ("p", o.UUIDString()), (4, 0)),
    ("storagePoolEventRegisterAny", 1, "STORAGE_POOL_EVENT_REFRESH",
     lambda cid: R.remote_storage_pool_event_refresh_msg(cid, R.remote_nonnull_storage_pool("p", bytes(16))),
     lambda o: ("p", o.UUIDString()), ()),
    ("nodeDeviceEventRegisterAny", 0, "NODE_DEVICE_EVENT_LIFECYCLE",
     lambda cid: R.remote_node_device_event_lifecycle_msg(cid, R.remote_nonnull_node_device("scsi_host9"), 0, 0),
     lambda o: (o.name(),), (0, 0)),
    ("nodeDeviceEventRegisterAny", 1, "NODE_DEVICE_EVENT_UPDATE",
     lambda cid: R.remote_node_device_event_update_msg(cid, R.remote_nonnull_node_device("scsi_host9")),
     lambda o: (o.name(),), ()),
    ("secretEventRegisterAny", 0, "SECRET_EVENT_LIFECYCLE",
     lambda cid: R.remote_secret_event_lifecycle_msg(cid, R.remote_nonnull_secret(bytes(16), 1, "/vol"), 0, 0),
     lambda o: (o.UUIDString(), o.usageType(), o.usageID()), (0, 0)),
    ("secretEventRegisterAny", 1, "SECRET_EVENT_VALUE_CHANGED",
     lambda cid: R.remote_secret_event_value_changed_msg(cid, R.remote_nonnull_secret(bytes(16), 1, "/vol")),
     lambda o: (o.UUIDString(), o.usageType(), o.usageID()), ()),
]  # fmt: skip


def test_network_pool_nodedev_secret_events_convert(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        seen: dict[str, tuple[Any, ...]] = {}
        regs = {}
        for method, eid, name, _make, _obj, _args in OTHER_CASES:
            cid = getattr(conn, method)(None, eid, lambda *a, _n=name: seen.__setitem__(_n, a), name)
            regs[name] = peer.registration(_register_proc(method), eid)
            assert cid >= 0
        for _method, _eid, name, make, _obj, _args in OTHER_CASES:
            peer.send_event(name, make(regs[name]))
        assert wait_until(lambda: len(seen) == len(OTHER_CASES))
        for _method, _eid, name, _make, obj, args in OTHER_CASES:
            got = seen[name]
            assert got[0] is conn
            assert obj(got[1]) == obj(got[1])  # accessors work
            assert got[2:-1] == args, name
            assert got[-1] == name
        assert seen["NETWORK_EVENT_LIFECYCLE"][1].name() == "n"
        assert seen["SECRET_EVENT_LIFECYCLE"][1].usageID() == "/vol"
    finally:
        conn.close()


def _register_proc(method: str) -> str:
    return {
        "networkEventRegisterAny": "CONNECT_NETWORK_EVENT_REGISTER_ANY",
        "storagePoolEventRegisterAny": "CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY",
        "nodeDeviceEventRegisterAny": "CONNECT_NODE_DEVICE_EVENT_REGISTER_ANY",
        "secretEventRegisterAny": "CONNECT_SECRET_EVENT_REGISTER_ANY",
    }[method]


def test_qemu_monitor_events(loop: Any, fake: FakeDaemon) -> None:
    conn = libvirt.open(fake.uri)
    try:
        peer = fake.peer()
        dom = libvirt.virDomain(conn, DOM)
        seen: list[tuple[Any, ...]] = []
        a = libvirt_qemu.qemuMonitorEventRegister(conn, dom, "SHUTDOWN", lambda *x: seen.append(x), "qa")
        b = libvirt_qemu.qemuMonitorEventRegister(
            conn, None, "^BLOCK", lambda *x: seen.append(x), "qb",
            libvirt_qemu.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX,
        )  # fmt: skip
        assert conn.qemuMonitorEventCallbackID == {a: "qa", b: "qb"}  # type: ignore[attr-defined]
        calls = [c for c in peer.calls if c.name == "CONNECT_DOMAIN_MONITOR_EVENT_REGISTER"]
        assert calls[0].program == Q.PROGRAM
        assert (calls[0].args.dom.name, calls[0].args.event, calls[0].args.flags) == ("fakedom", "SHUTDOWN", 0)
        assert (calls[1].args.dom, calls[1].args.event, calls[1].args.flags) == (None, "^BLOCK", 1)
        ra, rb = sorted(peer.registrations)
        peer.send_event(
            "DOMAIN_MONITOR_EVENT",
            Q.qemu_domain_monitor_event_msg(ra, DOM, "SHUTDOWN", 1700000000, 123456, '{"guest":true}'),
            program=Q.PROGRAM,
        )
        peer.send_event(
            "DOMAIN_MONITOR_EVENT",
            Q.qemu_domain_monitor_event_msg(rb, DOM, "BLOCK_JOB_READY", 5, 6, None),
            program=Q.PROGRAM,
        )
        assert wait_until(lambda: len(seen) == 2)
        assert seen[0][0] is conn and seen[0][1].name() == "fakedom"
        assert seen[0][2:] == ("SHUTDOWN", 1700000000, 123456, '{"guest":true}', "qa")
        assert seen[1][2:] == ("BLOCK_JOB_READY", 5, 6, None, "qb")
        libvirt_qemu.qemuMonitorEventDeregister(conn, a)
        libvirt_qemu.qemuMonitorEventDeregister(conn, b)
        assert peer.registrations == {}
        del dom
    finally:
        conn.close()


def test_qemu_monitor_register_on_a_read_only_connection(loop: Any, lab: Any, peer: Any) -> None:
    code = r"""
import libvirt_qemu
libvirt.virEventRegisterDefaultImpl()
c = libvirt.openReadOnly(args["uri"])
try:
    libvirt_qemu.qemuMonitorEventRegister(c, None, None, lambda *a: None, None)
except libvirt.libvirtError as e:
    result = list(e.err)
"""
    theirs = peer(code, uri=lab.uris["unix_ro"])
    conn = libvirt.openReadOnly(lab.uris["unix_ro"])
    try:
        with pytest.raises(libvirt.libvirtError) as ei:
            libvirt_qemu.qemuMonitorEventRegister(conn, None, None, lambda *a: None, None)
    finally:
        conn.close()
    assert list(ei.value.err or ()) == theirs


def test_legacy_domain_event_register(loop: Any, lab: Any) -> None:
    conn = libvirt.open(lab.uris["unix"])
    other = libvirt.open(lab.uris["unix"])
    a: list[Any] = []
    b: list[Any] = []

    def cb_a(c: Any, d: Any, e: int, x: int, o: Any) -> None:
        a.append((c is conn, d.name(), e, o))

    def cb_b(c: Any, d: Any, e: int, x: int, o: Any) -> None:
        b.append((d.name(), e, o))

    try:
        conn.domainEventRegister(cb_a, "A")
        conn.domainEventRegister(cb_b, "B")
        assert conn.domainEventCallbacks == {cb_a: "A", cb_b: "B"}
        other.defineXML(DOMXML.format(name="evlegacy", uuid=UUID)).undefine()
        assert wait_until(lambda: len(a) == 2 and len(b) == 2)
        assert a == [(True, "evlegacy", 0, "A"), (True, "evlegacy", 1, "A")]
        conn.domainEventDeregister(cb_a)
        with pytest.raises(KeyError):
            conn.domainEventDeregister(cb_a)
        other.defineXML(DOMXML.format(name="evlegacy", uuid=UUID)).undefine()
        assert wait_until(lambda: len(b) == 4)
        assert len(a) == 2
        conn.domainEventDeregister(cb_b)
        assert not hasattr(conn, "domainEventCallbacks")
        conn.domainEventDeregister(cb_b)  # nothing registered at all: silently ignored, as libvirt-python
    finally:
        conn.close()
        other.close()


# ---------------------------------------------------------------------------
# the registry alone (sans I/O)
def _drive(gen: Any, replies: list[Any]) -> tuple[Any, list[Any]]:
    """Run a registry generator, answering its RPCs from ``replies``; return (result, steps)."""
    steps = []
    try:
        step = next(gen)
        while True:
            steps.append(step)
            step = gen.send(replies.pop(0))
    except StopIteration as stop:
        return stop.value, steps


def test_registry_fans_out_like_the_c_client() -> None:
    from pyvirtrpc import _events as ev

    reg = ev.Registry(server_filter=True)
    dom = R.remote_nonnull_domain("d", bytes(16), 1)
    cid, steps = _drive(
        reg.register(ev.DOMAIN, None, None, 0, "cb", None), [R.remote_connect_domain_event_callback_register_any_ret(7)]
    )
    assert (cid, [s.proc.name for s in steps]) == (0, ["REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"])
    # the legacy lifecycle callback shares the server registration: no RPC
    legacy, steps = _drive(reg.register(ev.DOMAIN, None, None, 0, "legacy", None, legacy=True), [])
    assert (legacy, steps) == (1, [])
    # a per-domain filter is a registration of its own, with the domain on the wire
    fid, steps = _drive(
        reg.register(ev.DOMAIN, None, dom, 0, "cb", None), [R.remote_connect_domain_event_callback_register_any_ret(8)]
    )
    assert fid == 2 and steps[0].args.dom is dom
    spec = ev.SPECS["REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE"]
    assert [e.id for e in reg.matches(spec, 7, "x")] == [0, 1]
    assert [e.id for e in reg.matches(spec, 8, ev.key_of(ev.DOMAIN, dom))] == [2]
    # the last one of a pair tells the server, with the server's id
    assert _drive(reg.deregister(ev.DOMAIN, 0), [])[1] == []
    _, steps = _drive(reg.deregister(ev.DOMAIN, 1), [None])
    assert steps[0].proc.name == "REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY"
    assert steps[0].args.callbackID == 7
    # deregistering through another kind's API uses that API's procedure, as the C driver does
    _, steps = _drive(reg.deregister(ev.NETWORK, 2), [None])
    assert steps[0].proc.name == "REMOTE_PROC_CONNECT_NETWORK_EVENT_DEREGISTER_ANY"
    assert steps[0].args.callbackID == 8
    assert reg.entries == {}
