"""The ext transport (``command=``): a local program whose stdin/stdout carry the protocol.

libvirt runs ``command`` with no arguments, its stdin and stdout one end of
a socketpair and its stderr a pipe; the program has to reach the daemon by
itself.  The tests use small wrapper scripts around ``nc -U`` and ``socat``
to the ``lab`` daemon's socket, compare with the C binding (``peer``) on
the same URIs, and check the child's environment and descriptors, stderr in
errors, exec failures, a child dying mid-call, SIGPIPE and the asyncio
client.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import aio
from pyvirtrpc import uri as U
from pyvirtrpc._gen import constants as C
from pyvirtrpc.transport import command as cmd
from pyvirtrpc.transport.command import CommandChannel
from tests.childproc import TIMEOUT, c_open_error, fields, gone, our_open_error, peer_fields, script
from tests.polling import wait_until

libvirt.registerErrorHandler(lambda ctx, err: None, None)

ROOT = Path(__file__).resolve().parent.parent

PEER_CALLS = r"""
c = libvirt.open(args["uri"])
d = c.lookupByName("test")
out = {
    "hostname": c.getHostname(),
    "domains": sorted(x.name() for x in c.listAllDomains(0)),
    "info": c.getInfo(),
    "secure": c.isSecure(),
    "encrypted": c.isEncrypted(),
    "uri": c.getURI(),
    "state": d.state(0),
}
d.suspend()
out["suspended"] = d.state(0)
d.resume()
out["resumed"] = d.state(0)
del d
out["close"] = c.close()
result = out
"""


def our_calls(uri: str) -> dict[str, Any]:
    c = libvirt.open(uri, timeout=TIMEOUT)
    d = c.lookupByName("test")
    out: dict[str, Any] = {
        "hostname": c.getHostname(),
        "domains": sorted(x.name() for x in c.listAllDomains(0)),
        "info": c.getInfo(),
        "secure": c.isSecure(),
        "encrypted": c.isEncrypted(),
        "uri": c.getURI(),
        "state": d.state(0),
    }
    d.suspend()
    out["suspended"] = d.state(0)
    d.resume()
    out["resumed"] = d.state(0)
    del d
    ch = c._o.client.channel
    assert isinstance(ch, CommandChannel) and ch.transport == "ext"
    pid = ch.pid
    assert pid is not None
    out["close"] = c.close()
    assert ch.returncode is not None and gone(pid)
    return out


def relay(tmp_path: Path, lab: Any, tool: str = "nc", name: str = "relay") -> str:
    """command=: libvirt passes no arguments, so the socket lives in a wrapper script."""
    sock = lab.sockets["rw"]
    if tool == "nc":
        # -q0: quit once stdin (our end) is closed, or nc would outlive the connection
        return script(tmp_path / name, f"exec nc -q0 -U {sock}\n")
    return script(tmp_path / name, f"exec socat - UNIX-CONNECT:{sock}\n")


# --------------------------------------------------------------- end to end
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_ext_end_to_end_matches_c_binding(lab: Any, peer: Any, tmp_path: Path, tool: str) -> None:
    uri = f"test+ext:///default?command={relay(tmp_path, lab, tool)}"
    theirs = peer(PEER_CALLS, uri=uri)
    ours = our_calls(uri)
    assert ours == theirs
    assert ours["hostname"] == "vm" and ours["domains"] == ["test"] and ours["close"] == 0
    assert ours["secure"] == 0, "libvirt never calls an external program secure"


def test_ext_environment_and_descriptors(lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child gets LC_ALL=C plus libvirt's pass-through list, and only fds 0-2."""
    monkeypatch.setenv("PYVIRTRPC_PRIVATE", "must-not-pass")
    monkeypatch.setenv("TMPDIR", "/tmp")
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    leak = open(tmp_path / "inheritable", "w")  # noqa: SIM115
    os.set_inheritable(leak.fileno(), True)
    # no exec: the shell stays our direct child, so /proc shows exactly what we gave it
    wrap = script(tmp_path / "relay-noexec", f"nc -q0 -U {lab.sockets['rw']}\n")
    uri = f"test+ext:///default?command={wrap}"
    plan = U.plan(uri)
    other = libvirt.open(uri, timeout=TIMEOUT)
    c = libvirt.open(uri, timeout=TIMEOUT)
    try:
        assert c.getHostname() == "vm"
        pid = c._o.client.channel.pid
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        env = dict(kv.decode().split("=", 1) for kv in raw.split(b"\0") if kv)
        expected = {k: os.environ[k] for k in plan.env_pass if k in os.environ}
        expected["LC_ALL"] = "C"
        assert env == expected
        assert set(plan.env_pass) == {"LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "HOME", "USER", "LOGNAME", "TMPDIR"}
        fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        assert fds[0] == fds[1] and fds[0].startswith("socket:") and fds[2].startswith("pipe:")
        # beyond 0-2 only dash's own handle on its script
        assert all(target == wrap for n, target in fds.items() if n > 2), fds
    finally:
        c.close()
        other.close()
        leak.close()


def test_ext_plain_command_line_and_flags(lab: Any, tmp_path: Path) -> None:
    wrap = relay(tmp_path, lab)
    uri = f"test+ext:///default?command={wrap}"
    c = libvirt.openReadOnly(uri, timeout=TIMEOUT)
    try:
        ch = c._o.client.channel
        assert ch.argv == (wrap,) and ch.is_secure is False and ch.is_encrypted is False
        assert Path(f"/proc/{ch.pid}/cmdline").read_bytes().split(b"\0")[0] in (b"nc", b"/usr/bin/nc")
        with pytest.raises(libvirt.libvirtError) as err:
            c.lookupByName("test").suspend()  # CONNECT_OPEN carried the read-only flag
        assert err.value.get_error_code() == C.VIR_ERR_OPERATION_DENIED
    finally:
        c.close()


# ------------------------------------------------------------- child failures
def test_child_dying_mid_call_matches_c(peer: Any, tmp_path: Path) -> None:
    """A relay that gives up after a while: the pending call fails at once with its stderr."""
    wrap = script(tmp_path / "dies", 'sleep 0.3\necho "relay: lost the daemon" >&2\nexit 3\n')
    uri = f"test+ext:///default?command={wrap}"
    with pytest.raises(Exception) as theirs:
        peer("libvirt.open(args['uri'])", uri=uri)
    t0 = time.monotonic()
    with pytest.raises(libvirt.libvirtError) as ours:
        libvirt.open(uri, timeout=TIMEOUT)
    assert time.monotonic() - t0 < 1.5
    assert fields(ours.value) == peer_fields(theirs.value)
    assert fields(ours.value) == {
        "code": C.VIR_ERR_SYSTEM_ERROR,
        "domain": C.VIR_FROM_RPC,
        "message": "Cannot recv data: relay: lost the daemon: Connection reset by peer",
        "int1": errno.ECONNRESET,
    }


@pytest.mark.parametrize("body", ['echo "ext: no daemon here" >&2\nexit 1\n', "exit 0\n"])
def test_command_exiting_immediately(peer: Any, tmp_path: Path, body: str) -> None:
    """Which read or write sees the dead child first is a race in libvirt too; the shape is libvirt's."""
    uri = f"test+ext:///default?command={script(tmp_path / 'quits', body)}"
    with pytest.raises(Exception) as theirs:
        peer("libvirt.open(args['uri'])", uri=uri)
    for _ in range(5):
        with pytest.raises(libvirt.libvirtError) as ours:
            libvirt.open(uri, timeout=TIMEOUT)
        f = fields(ours.value)
        assert (f["code"], f["domain"]) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
        said = "ext: no daemon here" if "echo" in body else ""
        assert f["message"] in (
            f"Cannot recv data: {said}: Connection reset by peer",
            f"End of file while reading data: {said}: Input/output error",
            f"Cannot write data: {said}: Broken pipe" if said else "Cannot write data: Broken pipe",
        ), f
    t = peer_fields(theirs.value)
    assert (t["code"], t["domain"]) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    if t["message"].startswith("Cannot recv data"):
        assert t["message"] == f"Cannot recv data: {said}: Connection reset by peer"


def _exec_cases(tmp_path: Path) -> dict[str, str]:
    noexec = tmp_path / "not-executable"
    noexec.write_text("#!/bin/sh\n")
    noexec.chmod(0o644)
    badinterp = tmp_path / "bad-interpreter"
    badinterp.write_text("#!/nonexistent/interpreter\n")
    badinterp.chmod(0o755)
    return {
        "absolute-missing": "/nonexistent/relay",
        "absolute-not-executable": str(noexec),
        "absolute-bad-interpreter": str(badinterp),
        "bare-missing": "no-such-relay-anywhere",
        "relative-missing": "./no-such-relay",
        "directory": str(tmp_path),
        "empty": "",
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute-missing",
        "absolute-not-executable",
        "absolute-bad-interpreter",
        "bare-missing",
        "relative-missing",
        "directory",
        "empty",
    ],
)
def test_exec_failures_match_c(peer: Any, tmp_path: Path, case: str) -> None:
    command = _exec_cases(tmp_path)[case]
    uri = f"test+ext:///default?command={command}"
    ours = our_open_error(uri)
    assert ours == c_open_error(peer, uri)
    if case.startswith("absolute") or case == "directory":
        assert ours["message"].startswith(f"Cannot recv data: libvirt:  error : cannot execute binary {command}: ")
    else:
        assert ours == {
            "code": C.VIR_ERR_SYSTEM_ERROR,
            "domain": C.VIR_FROM_NONE,
            "message": f"Cannot find '{command}' in path: No such file or directory",
            "int1": errno.ENOENT,
        }


def test_path_search_matches_c(peer: Any, tmp_path: Path, lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bare names are looked up in $PATH and must be executable regular files."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    relay(bindir, lab, name="labrelay")
    (bindir / "nox").write_text("#!/bin/sh\n")
    (bindir / "nox").chmod(0o644)
    path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    monkeypatch.setenv("PATH", path)
    assert cmd.find_program("labrelay") == f"{bindir}/labrelay"
    assert cmd.find_program("nox") is None
    ok = "test+ext:///default?command=labrelay"
    assert (
        peer("c = libvirt.open(args['uri']); result = c.getHostname(); c.close()", uri=ok, env={"PATH": path}) == "vm"
    )
    c = libvirt.open(ok, timeout=TIMEOUT)
    assert c.getHostname() == "vm"
    c.close()
    bad = "test+ext:///default?command=nox"
    assert our_open_error(bad) == c_open_error(peer, bad, env={"PATH": path})


def test_find_program_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    assert cmd.find_program("/does/not/matter") == "/does/not/matter"  # exec decides
    assert cmd.find_program("./tool") == str(exe)
    assert cmd.find_program("./missing") is None
    assert cmd.find_program("tool", {"PATH": f"/nowhere:{tmp_path}"}) == f"{tmp_path}/tool"
    assert cmd.find_program("tool", {"PATH": "/nowhere"}) is None
    assert cmd.find_program("sh", {}) in ("/bin/sh", "/usr/bin/sh")  # libvirt's /bin:/usr/bin fallback
    assert cmd.build_env((("LC_ALL", "C"),), ("A", "B", "LC_ALL"), {"A": "1", "LC_ALL": "x", "Z": "2"}) == {
        "A": "1",
        "LC_ALL": "C",
    }


# --------------------------------------------------------------- stderr
def test_chatty_stderr_is_drained_and_bounded(lab: Any, tmp_path: Path) -> None:
    """200 KB on stderr before relaying: no pipe stall; errors keep only the bounded tail."""
    wrap = script(
        tmp_path / "chatty",
        "head -c 200000 /dev/zero | tr '\\0' 'x' >&2\necho >&2\necho 'last words' >&2\n"
        f"exec nc -q0 -U {lab.sockets['rw']}\n",
    )
    c = libvirt.open(f"test+ext:///default?command={wrap}", timeout=10)
    ch = c._o.client.channel
    assert c.getHostname() == "vm"
    assert wait_until(lambda: ch.stderr_text().endswith("last words"), 2.0)
    assert len(ch.stderr_text().encode()) <= cmd.STDERR_LIMIT
    os.kill(ch.pid, signal.SIGKILL)
    assert wait_until(lambda: ch.returncode is not None, 2.0)
    with pytest.raises(libvirt.libvirtError) as err:
        c.getHostname()
    # the child is gone before the call is written: the write fails, with the bounded stderr
    message = err.value.get_error_message()
    assert message == "Cannot write data: last words: Broken pipe", message
    assert len(message) < cmd.STDERR_LIMIT + 100
    c.close()


# ------------------------------------------------------------------ SIGPIPE
SIGPIPE_CHILD = r"""
import signal, sys, time
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # an application that restored the default action
from pyvirtrpc.transport import command as cmd
import pyvirtrpc
for body in sys.argv[1:]:
    ch = cmd.spawn(["/bin/sh", "-c", body], {"PATH": "/usr/bin:/bin"})
    while ch.returncode is None:
        time.sleep(0.01)
    try:
        ch.sendall(b"x" * 100000)
        print("sent")
    except pyvirtrpc.libvirtError as e:
        print(e.err[2], e.err[7])
    ch.close()
"""


def test_writing_to_a_dead_child_raises_no_sigpipe() -> None:
    r = subprocess.run(
        [sys.executable, "-c", SIGPIPE_CHILD, "exit 0", "echo 'gone fishing' >&2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.splitlines() == [
        f"Cannot write data: Broken pipe {errno.EPIPE}",
        f"Cannot write data: gone fishing: Broken pipe {errno.EPIPE}",
    ]


# ------------------------------------------------------------------- reaping
def test_close_and_drop_reap_children(lab: Any, tmp_path: Path) -> None:
    uri = f"test+ext:///default?command={relay(tmp_path, lab)}"
    warm = libvirt.open(uri, timeout=TIMEOUT)
    warm.close()
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    pids = []
    for _ in range(5):
        c = libvirt.open(uri, timeout=TIMEOUT)
        pids.append(c._o.client.channel.pid)
        c.close()
    c = libvirt.open(uri, timeout=TIMEOUT)
    pids.append(c._o.client.channel.pid)
    del c  # dropped without close()
    gc.collect()
    assert wait_until(lambda: all(gone(p) for p in pids), 2.0), [p for p in pids if not gone(p)]
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) == fds, 2.0)


def test_close_kills_a_child_that_ignores_sigterm(lab: Any, tmp_path: Path) -> None:
    wrap = script(tmp_path / "stubborn", f"trap '' TERM\nnc -q-1 -U {lab.sockets['rw']}\nsleep 60\n")
    c = libvirt.open(f"test+ext:///default?command={wrap}", timeout=TIMEOUT)
    ch = c._o.client.channel
    pid = ch.pid
    assert c.getHostname() == "vm"
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 2
    assert ch.returncode == -signal.SIGKILL and gone(pid)


# ------------------------------------------------------------------ asyncio
def test_asyncio_over_ext(lab: Any, tmp_path: Path) -> None:
    uri = f"test+ext:///default?command={relay(tmp_path, lab, 'socat')}"

    async def main() -> tuple[Any, ...]:
        conn = await asyncio.wait_for(aio.open(uri, timeout=TIMEOUT), TIMEOUT)
        channel = conn.connection._transport.get_protocol().channel  # type: ignore[union-attr]
        res = (await conn.getHostname(), await conn.isSecure(), [d.name() for d in await conn.listAllDomains()])
        await conn.close()
        return res, channel

    (res, channel) = asyncio.run(main())
    assert res == ("vm", 0, ["test"])
    assert wait_until(lambda: channel.returncode is not None and gone(channel.pid), 2.0)


def test_asyncio_reports_child_stderr_like_sync(tmp_path: Path) -> None:
    wrap = script(tmp_path / "dies", 'sleep 0.3\necho "relay: lost the daemon" >&2\nexit 3\n')
    uri = f"test+ext:///default?command={wrap}"
    with pytest.raises(libvirt.libvirtError) as sync_err:
        libvirt.open(uri, timeout=TIMEOUT)

    async def main() -> None:
        await asyncio.wait_for(aio.open(uri, timeout=TIMEOUT), TIMEOUT)

    with pytest.raises(libvirt.libvirtError) as async_err:
        asyncio.run(main())
    assert fields(async_err.value) == fields(sync_err.value)


def test_asyncio_waits_for_late_stderr(lab: Any, tmp_path: Path) -> None:
    """The relay closes its end first and explains itself a moment later: the error has the text."""
    wrap = script(
        tmp_path / "late",
        "exec 0<&- 1>&-\nsleep 0.2\necho 'relay: explained late' >&2\nexit 1\n",
    )
    uri = f"test+ext:///default?command={wrap}"

    async def main() -> None:
        await asyncio.wait_for(aio.open(uri, timeout=TIMEOUT), TIMEOUT)

    with pytest.raises(libvirt.libvirtError) as async_err:
        asyncio.run(main())
    with pytest.raises(libvirt.libvirtError) as sync_err:
        libvirt.open(uri, timeout=TIMEOUT)
    for e in (async_err.value, sync_err.value):
        assert "relay: explained late" in e.get_error_message(), e
