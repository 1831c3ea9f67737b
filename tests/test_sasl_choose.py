"""Mechanism choice as libvirt + Cyrus 2.1.28 make it, GSSAPI availability, and the client loop's rules."""

from __future__ import annotations

import importlib.util

import pytest

from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import AuthFailedError, libvirtError
from pyvirtrpc.sasl import RANKED, Credentials, SaslClient, SecurityProps, choose, create, implemented

TLS = SecurityProps.for_libvirt(True, 256)
UNIX = SecurityProps.for_libvirt(True)
TCP = SecurityProps.for_libvirt(False)
PW = {C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE}
LAB_TLS = "DIGEST-MD5,SCRAM-SHA-256,SCRAM-SHA-1,PLAIN"
HAVE_GSSAPI = importlib.util.find_spec("gssapi") is not None

NO_WORTHY = (
    "authentication failed: Failed to start SASL negotiation: -4 "
    "(SASL(-4): no mechanism available: No worthy mechs found)"
)


def test_ranking_is_cyrus_mech_compare_order() -> None:
    assert [m.name for m in RANKED] == [
        "SCRAM-SHA-512", "SCRAM-SHA-384", "SCRAM-SHA-256", "SCRAM-SHA-224", "SCRAM-SHA-1",
        "GSSAPI", "DIGEST-MD5", "CRAM-MD5", "PLAIN",
    ]


@pytest.mark.parametrize(
    ("mechlist", "props", "forced", "expected"),
    [
        (LAB_TLS, TLS, None, "SCRAM-SHA-256"),  # what virsh picks in the lab (REPORT.md)
        (LAB_TLS, UNIX, None, "SCRAM-SHA-256"),
        ("DIGEST-MD5", TCP, None, "DIGEST-MD5"),
        (LAB_TLS, TCP, None, "DIGEST-MD5"),  # SCRAM/PLAIN are too weak on plain TCP
        (LAB_TLS, TLS, "PLAIN", "PLAIN"),
        (LAB_TLS, TLS, "SCRAM-SHA-1", "SCRAM-SHA-1"),
        ("PLAIN CRAM-MD5", UNIX, None, "CRAM-MD5"),
        ("plain, digest-md5", UNIX, None, "DIGEST-MD5"),  # Cyrus compares names case-insensitively
        ("SCRAM-SHA-1-PLUS,SCRAM-SHA-1", UNIX, None, "SCRAM-SHA-1"),  # no channel binding: -PLUS ignored
        ("X-UNKNOWN  LOGIN\tPLAIN", UNIX, None, "PLAIN"),
        ("SCRAM-SHA-1,SCRAM-SHA-512,SCRAM-SHA-224", TLS, None, "SCRAM-SHA-512"),
    ],
)
def test_choice(mechlist: str, props: SecurityProps, forced: str | None, expected: str) -> None:
    assert choose(mechlist, PW, props, forced) == expected


def _err(mechlist: str, supported: set[int], props: SecurityProps, forced: str | None = None) -> libvirtError:
    with pytest.raises(libvirtError) as ei:
        choose(mechlist, supported, props, forced)
    return ei.value


@pytest.mark.parametrize(
    ("mechlist", "supported", "props", "forced", "domain", "message"),
    [
        ("DIGEST-MD5", PW, TCP, "SCRAM-SHA-256", C.VIR_FROM_REMOTE,
         "authentication failed: SASL mechanism SCRAM-SHA-256 not supported by server"),
        ("DIGEST-MD5", PW, TCP, "digest-md5", C.VIR_FROM_REMOTE,
         "authentication failed: SASL mechanism digest-md5 not supported by server"),
        # strstr passes but Cyrus has no mechanism of that name
        ("SCRAM-SHA-1", PW, TLS, "SHA-1", C.VIR_FROM_RPC, NO_WORTHY),
        # PLAIN is offered but not acceptable on plain TCP
        ("PLAIN,SCRAM-SHA-256", PW, TCP, None, C.VIR_FROM_RPC, NO_WORTHY),
        ("PLAIN", PW, TCP, "PLAIN", C.VIR_FROM_RPC, NO_WORTHY),
        # libvirt.open() without an auth callback: no password prompt, no mechanism (gotcha 9)
        (LAB_TLS, set(), TLS, None, C.VIR_FROM_RPC, NO_WORTHY),
        ("EXTERNAL,ANONYMOUS", PW, TLS, None, C.VIR_FROM_RPC, NO_WORTHY),
        ("", PW, TLS, None, C.VIR_FROM_RPC,
         "authentication failed: Failed to start SASL negotiation: -4 (SASL(-4): no mechanism available: )"),
    ],
)
def test_choice_errors(mechlist: str, supported: set[int], props: SecurityProps, forced: str | None, domain: int,
                       message: str) -> None:
    err = _err(mechlist, supported, props, forced)
    assert isinstance(err, AuthFailedError)
    assert (err.get_error_code(), err.get_error_domain(), str(err)) == (C.VIR_ERR_AUTH_FAILED, domain, message)


def test_gssapi_availability() -> None:
    """Without python-gssapi: a clear error; with it: GSSAPI ranks between SCRAM and DIGEST-MD5."""
    if HAVE_GSSAPI:
        assert implemented("GSSAPI")
        assert choose("GSSAPI,DIGEST-MD5", set(), TCP) == "GSSAPI"  # needs no password prompt
        assert choose("GSSAPI,SCRAM-SHA-1", PW, TLS) == "SCRAM-SHA-1"
        return
    assert not implemented("GSSAPI")
    # the daemon's default mech_list is gssapi alone
    err = _err("GSSAPI", PW, TCP)
    assert (err.get_error_code(), err.get_error_domain()) == (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC)
    assert "GSSAPI needs the Python 'gssapi' package" in str(err)
    # with something else usable, Cyrus (without its GSSAPI plugin) just takes that
    assert choose("GSSAPI,DIGEST-MD5", PW, TCP) == "DIGEST-MD5"
    with pytest.raises(AuthFailedError, match="GSSAPI needs the Python 'gssapi' package"):
        create("GSSAPI", Credentials())



def test_unknown_mechanism_name() -> None:
    with pytest.raises(AuthFailedError, match="No worthy mechs found"):
        create("NTLM", Credentials())
    assert create("digest-md5", Credentials()).name == "DIGEST-MD5"


def test_libvirt_props() -> None:
    assert (TCP.min_ssf, TCP.max_ssf, TCP.flags) == (56, 100000, 0x11)
    assert (TLS.min_ssf, TLS.max_ssf, TLS.external_ssf, TLS.flags) == (0, 0, 256, 0)
    assert (TCP.musthave, TCP.limit, TLS.musthave, TLS.limit) == (56, 100000, 0, 0)


# ----------------------------------------------------------- client loop
def test_start_data_too_long_is_refused_like_libvirt() -> None:
    client = SaslClient(Credentials(authname="a" * 70000, password="p"), secure=True)
    with pytest.raises(AuthFailedError) as ei:
        client.start("PLAIN")
    assert str(ei.value) == "authentication failed: SASL negotiation data too long: 70003 bytes"
    assert ei.value.get_error_domain() == C.VIR_FROM_REMOTE


def test_plain_completes_on_the_start_reply() -> None:
    client = SaslClient(Credentials(authname="u", password="p"), secure=True, forced="PLAIN")
    assert client.start("PLAIN") == ("PLAIN", b"\0u\0p")
    assert client.receive(True, None) is None and client.done
    assert client.security_layer() is None
    with pytest.raises(RuntimeError):
        client.receive(True, None)


def test_digest_needs_a_step_after_the_server_says_complete() -> None:
    """remoteAuthSASL always runs the client step on the final data (rspauth) before finishing."""
    client = SaslClient(Credentials(authname="u", password="p"), host="h", secure=True)
    assert client.start("DIGEST-MD5") == ("DIGEST-MD5", None)
    out = client.receive(False, b'nonce="n",realm="r",qop="auth",algorithm=md5-sess')
    assert out is not None and not client.done
    with pytest.raises(AuthFailedError, match="-10"):
        client.receive(True, b"rspauth=0123")
    assert not client.done
