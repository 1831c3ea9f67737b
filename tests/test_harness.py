"""Tests of the test harness itself, against the real daemons it starts.

They prove what the other suites rely on: each transport of the lab answers
(raw packets, no client library), the PKI variants are what they claim, the
sshd carries bytes to the lab (``nc -U`` and ``virt-ssh-helper``), the daemon
can be frozen, killed and restarted, big test-driver node files load, the C
binding peer runs, and the CI policy turns skips into failures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest

from pyvirtrpc import packet
from pyvirtrpc._gen import constants as C
from pyvirtrpc._gen import keepalive as K
from pyvirtrpc._gen import remote as R
from tests.harness.lab import Lab, NodeXML, proc_state, which, write_node_xml
from tests.harness.peer import Peer, PeerLibvirtError
from tests.harness.pytest_ci import unavailable
from tests.harness.raw import FEATURE_PROGRAM_KEEPALIVE, RawError, RawRPC
from tests.harness.sshd import Sshd

ROOT = Path(__file__).resolve().parent.parent
AUTH_NONE = int(R.REMOTE_AUTH_NONE)
AUTH_SASL = int(R.REMOTE_AUTH_SASL)
LabFactory = Callable[..., Lab]
NodeFactory = Callable[..., NodeXML]


# ------------------------------------------------------------------ helpers
def tls_context(pkidir: Path, *, crl: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pkidir / "cacert.pem"))
    ctx.load_cert_chain(str(pkidir / "clientcert.pem"), str(pkidir / "clientkey.pem"))
    if crl:
        ctx.load_verify_locations(str(pkidir.parent / "ca" / "cacrl.pem"))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def tls_connect(lab: Lab, pkidir: Path, *, host: str | None = None, crl: bool = False) -> ssl.SSLSocket:
    host = host or lab.host
    raw = socket.create_connection((host, lab.tls_port), timeout=10)
    try:
        return tls_context(pkidir, crl=crl).wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def read_confirmation(s: ssl.SSLSocket) -> bytes:
    """The byte libvirtd sends after accepting the client certificate (b'' if it hung up)."""
    try:
        return s.recv(1)
    except (ssl.SSLError, ConnectionError):
        return b""


# --------------------------------------------------------------------- lab
def test_lab_info_describes_a_running_daemon(lab: Lab) -> None:
    info = lab.info
    assert lab.alive()
    assert info["pid"] == int((lab.dir / "libvirtd.pid").read_text())
    for name in ("rw", "ro", "admin"):
        assert Path(info["sockets"][name]).is_socket()
    # auto ports: never the defaults that a developer's own lab (/tmp/vlab) uses
    assert {lab.tcp_port, lab.tls_port}.isdisjoint({26509, 26514, 16509, 16514})
    assert lab.tcp_port != lab.tls_port
    assert info["uris"]["unix"] == f"test+unix:///default?socket={info['sockets']['rw']}"
    assert info["uris"]["tcp"] == f"test+tcp://127.0.0.1:{lab.tcp_port}/default"
    assert info["uris"]["tls"].startswith(f"test+tls://127.0.0.1:{lab.tls_port}/default?pkipath=")
    assert info["sasl"]["user"] == "alice" and info["sasl"]["password"] == "wonderland"
    assert Path(info["sasl"]["authfile"]).is_file()
    assert info["tcp"]["auth"] == "sasl" and info["tls"]["auth"] == "none" and info["auth_unix_rw"] == "none"
    for d in ("ca", "client", "client-revoked", "client-expired", "server-expired", "server-wrongname"):
        assert lab.pki(d).is_dir(), d
    assert lab.log.exists()


def test_raw_auth_list_on_the_unix_socket(lab: Lab) -> None:
    """AUTH_LIST by hand: encode_packet out, Deframer in."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(lab.sockets["rw"])
        s.sendall(packet.encode_packet(R.REMOTE_PROGRAM, 1, R.REMOTE_PROC_AUTH_LIST, packet.CALL, 7, packet.OK))
        d = packet.Deframer()
        msg = None
        while msg is None:
            data = s.recv(4096)
            assert data, "daemon hung up"
            d.feed(data)
            msg = d.next()
    assert (msg.program, msg.version, msg.procedure) == (R.REMOTE_PROGRAM, 1, R.REMOTE_PROC_AUTH_LIST)
    assert (msg.type, msg.serial, msg.status) == (packet.REPLY, 7, packet.OK)
    assert msg.payload == b"\x00\x00\x00\x01\x00\x00\x00\x00"  # types<> = [REMOTE_AUTH_NONE]


def test_ro_socket_forces_read_only(lab: Lab, node_xml: NodeFactory) -> None:
    node = node_xml(3)
    dom_name = node.names[0]
    rpc, s = RawRPC.unix(lab.sockets["ro"])
    with s:
        assert rpc.auth_list() == [AUTH_NONE]
        rpc.open(f"test://{node.path}")  # no read-only flag: the socket alone forces it
        dom = rpc.call(R.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME, R.remote_domain_lookup_by_name_args(dom_name)).dom
        with pytest.raises(RawError) as ei:
            rpc.call(R.REMOTE_PROC_DOMAIN_SUSPEND, R.remote_domain_suspend_args(dom))
        assert ei.value.code == C.VIR_ERR_OPERATION_DENIED
        assert "read only" in (ei.value.error.message or "")
    # the same call on the rw socket is allowed (own node file: nobody else sees it)
    rpc, s = RawRPC.unix(lab.sockets["rw"])
    with s:
        rpc.open(f"test://{node.path}")
        dom = rpc.call(R.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME, R.remote_domain_lookup_by_name_args(dom_name)).dom
        rpc.call(R.REMOTE_PROC_DOMAIN_SUSPEND, R.remote_domain_suspend_args(dom))


def test_tcp_asks_for_sasl_with_digest_md5_only(lab: Lab) -> None:
    with socket.create_connection((lab.host, lab.tcp_port), timeout=10) as s:
        rpc = RawRPC.over_socket(s)
        assert rpc.auth_list() == [AUTH_SASL]
        # plain TCP needs SSF >= 56: only DIGEST-MD5 (auth-conf) qualifies
        assert rpc.call(R.REMOTE_PROC_AUTH_SASL_INIT).mechlist == "DIGEST-MD5"
        # nothing but auth is allowed before it ("authentication required")
        with pytest.raises(RawError) as ei:
            rpc.open()
        assert (ei.value.code, ei.value.domain) == (C.VIR_ERR_RPC, C.VIR_FROM_RPC)


def test_lab_sasl_offers_all_four_mechanisms(lab_sasl: Lab) -> None:
    assert lab_sasl.info["tls"]["auth"] == "sasl" and lab_sasl.info["auth_unix_rw"] == "sasl"
    rpc, s = RawRPC.unix(lab_sasl.sockets["rw"])
    with s:
        assert rpc.auth_list() == [AUTH_SASL]
        mechs = set(rpc.call(R.REMOTE_PROC_AUTH_SASL_INIT).mechlist.split(","))
    assert {"SCRAM-SHA-256", "SCRAM-SHA-1", "DIGEST-MD5", "PLAIN"} <= mechs
    with tls_connect(lab_sasl, lab_sasl.pki("client")) as t:
        assert read_confirmation(t) == b"\x01"
        rpc = RawRPC.over_socket(t)
        assert rpc.auth_list() == [AUTH_SASL]
        mechs = set(rpc.call(R.REMOTE_PROC_AUTH_SASL_INIT).mechlist.split(","))
    assert {"SCRAM-SHA-256", "SCRAM-SHA-1", "DIGEST-MD5", "PLAIN"} <= mechs
    # and the C client logs in with them (credentials from the lab's auth file)
    for mech in ("SCRAM-SHA-256", "DIGEST-MD5"):
        out = lab_sasl.virsh("hostname", uri=lab_sasl.uris["tls"] + f"&auth=sasl.{mech}").stdout.strip()
        assert out == "vm"


# --------------------------------------------------------------------- TLS
def test_tls_confirmation_byte_with_stdlib_ssl(lab: Lab) -> None:
    with tls_connect(lab, lab.pki("client"), crl=True) as t:
        assert t.version() in ("TLSv1.2", "TLSv1.3")
        assert read_confirmation(t) == b"\x01"
        assert RawRPC.over_socket(t).auth_list() == [AUTH_NONE]
    # the server certificate also names localhost
    try:
        localhost = socket.gethostbyname("localhost")
    except OSError:  # no /etc/hosts (a bare chroot)
        localhost = ""
    if localhost == "127.0.0.1":
        with tls_connect(lab, lab.pki("client"), host="localhost") as t:
            assert read_confirmation(t) == b"\x01"


@pytest.mark.parametrize("client", ["client-untrusted", "client-expired", "client-revoked"])
def test_tls_server_refuses_bad_client_certs(lab: Lab, client: str) -> None:
    # the client side trusts the server; the daemon must refuse our certificate
    # (with TLS 1.3 that shows after the handshake: no confirmation byte)
    try:
        t = tls_connect(lab, lab.pki(client))
    except (ssl.SSLError, ConnectionError):
        return
    with t:
        assert read_confirmation(t) == b""


@pytest.mark.parametrize(
    "variant,reason",
    [
        ("expired", "certificate has expired"),
        ("notyet", "certificate is not yet valid"),
        ("wrongname", "mismatch"),
        ("revoked", "certificate revoked"),
    ],
)
def test_tls_client_refuses_bad_server_certs(make_lab: LabFactory, variant: str, reason: str) -> None:
    lab = make_lab(server_cert=variant, tcp=False)
    assert lab.info["tls"]["server_cert"] == variant
    with pytest.raises(ssl.SSLCertVerificationError) as ei:
        tls_connect(lab, lab.pki("client"), crl=True)
    assert reason in str(ei.value)
    # the C client refuses it as well (pkipath with the CRL)
    r = lab.virsh("hostname", uri=f"test+tls://127.0.0.1:{lab.tls_port}/default?pkipath={lab.pki('client-crl')}",
                  check=False)
    assert r.returncode != 0 and "verify peer's certificate" in r.stderr


def test_pki_variants_are_what_they_claim(lab: Lab) -> None:
    ca = lab.pki("ca") / "cacert.pem"
    crl = lab.pki("ca") / "cacrl.pem"

    def openssl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)

    good = lab.pki("server") / "servercert.pem"
    expired = lab.pki("server-expired") / "servercert.pem"
    assert openssl("verify", "-CAfile", str(ca), str(good)).returncode == 0
    assert openssl("x509", "-checkend", "0", "-noout", "-in", str(good)).returncode == 0
    assert openssl("x509", "-checkend", "0", "-noout", "-in", str(expired)).returncode != 0
    r = openssl("verify", "-CAfile", str(ca), str(expired))
    assert r.returncode != 0 and "certificate has expired" in r.stdout + r.stderr
    r = openssl("verify", "-CAfile", str(ca), str(lab.pki("client-expired") / "clientcert.pem"))
    assert r.returncode != 0 and "certificate has expired" in r.stdout + r.stderr
    r = openssl("verify", "-CAfile", str(ca), "-crl_check", "-CRLfile", str(crl),
                str(lab.pki("client-revoked") / "clientcert.pem"))
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr
    assert openssl("verify", "-CAfile", str(ca), "-crl_check", "-CRLfile", str(crl),
                   str(lab.pki("client") / "clientcert.pem")).returncode == 0
    r = openssl("verify", "-CAfile", str(ca), "-verify_hostname", "localhost",
                str(lab.pki("server-wrongname") / "servercert.pem"))
    assert r.returncode != 0
    r = openssl("verify", "-CAfile", str(ca), str(lab.pki("client-untrusted") / "clientcert.pem"))
    assert r.returncode != 0
    if which("certtool"):
        r = subprocess.run(["certtool", "--verify", "--load-ca-certificate", str(ca), "--infile", str(expired)],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode != 0 and "expired" in r.stdout + r.stderr


# --------------------------------------------------------------------- ssh
def test_ssh_nc_carries_bytes_to_the_lab(lab: Lab, sshd: Sshd) -> None:
    r = sshd.run("id -u", timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == b"0", r.stderr
    with sshd.session("nc", "-U", lab.sockets["rw"]) as p:
        rpc = RawRPC.over_process(p)
        assert rpc.auth_list(timeout=20) == [AUTH_NONE]
        rpc.open()
        assert rpc.call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME).hostname == "vm"
    # the same through the ssh_config wrapper that ?command= uses
    r = subprocess.run([str(sshd.wrapper), "lab-sshd", "echo", "ok"], capture_output=True, timeout=30, check=False)
    assert r.stdout.strip() == b"ok", r.stderr


def need_helper_view(sshd: Sshd) -> None:
    if sshd.libvirt_run is None:
        unavailable("virt-ssh-helper can only reach a lab through sshd's private /run/libvirt, "
                    "and `unshare -m` fails here")


def test_virt_ssh_helper_reaches_the_lab(lab: Lab, sshd: Sshd) -> None:
    need_helper_view(sshd)
    r = sshd.run("command -v virt-ssh-helper", timeout=30)
    assert r.stdout.strip() == b"/usr/bin/virt-ssh-helper", r.stderr  # Debian 12: package libvirt-daemon
    # virt-ssh-helper ignores ?socket= and dials /run/libvirt/libvirt-sock, which
    # is the lab's socket dir inside sshd's private mount namespace
    with sshd.session("virt-ssh-helper", "test:///default") as p:
        rpc = RawRPC.over_process(p)
        assert rpc.auth_list(timeout=20) == [AUTH_NONE]
        rpc.open()
        assert rpc.call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME).hostname == "vm"


@pytest.mark.parametrize("proxy", ["auto", "native", "netcat"])
def test_c_client_over_ssh(lab: Lab, sshd: Sshd, proxy: str) -> None:
    if proxy != "netcat":  # auto picks virt-ssh-helper, which exists here
        need_helper_view(sshd)
    uri = sshd.uri(lab=lab, proxy=proxy) if proxy == "netcat" else sshd.uri(proxy=proxy)
    assert lab.virsh("hostname", uri=uri).stdout.strip() == "vm"


# ------------------------------------------------------------ node files
@pytest.mark.slow
def test_node_xml_with_10000_domains(lab: Lab, node_xml: NodeFactory) -> None:
    node = node_xml(10000)
    assert len(node.names) == 10000
    env = dict(os.environ, URI=node.uri(lab))
    r = subprocess.run('virsh -c "$URI" list --all | wc -l', shell=True, capture_output=True, text=True,
                       timeout=300, env=env, check=True)
    assert int(r.stdout) == 10000 + 3  # header, rule, trailing blank line


def test_node_xml_states(lab: Lab, tmp_path: Path) -> None:
    node = write_node_xml(tmp_path / "n.xml", 4, prefix="st", state=["running", "shutoff"])
    out = lab.virsh("list", "--all", "--name", uri=node.uri(lab)).stdout.split()
    assert sorted(out) == node.names
    out = lab.virsh("list", "--inactive", "--name", uri=node.uri(lab)).stdout.split()
    assert out == ["st00001", "st00003"]


# ----------------------------------------------------- daemon life cycle
def test_freeze_and_thaw(make_lab: LabFactory) -> None:
    lab = make_lab(tcp=False, tls=False)
    rpc, s = RawRPC.unix(lab.sockets["rw"])
    with s:
        assert rpc.auth_list() == [AUTH_NONE]
        with lab.frozen():
            assert proc_state(lab.pid) in ("T", "t")
            rpc.send_call(R.REMOTE_PROC_AUTH_LIST)
            with pytest.raises(TimeoutError):
                rpc.read_message(timeout=0.5)
        msg = rpc.read_message(timeout=10)  # answered once thawed
        assert msg.type == packet.REPLY and msg.status == packet.OK
    assert lab.alive()


def test_keepalive_ping_then_drop(make_lab: LabFactory) -> None:
    lab = make_lab(keepalive=(1, 2), tcp=False, tls=False, conf={"max_clients": 50, "max_client_requests": 7})
    assert "keepalive_interval = 1" in Path(lab.conf).read_text()
    assert "max_client_requests = 7" in Path(lab.conf).read_text()
    rpc, s = RawRPC.unix(lab.sockets["rw"])
    with s:
        rpc.open()
        # asking for the feature switches the server's keepalive on
        ret = rpc.call(R.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE,
                       R.remote_connect_supports_feature_args(FEATURE_PROGRAM_KEEPALIVE))
        assert ret.supported == 1
        msg = rpc.read_message(timeout=5)
        assert (msg.program, msg.procedure, msg.type) == (K.KEEPALIVE_PROGRAM, K.KEEPALIVE_PROC_PING, packet.MESSAGE)
        t0 = time.monotonic()
        with pytest.raises(EOFError):  # never answered: dropped after about interval * (count + 1)
            while True:
                rpc.read_message(timeout=10)
        assert time.monotonic() - t0 < 8


def daemon_environ(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")


def test_kill_and_restart(make_lab: LabFactory) -> None:
    lab = make_lab(env={"PVR_LAB_MARK": "a b=c"})
    assert "PVR_LAB_MARK=a b=c" in daemon_environ(lab.pid)
    old_pid, ports = lab.pid, (lab.tcp_port, lab.tls_port)
    ca = (lab.pki("ca") / "cacert.pem").read_bytes()
    lab.kill()
    assert not lab.alive()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.connect(lab.sockets["rw"])
    lab.restart()
    assert lab.alive() and lab.pid != old_pid
    assert (lab.tcp_port, lab.tls_port) == ports
    assert (lab.pki("ca") / "cacert.pem").read_bytes() == ca
    assert "PVR_LAB_MARK=a b=c" in daemon_environ(lab.pid)
    rpc, s = RawRPC.unix(lab.sockets["rw"])
    with s:
        assert rpc.auth_list() == [AUTH_NONE]
    with tls_connect(lab, lab.pki("client")) as t:
        assert read_confirmation(t) == b"\x01"
    lab.kill(signal.SIGTERM)  # a clean exit also counts as dead
    assert not lab.alive()


def test_ipv6_listen_address(make_lab: LabFactory) -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        with socket.socket(socket.AF_INET6) as s6:
            s6.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(f"no IPv6 loopback here: {exc}")
    lab = make_lab(listen_addr="::1")
    assert lab.uris["tcp"] == f"test+tcp://[::1]:{lab.tcp_port}/default"
    assert lab.uris["tls"].startswith(f"test+tls://[::1]:{lab.tls_port}/default?")
    with tls_connect(lab, lab.pki("client")) as t:  # IP SAN ::1
        assert read_confirmation(t) == b"\x01"
    assert lab.virsh("hostname", uri=lab.uris["tcp"]).stdout.strip() == "vm"
    assert lab.virsh("hostname", uri=lab.uris["tls"]).stdout.strip() == "vm"


def test_lab_context_manager_stops(tmp_path_factory: pytest.TempPathFactory) -> None:
    with Lab.start(tmp_path_factory.mktemp("ctx"), tcp=False, tls=False) as lab:
        pid = lab.pid
        assert lab.alive()
    assert not lab.alive()
    assert proc_state(pid) in (None, "Z", "X")


def test_daemons_die_with_a_killed_test_run(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A test process killed by SIGKILL (no finalizers, no atexit) leaves no libvirtd or sshd behind."""
    d = tmp_path_factory.mktemp("orphan")
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.harness.lab import Lab
        from tests.harness.sshd import Sshd
        lab = Lab.start({str(d / "lab")!r}, tcp=False, tls=False)
        sshd = Sshd.start({str(d / "sshd")!r})
        print(lab.pid, sshd.pid, flush=True)
        os.kill(os.getpid(), 9)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    lab_pid, sshd_pid = map(int, r.stdout.split())
    orphan = Lab(d / "lab")
    deadline = time.monotonic() + 20
    while (orphan.alive() or proc_state(sshd_pid) not in (None, "Z", "X")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphan.alive(), f"libvirtd {lab_pid} outlived its test process"
    assert proc_state(sshd_pid) in (None, "Z", "X"), f"sshd {sshd_pid} outlived its test process"


# --------------------------------------------------------------------- peer
def test_peer_runs_the_c_binding(peer: Peer, lab: Lab) -> None:
    code = "c = libvirt.open(args['uri']); result = [c.getHostname(), c.getType(), c.isAlive()]; c.close()"
    assert peer(code, uri=lab.uris["unix"]) == ["vm", "TEST", 1]
    # JSON printed as the last line works too
    assert peer("print('noise'); print(json.dumps({'v': libvirt.getVersion()}))") == {"v": 9000000}
    # SASL over TCP needs openAuth with a callback (helper in the peer namespace)
    code = "c = open_auth(args['uri'], args['user'], args['password']); result = c.getHostname(); c.close()"
    assert peer(code, uri=lab.uris["tcp"], user="alice", password="wonderland") == "vm"
    with pytest.raises(PeerLibvirtError) as ei:
        peer("libvirt.open(args['uri'])", uri="test+unix:///default?socket=/nonexistent/sock")
    assert ei.value.get_error_code() == C.VIR_ERR_SYSTEM_ERROR
    assert ei.value.err is not None and ei.value.err[0] == C.VIR_ERR_SYSTEM_ERROR


# ---------------------------------------------------------------------- CLI
def test_cli_start_status_stop(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("cli")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tests.harness.lab", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)

    r = cli("start", str(d), "--no-tls")
    try:
        assert r.returncode == 0, r.stderr
        assert "libvirtd lab up" in r.stdout
        info = json.loads((d / "lab.json").read_text())
        assert info["tls"]["enabled"] is False and info["tcp"]["port"] not in (26509, 16509)
        r = cli("status", str(d))
        assert r.returncode == 0 and r.stdout.startswith("running pid")
        r = cli("node-xml", str(d / "n.xml"), "--domains", "2", "--lab", str(d))
        assert r.stdout.strip() == f"test+unix://{d.resolve()}/n.xml?socket={info['sockets']['rw']}"
    finally:
        cli("stop", str(d))
    r = cli("status", str(d))
    assert r.returncode == 1 and "not running" in r.stdout


# --------------------------------------------------------------- CI policy
def test_ci_turns_skips_into_failures(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import pytest
        from tests.harness.pytest_ci import unavailable

        def test_ok():
            pass

        def test_skipped():
            pytest.skip("no frobnicator here")

        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert False
        """))
    (tmp_path / "test_needs.py").write_text(textwrap.dedent("""
        from tests.harness.pytest_ci import unavailable

        def test_needs_tool():
            unavailable("frobnicator missing")
        """))

    def inner(ci: str | None, *files: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env["PYTHONPATH"] = str(ROOT)
        if ci is not None:
            env["CI"] = ci
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.harness.pytest_ci",
             "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), *files],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )

    r = inner(None, "test_inner.py", "test_needs.py")
    assert r.returncode == 0, r.stdout + r.stderr
    r = inner("false", "test_inner.py")
    assert r.returncode == 0, r.stdout + r.stderr
    r = inner("true", "test_inner.py")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "skipped tests count as failures" in r.stdout and "no frobnicator here" in r.stdout
    r = inner("true", "test_needs.py")
    assert r.returncode == 1 and "CI is set" in r.stdout, r.stdout
