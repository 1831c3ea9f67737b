"""The ssh, libssh and libssh2 transports against a real sshd carrying a real session to the real libvirtd.

Every test drives the system ``ssh`` through ``sshd`` (tests/harness/sshd.py:
an OpenSSH server on 127.0.0.1 with generated host and user keys, whose
sessions see the ``lab`` daemon's sockets as /run/libvirt), once through
``virt-ssh-helper`` (proxy native/auto) and once through ``nc -U`` (proxy
netcat, with ``socket=`` and ``netcat=``).  Where the C binding can run the
same URI (``peer``: python3-libvirt's own ssh transport over the same sshd,
with the same keyfile/known_hosts and ``no_tty=1``) the results and the
errors are compared field by field.  Nothing may hang: opens and calls have
timeouts, and a killed ssh must fail a pending call at once.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import aio
from pyvirtrpc import uri as U
from pyvirtrpc._gen import constants as C
from pyvirtrpc.transport.command import CommandChannel
from tests.childproc import (
    TIMEOUT,
    c_open_error,
    fields,
    gone,
    our_async_open_error,
    our_open_error,
)
from tests.childproc import script as write_script
from tests.polling import wait_until

libvirt.registerErrorHandler(lambda ctx, err: None, None)

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ helpers
def channel_of(conn: Any) -> CommandChannel:
    ch = conn._o.client.channel
    assert isinstance(ch, CommandChannel), ch
    return ch


def close_conn(conn: Any) -> None:
    """Close, tolerating only the CONNECT_CLOSE race of virt-ssh-helper.

    virt-ssh-helper drops the daemon's last reply when the reply and the
    daemon's close arrive in one poll; libvirt's virConnectClose ignores the
    failed CONNECT_CLOSE (it runs in virConnectDispose).  That behaviour is
    the API layer's, checked by test_close_through_virt_ssh_helper_returns_0;
    here only the transport matters.
    """
    try:
        conn.close()
    except libvirt.libvirtError as exc:
        assert exc.get_error_message().startswith("End of file while reading data"), exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_wrapper(path: Path, sshd: Any, known_hosts: str, *extra: str) -> str:
    """An ssh command= wrapper with its own known_hosts (no ~/.ssh, no ssh_config)."""
    opts = " ".join(
        [
            "-F none",
            f"-o UserKnownHostsFile={known_hosts}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o IdentitiesOnly=yes",
            "-o ControlMaster=no",
            *extra,
        ]
    )
    return write_script(path, f'exec ssh {opts} "$@"\n')


def our_calls(uri: str) -> dict[str, Any]:
    c = libvirt.open(uri, timeout=TIMEOUT)
    try:
        d = c.lookupByName("test")
        out: dict[str, Any] = {
            "hostname": c.getHostname(),
            "domains": sorted(x.name() for x in c.listAllDomains(0)),
            "info": c.getInfo(),
            "type": c.getType(),
            "secure": c.isSecure(),
            "encrypted": c.isEncrypted(),
            "alive": c.isAlive(),
            "uri": c.getURI(),
            "state": d.state(0),
        }
        d.suspend()
        out["suspended"] = d.state(0)
        d.resume()
        out["resumed"] = d.state(0)
        del d  # a domain holds a reference to its connection, as in libvirt
        ch = channel_of(c)
        pid = ch.pid
        assert pid is not None and ch.returncode is None
    finally:
        close_conn(c)
    assert ch.returncode is not None and gone(pid), "the ssh child must be reaped by close()"
    return out


PEER_CALLS = r"""
c = libvirt.open(args["uri"])
d = c.lookupByName("test")
out = {
    "hostname": c.getHostname(),
    "domains": sorted(x.name() for x in c.listAllDomains(0)),
    "info": c.getInfo(),
    "type": c.getType(),
    "secure": c.isSecure(),
    "encrypted": c.isEncrypted(),
    "alive": c.isAlive(),
    "uri": c.getURI(),
    "state": d.state(0),
}
d.suspend()
out["suspended"] = d.state(0)
d.resume()
out["resumed"] = d.state(0)
c.close()
result = out
"""


def remote_netcat(tmp_path: Path) -> tuple[str, Path]:
    """A netcat= for the far side (same filesystem) that leaves a mark, then runs nc."""
    mark = tmp_path / "netcat-ran"
    script = write_script(tmp_path / "mync", f'echo "$@" >> {mark}\nexec nc "$@"\n')
    return script, mark


# ----------------------------------------------------- end to end, both ways
@pytest.mark.parametrize("variant", ["native", "auto", "netcat-socket", "netcat-default-socket", "netcat-path"])
def test_ssh_end_to_end_matches_c_binding(lab: Any, sshd: Any, peer: Any, tmp_path: Path, variant: str) -> None:
    mark: Optional[Path] = None
    if variant == "native":
        uri = sshd.uri(proxy="native", no_tty="1")
    elif variant == "auto":
        uri = sshd.uri(proxy="auto", no_tty="1")  # virt-ssh-helper is installed on the far side
    elif variant == "netcat-socket":
        uri = sshd.uri(lab=lab, no_tty="1")  # socket= implies proxy=netcat
    elif variant == "netcat-default-socket":
        uri = sshd.uri(proxy="netcat", no_tty="1")  # /var/run/libvirt/libvirt-sock is the lab's there
    else:
        netcat, mark = remote_netcat(tmp_path)
        uri = sshd.uri(lab=lab, netcat=netcat, no_tty="1")
    theirs = peer(PEER_CALLS, uri=uri)
    if mark is not None:
        assert mark.read_text().count("-U") == 1
    ours = our_calls(uri)
    # test:///default is shared by every connection to the lab: the state
    # *reason* before our suspend/resume depends on what earlier tests left
    # behind (it resets only when the last connection closes)
    ours["state"] = ours["state"][0]
    theirs["state"] = theirs["state"][0]
    assert ours == theirs
    assert ours["hostname"] == "vm" and ours["domains"] == ["test"]
    assert ours["secure"] == 1 and ours["encrypted"] == 0  # ssh is secure, not "encrypted" for libvirt
    assert ours["suspended"][0] == C.VIR_DOMAIN_PAUSED and ours["resumed"][0] == C.VIR_DOMAIN_RUNNING
    if mark is not None:
        assert mark.read_text().count("-U") == 2, "netcat= must name the far side's nc"


def test_ssh_plan_is_what_runs(lab: Any, sshd: Any) -> None:
    """The child runs plan.argv verbatim, with the plan's environment only."""
    os.environ["PYVIRTRPC_NOT_PASSED"] = "secret-ish"
    try:
        uri = sshd.uri(lab=lab, no_tty="1")
        plan = U.plan(uri)
        c = libvirt.open(uri, timeout=TIMEOUT)
        try:
            ch = channel_of(c)
            assert ch.argv == plan.argv and ch.transport == "ssh" and ch.is_secure
            # the wrapper execs ssh: /proc shows ssh's argv and the environment we gave the wrapper
            argv = Path(f"/proc/{ch.pid}/cmdline").read_bytes().split(b"\0")[:-1]
            assert [a.decode() for a in argv][-len(plan.argv) + 1 :] == list(plan.argv[1:])
            env = dict(
                kv.decode().split("=", 1) for kv in Path(f"/proc/{ch.pid}/environ").read_bytes().split(b"\0") if kv
            )
            assert env.get("LC_ALL") == "C"
            assert "PYVIRTRPC_NOT_PASSED" not in env
            # (the wrapper is a shell script, which adds PWD before exec'ing ssh)
            assert set(env) - {"PWD"} <= set(plan.env_pass) | {"LC_ALL"}
            assert env.get("PATH") == os.environ.get("PATH")
            assert c.getHostname() == "vm"
        finally:
            close_conn(c)
    finally:
        del os.environ["PYVIRTRPC_NOT_PASSED"]


@pytest.mark.parametrize("transport", ["libssh", "libssh2"])
@pytest.mark.parametrize("proxy", ["native", "netcat"])
def test_libssh_transports_over_system_ssh_match_c_binding(
    lab: Any, sshd: Any, peer: Any, transport: str, proxy: str
) -> None:
    """libssh/libssh2 URIs (keyfile, known_hosts, sshauth=privkey) work like the C library's in-process SSH."""
    uri = sshd.uri(transport=transport, proxy=proxy, lab=lab if proxy == "netcat" else None)
    theirs = peer(PEER_CALLS, uri=uri)
    assert our_calls(uri) == theirs


# ------------------------------------------------------------- ssh failures
def test_wrong_key_reports_ssh_stderr_like_c(sshd: Any, peer: Any, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    wrap = ssh_wrapper(tmp_path / "ssh", sshd, str(sshd.known_hosts))
    uri = f"test+ssh://root@127.0.0.1:{sshd.port}/default?command={wrap}&keyfile={key}&no_tty=1"
    ours = our_open_error(uri)
    assert ours == c_open_error(peer, uri)
    assert ours["code"] == C.VIR_ERR_SYSTEM_ERROR and ours["domain"] == C.VIR_FROM_RPC
    assert "Permission denied (publickey)" in ours["message"]


def test_unknown_host_key_fails_unless_no_verify(sshd: Any, peer: Any, tmp_path: Path) -> None:
    kh_theirs, kh_ours = tmp_path / "kh-c", tmp_path / "kh-ours"
    w_theirs = ssh_wrapper(tmp_path / "ssh-c", sshd, str(kh_theirs))
    w_ours = ssh_wrapper(tmp_path / "ssh-ours", sshd, str(kh_ours))
    base = f"test+ssh://root@127.0.0.1:{sshd.port}/default?keyfile={sshd.identity}&no_tty=1"
    # BatchMode (no_tty) and an empty known_hosts: ssh refuses the unknown key
    ours = our_open_error(f"{base}&command={w_ours}")
    assert ours == c_open_error(peer, f"{base}&command={w_theirs}")
    assert "Host key verification failed." in ours["message"]
    assert not kh_ours.exists() or "ssh-ed25519" not in kh_ours.read_text()
    # no_verify=1 is StrictHostKeyChecking=no: connects, and ssh records the key
    assert (
        peer(
            "c = libvirt.open(args['uri']); result = c.getHostname(); c.close()",
            uri=f"{base}&command={w_theirs}&no_verify=1",
        )
        == "vm"
    )
    c = libvirt.open(f"{base}&command={w_ours}&no_verify=1", timeout=TIMEOUT)
    try:
        assert c.getHostname() == "vm"
    finally:
        close_conn(c)
    assert f"[127.0.0.1]:{sshd.port}" in kh_ours.read_text()
    # and now the key is known: a plain open works
    c = libvirt.open(f"{base}&command={w_ours}", timeout=TIMEOUT)
    close_conn(c)


def _isolated_open(uri: str) -> dict[str, Any]:
    """Open in a child without a controlling terminal (ssh cannot prompt there), with a timeout."""
    code = (
        "import json, sys, pyvirtrpc as L\n"
        "L.registerErrorHandler(lambda c, e: None, None)\n"
        "try:\n"
        "    c = L.open(sys.argv[1], timeout=20); r = {'ok': c.getHostname()}\n"
        "except L.libvirtError as e:\n"
        "    r = {'code': e.err[0], 'domain': e.err[1], 'message': e.err[2], 'int1': e.err[7]}\n"
        "print(json.dumps(r))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", code, uri],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        env=env,
        check=False,
    )
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def test_libssh_known_hosts_verify_semantics(sshd: Any, peer: Any, tmp_path: Path) -> None:
    """known_hosts_verify: normal refuses an unknown key, auto adds it, ignore neither checks nor writes."""
    base = f"test+libssh://root@127.0.0.1:{sshd.port}/default?keyfile={sshd.identity}&sshauth=privkey"
    # normal (the default): an unknown host fails, in the C library too (with libssh's own words)
    kh = tmp_path / "kh-normal"
    res = _isolated_open(f"{base}&known_hosts={kh}")
    assert res.get("code") == C.VIR_ERR_SYSTEM_ERROR and "Host key verification failed." in res["message"], res
    with pytest.raises(Exception) as theirs:
        peer("libvirt.open(args['uri'])", uri=f"{base}&known_hosts={tmp_path / 'kh-normal-c'}")
    # libvirt's in-process libssh asks the (absent) auth callback: VIR_ERR_LIBSSH/VIR_FROM_LIBSSH
    assert "Can't verify the session host key" in str(theirs.value)
    # auto: accepted and recorded, by both
    for name, opener in (("kh-auto", None), ("kh-auto-c", peer)):
        path = tmp_path / name
        uri = f"{base}&known_hosts={path}&known_hosts_verify=auto"
        if opener is None:
            assert _isolated_open(uri) == {"ok": "vm"}
        else:
            assert opener("c = libvirt.open(args['uri']); result = c.getHostname(); c.close()", uri=uri) == "vm"
        assert path.exists() and path.read_text().strip(), name
    # ignore: connects without reading or writing the file
    path = tmp_path / "kh-ignore"
    assert _isolated_open(f"{base}&known_hosts={path}&known_hosts_verify=ignore") == {"ok": "vm"}
    assert not path.exists()


def test_nothing_listening_matches_c(sshd: Any, peer: Any, tmp_path: Path) -> None:
    port = free_port()
    wrap = ssh_wrapper(tmp_path / "ssh", sshd, str(sshd.known_hosts))
    uri = f"test+ssh://root@127.0.0.1:{port}/default?command={wrap}&keyfile={sshd.identity}&no_tty=1"
    t0 = time.monotonic()
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(uri, timeout=TIMEOUT)
    assert time.monotonic() - t0 < 5
    ours = our_open_error(uri)
    assert ours == c_open_error(peer, uri)
    assert ours == {
        "code": C.VIR_ERR_SYSTEM_ERROR,
        "domain": C.VIR_FROM_RPC,
        "message": f"Cannot recv data: ssh: connect to host 127.0.0.1 port {port}: Connection refused: "
        "Connection reset by peer",
        "int1": 104,
    }


@pytest.mark.parametrize("command", ["/nonexistent/ssh", "no-such-ssh-binary"])
def test_missing_ssh_binary_matches_c(peer: Any, command: str) -> None:
    uri = f"test+ssh://root@127.0.0.1:1/default?command={command}&no_tty=1"
    assert our_open_error(uri) == c_open_error(peer, uri)


# ------------------------------------------------------- child lifetime
def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return threading.active_count()


@pytest.mark.parametrize("proxy", ["native", "netcat"])
def test_close_reaps_child_and_frees_descriptors(lab: Any, sshd: Any, proxy: str) -> None:
    uri = sshd.uri(proxy=proxy, lab=lab if proxy == "netcat" else None, no_tty="1")
    c = libvirt.open(uri, timeout=TIMEOUT)  # warm up (imports, lazily created objects)
    close_conn(c)
    gc.collect()
    fds, threads = _fd_count(), _threads()
    pids = []
    for _ in range(3):
        c = libvirt.open(uri, timeout=TIMEOUT)
        assert c.getHostname() == "vm"
        pids.append(channel_of(c).pid)
        close_conn(c)
    for pid in pids:
        assert gone(pid), f"child {pid} not reaped"
    assert wait_until(lambda: _fd_count() == fds and _threads() == threads, 2.0), (
        fds,
        _fd_count(),
        threads,
        _threads(),
    )


def test_dropped_connection_reaps_child(lab: Any, sshd: Any) -> None:
    c = libvirt.open(sshd.uri(lab=lab, no_tty="1"), timeout=TIMEOUT)
    pid = channel_of(c).pid
    assert pid is not None and not gone(pid)
    del c
    gc.collect()
    assert wait_until(lambda: gone(pid), 2.0), "a connection dropped without close() must still reap its child"


#: run by a wrapper shell: write the shell's (our child's) descriptors and their targets to argv[1]
LSFD = """
import os, sys
p = os.getppid()
with open(sys.argv[1], "w") as f:
    for n in sorted(os.listdir("/proc/%d/fd" % p), key=int):
        f.write("%s -> %s\\n" % (n, os.readlink("/proc/%d/fd/%s" % (p, n))))
"""


def test_no_descriptor_leaks_into_the_child(lab: Any, sshd: Any, tmp_path: Path) -> None:
    """Only 0, 1 (our socketpair) and 2 (the stderr pipe) reach ssh, even from an inheritable fd of ours."""
    leak = open(tmp_path / "inheritable", "w")  # noqa: SIM115
    os.set_inheritable(leak.fileno(), True)
    first = libvirt.open(sshd.uri(lab=lab, no_tty="1"), timeout=TIMEOUT)
    try:
        # the wrapper shell has a helper list *its* descriptors (a redirection in the
        # shell itself would change them), then execs ssh
        (tmp_path / "lsfd.py").write_text(LSFD)
        wrap = write_script(
            tmp_path / "ssh-fds",
            f'/usr/bin/python3 -I {tmp_path}/lsfd.py {tmp_path}/fds.txt\nexec {sshd.wrapper} "$@"\n',
        )
        c = libvirt.open(sshd.uri(lab=lab, no_tty="1", command=wrap), timeout=TIMEOUT)
        try:
            assert c.getHostname() == "vm"
            # what the wrapper shell was given (before it exec'd ssh, which moves its stdio around)
            listing = [line for line in (tmp_path / "fds.txt").read_text().splitlines() if " -> " in line]
            given = {int(line.split(" -> ")[0]): line.split(" -> ")[1] for line in listing}
            assert sorted(given)[:3] == [0, 1, 2]
            assert given[0] == given[1] and given[0].startswith("socket:") and given[2].startswith("pipe:")
            # beyond 0-2 the shell may hold its own script open (dash: fd 10); nothing of ours
            # (the other connection's socket, its stderr pipe, the inheritable file) got through
            assert all(target == str(tmp_path / "ssh-fds") for n, target in given.items() if n > 2), listing
        finally:
            close_conn(c)
    finally:
        close_conn(first)
        leak.close()


def test_killed_child_fails_pending_call_at_once(lab: Any, sshd: Any) -> None:
    c = libvirt.open(sshd.uri(proxy="native", no_tty="1"), timeout=TIMEOUT)
    ch = channel_of(c)
    pid = ch.pid
    assert pid is not None
    client = c._o.client
    seen: list[tuple[int, Any]] = []
    client.close_listeners.append(lambda reason, err: seen.append((reason, err)))
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = c.getHostname()
        except libvirt.libvirtError as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    os.kill(pid, signal.SIGSTOP)  # ssh relays nothing: the call stays pending
    try:
        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not outcome, "the call should be pending behind the stopped ssh"
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        t.join(5)
        assert not t.is_alive()
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "error" in outcome, outcome
    assert outcome["at"] - killed < 1.0, "a dead child must fail the pending call at once"
    f = fields(outcome["error"])
    assert (f["code"], f["domain"]) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    # SIGKILL leaves no stderr: libvirt's shape with an empty ": " part
    assert f["message"] in (
        "Cannot recv data: : Connection reset by peer",
        "End of file while reading data: : Input/output error",
    ), f
    assert [r for r, _ in seen] == [C.VIR_CONNECT_CLOSE_REASON_EOF]
    assert seen[0][1].get_error_message() == f["message"]
    assert c.isAlive() == 0
    with pytest.raises(libvirt.libvirtError, match="client socket is closed"):
        c.getHostname()
    assert ch.returncode == -signal.SIGKILL and gone(pid)
    close_conn(c)


#: run under both bindings (each in its own process: it registers the default event loop)
CLOSE_CALLBACK = r"""
import os, signal, threading, time


def run(L, uri):
    L.registerErrorHandler(lambda c, e: None, None)
    L.virEventRegisterDefaultImpl()

    def loop():
        while True:
            L.virEventRunDefaultImpl()

    threading.Thread(target=loop, daemon=True).start()
    c = L.open(uri)
    got = []
    c.registerCloseCallback(lambda conn, reason, opaque: got.append(reason), None)
    c.getHostname()
    me = str(os.getpid())
    kids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open("/proc/%s/stat" % p).read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me and stat.split("(", 1)[1].startswith("ssh)"):
                kids.append(int(p))
    assert len(kids) == 1, kids
    os.kill(kids[0], signal.SIGKILL)
    t0 = time.monotonic()
    while not got and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    fired_after = time.monotonic() - t0
    try:
        c.getHostname()
        err = None
    except L.libvirtError as e:
        err = [e.err[0], e.err[1], e.err[2], e.err[7]]
    return {"reasons": got, "fast": fired_after < 1.0, "error": err, "alive": c.isAlive(),
            "reaped": not os.path.exists("/proc/%d" % kids[0])}
"""


def test_close_callback_on_killed_ssh_matches_c(sshd: Any, peer: Any) -> None:
    """With an event loop, the death of ssh fires the close callback (reason EOF) without any call."""
    uri = sshd.uri(proxy="native", no_tty="1")
    theirs = peer(CLOSE_CALLBACK + "\nresult = run(libvirt, args['uri'])\n", uri=uri)
    code = CLOSE_CALLBACK + "\nimport json, sys, pyvirtrpc\nprint(json.dumps(run(pyvirtrpc, sys.argv[1])))\n"
    r = subprocess.run(
        [sys.executable, "-c", code, uri],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout.strip().splitlines()[-1])
    # when the C client reaps its child (disposing of its socket) races with the callback
    del theirs["reaped"]
    assert {k: v for k, v in ours.items() if k != "reaped"} == theirs
    assert ours == {
        "reasons": [C.VIR_CONNECT_CLOSE_REASON_EOF],
        "fast": True,
        "error": [C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, "internal error: client socket is closed", -1],
        "alive": 0,
        "reaped": True,
    }


def test_close_through_virt_ssh_helper_returns_0(sshd: Any, peer: Any) -> None:
    """virConnectClose over virt-ssh-helper returns 0 in the C binding every time.

    virt-ssh-helper loses the CONNECT_CLOSE reply when the daemon's reply
    and its hang-up arrive together (remote_ssh_helper.c shuts down on
    HANGUP with data still buffered); libvirt's client sees EOF there, and
    virConnectClose still returns 0 because the driver's close runs in
    virConnectDispose, whose result is ignored.
    """
    uri = sshd.uri(proxy="native", no_tty="1")
    n = 8
    assert (
        peer(
            "out = []\nfor i in range(args['n']):\n"
            "    c = libvirt.open(args['uri']); c.getHostname(); out.append(c.close())\nresult = out",
            uri=uri,
            n=n,
        )
        == [0] * n
    )
    ours = []
    for _ in range(n):
        c = libvirt.open(uri, timeout=TIMEOUT)
        c.getHostname()
        ours.append(c.close())
    assert ours == [0] * n


# ------------------------------------------------------------------ asyncio
def test_asyncio_client_over_ssh(lab: Any, sshd: Any) -> None:
    uris = [sshd.uri(proxy="native", no_tty="1"), sshd.uri(lab=lab, no_tty="1")]

    async def one(uri: str) -> tuple[Any, int]:
        conn = await aio.open(uri, timeout=TIMEOUT)
        bridge = conn.connection._transport.get_protocol()  # type: ignore[union-attr]
        pid = bridge.channel.pid
        try:
            doms = await conn.listAllDomains()
            d = await conn.lookupByName("test")
            result = (
                await conn.getHostname(),
                [x.name() for x in doms],
                (await d.state())[0],
                await conn.isSecure(),
                await conn.isEncrypted(),
                # several calls in flight at once over the one ssh channel
                await asyncio.gather(*(conn.getHostname() for _ in range(20))),
            )
        finally:
            try:
                await conn.close()
            except libvirt.libvirtError as exc:  # the virt-ssh-helper close race, see above
                assert exc.get_error_message().startswith("End of file while reading data")
        return result, pid

    async def main() -> list[tuple[Any, int]]:
        return [await asyncio.wait_for(one(u), TIMEOUT) for u in uris]

    for result, pid in asyncio.run(main()):
        assert result == ("vm", ["test"], C.VIR_DOMAIN_RUNNING, 1, 0, ["vm"] * 20)
        assert wait_until(lambda pid=pid: gone(pid), 2.0), "the asyncio transport's close must reap the child"


def test_asyncio_errors_match_sync(sshd: Any, tmp_path: Path) -> None:
    port = free_port()
    wrap = ssh_wrapper(tmp_path / "ssh", sshd, str(sshd.known_hosts))
    uri = f"test+ssh://root@127.0.0.1:{port}/default?command={wrap}&keyfile={sshd.identity}&no_tty=1"
    ours = our_open_error(uri)
    assert our_async_open_error(uri) == ours
    assert ours["message"] == (
        f"Cannot recv data: ssh: connect to host 127.0.0.1 port {port}: Connection refused: Connection reset by peer"
    )


def test_asyncio_killed_child_fails_pending_call(lab: Any, sshd: Any) -> None:
    async def main() -> tuple[Any, list[tuple[int, Any]], float, int, Any]:
        conn = await aio.open(sshd.uri(lab=lab, no_tty="1"), timeout=TIMEOUT)
        channel = conn.connection._transport.get_protocol().channel  # type: ignore[union-attr]
        seen: list[tuple[int, Any]] = []
        conn.connection.close_listeners.append(lambda r, e: seen.append((r, e)))
        os.kill(channel.pid, signal.SIGSTOP)
        task = asyncio.ensure_future(conn.getHostname())
        await asyncio.sleep(0.3)
        assert not task.done()
        killed = time.monotonic()
        os.kill(channel.pid, signal.SIGKILL)
        with pytest.raises(libvirt.libvirtError) as err:
            await asyncio.wait_for(task, 5)
        elapsed = time.monotonic() - killed
        await asyncio.sleep(0)
        return err.value, seen, elapsed, channel.pid, channel

    error, seen, elapsed, pid, channel = asyncio.run(main())
    assert elapsed < 1.0
    f = fields(error)
    assert (f["code"], f["domain"]) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    assert f["message"] in (
        "Cannot recv data: : Connection reset by peer",
        "End of file while reading data: : Input/output error",
    ), f
    assert [r for r, _ in seen] == [C.VIR_CONNECT_CLOSE_REASON_EOF]
    assert channel.returncode == -signal.SIGKILL and gone(pid)
