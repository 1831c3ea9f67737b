"""libvirt's certificate rules, file lookup and priority mapping, without a daemon.

Certificates with the edge cases libvirt (and GnuTLS's host-name check)
treat specially are made here with ``cryptography``; the lab's own PKI is
parsed and checked against openssl's view of it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.transport import _x509, tls

NOW = dt.datetime.now(dt.timezone.utc)
_KEYS: dict[str, Any] = {}


def key(name: str, kind: str = "rsa") -> Any:
    if (name, kind) not in _KEYS:
        _KEYS[(name, kind)] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
    return _KEYS[(name, kind)]


def make_cert(
    cn: str,
    *,
    issuer: Optional[tuple[x509.Certificate, Any]] = None,
    ca: Optional[bool] = False,
    san: Optional[list[x509.GeneralName]] = None,
    usage: Optional[tuple[dict[str, bool], bool]] = None,
    eku: Optional[tuple[list[x509.ObjectIdentifier], bool]] = None,
    days: tuple[int, int] = (-1, 365),
    kind: str = "rsa",
    signer_key: Any = None,
) -> tuple[x509.Certificate, Any]:
    k = key(cn, kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=days[0]))
        .not_valid_after(NOW + dt.timedelta(days=days[1]))
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage is not None:
        flags = dict.fromkeys(
            [
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ],
            False,
        )
        flags.update(usage[0])
        b = b.add_extension(x509.KeyUsage(**flags), critical=usage[1])
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku[0]), critical=eku[1])
    sk = signer_key if signer_key is not None else (issuer[1] if issuer else k)
    return b.sign(sk, hashes.SHA256()), k


def parsed(cert: x509.Certificate) -> _x509.Cert:
    return _x509.cert_from_der(cert.public_bytes(serialization.Encoding.DER))


CA = make_cert("test CA", ca=True, usage=({"key_cert_sign": True, "crl_sign": True}, True))
SERVER_USAGE = ({"digital_signature": True, "key_encipherment": True}, True)


def server(san: Optional[list[x509.GeneralName]] = None, cn: str = "server", **kw: Any) -> _x509.Cert:
    kw.setdefault("usage", SERVER_USAGE)
    return parsed(make_cert(cn, issuer=CA, san=san, **kw)[0])


# ------------------------------------------------------------ host names
DNS, IP = x509.DNSName, x509.IPAddress


@pytest.mark.parametrize(
    "san,host,ok",
    [
        ([DNS("localhost"), IP(ipaddress.ip_address("127.0.0.1"))], "127.0.0.1", True),
        ([DNS("localhost"), IP(ipaddress.ip_address("127.0.0.1"))], "127.0.0.2", False),
        ([IP(ipaddress.ip_address("::1"))], "::1", True),
        ([IP(ipaddress.ip_address("::1"))], "0:0::1", True),  # compared as addresses
        ([DNS("127.0.0.1")], "127.0.0.1", True),  # GnuTLS also accepts an IP written as a DNS name
        ([DNS("Host.Example.COM")], "host.example.com", True),
        ([DNS("*.example.com")], "a.example.com", True),
        ([DNS("*.example.com")], "a.b.example.com", False),  # one label only
        ([DNS("*.example.com")], "example.com", False),
        ([DNS("*.com")], "example.com", False),  # a wildcard needs two labels after it
        ([DNS("f*.example.com")], "foo.example.com", False),  # only a leading *
        ([DNS("other.example.com")], "host.example.com", False),
    ],
)
def test_check_hostname(san: list[x509.GeneralName], host: str, ok: bool) -> None:
    assert _x509.check_hostname(server(san), host) is ok


def test_cn_is_used_only_without_sans() -> None:
    assert _x509.check_hostname(server(None, cn="host.example.com"), "host.example.com")
    assert not _x509.check_hostname(server([DNS("other")], cn="host.example.com"), "host.example.com")
    assert not _x509.check_hostname(
        server([IP(ipaddress.ip_address("10.0.0.1"))], cn="host.example.com"), "host.example.com"
    )
    # a CN names a server only in a certificate fit for one
    client_only = server(None, cn="host.example.com", eku=([ExtendedKeyUsageOID.CLIENT_AUTH], False))
    assert not _x509.check_hostname(client_only, "host.example.com")


# ------------------------------------------------------- peer certificate
def problems(cert: _x509.Cert, host: str = "server", chain_checked: bool = True) -> tuple[Optional[str], list[str]]:
    ctx: Any = type("Ctx", (), {"cas": [parsed(CA[0])], "crls": []})()
    return tls.peer_problems(ctx, cert, host, NOW.timestamp(), chain_checked)


def test_peer_checks() -> None:
    assert problems(server([DNS("server")])) == (None, [])
    assert problems(server([DNS("server")], ca=True))[0] == (
        "The certificate [session] basic constraints show a CA, but we need one for a server"
    )
    assert problems(server([DNS("x")]))[0] == "Certificate [session] owner does not match the hostname server"
    # key usage and purpose: fatal only when critical
    assert problems(server([DNS("server")], usage=({"digital_signature": True}, True)))[0] == (
        "Certificate [session] usage does not permit key encipherment"
    )
    assert problems(server([DNS("server")], usage=({"digital_signature": True}, False))) == (
        None,
        ["Certificate [session] usage does not permit key encipherment"],
    )
    assert problems(server([DNS("server")], eku=([ExtendedKeyUsageOID.CLIENT_AUTH], True)))[0] == (
        "Certificate [session] purpose does not allow use for with a TLS server"
    )
    assert problems(server([DNS("server")], eku=([ExtendedKeyUsageOID.CLIENT_AUTH], False)))[0] is None
    # libvirt lets any other purpose stand for both
    assert problems(server([DNS("server")], eku=([ExtendedKeyUsageOID.CODE_SIGNING], True)))[0] is None
    # no_verify: the chain and dates are judged here (for the log)
    expired = server([DNS("server")], days=(-10, -1))
    assert problems(expired, chain_checked=False)[0] == "Certificate failed validation: The certificate is not trusted."
    rogue = parsed(make_cert("server", issuer=CA, san=[DNS("server")], signer_key=key("rogue"))[0])
    assert problems(rogue, chain_checked=False)[0] == "Certificate failed validation: The certificate is not trusted."
    other_ca = make_cert("other CA", ca=True)
    stranger = parsed(make_cert("server", issuer=other_ca, san=[DNS("server")])[0])
    assert problems(stranger, chain_checked=False)[0] == (
        "Certificate failed validation: The certificate hasn't got a known issuer."
    )


# -------------------------------------------------------- own certificate
def write_pem(path: Path, *certs: x509.Certificate) -> str:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return str(path)


def sanity(tmp_path: Path, client: x509.Certificate, *cas: x509.Certificate) -> Optional[str]:
    cert = write_pem(tmp_path / "clientcert.pem", client)
    ca = write_pem(tmp_path / "cacert.pem", *(cas or (CA[0],)))
    try:
        tls.sanity_check(ca, cert)
    except libvirtError as e:
        assert (e.get_error_code(), e.get_error_domain()) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
        return str(e).replace(str(tmp_path), "D")
    return None


CLIENT_USAGE = ({"digital_signature": True, "key_encipherment": True}, True)
CLIENT_EKU = ([ExtendedKeyUsageOID.CLIENT_AUTH], False)


def test_sanity_checks(tmp_path: Path) -> None:
    good = make_cert("alice", issuer=CA, usage=CLIENT_USAGE, eku=CLIENT_EKU)[0]
    assert sanity(tmp_path, good) is None
    assert sanity(tmp_path, make_cert("alice", issuer=CA, days=(-10, -1))[0]) == (
        "The client certificate D/clientcert.pem has expired"
    )
    assert sanity(tmp_path, make_cert("alice", issuer=CA, days=(1, 10))[0]) == (
        "The client certificate D/clientcert.pem is not yet active"
    )
    assert sanity(tmp_path, make_cert("alice", issuer=CA, ca=True)[0]) == (
        "The certificate D/clientcert.pem basic constraints show a CA, but we need one for a client"
    )
    assert sanity(tmp_path, make_cert("alice", issuer=CA, usage=({"key_encipherment": True}, True))[0]) == (
        "Certificate D/clientcert.pem usage does not permit digital signature"
    )
    assert sanity(tmp_path, make_cert("alice", issuer=CA, eku=([ExtendedKeyUsageOID.SERVER_AUTH], True))[0]) == (
        "Certificate D/clientcert.pem purpose does not allow use for with a TLS client"
    )
    bad_sig = make_cert("alice", issuer=CA, signer_key=key("rogue"))[0]
    assert sanity(tmp_path, bad_sig) == (
        "Our own certificate D/clientcert.pem failed validation against D/cacert.pem: The certificate is not trusted."
    )
    # the CAs: each must be a CA allowed to sign
    not_ca = make_cert("plain", ca=False)[0]
    assert sanity(tmp_path, good, CA[0], not_ca) == "The certificate D/cacert.pem basic constraints do not show a CA"
    no_bc = make_cert("nobc", ca=None)[0]
    assert sanity(tmp_path, good, CA[0], no_bc) == "The certificate D/cacert.pem is missing basic constraints for a CA"
    old_ca = make_cert("old", ca=True, days=(-10, -1))[0]
    assert sanity(tmp_path, good, CA[0], old_ca) == "The CA certificate D/cacert.pem has expired"


def test_sanity_check_other_signature_algorithms(tmp_path: Path) -> None:
    ec_ca = make_cert("ec CA", ca=True, kind="ec")
    good = make_cert("alice", issuer=ec_ca)[0]
    assert sanity(tmp_path, good, ec_ca[0]) is None
    forged = make_cert("alice", issuer=ec_ca, signer_key=key("x", "ec"))[0]
    assert sanity(tmp_path, forged, ec_ca[0]) is not None


def test_sanity_check_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "clientcert.pem").write_text("not a certificate")
    ca = write_pem(tmp_path / "cacert.pem", CA[0])
    with pytest.raises(libvirtError, match=f"Unable to import client certificate {tmp_path}/clientcert.pem"):
        tls.sanity_check(ca, str(tmp_path / "clientcert.pem"))
    # missing files are skipped by the sanity check (loading reports them)
    tls.sanity_check(str(tmp_path / "none.pem"), str(tmp_path / "none2.pem"))


# ------------------------------------------------------------ the lab PKI
def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_lab_pki_parses_like_openssl(lab: Any) -> None:
    pki = Path(lab.info["pki"]["root"])
    cert = _x509.load_pem_certs((pki / "server" / "servercert.pem").read_bytes())[0]
    serial = openssl("x509", "-in", str(pki / "server" / "servercert.pem"), "-noout", "-serial").split("=")[1]
    assert cert.serial == int(serial, 16)
    assert cert.is_ca is False and cert.subject_cns == ["localhost"]
    assert cert.key_usage == (_x509.KEY_DIGITAL_SIGNATURE | _x509.KEY_KEY_ENCIPHERMENT, True)
    assert cert.key_purposes == ([_x509.KP_TLS_WWW_SERVER], False)
    for host in ("localhost", "127.0.0.1", "::1"):
        assert _x509.check_hostname(cert, host)
    ca = _x509.load_pem_certs((pki / "ca" / "cacert.pem").read_bytes())
    assert _x509.issuer_status(cert, ca) == 0
    crls = _x509.load_pem_crls((pki / "ca" / "cacrl.pem").read_bytes())
    revoked = _x509.load_pem_certs((pki / "client-revoked" / "clientcert.pem").read_bytes())[0]
    assert _x509.revoked(revoked, crls, ca) and not _x509.revoked(cert, crls, ca)
    rogue = _x509.load_pem_certs((pki / "client-untrusted" / "clientcert.pem").read_bytes())[0]
    assert _x509.issuer_status(rogue, ca) & _x509.CERT_SIGNER_NOT_FOUND


def test_parser_rejects_garbage() -> None:
    for bad in (b"", b"\x30\x05\x02\x01", b"\x30\x82\xff\xff" + b"\x00" * 10, b"\x04\x00"):
        with pytest.raises(_x509.X509Error):
            _x509.cert_from_der(bad)


# ------------------------------------------------------------- file lookup
def test_locate_credentials(tmp_path: Path) -> None:
    c = tls.locate_credentials("/pki", True, str(tmp_path))
    assert (c.cacert, c.cacrl, c.cert, c.key) == (
        "/pki/cacert.pem",
        "/pki/cacrl.pem",
        "/pki/clientcert.pem",
        "/pki/clientkey.pem",
    )
    system = (tls.LIBVIRT_CACERT, tls.LIBVIRT_CACRL, tls.LIBVIRT_CLIENTCERT, tls.LIBVIRT_CLIENTKEY)
    c = tls.locate_credentials(None, False, str(tmp_path))  # root: the system files
    assert (c.cacert, c.cacrl, c.cert, c.key) == system
    user = tmp_path / ".pki" / "libvirt"
    user.mkdir(parents=True)
    c = tls.locate_credentials(None, True, str(tmp_path))  # nothing in ~/.pki/libvirt
    assert (c.cacert, c.cacrl, c.cert, c.key) == system
    (user / "cacert.pem").write_text("x")
    (user / "clientcert.pem").write_text("x")  # without its key: the pair falls back together
    c = tls.locate_credentials(None, True, str(tmp_path))
    assert (c.cacert, c.cacrl, c.cert, c.key) == (str(user / "cacert.pem"), *system[1:])
    (user / "clientkey.pem").write_text("x")
    (user / "cacrl.pem").write_text("x")
    c = tls.locate_credentials(None, True, str(tmp_path))
    assert (c.cacert, c.cacrl, c.cert, c.key) == tuple(
        str(user / n) for n in ("cacert.pem", "cacrl.pem", "clientcert.pem", "clientkey.pem")
    )


def test_user_pki_dir_is_used_by_an_open(lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyvirtrpc

    user = tmp_path / ".pki" / "libvirt"
    user.mkdir(parents=True)
    for name in ("cacert.pem", "clientcert.pem", "clientkey.pem"):
        (user / name).write_bytes((lab.pki("client") / name).read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as a user, ~/.pki/libvirt comes first
    conn = pyvirtrpc.open(f"test+tls://127.0.0.1:{lab.tls_port}/default", timeout=20)
    try:
        assert conn.getHostname() == "vm"
    finally:
        conn.close()


# --------------------------------------------------------------- priority
@pytest.mark.parametrize(
    "priority,minv,maxv,ciphers",
    [
        ("NORMAL", "TLSv1_2", "TLSv1_3", "DEFAULT"),
        ("@SYSTEM", "TLSv1_2", "TLSv1_3", "DEFAULT"),
        ("NORMAL:-VERS-TLS1.3", "TLSv1_2", "TLSv1_2", "DEFAULT"),
        ("NORMAL:-VERS-ALL:+VERS-TLS1.2:+VERS-TLS1.1", "TLSv1_1", "TLSv1_2", "DEFAULT:@SECLEVEL=0"),
        ("LEGACY", "TLSv1", "TLSv1_3", "ALL:!aNULL:!eNULL:!EXPORT:@SECLEVEL=0"),
        ("NORMAL:-VERS-TLS1.3:-RSA:-AES-128-CBC", "TLSv1_2", "TLSv1_2", "DEFAULT:!AES128+SHA:!kRSA"),
        ("NONE:+VERS-TLS1.2:+AES-256-GCM:+ECDHE-RSA", "TLSv1_2", "TLSv1_2", "AESGCM+AES256:kECDHE+aRSA"),
        ("normal:%NO_TICKETS:%COMPAT", "TLSv1_2", "TLSv1_3", "DEFAULT"),
    ],
)
def test_map_priority(priority: str, minv: str, maxv: str, ciphers: str) -> None:
    s = tls.map_priority(priority)
    assert s.min_version is not None and s.min_version.name == minv
    assert s.max_version is not None and s.max_version.name == maxv
    assert s.ciphers == ciphers
    assert s.no_tickets == ("NO_TICKETS" in priority)


@pytest.mark.parametrize(
    "priority,detail",
    [
        ("GARBAGE", "The request is invalid."),
        ("NORMAL:+BOGUS", "The request is invalid."),
        ("NORMAL:%BOGUS", "The request is invalid."),
        ("NONE", "No or insufficient priorities were set."),
        ("NORMAL:-VERS-ALL", "No or insufficient priorities were set."),
        ("SECURE256", "the GnuTLS profile SECURE256 cannot be expressed with OpenSSL"),
        ("NORMAL:-VERS-TLS1.2:+VERS-TLS1.0", "OpenSSL needs a contiguous range of TLS versions"),
        ("NORMAL:+GROUP-FFDHE2048", "+GROUP-FFDHE2048 cannot be expressed with OpenSSL (Python's ssl module)"),
        ("NORMAL:-CHACHA20-POLY1305", None),
        ("NORMAL:+VERS-SSL3.0", "SSL 3.0 is not available in OpenSSL"),
    ],
)
def test_map_priority_refusals(priority: str, detail: Optional[str]) -> None:
    with pytest.raises(libvirtError) as ei:
        tls.map_priority(priority)
    e = ei.value
    assert (e.get_error_code(), e.get_error_domain()) == (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    assert str(e).startswith(f"Failed to set TLS session priority to {priority}: ")
    if detail is not None:
        assert str(e) == f"Failed to set TLS session priority to {priority}: {detail}"
