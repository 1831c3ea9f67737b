"""Drive ``libvirtd-lab.sh``: a real, throwaway libvirtd for the tests, from Python.

Contract:

* :meth:`Lab.start` runs ``libvirtd-lab.sh start`` (output captured), reads
  ``DIR/lab.json`` and returns a :class:`Lab`.  Ports are ``auto`` by default
  (chosen by the kernel, retried if lost to a race), so labs never clash with
  each other or with a developer's own daemons (e.g. one on 26509/26514).
* :attr:`Lab.info` is the ``lab.json`` content: ``sockets``, ``uris``,
  ``tcp``/``tls`` (host, port, auth, pkipath...), ``pki`` (every PKI dir),
  ``sasl`` (user, password, mechs, authfile), ``pid``, ``log``, ...
* :meth:`Lab.freeze`/:meth:`Lab.thaw` SIGSTOP/SIGCONT the daemon (keepalive
  tests), :meth:`Lab.kill` makes it die, :meth:`Lab.restart` brings it back
  with the same config, PKI, SASL db and ports.
* Only the lab's own daemon is ever signalled: the pid from its pid file,
  checked against ``/proc/PID/cmdline`` (a libvirtd run with DIR's config).
* Every lab started by this process and not stopped is stopped at exit,
  and (``watch=True``, the default) by a background watcher if the process
  is killed outright.
* A missing program or package raises :class:`MissingTool`; fixtures turn it
  into a skip, or into a failure when ``CI`` is set.
* :func:`write_node_xml` writes a test-driver node file (``test+unix:///PATH``)
  with N domains; 10,000 domains are fine (the daemon parses them in ~2 s).

CLI (for humans; options are the script's, see ``--help``)::

    python -m tests.harness.lab start DIR [--auth-tls sasl ...]
    python -m tests.harness.lab stop|status|restart|check|env DIR
    python -m tests.harness.lab node-xml FILE [--domains N] [--state shutoff] [--lab DIR]
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "libvirtd-lab.sh"

#: program -> Debian package that provides it
PACKAGES = {
    "libvirtd": "libvirt-daemon",
    "virsh": "libvirt-clients",
    "saslpasswd2": "sasl2-bin",
    "certtool": "gnutls-bin",
    "openssl": "openssl",
    "bash": "bash",
    "unshare": "util-linux",
    "python3": "python3",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nc": "netcat-openbsd",
    "virt-ssh-helper": "libvirt-daemon",
}
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class HarnessError(RuntimeError):
    """The harness could not do what was asked (the message says why)."""


class MissingTool(HarnessError):
    """A program the harness needs is not installed (or we are not root)."""


def which(program: str) -> Optional[str]:
    """``shutil.which`` that also looks in the sbin dirs (not on a user's PATH)."""
    return shutil.which(program) or shutil.which(program, path=_SBIN)


def require(*programs: str, root: bool = False) -> None:
    """Raise :class:`MissingTool` naming every missing program and its Debian package."""
    missing = [p for p in programs if which(p) is None]
    problems = []
    if missing:
        pkgs = sorted({PACKAGES.get(p, p) for p in missing})
        problems.append(f"missing {', '.join(missing)} (apt-get install --no-install-recommends {' '.join(pkgs)})")
    if root and os.geteuid() != 0:
        problems.append("must run as root (only a privileged libvirtd has the read-only socket)")
    if problems:
        raise MissingTool("; ".join(problems))


def lab_requirements() -> None:
    """Everything :meth:`Lab.start` needs."""
    require("bash", "libvirtd", "virsh", "saslpasswd2", "python3", root=True)
    if which("certtool") is None and which("openssl") is None:
        raise MissingTool("missing certtool and openssl (apt-get install --no-install-recommends gnutls-bin)")
    if not any(Path(d).glob("libdigestmd5.so*") for d in _sasl_plugin_dirs()):
        raise MissingTool("SASL DIGEST-MD5/SCRAM plugins missing (apt-get install libsasl2-modules)")


def _sasl_plugin_dirs() -> list[Path]:
    return [p for p in Path("/usr/lib").glob("*/sasl2")] + [Path("/usr/lib/sasl2")]


# ------------------------------------------------------------------ processes
def proc_state(pid: int) -> Optional[str]:
    """The one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``...) or None if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except OSError:
        return None
    return None


def proc_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def alive(pid: Optional[int], marker: str, program: str) -> bool:
    """True if ``pid`` is a live (not zombie) ``program`` whose argv contains ``marker``."""
    if not pid:
        return False
    state = proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    argv = proc_argv(pid)
    return bool(argv) and (argv[0].endswith(program) or program in argv[0]) and marker in argv


def wait_until(pred: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ------------------------------------------------------------------------ Lab
_LIVE: dict[Path, Lab] = {}


def _conf_value(value: object) -> str:
    """A Python value as libvirtd.conf syntax."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if '"' in value or "\n" in value:
            raise ValueError(f"libvirtd.conf strings cannot hold quotes or newlines: {value!r}")
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_conf_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to libvirtd.conf")


def _run_script(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":" + _SBIN
    # the script's own LAB_* environment defaults must not leak in from a shell
    for k in list(env):
        if k.startswith("LAB_"):
            del env[k]
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


class Lab:
    """One running (or stopped) lab daemon in ``dir``; see the module docstring."""

    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir).resolve()
        self.info: dict[str, Any] = {}
        self.output = ""
        self.reload()

    # -------------------------------------------------------------- creation
    @classmethod
    def start(
        cls,
        dir: Union[str, os.PathLike[str]],
        *,
        tcp_port: Union[int, str] = "auto",
        tls_port: Union[int, str] = "auto",
        listen_addr: str = "127.0.0.1",
        auth_tcp: str = "sasl",
        auth_tls: str = "none",
        auth_unix_rw: str = "none",
        auth_unix_ro: str = "none",
        user: str = "alice",
        password: str = "wonderland",
        mechs: Union[str, Sequence[str], None] = None,
        tcp: bool = True,
        tls: bool = True,
        keepalive: Union[tuple[int, int], str, None] = None,
        server_cert: str = "good",
        crl: bool = True,
        conf: Optional[Mapping[str, object]] = None,
        env: Optional[Mapping[str, str]] = None,
        drivers: str = "none",
        cert_tool: str = "auto",
        debug: bool = False,
        private_run: Optional[bool] = None,
        timeout: float = 20.0,
        watch: bool = True,
    ) -> Lab:
        """Generate everything in ``dir`` and start the daemon; wait until it answers.

        ``conf``: extra libvirtd.conf settings (``{"max_clients": 50}``);
        ``env``: extra variables in the daemon's environment (kept by :meth:`restart`).
        ``watch``: a background watcher stops the daemon when this process
        ends, even by SIGKILL (a killed test run leaves no daemon behind).
        """
        lab_requirements()
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        d = d.resolve()
        args = [
            "start",
            "--tcp-port", str(tcp_port),
            "--tls-port", str(tls_port),
            "--listen-addr", listen_addr,
            "--auth-tcp", auth_tcp,
            "--auth-tls", auth_tls,
            "--auth-unix-rw", auth_unix_rw,
            "--auth-unix-ro", auth_unix_ro,
            "--user", user,
            "--password", password,
            "--server-cert", server_cert,
            "--drivers", drivers,
            "--cert-tool", cert_tool,
            "--timeout", str(int(timeout)),
        ]
        if mechs is not None:
            args += ["--mechs", mechs if isinstance(mechs, str) else " ".join(mechs)]
        if not tcp:
            args.append("--no-tcp")
        if not tls:
            args.append("--no-tls")
        if keepalive is not None:
            args += ["--keepalive", keepalive if isinstance(keepalive, str) else f"{keepalive[0]}:{keepalive[1]}"]
        if not crl:
            args.append("--no-crl")
        for key, value in (conf or {}).items():
            args += ["--set", f"{key}={_conf_value(value)}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        if debug:
            args.append("--debug")
        if private_run is not None:
            args.append("--private-run" if private_run else "--no-private-run")
        if watch:
            args += ["--watch-pid", str(os.getpid())]
        args.append(str(d))
        r = _run_script(args, timeout=timeout + 60)
        if r.returncode != 0:
            raise HarnessError(f"libvirtd-lab.sh start {d} failed (rc={r.returncode}):\n{r.stderr}{r.stdout}")
        lab = cls(d)
        lab.output = r.stdout
        _LIVE[lab.dir] = lab
        return lab

    # ----------------------------------------------------------------- state
    def reload(self) -> dict[str, Any]:
        """Re-read ``lab.json`` (the pid changes on restart)."""
        path = self.dir / "lab.json"
        try:
            self.info = json.loads(path.read_text())
        except FileNotFoundError:
            raise HarnessError(f"{path} missing: {self.dir} is not a started lab") from None
        return self.info

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def conf(self) -> str:
        return str(self.info["conf"])

    @property
    def log(self) -> Path:
        return Path(self.info["log"])

    @property
    def uris(self) -> dict[str, str]:
        return dict(self.info["uris"])

    @property
    def sockets(self) -> dict[str, str]:
        return dict(self.info["sockets"])

    @property
    def run_dir(self) -> Path:
        """The daemon's unix_sock_dir (holds libvirt-sock, libvirt-sock-ro, libvirt-admin-sock)."""
        return Path(self.info["sockets"]["rw"]).parent

    @property
    def host(self) -> str:
        return str(self.info["listen_addr"])

    @property
    def tcp_port(self) -> int:
        return int(self.info["tcp"]["port"])

    @property
    def tls_port(self) -> int:
        return int(self.info["tls"]["port"])

    @property
    def authfile(self) -> str:
        return str(self.info["sasl"]["authfile"])

    def pki(self, name: str = "client") -> Path:
        """A PKI dir: ``ca``, ``client``, ``client-expired``, ``server-wrongname``... (see README)."""
        return Path(self.info["pki"][name])

    def alive(self) -> bool:
        """True while the daemon runs (a stopped-by-SIGSTOP daemon is alive; a zombie is not)."""
        return alive(self.info.get("pid"), self.conf, "libvirtd")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -------------------------------------------------------------- control
    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after 10 s); no-op if already gone."""
        _LIVE.pop(self.dir, None)
        r = _run_script(["stop", str(self.dir)], timeout=60)
        if r.returncode != 0:
            raise HarnessError(f"libvirtd-lab.sh stop {self.dir} failed:\n{r.stderr}")

    def restart(self, timeout: float = 30.0) -> None:
        """Start the daemon again with the same config, PKI, SASL db and ports."""
        r = _run_script(["restart", str(self.dir)], timeout=timeout + 30)
        if r.returncode != 0:
            raise HarnessError(f"libvirtd-lab.sh restart {self.dir} failed:\n{r.stderr}{r.stdout}")
        self.output = r.stdout
        self.reload()
        _LIVE[self.dir] = self

    def _signal(self, sig: int) -> None:
        if not self.alive():
            raise HarnessError(f"lab daemon of {self.dir} is not running")
        os.kill(self.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP the daemon: connections stay open but nothing is answered."""
        self._signal(signal.SIGSTOP)
        if not wait_until(lambda: proc_state(self.pid) in ("T", "t"), 5):
            raise HarnessError(f"libvirtd {self.pid} did not stop on SIGSTOP")

    def thaw(self) -> None:
        """SIGCONT the daemon after :meth:`freeze`."""
        self._signal(signal.SIGCONT)
        wait_until(lambda: proc_state(self.pid) not in ("T", "t"), 5)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            if self.alive():
                self.thaw()

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Make the daemon die (default SIGKILL: no cleanup, sockets stay); wait until it is gone."""
        pid = self.pid
        self._signal(sig)
        if sig != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        # Wait for the zombie (or for the pid to vanish), not just for alive()
        # to turn false: /proc/PID/cmdline empties when the memory is released,
        # before the kernel closes the files, and the tests want the sockets dead.
        # (A zombie's files may still be open for a moment on some kernels,
        # gVisor among them: also wait until the rw socket refuses.)
        if not wait_until(lambda: proc_state(pid) in (None, "Z", "X") and not self._accepting(), timeout):
            raise HarnessError(f"libvirtd {pid} survived signal {sig} for {timeout} s")

    def _accepting(self) -> bool:
        """True if something still accepts connections on the rw socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(self.info["sockets"]["rw"])
            except OSError:
                return False
        return True

    # ---------------------------------------------------------------- helpers
    def node_uri(self, path: Union[str, os.PathLike[str]], *, ro: bool = False) -> str:
        """URI of a custom test-driver node file served by this daemon."""
        p = Path(path).resolve()
        sock = self.info["sockets"]["ro" if ro else "rw"]
        return f"test+unix://{p}?socket={sock}"

    def virsh(
        self,
        *args: str,
        uri: Optional[str] = None,
        readonly: bool = False,
        check: bool = True,
        timeout: float = 60.0,
        env: Optional[Mapping[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run virsh against this lab (default: the rw unix URI), credentials from the lab's auth file."""
        require("virsh")
        e = dict(os.environ)
        e["LIBVIRT_AUTH_FILE"] = self.authfile
        e.update(env or {})
        argv = ["virsh", "-q", *(["-r"] if readonly else []), "-c", uri or self.uris["unix"], *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed (rc={r.returncode}): {r.stderr.strip()}")
        return r

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Lab {self.dir} pid={self.info.get('pid')} tcp={self.tcp_port} tls={self.tls_port}>"


@atexit.register
def _stop_leftovers() -> None:
    for lab in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            lab.stop()


# ------------------------------------------------------------ test-driver XML
class NodeXML:
    """A written test-driver node file: ``path``, domain ``names``, and :meth:`uri`."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self.names = names

    def uri(self, lab: Lab, *, ro: bool = False) -> str:
        return lab.node_uri(self.path, ro=ro)

    def __repr__(self) -> str:
        return f"<NodeXML {self.path} domains={len(self.names)}>"


#: test driver run states (libvirt's virDomainState numbers), see
#: https://libvirt.org/drvtest.html and the test driver's <test:runstate>.
RUNSTATES = {"running": 1, "blocked": 2, "paused": 3, "shutdown": 4, "shutoff": 5, "crashed": 6, "pmsuspended": 7}


def write_node_xml(
    path: Union[str, os.PathLike[str]],
    domains: int = 10,
    *,
    prefix: str = "dom",
    state: Union[str, Sequence[str]] = "running",
    memory_kib: int = 65536,
    vcpus: int = 1,
    extra_xml: str = "",
    seed: str = "pyvirtrpc",
) -> NodeXML:
    """Write a test-driver node file with ``domains`` domains named ``{prefix}{i:05d}``.

    ``state`` is one run state for all (``running``, ``shutoff``, ``paused``...)
    or a sequence cycled over the domains.  UUIDs are derived from ``seed`` and
    the name, so the same call always writes the same file.  ``extra_xml`` is
    inserted verbatim inside ``<node>`` (networks, pools, ``<cpu>``...).
    """
    states = [state] if isinstance(state, str) else list(state)
    for s in states:
        if s not in RUNSTATES:
            raise ValueError(f"unknown run state {s!r}; one of {', '.join(RUNSTATES)}")
    width = max(5, len(str(max(domains - 1, 0))))
    names = [f"{prefix}{i:0{width}d}" for i in range(domains)]
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"pyvirtrpc-test-node:{seed}")
    out = ["<?xml version='1.0'?>", "<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"]
    for i, name in enumerate(names):
        runstate = RUNSTATES[states[i % len(states)]]
        out.append(
            f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid5(ns, name)}</uuid>"
            f"<memory unit='KiB'>{memory_kib}</memory><vcpu>{vcpus}</vcpu>"
            f"<os><type arch='i686'>hvm</type></os><test:runstate>{runstate}</test:runstate></domain>"
        )
    if extra_xml:
        out.append(extra_xml)
    out.append("</node>\n")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(p)
    return NodeXML(p.resolve(), names)


# ------------------------------------------------------------------------ CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m tests.harness.lab start [OPTIONS] DIR | stop|status|restart|check|env DIR\n"
        "       python -m tests.harness.lab node-xml FILE [--domains N] [--state STATE] [--prefix P] [--lab DIR]\n"
        "       (start options: python -m tests.harness.lab --help)"
    )
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage)
        if args:
            print(_run_script(["--help"], timeout=30).stdout)
        return 0 if args else 2
    cmd = args[0]
    if cmd == "node-xml":
        import argparse

        ap = argparse.ArgumentParser(prog="python -m tests.harness.lab node-xml")
        ap.add_argument("file")
        ap.add_argument("--domains", type=int, default=10)
        ap.add_argument("--state", default="running")
        ap.add_argument("--prefix", default="dom")
        ap.add_argument("--lab", help="a lab DIR: print the URI that serves FILE from it")
        ns = ap.parse_args(args[1:])
        node = write_node_xml(ns.file, ns.domains, prefix=ns.prefix, state=ns.state.split(","))
        print(node.uri(Lab(Path(ns.lab))) if ns.lab else node.path)
        return 0
    if cmd not in ("start", "stop", "status", "restart", "check", "env", "prepare"):
        print(usage, file=sys.stderr)
        return 2
    if cmd in ("start", "prepare", "restart"):
        try:
            lab_requirements()
        except MissingTool as exc:
            print(f"lab: {exc}", file=sys.stderr)
            return 1
    r = _run_script(args, timeout=300)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
