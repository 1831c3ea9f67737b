"""The tls transport against the real libvirtd, side by side with the C binding.

Every case that fails is compared with python3-libvirt (``peer``): the same
URI gives the same error code, domain and message (and errno).  Cases where
the C client hangs for ever (a server that never answers) must give a clear
error here within the open's timeout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import pyvirtrpc
import pyvirtrpc.aio
from pyvirtrpc import uri as uri_mod
from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.transport import tls
from pyvirtrpc.transport.tcp import connect_tcp
from pyvirtrpc.transport.tls import TlsChannel
from tests.creds import AUTH, callback
from tests.harness.lab import Lab
from tests.harness.peer import Peer

LabFactory = Callable[..., Lab]
TIMEOUT = 20.0

PEER_OPEN = """
calls = []
def cb(creds, opaque):
    calls.append([[c[0], c[1], c[2], c[3]] for c in creds])
    for c in creds:
        if c[0] == libvirt.VIR_CRED_AUTHNAME:
            c[4] = args['user']
        elif c[0] == libvirt.VIR_CRED_PASSPHRASE:
            c[4] = args['password']
    return 0
try:
    c = libvirt.openAuth(args['uri'], [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], cb, None], 0)
    result = {'ok': [c.getHostname(), c.isSecure(), c.isEncrypted()], 'calls': calls}
    c.close()
except libvirt.libvirtError as e:
    result = {'err': err(e), 'calls': calls}
"""


def ours(uri: str, *, user: str = "alice", password: str = "wonderland", timeout: float = TIMEOUT) -> dict[str, Any]:
    calls: list[Any] = []

    def cb(creds: list[list[Any]], opaque: Any) -> int:
        calls.append([c[:4] for c in creds])
        for c in creds:
            c[4] = user if c[0] == C.VIR_CRED_AUTHNAME else password
        return 0

    try:
        conn = pyvirtrpc.openAuth(uri, [[C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE], cb, None], 0, timeout=timeout)
    except libvirtError as e:
        assert e.err is not None
        t = e.err
        return {"err": {"code": t[0], "domain": t[1], "message": t[2], "int1": t[7]}, "calls": calls}
    try:
        return {"ok": [conn.getHostname(), conn.isSecure(), conn.isEncrypted()], "calls": calls}
    finally:
        conn.close()


def theirs(peer: Peer, uri: str, *, timeout: float = 60.0) -> dict[str, Any]:
    return peer(PEER_OPEN, uri=uri, user="alice", password="wonderland", timeout=timeout)  # type: ignore[no-any-return]


def outcome(r: dict[str, Any]) -> tuple[Any, ...]:
    if "ok" in r:
        return ("ok", *r["ok"])
    e = r["err"]
    return ("err", e["code"], e["domain"], e["message"], e["int1"])


def same(peer: Peer, uri: str) -> tuple[Any, ...]:
    """Open ``uri`` with both libraries; they must agree; return the outcome."""
    mine, c = outcome(ours(uri)), outcome(theirs(peer, uri))
    assert mine == c, f"pyvirtrpc {mine} != C {c} for {uri}"
    return mine


def tls_uri(lab: Lab, pki: str = "client", host: str = "127.0.0.1", extra: str = "") -> str:
    h = f"[{host}]" if ":" in host else host
    return f"test+tls://{h}:{lab.tls_port}/default?pkipath={lab.pki(pki)}{extra}"


VERIFY_FAILED = (
    "err",
    C.VIR_ERR_AUTH_FAILED,
    C.VIR_FROM_RPC,
    "authentication failed: Failed to verify peer's certificate",
    -1,
)
CONFIRM_EIO = (
    "err",
    C.VIR_ERR_SYSTEM_ERROR,
    C.VIR_FROM_RPC,
    "Unable to read TLS confirmation: Input/output error",
    errno.EIO,
)
SERVER_SAID_NO = (
    "err",
    C.VIR_ERR_RPC,
    C.VIR_FROM_RPC,
    "server verification (of our certificate or IP address) failed",
    -1,
)


# ------------------------------------------------------------------ positive
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_client_certificate_without_sasl(lab: Lab, peer: Peer, host: str) -> None:
    assert same(peer, tls_uri(lab, host=host)) == ("ok", "vm", 1, 1)
    conn = pyvirtrpc.open(tls_uri(lab, host=host), timeout=TIMEOUT)
    try:
        channel = conn._o.client.channel
        assert isinstance(channel, TlsChannel)
        assert channel.is_secure and channel.is_encrypted
        assert channel.tls_key_bits >= 128  # the SASL external SSF
        assert channel.tls_version in ("TLSv1.2", "TLSv1.3")
        assert len(conn.getCapabilities()) > 1000
    finally:
        conn.close()


def test_no_transport_with_a_host_means_tls(lab: Lab) -> None:
    conn = pyvirtrpc.open(f"test://127.0.0.1:{lab.tls_port}/default?pkipath={lab.pki('client')}", timeout=TIMEOUT)
    try:
        assert isinstance(conn._o.client.channel, TlsChannel)
        assert conn.getHostname() == "vm"
    finally:
        conn.close()


def test_many_threads_share_one_tls_connection(lab: Lab) -> None:
    conn = pyvirtrpc.open(tls_uri(lab), timeout=TIMEOUT)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                assert conn.getHostname() == "vm"
                assert conn.getCapabilities().startswith("<capabilities>")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    conn.close()
    assert not errors


def test_asyncio_over_tls(lab: Lab) -> None:
    async def main() -> list[Any]:
        conn = await pyvirtrpc.aio.open(tls_uri(lab), timeout=TIMEOUT)
        try:
            results = await asyncio.gather(*(conn.getHostname() for _ in range(20)))
            return [results[0], await conn.isSecure(), await conn.isEncrypted(), len(set(results))]
        finally:
            await conn.close()

    assert asyncio.run(main()) == ["vm", 1, 1, 1]


# ------------------------------------------------- certificates: the server's
@pytest.mark.parametrize("variant", ["expired", "notyet", "wrongname", "revoked"])
def test_bad_server_certificates(
    make_lab: LabFactory, peer: Peer, variant: str, caplog: pytest.LogCaptureFixture
) -> None:
    lab = make_lab(server_cert=variant, tcp=False)
    # client-crl carries the CA's CRL (which revokes server-revoked)
    assert same(peer, tls_uri(lab, "client-crl")) == VERIFY_FAILED
    with caplog.at_level(logging.WARNING, logger="pyvirtrpc"):
        assert same(peer, tls_uri(lab, "client-crl", extra="&no_verify=1")) == ("ok", "vm", 1, 1)
    assert any("Certificate check failed" in r.getMessage() for r in caplog.records)
    expected = ("ok", "vm", 1, 1) if variant == "revoked" else VERIFY_FAILED  # no CRL: not known as revoked
    assert same(peer, tls_uri(lab, "client")) == expected


def test_host_name_is_checked(lab: Lab, peer: Peer) -> None:
    # the certificate names localhost, 127.0.0.1 and ::1; a name for the same
    # address that the certificate does not carry must be refused
    name = socket.gethostname()
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        addrs = set()
    if name in ("localhost",) or "127.0.0.1" not in addrs:
        pytest.skip(f"the host name {name!r} does not resolve to 127.0.0.1 here; covered by the wrongname lab")
    assert same(peer, tls_uri(lab, host=name)) == VERIFY_FAILED
    assert same(peer, tls_uri(lab, host=name, extra="&no_verify=1")) == ("ok", "vm", 1, 1)


# ------------------------------------------------- certificates: our own
@pytest.mark.parametrize(
    "pki,extra,expected",
    [
        ("client-wrongca", "&no_sanity=1", VERIFY_FAILED),  # we trust only the rogue CA
        ("client-untrusted", "&no_sanity=1", CONFIRM_EIO),  # the server refuses our rogue cert
        ("client-revoked", "", CONFIRM_EIO),  # the server's CRL lists our cert
        ("client-expired", "&no_sanity=1", CONFIRM_EIO),
    ],
)
def test_refusals(lab: Lab, peer: Peer, pki: str, extra: str, expected: tuple[Any, ...]) -> None:
    assert same(peer, tls_uri(lab, pki, extra=extra)) == expected


@pytest.mark.parametrize("pki", ["client-wrongca", "client-untrusted", "client-expired"])
def test_own_certificate_sanity_checks(lab: Lab, peer: Peer, pki: str) -> None:
    got = same(peer, tls_uri(lab, pki))
    assert got[:3] == ("err", C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    d = lab.pki(pki)
    if pki == "client-expired":
        assert got[3] == f"The client certificate {d}/clientcert.pem has expired"
    else:
        assert got[3] == (
            f"Our own certificate {d}/clientcert.pem failed validation against {d}/cacert.pem: "
            "The certificate hasn't got a known issuer."
        )


def test_missing_files(lab: Lab, peer: Peer, tmp_path: Path) -> None:
    got = same(peer, f"test+tls://127.0.0.1:{lab.tls_port}/default?pkipath={tmp_path}")
    assert got == (
        "err",
        C.VIR_ERR_SYSTEM_ERROR,
        C.VIR_FROM_RPC,
        f"Cannot read CA certificate '{tmp_path}/cacert.pem': No such file or directory",
        errno.ENOENT,
    )
    # a CA alone: no client certificate is sent, and the server wants one
    (tmp_path / "cacert.pem").write_bytes((lab.pki("client") / "cacert.pem").read_bytes())
    assert same(peer, f"test+tls://127.0.0.1:{lab.tls_port}/default?pkipath={tmp_path}") == CONFIRM_EIO


def test_bad_key_file(lab: Lab, peer: Peer, tmp_path: Path) -> None:
    for name in ("cacert.pem", "clientcert.pem"):
        (tmp_path / name).write_bytes((lab.pki("client") / name).read_bytes())
    (tmp_path / "clientkey.pem").write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    uri = f"test+tls://127.0.0.1:{lab.tls_port}/default?pkipath={tmp_path}"
    mine, c = outcome(ours(uri)), outcome(theirs(peer, uri))
    prefix = f"Unable to set x509 key and certificate: {tmp_path}/clientkey.pem, {tmp_path}/clientcert.pem: "
    assert mine[:3] == c[:3] == ("err", C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    assert mine[3].startswith(prefix) and c[3].startswith(prefix)  # the library's own reason follows


# ----------------------------------------------------------------- priority
@pytest.mark.parametrize(
    "priority",
    [
        "NORMAL",
        "NORMAL:-VERS-ALL:+VERS-TLS1.2",
        "NORMAL:-VERS-TLS1.3",
        "NORMAL:-VERS-ALL:+VERS-TLS1.0",
        "GARBAGE",
        "NONE",
    ],
)
def test_priority_strings(lab: Lab, peer: Peer, priority: str) -> None:
    got = same(peer, tls_uri(lab, extra=f"&tls_priority={priority}"))
    if priority in ("GARBAGE", "NONE"):
        detail = "The request is invalid." if priority == "GARBAGE" else "No or insufficient priorities were set."
        assert got == (
            "err",
            C.VIR_ERR_SYSTEM_ERROR,
            C.VIR_FROM_RPC,
            f"Failed to set TLS session priority to {priority}: {detail}",
            -1,
        )
    else:
        assert got == ("ok", "vm", 1, 1)


@pytest.mark.parametrize(
    "priority,version", [("NORMAL:-VERS-ALL:+VERS-TLS1.2", "TLSv1.2"), ("NORMAL:-VERS-ALL:+VERS-TLS1.0", "TLSv1")]
)
def test_priority_picks_the_version(lab: Lab, priority: str, version: str) -> None:
    conn = pyvirtrpc.open(tls_uri(lab, extra=f"&tls_priority={priority}"), timeout=TIMEOUT)
    try:
        assert conn._o.client.channel.tls_version == version
    finally:
        conn.close()


@pytest.mark.parametrize("priority", ["SECURE256", "NORMAL:+GROUP-X25519", "NORMAL:-SIGN-ALL", "NORMAL:-AES-128-GCM"])
def test_unmappable_priorities_are_refused_clearly(lab: Lab, priority: str) -> None:
    with pytest.raises(libvirtError) as ei:
        pyvirtrpc.open(tls_uri(lab, extra=f"&tls_priority={priority}"), timeout=TIMEOUT)
    e = ei.value
    assert (e.get_error_code(), e.get_error_domain()) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    assert str(e).startswith(f"Failed to set TLS session priority to {priority}: ")


# --------------------------------------------- servers that misbehave
class FakeTLSServer:
    """A TLS server with the lab's server certificate that answers the handshake, then ``mode``."""

    def __init__(self, pki: Path, mode: str) -> None:
        self.mode = mode
        self.sni: list[Optional[str]] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki / "server" / "servercert.pem"), str(pki / "server" / "serverkey.pem"))
        ctx.load_verify_locations(str(pki / "ca" / "cacert.pem"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        # GnuTLS (the C client) mistakes an OpenSSL TLS 1.3 session ticket for
        # the confirmation (EAGAIN): send none, as libvirtd does not either
        ctx.num_tickets = 0
        ctx.sni_callback = lambda obj, name, c: self.sni.append(name)  # type: ignore[assignment,func-returns-value]
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        t: Optional[ssl.SSLSocket] = None
        try:
            if self.mode == "no-handshake":
                self.stop.wait(30)
                return
            t = self.ctx.wrap_socket(raw, server_side=True)
            if self.mode == "silent":
                self.stop.wait(30)
            elif self.mode == "zero":
                t.sendall(b"\x00")
                self.stop.wait(5)
            elif self.mode == "one":
                t.sendall(b"\x01")
                self.stop.wait(5)
            elif self.mode == "notify":
                t.unwrap().close()
                self.stop.wait(5)
        except (OSError, ssl.SSLError):
            pass
        finally:
            if t is not None:
                t.close()  # "close": no close_notify, the connection just ends
            raw.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def fake_tls(lab: Lab) -> Iterator[Callable[[str], FakeTLSServer]]:
    servers: list[FakeTLSServer] = []

    def make(mode: str) -> FakeTLSServer:
        s = FakeTLSServer(Path(lab.info["pki"]["root"]), mode)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.mark.parametrize(
    "mode,expected", [("zero", SERVER_SAID_NO), ("notify", SERVER_SAID_NO), ("close", CONFIRM_EIO)]
)
def test_confirmation_refused(
    lab: Lab, peer: Peer, fake_tls: Callable[[str], FakeTLSServer], mode: str, expected: tuple[Any, ...]
) -> None:
    server = fake_tls(mode)
    assert same(peer, f"test+tls://127.0.0.1:{server.port}/default?pkipath={lab.pki('client')}") == expected


def test_confirmation_never_sent(lab: Lab, peer: Peer, fake_tls: Callable[[str], FakeTLSServer]) -> None:
    server = fake_tls("silent")
    uri = f"test+tls://127.0.0.1:{server.port}/default?pkipath={lab.pki('client')}"
    t = time.monotonic()
    got = outcome(ours(uri, timeout=1.5))
    assert time.monotonic() - t < 10
    assert got == (
        "err",
        C.VIR_ERR_SYSTEM_ERROR,
        C.VIR_FROM_RPC,
        "Unable to read TLS confirmation: Connection timed out",
        errno.ETIMEDOUT,
    )
    # the C client waits for ever
    with pytest.raises(subprocess.TimeoutExpired):
        theirs(peer, uri, timeout=4)


def test_handshake_never_answered(lab: Lab, fake_tls: Callable[[str], FakeTLSServer]) -> None:
    server = fake_tls("no-handshake")
    t = time.monotonic()
    got = outcome(ours(f"test+tls://127.0.0.1:{server.port}/default?pkipath={lab.pki('client')}", timeout=1.5))
    assert time.monotonic() - t < 10
    assert got[:3] == ("err", C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC)
    assert got[3].startswith("authentication failed: TLS handshake failed")


def test_no_sni_and_a_server_that_just_confirms(lab: Lab, fake_tls: Callable[[str], FakeTLSServer]) -> None:
    server = fake_tls("one")
    ctx = tls.client_context(uri_mod.plan(f"test+tls://localhost:{server.port}/x?pkipath={lab.pki('client')}", 0))
    channel = tls.start_session(ctx, connect_tcp("localhost", server.port, 5), "localhost", 5)
    channel.close()
    assert server.sni == [None]  # libvirt sends no server name


def test_tls_to_a_port_that_does_not_speak_tls(lab: Lab, peer: Peer) -> None:
    got = same(peer, f"test+tls://127.0.0.1:{lab.tcp_port}/default?pkipath={lab.pki('client')}")
    assert got[:3] == ("err", C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC)
    assert got[3].startswith("authentication failed: TLS handshake failed ")


def test_tls_import_only_when_needed(lab: Lab) -> None:
    code = (
        "import sys, pyvirtrpc\n"
        f"c = pyvirtrpc.open({lab.uris['unix']!r}); c.getHostname(); c.close()\n"
        "print('ssl' in sys.modules)\n"
        f"c = pyvirtrpc.open({tls_uri(lab)!r}); c.getHostname(); c.close()\n"
        "print('ssl' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "True"], r.stderr


# ------------------------------------------------------------------ events
DOMXML = (
    "<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
    "<os><type arch='i686'>hvm</type></os></domain>"
)


def lifecycle_events_over(uri: str, lab: Lab, name: str) -> list[int]:
    """Lifecycle events an event loop delivers for ``uri`` while another connection acts."""
    from tests.fakedaemon import default_loop_thread

    seen: list[int] = []
    with default_loop_thread():
        conn = pyvirtrpc.openAuth(uri, [AUTH, callback, None], 0)
        other = pyvirtrpc.open(lab.uris["unix"])
        try:
            cid = conn.domainEventRegisterAny(
                None, C.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda c, d, ev, det, o: seen.append(ev), None
            )
            dom = other.defineXML(DOMXML.format(name=name))
            dom.create()
            dom.suspend()
            dom.resume()
            dom.destroy()
            dom.undefine()
            deadline = time.monotonic() + 10
            while len(seen) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            conn.domainEventDeregisterAny(cid)
        finally:
            conn.close()
            other.close()
    return seen


LIFECYCLE = [
    C.VIR_DOMAIN_EVENT_DEFINED,
    C.VIR_DOMAIN_EVENT_STARTED,
    C.VIR_DOMAIN_EVENT_SUSPENDED,
    C.VIR_DOMAIN_EVENT_RESUMED,
    C.VIR_DOMAIN_EVENT_STOPPED,
    C.VIR_DOMAIN_EVENT_UNDEFINED,
]


@pytest.mark.parametrize("transport", ["tls", "tcp"])
def test_events_through_an_event_loop(lab: Lab, transport: str) -> None:
    # the loop polls the socket: nothing decrypted may wait unseen in the TLS or SASL layer
    assert lifecycle_events_over(lab.uris[transport], lab, f"ev-{transport}") == LIFECYCLE
