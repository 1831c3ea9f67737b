"""A real OpenSSH sshd on 127.0.0.1 for the ssh transport tests.

Contract:

* :meth:`Sshd.start` generates, inside ``dir`` only, an ed25519 host key, an
  ed25519 client key pair, ``authorized_keys``, ``known_hosts`` (the host key
  for ``[127.0.0.1]:PORT`` and ``[localhost]:PORT``), ``sshd_config``, an
  ``ssh_config`` for clients, and ``ssh``: a wrapper that runs ``ssh -F
  DIR/ssh_config "$@"`` (pass it as ``?command=`` to libvirt URIs).  It then
  runs ``/usr/sbin/sshd -D -e -f DIR/sshd_config`` on a free port (retried if
  the port is lost to a race) and waits until it listens.
* Root logs in by key only: ``PermitRootLogin prohibit-password``,
  ``UsePAM no``, no passwords.  ``StrictModes no``, because the files live
  under /tmp, whose mode 1777 StrictModes refuses on the path.
* sshd runs in a private mount namespace (``unshare -m``) with a tmpfs on
  /run, which holds its privilege-separation dir ``/run/sshd``; so nothing is
  written outside ``dir``.  With ``libvirt_run=`` a lab's socket dir is
  bind-mounted on ``/run/libvirt`` there, so ``virt-ssh-helper`` (which
  ignores ``?socket=`` and always dials ``/run/libvirt/libvirt-sock``, or
  ``-ro`` with ``-r``) reaches that lab.  Without ``unshare`` it falls back to
  creating ``/run/sshd`` on the host, and virt-ssh-helper cannot reach a lab.
* :meth:`Sshd.stop` signals only the sshd it started (checked by its argv).

CLI::

    python -m tests.harness.sshd start DIR [--lab LABDIR]
    python -m tests.harness.sshd stop|status DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union
from urllib.parse import quote

from .lab import HarnessError, Lab, proc_argv, proc_state, require, wait_until, which

SSHD = "/usr/sbin/sshd"


def _free_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (the test run) dies, even by SIGKILL."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _unshare_works() -> bool:
    if which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False, timeout=10
    )
    return r.returncode == 0


def _is_our_sshd(pid: Optional[int], config: Path) -> bool:
    # sshd rewrites its argv ("sshd: /usr/sbin/sshd -D -e -f CONF [listener] ..."),
    # so match the config path as a substring of the whole command line.
    if not pid:
        return False
    state = proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    cmdline = " ".join(proc_argv(pid))
    return "sshd" in cmdline and str(config) in cmdline


class Sshd:
    """A running sshd; the pieces of an ssh command line are attributes."""

    host = "127.0.0.1"
    user = "root"

    def __init__(self, dir: Path, port: int, proc: Optional[subprocess.Popen[bytes]] = None) -> None:
        self.dir = dir
        self.port = port
        self.proc = proc
        self.identity = dir / "id_ed25519"
        self.known_hosts = dir / "known_hosts"
        self.ssh_config = dir / "ssh_config"
        self.config = dir / "sshd_config"
        self.wrapper = dir / "ssh"
        self.log = dir / "sshd.log"
        self.libvirt_run: Optional[str] = None

    # -------------------------------------------------------------- creation
    @classmethod
    def start(
        cls,
        dir: Union[str, os.PathLike[str]],
        *,
        libvirt_run: Union[str, os.PathLike[str], None] = None,
        timeout: float = 15.0,
        detach: bool = False,
    ) -> Sshd:
        """Generate keys and config in ``dir`` and start sshd on 127.0.0.1:<free port>.

        ``libvirt_run``: a lab's socket dir (``lab.run_dir``) to show as
        /run/libvirt to the sessions, for virt-ssh-helper.  ``detach``: do not
        keep the process as a child (the CLI; stop it with :meth:`stop` later).
        """
        require("ssh", "ssh-keygen", root=True)
        if not Path(SSHD).exists():
            raise HarnessError(f"{SSHD} missing (apt-get install --no-install-recommends openssh-server)")
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        d = d.resolve()
        os.chmod(d, 0o700)
        private = _unshare_works()
        if libvirt_run is not None and not private:
            raise HarnessError("libvirt_run needs `unshare -m` (a private mount namespace), which fails here")
        for name in ("host_ed25519", "id_ed25519"):
            for f in (d / name, d / (name + ".pub")):
                f.unlink(missing_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pyvirtrpc-{name}", "-f", str(d / name)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
        (d / "authorized_keys").chmod(0o600)
        last_log = ""
        for _attempt in range(5):
            port = _free_port(cls.host)
            self = cls(d, port)
            self.libvirt_run = None if libvirt_run is None else str(Path(libvirt_run).resolve())
            self._write_configs()
            self.log.write_text("")
            argv = [SSHD, "-D", "-e", "-f", str(self.config)]
            if private:
                script = "mount -t tmpfs -o mode=0755 sshd-run /run && mkdir -m 0755 /run/sshd"
                if self.libvirt_run:
                    script += " && mkdir /run/libvirt && mount --bind \"$0\" /run/libvirt"
                script += ' && exec "$@"'
                argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                        self.libvirt_run or "-", *argv]
            else:
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            with open(self.log, "ab") as logf:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=None if detach else _die_with_parent,
                )
            self.proc = proc
            wait_until(lambda s=self, p=proc: s._ready() or p.poll() is not None, timeout)
            if proc.poll() is None and self._ready():
                self._write_info()
                if detach:
                    self.proc = None  # left running; found again through sshd.pid
                return self
            last_log = self.log.read_text(errors="replace")
            self._reap()
            if "Address already in use" not in last_log:
                break
        raise HarnessError(f"sshd did not start ({d}):\n{last_log}")

    @classmethod
    def load(cls, dir: Union[str, os.PathLike[str]]) -> Sshd:
        """An sshd started earlier (by another process) in ``dir``."""
        d = Path(dir).resolve()
        info = json.loads((d / "sshd.json").read_text())
        self = cls(d, int(info["port"]))
        self.libvirt_run = info.get("libvirt_run")
        return self

    def _write_configs(self) -> None:
        d = self.dir
        self.config.write_text(
            f"""# generated by tests/harness/sshd.py - a throwaway sshd for tests
ListenAddress {self.host}:{self.port}
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the key files live under /tmp (mode 1777), which StrictModes refuses
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
MaxStartups 64
MaxSessions 64
LoginGraceTime 30
LogLevel VERBOSE
"""
        )
        hostkey = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[{self.host}]:{self.port},[localhost]:{self.port} {hostkey}\n")
        self.ssh_config.write_text(
            f"""# generated by tests/harness/sshd.py: use with ssh -F {self.ssh_config}
Host lab-sshd
    HostName {self.host}
    Port {self.port}
    User {self.user}
Host *
    IdentityFile {self.identity}
    IdentitiesOnly yes
    UserKnownHostsFile {self.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    ControlMaster no
    ControlPath none
    LogLevel ERROR
"""
        )
        self.wrapper.write_text(f"#!/bin/sh\nexec ssh -F '{self.ssh_config}' \"$@\"\n")
        self.wrapper.chmod(0o755)

    def _write_info(self) -> None:
        (self.dir / "sshd.json").write_text(json.dumps(self.info, indent=1) + "\n")

    def _ready(self) -> bool:
        # the port alone could be someone else's who won the race for it
        return self._listening() and "Server listening on" in self.log.read_text(errors="replace")

    def _listening(self) -> bool:
        want = f":{self.port:04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f, None)
                    for line in f:
                        parts = line.split()
                        if len(parts) > 3 and parts[3] == "0A" and parts[1].endswith(want):
                            return True
            except OSError:
                continue
        return False

    # ----------------------------------------------------------------- state
    @property
    def pid(self) -> Optional[int]:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            return int((self.dir / "sshd.pid").read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return _is_our_sshd(self.pid, self.config)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "identity": str(self.identity),
            "known_hosts": str(self.known_hosts),
            "ssh_config": str(self.ssh_config),
            "wrapper": str(self.wrapper),
            "log": str(self.log),
            "pid": self.pid,
            "libvirt_run": self.libvirt_run,
            "ssh_argv": self.ssh_argv(),
        }

    # ------------------------------------------------------------- commands
    def ssh_options(self) -> list[str]:
        """ssh options without a config file (``-F none``): port, key, known_hosts, batch mode."""
        return [
            "-F", "none",
            "-p", str(self.port),
            "-i", str(self.identity),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
        ]

    def ssh_argv(self, *command: str) -> list[str]:
        """``ssh ... root@127.0.0.1 COMMAND...`` (the remote command is run by the remote shell)."""
        return ["ssh", *self.ssh_options(), f"{self.user}@{self.host}", *command]

    def run(
        self, *command: str, input: Optional[bytes] = None, timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.ssh_argv(*command), input=input, capture_output=True, timeout=timeout, check=check
        )

    def popen(self, *command: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """ssh with pipes on stdin/stdout (a byte stream to the remote command)."""
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.ssh_argv(*command), **kwargs)

    @contextlib.contextmanager
    def session(self, *command: str, grace: float = 1.0, timeout: float = 10.0) -> Iterator[subprocess.Popen[bytes]]:
        """:meth:`popen` that always ends the ssh process, even if the remote command ignores EOF.

        (``nc -U`` keeps the connection open after stdin closes, so waiting
        for it alone would hang: close the pipes, wait ``grace`` seconds, then
        terminate, wait ``timeout``, then kill.)
        """
        p = self.popen(*command)
        try:
            yield p
        finally:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def uri(
        self,
        path: str = "/default",
        *,
        driver: str = "test",
        transport: str = "ssh",
        lab: Optional[Lab] = None,
        proxy: Optional[str] = None,
        **params: str,
    ) -> str:
        """A libvirt URI through this sshd, e.g. ``test+ssh://root@127.0.0.1:PORT/default?...``.

        With ``lab``, ``socket=`` names that lab's rw socket and ``proxy``
        defaults to ``netcat`` (virt-ssh-helper would ignore ``socket=``).
        ``command=`` is the wrapper (for the ``ssh`` transport), so the C
        client's ssh uses this sshd's key and known_hosts.
        """
        q: dict[str, str] = {}
        if transport == "ssh":
            q["command"] = str(self.wrapper)
        if lab is not None:
            q["socket"] = lab.sockets["rw"]
            q["proxy"] = proxy or "netcat"
        elif proxy:
            q["proxy"] = proxy
        if transport in ("libssh", "libssh2"):
            q["keyfile"] = str(self.identity)
            q["known_hosts"] = str(self.known_hosts)
            q["sshauth"] = "privkey"
        q.update(params)
        query = "&".join(f"{k}={quote(v, safe='/:.,-_')}" for k, v in q.items())
        return f"{driver}+{transport}://{self.user}@{self.host}:{self.port}{path}" + (f"?{query}" if query else "")

    # -------------------------------------------------------------- control
    def _reap(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """Stop the listener (sessions still open end with their connection)."""
        if self.proc is not None:
            self._reap()
        else:
            pid = self.pid
            if pid and _is_our_sshd(pid, self.config):
                os.kill(pid, signal.SIGTERM)
                if not wait_until(lambda: not _is_our_sshd(pid, self.config), 10):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "sshd.pid").unlink()

    def __enter__(self) -> Sshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Sshd {self.host}:{self.port} dir={self.dir}>"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.harness.sshd")
    ap.add_argument("cmd", choices=("start", "stop", "status"))
    ap.add_argument("dir")
    ap.add_argument("--lab", help="a lab DIR whose sockets virt-ssh-helper should reach")
    ns = ap.parse_args(argv)
    if ns.cmd == "start":
        run = Lab(Path(ns.lab)).run_dir if ns.lab else None
        s = Sshd.start(ns.dir, libvirt_run=run, detach=True)
        time.sleep(0.05)
        print(json.dumps(s.info, indent=1))
        print("try: " + " ".join(s.ssh_argv("id")))
        return 0
    try:
        s = Sshd.load(ns.dir)
    except FileNotFoundError:
        print("no sshd.json: not started", file=sys.stderr)
        return 1
    if ns.cmd == "stop":
        s.stop()
        return 0
    print(f"running pid {s.pid}" if s.alive() else "not running")
    return 0 if s.alive() else 1


if __name__ == "__main__":
    sys.exit(main())
