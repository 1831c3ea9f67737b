"""pyvirtrpc.uri.plan(): sockets, sessions, libvirt.conf, aliases, autostart, ssh mappings, the CLI.

Socket choices for unprivileged users are compared with the C library run
as an unprivileged user (``nobody`` via setpriv when the tests run as
root) with the same environment; :data:`C_VERIFIED_SESSION` lists them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from pyvirtrpc import uri as U
from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from tests.harness.pytest_ci import unavailable

PYTHON3_LIBVIRT = "/usr/bin/python3"
ROOT = Path(__file__).resolve().parent.parent

if os.geteuid() == 0:
    USER_PREFIX = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    USER_UID = 65534
else:
    USER_PREFIX = []
    USER_UID = os.geteuid()


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory the unprivileged C client can read (pytest's tmp_path is 0700 under root)."""
    d = Path(tempfile.mkdtemp(prefix="pyvirtrpc-uri-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _mk(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in [path.parent, *path.parent.parents]:
        if str(parent).startswith("/tmp/pyvirtrpc-uri-"):
            parent.chmod(0o755)
    path.touch()
    path.chmod(0o644)


def _user_env(d: Path, **extra: Optional[str]) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(d / "h"), "XDG_RUNTIME_DIR": str(d / "rt"), "LIBVIRT_AUTOSTART": "0"}
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.fixture(scope="module")
def c_library() -> None:
    """python3-libvirt to compare with, and setpriv to run it unprivileged (fails under CI when missing)."""
    if shutil.which("virsh") is None or not Path(PYTHON3_LIBVIRT).exists():
        unavailable("python3-libvirt (the C library) not installed")
    if USER_PREFIX and shutil.which("setpriv") is None:
        unavailable("setpriv (util-linux) is needed to run the C library as an unprivileged user")


peer = pytest.mark.usefixtures("c_library")

_C_PROBE = r"""
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
uri, flags = json.loads(sys.argv[1])
try:
    libvirt.openAuth(uri, [[libvirt.VIR_CRED_AUTHNAME], lambda c, d: 0, None], flags).close()
    print(json.dumps(None))
except libvirt.libvirtError as e:
    print(json.dumps(list(e.err)))
"""


def c_open_as_user(uri: Optional[str], flags: int, env: dict[str, str]) -> tuple[Optional[list[object]], str]:
    """Open with the C library as the unprivileged user: (e.err or None, debug log)."""
    full = {**env, "LIBVIRT_DEBUG": "1", "LIBVIRT_LOG_OUTPUTS": "1:stderr"}
    r = subprocess.run(USER_PREFIX + [PYTHON3_LIBVIRT, "-c", _C_PROBE, json.dumps([uri, flags])], env=full,
                       capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), r.stderr


def _log_value(log: str, marker: str) -> Optional[str]:
    found = None
    for line in log.splitlines():
        i = line.find(marker)
        if i >= 0:
            found = line[i + len(marker):]
    return found


#: (name, uri, flags, files to create under the world dir, env changes, libvirt.conf text or None)
SESSION_CASES: list[tuple[str, Optional[str], int, list[str], dict[str, Optional[str]], Optional[str]]] = [
    ("session no sockets: legacy fallback", "qemu:///session", 0, [], {}, None),
    ("session modular socket exists", "qemu:///session", 0, ["rt/libvirt/virtqemud-sock"], {}, None),
    ("session legacy socket exists", "qemu:///session", 0, ["rt/libvirt/libvirt-sock"], {}, None),
    ("session both exist: direct wins", "qemu:///session", 0,
     ["rt/libvirt/libvirt-sock", "rt/libvirt/virtqemud-sock"], {}, None),
    ("session mode=direct", "qemu:///session?mode=direct", 0, [], {}, None),
    ("session mode=legacy", "qemu:///session?mode=legacy", 0, ["rt/libvirt/virtqemud-sock"], {}, None),
    ("session read-only has no -ro socket", "qemu:///session", C.VIR_CONNECT_RO, [], {}, None),
    ("test+unix is a session URI for users", "test+unix:///default", 0, [], {}, None),
    ("system URI as a user", "qemu:///system", 0, [], {}, None),
    ("system URI read-only", "qemu:///system", C.VIR_CONNECT_RO, [], {}, None),
    ("system URI mode=direct", "lxc:///system?mode=direct", C.VIR_CONNECT_RO, [], {}, None),
    ("no URI: session daemon, name \"\"", None, 0, [], {}, None),
    ("no XDG_RUNTIME_DIR: ~/.cache", "qemu:///session", 0, [], {"XDG_RUNTIME_DIR": None}, None),
    ("empty XDG_RUNTIME_DIR: ~/.cache", "qemu:///session", 0, [], {"XDG_RUNTIME_DIR": ""}, None),
    ("XDG_CACHE_HOME", "qemu:///session", 0, [], {"XDG_RUNTIME_DIR": None, "XDG_CACHE_HOME": "{d}/cache"}, None),
    ("relative XDG_RUNTIME_DIR", "qemu:///session", 0, [], {"XDG_RUNTIME_DIR": "rel/dir"}, None),
    ("no HOME: passwd home", "qemu:///session", 0, [], {"XDG_RUNTIME_DIR": None, "HOME": None}, None),
    ("remote_mode from libvirt.conf", "qemu:///session", 0, [], {}, 'remote_mode = "direct"\n'),
    ("URI mode= beats remote_mode", "qemu:///session?mode=legacy", 0, [], {}, 'remote_mode = "direct"\n'),
    ("uri_default", None, 0, [], {}, 'uri_default = "qemu:///session?mode=direct&x=1"\n'),
    ("LIBVIRT_DEFAULT_URI beats uri_default", None, 0, [],
     {"LIBVIRT_DEFAULT_URI": "lxc:///session"}, 'uri_default = "qemu:///session"\n'),
    ("alias", "s", 0, [], {}, 'uri_aliases = [ "x=test:///default", "s=qemu:///session?mode=direct" ]\n'),
    ("alias of the default URI", None, 0, [], {}, 'uri_aliases = [ "s=lxc:///session" ]\nuri_default = "s"\n'),
    ("xen shorthand", "XEN", 0, [], {}, None),
    ("XDG_CONFIG_HOME", "qemu:///session", 0, [], {"XDG_CONFIG_HOME": "{d}/cfg"}, 'remote_mode = "direct"\n'),
]

#: The unprivileged-user cases compared with the C library (names from SESSION_CASES).
C_VERIFIED_SESSION = [c[0] for c in SESSION_CASES]


def _setup(d: Path, files: list[str], env_changes: dict[str, Optional[str]], conf: Optional[str]) -> dict[str, str]:
    for f in files:
        _mk(d / f)
    env = _user_env(d, **{k: (None if v is None else v.replace("{d}", str(d))) for k, v in env_changes.items()})
    if conf is not None:
        cfgdir = Path(env.get("XDG_CONFIG_HOME") or (env["HOME"] + "/.config")) / "libvirt"
        _mk(cfgdir / "libvirt.conf")
        (cfgdir / "libvirt.conf").write_text(conf)
    return env


@pytest.mark.parametrize("case", SESSION_CASES, ids=[c[0] for c in SESSION_CASES])
def test_session_plan(case: tuple, world: Path) -> None:  # type: ignore[type-arg]
    name, uri, flags, files, env_changes, conf = case
    env = _setup(world, files, env_changes, conf)
    p = U.plan(uri, flags, env=env, euid=USER_UID)
    assert p.transport == "unix" and p.socket_path is not None
    assert p.socket_path.endswith(("-sock", "-sock-ro"))
    assert p.open_flags & U.REMOTE_OPEN_RO == (1 if flags & C.VIR_CONNECT_RO else 0)


@pytest.mark.peer
@peer
@pytest.mark.parametrize("case", SESSION_CASES, ids=[c[0] for c in SESSION_CASES])
def test_session_plan_matches_c(case: tuple, world: Path) -> None:  # type: ignore[type-arg]
    name, uri, flags, files, env_changes, conf = case
    env = _setup(world, files, env_changes, conf)
    c_err, log = c_open_as_user(uri, flags, env)
    p = U.plan(uri, flags, env=env, euid=USER_UID)
    assert c_err is not None and c_err[0] == C.VIR_ERR_SYSTEM_ERROR, (c_err, log[-2000:])
    assert _log_value(log, "Chosen UNIX socket ") == p.socket_path
    assert _log_value(log, "proceeding with name = ") == p.open_name
    if p.daemon is not None:
        assert _log_value(log, "with mode=") == p.mode


@pytest.mark.peer
@peer
def test_session_ssh_matches_c(world: Path) -> None:
    """Per-user URIs over ssh: proxy=native and the (local!) user socket path, as libvirt does."""
    env = _user_env(world)
    for uri in ("qemu+ssh://nohost.invalid/session?command=/bin/true",
                "test+ssh://nohost.invalid/default?command=/bin/true",
                "qemu+ssh://nohost.invalid/session?command=/bin/true&socket=/s"):
        c_err, log = c_open_as_user(uri, 0, env)
        line = _log_value(log, "About to run ")
        assert line is not None
        import shlex

        toks = shlex.split(line)
        while toks and "=" in toks[0] and not toks[0].startswith("/"):
            toks.pop(0)
        p = U.plan(uri, 0, env=env, euid=USER_UID)
        assert p.argv is not None and list(p.argv) == toks, uri
        assert _log_value(log, "Chosen UNIX socket ") == p.remote_socket_path


def test_session_details(world: Path) -> None:
    env = _user_env(world)
    p = U.plan("qemu+ssh://nohost.invalid/session?command=/bin/true", env=env, euid=1000)
    assert (p.session, p.proxy, p.autostart) == (True, "native", False)
    assert p.remote_socket_path == f"{world}/rt/libvirt/libvirt-sock"
    assert p.helper_command == "sh -c 'virt-ssh-helper 'qemu:///session''"
    p = U.plan("qemu:///session", env=env, euid=0)
    assert (p.session, p.socket_path) == (False, "/var/run/libvirt/libvirt-sock")
    p = U.plan(None, env=env, euid=1000)
    assert (p.get_uri, p.open_name, p.driver, p.effective_uri) == (True, "", None, None)
    assert p.socket_path == f"{world}/rt/libvirt/libvirt-sock"
    p = U.plan(None, env=env, euid=0)
    assert (p.socket_path, p.session, p.open_flags) == ("/var/run/libvirt/libvirt-sock", False, 0)


def test_direct_mode_over_network_transports() -> None:
    env = {"HOME": "/nonexistent"}
    for t in ("ssh", "libssh", "libssh2"):
        with pytest.raises(libvirtError) as info:
            U.plan(f"qemu+{t}://h/system?mode=direct&command=/bin/true", env=env, euid=0)
        assert info.value.err is not None
        assert info.value.err[:3] == (C.VIR_ERR_OPERATION_UNSUPPORTED, C.VIR_FROM_REMOTE,
                                      f"Operation not supported: Cannot use direct socket mode for {t} transport")
    # tcp/tls/ext never choose a socket, so mode=direct is accepted there (as libvirt does)
    assert U.plan("qemu+tcp://h/system?mode=direct", env=env, euid=0).mode is None


def test_direct_mode_without_uri(world: Path) -> None:
    env = {**_user_env(world), "XDG_CONFIG_HOME": str(world / "cfg")}
    _write_conf(world / "cfg", 'remote_mode = "direct"\n')
    with pytest.raises(libvirtError) as info:
        U.plan(None, env=env, euid=1000)
    assert info.value.err is not None
    assert info.value.err[:3] == (C.VIR_ERR_OPERATION_UNSUPPORTED, C.VIR_FROM_REMOTE,
                                  "Operation not supported: Cannot use direct socket mode if no URI is set")


@pytest.mark.peer
@peer
def test_direct_mode_without_uri_matches_c(world: Path) -> None:
    env = {**_user_env(world), "XDG_CONFIG_HOME": str(world / "cfg")}
    _write_conf(world / "cfg", 'remote_mode = "direct"\n')
    (world / "cfg").chmod(0o755)
    (world / "cfg" / "libvirt").chmod(0o755)
    c_err, _log = c_open_as_user(None, 0, env)
    with pytest.raises(libvirtError) as info:
        U.plan(None, env=env, euid=USER_UID)
    assert info.value.err is not None and c_err == list(info.value.err)


def _write_conf(cfg: Path, text: str) -> bool:
    (cfg / "libvirt").mkdir(parents=True, exist_ok=True)
    (cfg / "libvirt" / "libvirt.conf").write_text(text)
    return True


def test_direct_build_probing(monkeypatch: pytest.MonkeyPatch, world: Path) -> None:
    """With remote_default_mode=direct builds, no URI probes sockets, then daemon binaries."""
    monkeypatch.setattr(U, "DEFAULT_MODE_DIRECT", True)
    env = _user_env(world)
    _mk(world / "rt/libvirt/virtvboxd-sock")
    p = U.plan(None, env=env, euid=1000)
    assert (p.socket_path, p.mode, p.daemon) == (f"{world}/rt/libvirt/virtvboxd-sock", "direct", "virtvboxd")
    p = U.plan("qemu:///session", env=env, euid=1000)
    assert (p.socket_path, p.mode) == (f"{world}/rt/libvirt/virtqemud-sock", "direct")
    _mk(world / "rt/libvirt/libvirt-sock")
    assert U.plan("qemu:///session", env=env, euid=1000).mode == "legacy"
    monkeypatch.setattr(U, "_RUNSTATE_RUN", str(world / "run"))
    _mk(world / "run/virtlxcd-sock-ro")
    _mk(world / "run/virtqemud-sock")
    p = U.plan(None, C.VIR_CONNECT_RO, env=env, euid=0)
    assert p.daemon == "virtlxcd" and p.socket_path == "/var/run/libvirt/virtlxcd-sock-ro"
    p = U.plan(None, 0, env=env, euid=0)
    assert p.daemon == "virtqemud"


def test_autostart_check(world: Path) -> None:
    env = _user_env(world, LIBVIRT_AUTOSTART=None)
    p = U.plan("qemu:///session", env=env, euid=1000)
    assert (p.autostart, p.open_flags, p.daemon) == (True, U.REMOTE_OPEN_USER | U.REMOTE_OPEN_AUTOSTART, "libvirtd")
    with pytest.raises(libvirtError) as info:
        U.check_autostart(p)
    err = info.value.err
    assert err is not None
    assert (err[0], err[1], err[7]) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC, errno.ENOENT)
    assert p.socket_path is not None and p.socket_path in str(info.value)
    assert "does not autostart" in str(info.value) and "libvirtd" in str(info.value)
    _mk(Path(p.socket_path))
    U.check_autostart(p)  # the socket exists: nothing to say
    # LIBVIRT_AUTOSTART=0, socket=, a host, root, system URIs: libvirt would not autostart
    for uri, e, uid in (("qemu:///session", _user_env(world), 1000),
                        ("qemu+unix:///session?socket=/nonexist", env, 1000),
                        ("qemu:///system", env, 1000), ("qemu:///session", env, 0)):
        q = U.plan(uri, env=e, euid=uid)
        assert q.autostart is False, uri
        U.check_autostart(q)
    q = U.plan("test+tcp://127.0.0.1/default", env=env, euid=1000)
    assert (q.session, q.autostart, q.open_flags) == (True, False, U.REMOTE_OPEN_USER)
    q = U.plan(None, env=env, euid=1000)
    assert q.autostart is True and q.open_flags == U.REMOTE_OPEN_USER | U.REMOTE_OPEN_AUTOSTART


def test_open_flags_readonly() -> None:
    p = U.plan("qemu:///system", C.VIR_CONNECT_RO, env={"HOME": "/x"}, euid=0)
    assert (p.readonly, p.open_flags, p.socket_path) == (True, 1, "/var/run/libvirt/libvirt-sock-ro")
    p = U.plan("qemu:///system", C.VIR_CONNECT_NO_ALIASES, env={"HOME": "/x"}, euid=0)
    assert (p.readonly, p.open_flags) == (False, 0)


def test_no_aliases_flag(world: Path) -> None:
    env = {**_user_env(world), "XDG_CONFIG_HOME": str(world / "cfg")}
    _write_conf(world / "cfg", 'uri_aliases = [ "s=qemu:///session" ]\n')
    assert U.plan("s", env=env, euid=1000).effective_uri == "qemu:///session"
    with pytest.raises(libvirtError) as info:
        U.plan("s", C.VIR_CONNECT_NO_ALIASES, env=env, euid=1000)
    assert info.value.err is not None and info.value.err[0] == C.VIR_ERR_NO_CONNECT


def test_tls_fields(world: Path) -> None:
    env = {**_user_env(world), "XDG_CONFIG_HOME": str(world / "cfg")}
    _write_conf(world / "cfg", 'tls_priority = "NORMAL:-VERS-TLS1.0"\n')
    p = U.plan("qemu://h.example/system?pkipath=/p&no_verify=1&no_sanity=1&auth=sasl.digest-md5", env=env,
               euid=1000)
    assert (p.transport, p.host, p.port, p.pkipath, p.no_verify, p.no_sanity, p.auth, p.tls_priority) == (
        "tls", "h.example", 16514, "/p", True, True, "sasl.digest-md5", "NORMAL:-VERS-TLS1.0")
    assert p.argv is None and p.socket_path is None and p.is_secure
    assert U.plan("qemu://h/system?tls_priority=X", env=env, euid=1000).tls_priority == "X"
    assert U.plan("qemu+tcp://h/system", env=env, euid=1000).tls_priority is None


def test_libssh_mapping(world: Path) -> None:
    env = _user_env(world)
    p = U.plan("qemu+libssh://h/system", env=env, euid=1000)
    assert p.argv == (
        "ssh", "-l", "root", "-T", "-e", "none",
        "-o", f"UserKnownHostsFile={world}/h/.config/libvirt/known_hosts", "-o", "StrictHostKeyChecking=ask",
        "-o", "PreferredAuthentications=publickey,password,keyboard-interactive",
        "--", "h", p.helper_command)
    assert (p.sshauth, p.known_hosts_verify, p.keyfile, p.port) == (
        "agent,password,keyboard-interactive", "normal", None, None)
    _mk(world / "h/.ssh/id_ed25519")
    _mk(world / "h/.ssh/id_rsa")
    p = U.plan("qemu+libssh2://u@h:2022/system?known_hosts_verify=AUTO&sshauth=privkey,PASSWORD&known_hosts=/kh",
               C.VIR_CONNECT_RO, env=env, euid=1000)
    assert p.argv == (
        "ssh", "-p", "2022", "-l", "u", "-i", f"{world}/h/.ssh/id_ed25519", "-T", "-e", "none",
        "-o", "UserKnownHostsFile=/kh", "-o", "StrictHostKeyChecking=accept-new",
        "-o", "PreferredAuthentications=publickey,password", "-o", "IdentityAgent=none",
        "--", "h", p.helper_command)
    assert p.helper_command is not None and "virt-ssh-helper -r 'qemu:///system'" in p.helper_command
    p = U.plan("qemu+libssh://h/system?known_hosts_verify=ignore&keyfile=/k&sshauth=", env=env, euid=1000)
    assert p.argv is not None
    assert p.argv[:12] == ("ssh", "-l", "root", "-i", "/k", "-T", "-e", "none",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no")
    assert p.argv[12:14] == ("-o", "IdentityAgent=none")


def test_ext_plan() -> None:
    p = U.plan("qemu+ext:///system?command=/usr/bin/my%20proxy&socket=/ignored", env={"HOME": "/x"}, euid=0)
    assert (p.argv, p.socket_path, p.is_secure, p.port, p.host) == (("/usr/bin/my proxy",), None, False, None,
                                                                   "localhost")
    assert dict(p.env_set) == {"LC_ALL": "C"} and "SSH_AUTH_SOCK" not in p.env_pass


def test_plan_is_immutable() -> None:
    p = U.plan("qemu:///system", env={"HOME": "/x"}, euid=0)
    with pytest.raises(AttributeError):
        setattr(p, "transport", "tcp")  # noqa: B010 - the point is that it raises
    assert p == U.plan("qemu:///system", env={"HOME": "/x"}, euid=0)
    with pytest.raises(TypeError):
        U.Plan(uri=None)


def _cli(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyvirtrpc", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_cli_uri_json(world: Path) -> None:
    env = _user_env(world)
    r = _cli("uri", "qemu+ssh://u@h:2222/system?x=1&command=/bin/true", "--readonly", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert list(data) == sorted(data)
    expected = U.plan("qemu+ssh://u@h:2222/system?x=1&command=/bin/true", C.VIR_CONNECT_RO,
                      env={**os.environ, **env}).as_dict()
    assert data == json.loads(json.dumps(expected))
    assert data["open_name"] == "qemu:///system?x=1" and data["open_flags"] == 1 and data["port"] == 2222
    assert data["parsed"]["params"] == [["x", "1"], ["command", "/bin/true"]]
    r2 = _cli("uri", "qemu+ssh://u@h:2222/system?x=1&command=/bin/true", "--readonly", env=env)
    assert r2.stdout == r.stdout  # stable


def test_cli_errors_and_no_aliases(world: Path) -> None:
    r = _cli("uri", "qemu+bogus:///system")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("error: invalid argument: remote_open: transport in URL not recognised "
                                "(should be tls|unix|ssh|ext|tcp|libssh2|libssh)")
    env = {**_user_env(world), "XDG_CONFIG_HOME": str(world / "cfg"), "PYTHONPATH": str(ROOT)}
    _write_conf(world / "cfg", 'uri_aliases = [ "s=qemu:///session" ]\n')
    for p in (world / "cfg", world / "cfg" / "libvirt"):
        p.chmod(0o755)
    # root reads /etc/libvirt/libvirt.conf, which tests leave alone: run as an unprivileged user
    python = [PYTHON3_LIBVIRT if USER_PREFIX else sys.executable]
    ok = subprocess.run(USER_PREFIX + python + ["-m", "pyvirtrpc", "uri", "s"], capture_output=True, text=True,
                        env=env, cwd="/tmp", timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["effective_uri"] == "qemu:///session"
    bad = subprocess.run(USER_PREFIX + python + ["-m", "pyvirtrpc", "uri", "s", "--no-aliases"], capture_output=True,
                         text=True, env=env, cwd="/tmp", timeout=60)
    assert bad.returncode == 1 and "does not include a driver name" in bad.stderr


def test_cli_help_lists_subcommands() -> None:
    r = _cli("--help")
    assert r.returncode == 0 and "uri" in r.stdout
    assert _cli().returncode == 2


def test_uri_module_has_no_runtime_typing() -> None:
    code = ("import sys; import pyvirtrpc.uri, pyvirtrpc.config; "
            "print(sorted(m for m in ('typing', 'dataclasses', 're', 'inspect') if m in sys.modules))")
    # -S: site-packages hooks of some installs import typing themselves
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr
