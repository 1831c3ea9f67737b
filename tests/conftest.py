"""Shared pytest fixtures: real libvirtd labs, an sshd, the C-binding peer, test-driver node files.

Fixtures (see tests/harness/README.md):

* ``lab`` (session): the default lab: unix rw/ro with auth none, TCP with
  SASL DIGEST-MD5, TLS with a client certificate and no further auth.
* ``lab_sasl`` (session): a second daemon with ``auth_tls = sasl`` and
  ``auth_unix_rw = sasl``, mechanisms DIGEST-MD5, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN.
* ``sshd`` (session): an OpenSSH sshd on 127.0.0.1 whose sessions see ``lab``'s
  sockets as /run/libvirt (for virt-ssh-helper).
* ``make_lab`` (function): ``make_lab(**Lab.start options) -> Lab`` for special
  daemons (keepalive, expired/wrongname/revoked server cert, IPv6, ...);
  every lab it made is stopped at teardown.
* ``peer`` (session): ``peer(code, **args) -> result`` runs a snippet under
  /usr/bin/python3 with python3-libvirt (see tests/harness/peer.py).
* ``node_xml`` (session): ``node_xml(domains=10, **write_node_xml options) -> NodeXML``
  (cached: the same arguments give the same file); ``.uri(lab)``.
* ``fake`` (function): the in-process fake daemon (tests/fakedaemon.py), for
  what a real one cannot be made to do.
* ``loop`` (function): pyvirtrpc's default event loop, running in a thread.

Policy: when libvirtd, sshd, the C binding... are missing, a test needing them
is skipped with the reason, except under ``CI`` (set and not 0/false), where
it fails; and under ``CI`` any skipped test fails the run (tests/harness/pytest_ci.py).
Daemons are always stopped, also when a test or the fixture setup fails.
Tests using the daemon fixtures are marked ``daemon``, the ``peer`` ones ``peer``.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `tests` is not a package (pytest puts tests/ itself on sys.path); the harness
# is imported as tests.harness, like `python -m tests.harness.lab` does.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakedaemon import FakeDaemon, default_loop_thread  # noqa: E402
from tests.harness.lab import HarnessError, Lab, MissingTool, NodeXML, write_node_xml  # noqa: E402
from tests.harness.peer import Peer  # noqa: E402
from tests.harness.pytest_ci import (  # noqa: E402,F401  (hooks are found by name)
    in_ci,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    unavailable,
)
from tests.harness.sshd import Sshd  # noqa: E402

_DAEMON_FIXTURES = {"lab", "lab_sasl", "make_lab", "sshd", "node_xml"}


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI time-out, `timeout`, a cancelled job) becomes KeyboardInterrupt,
    # so pytest still runs the fixture finalizers and the lab daemons are stopped.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _DAEMON_FIXTURES:
            item.add_marker(pytest.mark.daemon)
        if "peer" in names:
            item.add_marker(pytest.mark.peer)


def _short_tmp(factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh dir for a lab: pytest's tmp dir unless unix socket paths would get too long."""
    d = factory.mktemp(name)
    if len(str(d)) > 70:  # sun_path is 108 bytes: DIR/run/libvirt-admin-sock must fit
        d = Path(tempfile.mkdtemp(prefix=f"pvr-{name}-", dir="/tmp"))
    return d


def _start_lab(factory: pytest.TempPathFactory, name: str, **options: Any) -> Lab:
    try:
        return Lab.start(_short_tmp(factory, name), **options)
    except MissingTool as exc:
        unavailable(f"cannot start a libvirtd lab: {exc}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The default lab daemon (unix: none, tcp: sasl, tls: none)."""
    lab = _start_lab(tmp_path_factory, "lab")
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def lab_sasl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A daemon asking SASL on TLS and on the unix rw socket, with all four mechanisms."""
    lab = _start_lab(
        tmp_path_factory,
        "lab_sasl",
        auth_tls="sasl",
        auth_unix_rw="sasl",
        mechs=("digest-md5", "scram-sha-256", "scram-sha-1", "plain"),
    )
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def make_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(**Lab.start options)``; all its labs are stopped at teardown."""
    made: list[Lab] = []

    def make(**options: Any) -> Lab:
        lab = _start_lab(tmp_path_factory, "lab_x", **options)
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in made:
            try:
                lab.stop()
            except HarnessError as exc:
                errors.append(str(exc))
        if errors:
            raise HarnessError("; ".join(errors))


@pytest.fixture(scope="session")
def sshd(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """OpenSSH sshd on 127.0.0.1 (root by key); its sessions see ``lab``'s sockets in /run/libvirt.

    Where ``unshare -m`` fails (a chroot, a container without CAP_SYS_ADMIN)
    sshd runs without that view: ``sshd.libvirt_run`` is then None, and the
    virt-ssh-helper tests report themselves unavailable.
    """
    d = _short_tmp(tmp_path_factory, "sshd")
    try:
        try:
            server = Sshd.start(d, libvirt_run=lab.run_dir)
        except HarnessError as exc:
            if "unshare" not in str(exc):
                raise
            server = Sshd.start(d)
    except MissingTool as exc:
        unavailable(f"cannot start sshd: {exc}")
    except HarnessError as exc:
        if "openssh-server" in str(exc):
            unavailable(f"cannot start sshd: {exc}")
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def peer() -> Peer:
    """``peer(code, **args)``: run a snippet under the C binding (python3-libvirt), get its JSON result."""
    p = Peer()
    try:
        p.check()
    except MissingTool as exc:
        unavailable(str(exc))
    return p


@pytest.fixture(scope="session")
def node_xml(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., NodeXML]:
    """``node_xml(domains=10, **options) -> NodeXML``: a test-driver node file (cached per arguments)."""
    base = tmp_path_factory.mktemp("nodes")
    cache: dict[str, NodeXML] = {}

    def make(domains: int = 10, **options: Any) -> NodeXML:
        key = repr((domains, sorted(options.items())))
        if key not in cache:
            cache[key] = write_node_xml(base / f"node{len(cache)}.xml", domains, **options)
        return cache[key]

    return make


__all__ = ["in_ci", "unavailable"]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(tmp_path) as f:
        yield f


@pytest.fixture
def loop() -> Iterator[Any]:
    with default_loop_thread() as lp:
        yield lp
