"""pyvirtrpc.sasl against the REAL libvirtd: every mechanism it offers, over TCP, TLS and unix.

The RPC side is a tiny raw helper in this file (socket + pyvirtrpc.packet +
the generated remote_auth_sasl_* codecs); the SASL side is pyvirtrpc.sasl.SaslClient.
Over TCP the negotiated DIGEST-MD5 layer is installed under the framing and real
calls go through it.  Error cases are compared with what the C client reports
(virsh, and python3-libvirt when /usr/bin/python3 has it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from pyvirtrpc import _xdr
from pyvirtrpc._gen import constants as C
from pyvirtrpc._gen import remote as R
from pyvirtrpc._gen import virnet as V
from pyvirtrpc.errors import from_remote, libvirtError
from pyvirtrpc.packet import CALL, ERROR, OK, REPLY, Deframer, encode_packet
from pyvirtrpc.sasl import Credentials, DigestLayer, SaslClient, SecurityLayer, SecurityProps
from pyvirtrpc.sasl._common import SEC_NOANONYMOUS, SEC_NOPLAINTEXT

pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent
LAB_SCRIPTS = [ROOT / "tests" / "harness" / "libvirtd-lab.sh", Path("/work/shared/lab/libvirtd-lab.sh")]
TCP_FLAGS = SEC_NOANONYMOUS | SEC_NOPLAINTEXT


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


# TODO(harness): switch to the conftest lab_sasl fixture
@pytest.fixture(scope="session")
def sasl_lab() -> Iterator[dict[str, Any]]:
    """A private libvirtd with auth_tcp=sasl, auth_tls=sasl and auth_unix_rw=sasl on auto ports."""
    script = next((p for p in LAB_SCRIPTS if p.exists()), None)
    if script is None or shutil.which("libvirtd") is None and not Path("/usr/sbin/libvirtd").exists():
        _unavailable("needs libvirtd and libvirtd-lab.sh (Debian: libvirt-daemon sasl2-bin libsasl2-modules)")
    if os.geteuid() != 0:
        _unavailable("the libvirtd lab needs root")
    d = Path(tempfile.mkdtemp(prefix="pvr-sasl-", dir="/tmp"))
    proc = subprocess.run(
        ["bash", str(script), "--tcp-port", "auto", "--tls-port", "auto", "--auth-tls", "sasl",
         "--auth-unix-rw", "sasl", str(d)],
        capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"lab did not start: {proc.stdout}\n{proc.stderr}")
    try:
        info = json.loads((d / "lab.json").read_text())
        info["script"] = str(script)
        yield info
    finally:
        subprocess.run(["bash", str(script), "stop", str(d)], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------- raw RPC
class Raw:
    """Blocking raw libvirt RPC over a socket, with an optional SASL layer under the framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.serial = 0
        self.deframer = Deframer()
        self.layer: Optional[SecurityLayer] = None

    def call(self, proc: int, args: Any = None) -> Any:
        p = R.PROCEDURES[proc]
        payload = _xdr.encode(p.args, args) if p.args is not None else b""
        packet = encode_packet(R.REMOTE_PROGRAM, 1, proc, CALL, self.serial, OK, payload)
        self.serial += 1
        self.sock.sendall(self.layer.encode(packet) if self.layer is not None else packet)
        while True:
            m = self.deframer.next()
            if m is not None:
                if m.type == REPLY and m.procedure == proc:
                    break
                continue  # keepalive or event: not expected here
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("daemon closed the connection")
            self.deframer.feed(self.layer.feed(data) if self.layer is not None else data)
        if m.status == ERROR:
            e = _xdr.decode(V._c_virNetMessageError, m.data, m.offset)
            raise from_remote(e.code, e.domain, e.message, e.level, e.str1, e.str2, e.str3, e.int1, e.int2)
        return _xdr.decode(p.ret, m.data, m.offset) if p.ret is not None else None

    def authenticate(self, client: SaslClient) -> str:
        """remoteAuthSASL: AUTH_LIST, AUTH_SASL_INIT/START/STEP, then install the layer."""
        assert list(self.call(R.REMOTE_PROC_AUTH_LIST).types) == [R.remote_auth_type.REMOTE_AUTH_SASL]
        mechlist = self.call(R.REMOTE_PROC_AUTH_SASL_INIT).mechlist
        mech, data = client.start(mechlist)
        ret = self.call(R.REMOTE_PROC_AUTH_SASL_START,
                        R.remote_auth_sasl_start_args(mech, int(data is None), data or b""))
        while True:
            data = client.receive(bool(ret.complete), None if ret.nil else ret.data)
            if client.done:
                break
            ret = self.call(R.REMOTE_PROC_AUTH_SASL_STEP, R.remote_auth_sasl_step_args(int(data is None), data or b""))
        self.layer = client.security_layer()
        return mech

    def hostname(self) -> str:
        self.call(R.REMOTE_PROC_CONNECT_OPEN, R.remote_connect_open_args("test:///default", 0))
        name: str = self.call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME).hostname
        return name

    def close(self) -> None:
        try:
            self.call(R.REMOTE_PROC_CONNECT_CLOSE)
        except (libvirtError, OSError, EOFError):
            pass
        self.sock.close()


def tcp(lab: dict[str, Any]) -> Raw:
    return Raw(socket.create_connection((lab["tcp"]["host"], lab["tcp"]["port"]), timeout=20))


def tls(lab: dict[str, Any]) -> tuple[Raw, int]:
    t = lab["tls"]
    ctx = ssl.create_default_context(cafile=t["cacert"])
    ctx.load_cert_chain(t["clientcert"], t["clientkey"])
    raw = socket.create_connection((t["host"], t["port"]), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname=t["host"])
    assert s.recv(1) == b"\x01"  # the daemon accepted our certificate
    cipher = s.cipher()
    assert cipher is not None
    return Raw(s), cipher[2]  # TLS key bits: libvirt's external SSF


def unix(lab: dict[str, Any]) -> Raw:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(lab["sockets"]["rw"])
    return Raw(s)


def alice(password: str = "wonderland") -> Credentials:
    return Credentials(authname="alice", password=password)


def expected_hostname() -> str:
    return socket.gethostname()


# -------------------------------------------------------------------- TCP
def test_tcp_digest_md5_rc4_and_calls_through_the_layer(sasl_lab: dict[str, Any]) -> None:
    conn = tcp(sasl_lab)
    client = SaslClient(alice(), host="127.0.0.1", secure=False)
    try:
        assert conn.authenticate(client) == "DIGEST-MD5"
        assert client.ssf == 128 and client.warning is None
        layer = conn.layer
        assert isinstance(layer, DigestLayer) and layer.cipher == "rc4"
        assert conn.hostname() == expected_hostname()
        assert conn.call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME).hostname == expected_hostname()
    finally:
        conn.close()


def test_tcp_messages_larger_than_maxbuf_both_ways(sasl_lab: dict[str, Any]) -> None:
    """A 200 KB call is split into SASL packets by us; the 200 KB reply by the daemon."""
    conn = tcp(sasl_lab)
    try:
        conn.authenticate(SaslClient(alice(), host="127.0.0.1", secure=False))
        conn.call(R.REMOTE_PROC_CONNECT_OPEN, R.remote_connect_open_args("test:///default", 0))
        text = "".join(chr(ord("a") + i % 26) for i in range(200_000))
        xml = (f"<domain type='test'><name>sasl-big</name><memory>8192</memory>"
               f"<os><type>hvm</type></os><description>{text}</description></domain>")
        dom = conn.call(R.REMOTE_PROC_DOMAIN_DEFINE_XML, R.remote_domain_define_xml_args(xml)).dom
        try:
            got = conn.call(R.REMOTE_PROC_DOMAIN_GET_XML_DESC, R.remote_domain_get_xml_desc_args(dom, 0)).xml
            assert text in got and len(got) > 200_000
        finally:
            conn.call(R.REMOTE_PROC_DOMAIN_UNDEFINE, R.remote_domain_undefine_args(dom))
        assert conn.call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME).hostname == expected_hostname()
    finally:
        conn.close()


def test_tcp_rc4_56_when_we_cap_the_ssf(sasl_lab: dict[str, Any]) -> None:
    """The daemon offers rc4-56,rc4,3des; a client capped below 112 takes rc4-56, and it works."""
    conn = tcp(sasl_lab)
    client = SaslClient(alice(), host="127.0.0.1", secure=False, props=SecurityProps(56, 111, 0, 65536, TCP_FLAGS))
    try:
        conn.authenticate(client)
        assert isinstance(conn.layer, DigestLayer) and conn.layer.cipher == "rc4-56"
        assert client.ssf == 56 and client.warning is not None and "lower than 112" in client.warning
        assert conn.hostname() == expected_hostname()
    finally:
        conn.close()


def test_tcp_3des_is_refused_by_this_daemon(sasl_lab: dict[str, Any]) -> None:
    """Debian 12's libsasl2 cannot initialise 3DES (see test_sasl_cyrus); the daemon fails the auth."""
    conn = tcp(sasl_lab)
    client = SaslClient(alice(), host="127.0.0.1", secure=False, props=SecurityProps(56, 127, 0, 65536, TCP_FLAGS))
    try:
        with pytest.raises(libvirtError) as ei:
            conn.authenticate(client)
        assert client.mechanism is not None and getattr(client.mechanism, "cipher", None) == "3des"
        err = ei.value
        assert err.get_error_code() == C.VIR_ERR_AUTH_FAILED
        assert str(err) == "authentication failed: authentication failed"
    finally:
        conn.sock.close()
    assert "couldn't init cipher '3des'" in Path(sasl_lab["log"]).read_text(errors="replace")


def _c_client_error(lab: dict[str, Any], uri: str, authfile: str) -> Optional[tuple[int, int, str]]:
    """(code, domain, message) from python3-libvirt (the C client), or None without it."""
    py = "/usr/bin/python3"
    if not Path(py).exists():
        return None
    code = (
        "import libvirt, sys, json\n"
        "libvirt.registerErrorHandler(lambda *a: None, None)\n"
        "auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], lambda c, d: 0, None]\n"
        "try:\n"
        "    libvirt.openAuth(sys.argv[1], auth, 0)\n"
        "    print(json.dumps(None))\n"
        "except libvirt.libvirtError as e:\n"
        "    print(json.dumps([e.get_error_code(), e.get_error_domain(), e.get_error_message()]))\n"
    )
    env = dict(os.environ, LIBVIRT_AUTH_FILE=authfile)
    p = subprocess.run([py, "-c", code, uri], capture_output=True, text=True, env=env, timeout=60)
    if p.returncode != 0 or "No module named" in p.stderr:
        return None
    v = json.loads(p.stdout.strip().splitlines()[-1])
    return None if v is None else (v[0], v[1], v[2])


def _virsh_error(uri: str, authfile: str) -> str:
    env = dict(os.environ, LIBVIRT_AUTH_FILE=authfile)
    p = subprocess.run(["virsh", "-c", uri, "hostname"], capture_output=True, text=True, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    return p.stderr.strip().splitlines()[-1].removeprefix("error: ")


def test_tcp_wrong_password_is_refused_as_the_c_client_sees_it(sasl_lab: dict[str, Any]) -> None:
    conn = tcp(sasl_lab)
    try:
        with pytest.raises(libvirtError) as ei:
            conn.authenticate(SaslClient(alice("wrong"), host="127.0.0.1", secure=False))
    finally:
        conn.sock.close()
    ours = (ei.value.get_error_code(), ei.value.get_error_domain(), str(ei.value))
    assert ours[0] == C.VIR_ERR_AUTH_FAILED and ours[2] == "authentication failed: authentication failed"
    wrong = str(Path(sasl_lab["dir"]) / "auth-wrong.conf")
    uri = sasl_lab["uris"]["tcp"]
    assert _virsh_error(uri, wrong) == ours[2]
    c = _c_client_error(sasl_lab, uri, wrong)
    if c is not None:
        assert c == ours


def test_tcp_forcing_a_mechanism_the_daemon_lacks(sasl_lab: dict[str, Any]) -> None:
    for forced in ("SCRAM-SHA-256", "digest-md5"):  # case-sensitive, as libvirt's strstr
        conn = tcp(sasl_lab)
        try:
            with pytest.raises(libvirtError) as ei:
                conn.authenticate(SaslClient(alice(), host="127.0.0.1", secure=False, forced=forced))
        finally:
            conn.sock.close()
        ours = (ei.value.get_error_code(), ei.value.get_error_domain(), str(ei.value))
        assert ours == (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_REMOTE,
                        f"authentication failed: SASL mechanism {forced} not supported by server")
        uri = sasl_lab["uris"]["tcp"] + f"?auth=sasl.{forced}"
        authfile = sasl_lab["sasl"]["authfile"]
        assert _virsh_error(uri, authfile) == ours[2]
        c = _c_client_error(sasl_lab, uri, authfile)
        if c is not None:
            assert c == ours


# -------------------------------------------------------------- TLS, unix
TLS_MECHS = [None, "SCRAM-SHA-256", "SCRAM-SHA-1", "DIGEST-MD5", "PLAIN"]


@pytest.mark.parametrize("forced", TLS_MECHS)
def test_tls_each_mechanism(sasl_lab: dict[str, Any], forced: Optional[str]) -> None:
    conn, bits = tls(sasl_lab)
    assert bits >= 128
    client = SaslClient(alice(), host="127.0.0.1", secure=True, external_ssf=bits, forced=forced)
    try:
        mech = conn.authenticate(client)
        assert mech == (forced or "SCRAM-SHA-256")  # virsh's default choice over TLS, too
        assert client.ssf == 0 and conn.layer is None  # TLS already protects the stream
        assert conn.hostname() == expected_hostname()
    finally:
        conn.close()


@pytest.mark.parametrize("forced", TLS_MECHS)
def test_unix_each_mechanism(sasl_lab: dict[str, Any], forced: Optional[str]) -> None:
    conn = unix(sasl_lab)
    client = SaslClient(alice(), host="localhost", secure=True, forced=forced)
    try:
        assert conn.authenticate(client) == (forced or "SCRAM-SHA-256")
        assert conn.layer is None
        assert conn.hostname() == expected_hostname()
    finally:
        conn.close()


@pytest.mark.parametrize("forced", ["SCRAM-SHA-256", "SCRAM-SHA-1", "DIGEST-MD5", "PLAIN"])
def test_tls_wrong_password(sasl_lab: dict[str, Any], forced: str) -> None:
    conn, bits = tls(sasl_lab)
    try:
        with pytest.raises(libvirtError) as ei:
            conn.authenticate(SaslClient(alice("nope"), host="127.0.0.1", secure=True, external_ssf=bits,
                                         forced=forced))
    finally:
        conn.sock.close()
    assert ei.value.get_error_code() == C.VIR_ERR_AUTH_FAILED
    assert str(ei.value) == "authentication failed: authentication failed"
    assert "nope" not in str(ei.value)


def test_unauthenticated_call_is_refused(sasl_lab: dict[str, Any]) -> None:
    conn = unix(sasl_lab)
    try:
        with pytest.raises(libvirtError) as ei:
            conn.call(R.REMOTE_PROC_CONNECT_OPEN, R.remote_connect_open_args("test:///default", 0))
        assert ei.value.get_error_code() == C.VIR_ERR_RPC
        assert "authentication required" in str(ei.value)
    finally:
        conn.sock.close()
