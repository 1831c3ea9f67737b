"""SCRAM-SHA-1 / SCRAM-SHA-256 against RFC 5802 section 5 and RFC 7677 section 3, plus Cyrus's checks;
PLAIN and CRAM-MD5 against their RFCs."""

from __future__ import annotations

import hashlib
import hmac
from base64 import b64encode

import pytest

from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import AuthFailedError, libvirtError
from pyvirtrpc.sasl import CredentialRequest, Credentials, create
from pyvirtrpc.sasl.scram import Scram, salted_password, saslname

RFC5802 = {
    "mech": "SCRAM-SHA-1",
    "nonce": "fyko+d2lbbFgONRv9qkxdawL",
    "first": b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    "server_first": b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    "final": b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    "server_final": b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
}
RFC7677 = {
    "mech": "SCRAM-SHA-256",
    "nonce": "rOprNGfwEbeRWgbNEkqO",
    "first": b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    "server_first": b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    "final": b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "server_final": b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
}


def user(**kw: object) -> Credentials:
    return Credentials(authname="user", password="pencil", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("vec", [RFC5802, RFC7677], ids=["rfc5802-sha1", "rfc7677-sha256"])
def test_rfc_vectors(vec: dict) -> None:
    mech = create(vec["mech"], user(), nonce=vec["nonce"])
    assert mech.start() == vec["first"]
    assert mech.step(vec["server_first"]) == vec["final"]
    assert not mech.complete
    assert mech.step(vec["server_final"]) is None
    assert mech.complete and mech.ssf == 0 and mech.security_layer() is None


@pytest.mark.parametrize("vec", [RFC5802, RFC7677], ids=["rfc5802-sha1", "rfc7677-sha256"])
def test_wrong_server_signature_is_rejected(vec: dict) -> None:
    mech = create(vec["mech"], user(), nonce=vec["nonce"])
    mech.start()
    mech.step(vec["server_first"])
    sig = bytearray(vec["server_final"])
    sig[5] ^= 1
    with pytest.raises(AuthFailedError) as ei:
        mech.step(bytes(sig))
    err = ei.value
    assert (err.get_error_code(), err.get_error_domain()) == (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC)
    assert str(err) == (
        "authentication failed: Failed to step SASL negotiation: -13 "
        "(SASL(-13): authentication failure: ServerSignature mismatch)"
    )


def _second_step_error(server_first: bytes, mech: str = "SCRAM-SHA-256") -> str:
    m = create(mech, user(), nonce="abc")
    m.start()
    with pytest.raises(libvirtError) as ei:
        m.step(server_first)
    assert ei.value.get_error_domain() == C.VIR_FROM_RPC
    assert "pencil" not in str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize(
    ("server_first", "detail"),
    [
        (b"", "-5 (SASL(-5): bad protocol / cancel: SCRAM-SHA-256 input expected)"),
        (b"r", "Invalid SCRAM-SHA-256 input"),
        (b"m=ext,r=abcd,s=c2FsdA==,i=4096", "Unsupported mandatory extension to SCRAM-SHA-256"),
        (b"s=c2FsdA==,r=abcd,i=4096", "Nonce (r=) expected in SCRAM-SHA-256 input"),
        (b"r=abcd,i=4096,s=c2FsdA==", "Salt (s=) expected after the nonce in SCRAM-SHA-256 input"),
        (b"r=abcd,s=c2FsdA==", "iteration-count expected after the salt in SCRAM-SHA-256 input"),
        (b"r=abcd,s=c2FsdA==,i=4x", "Invalid iteration-count in SCRAM-SHA-256 input"),
        (b"r=abcd,s=c2FsdA==,i=65537", "iteration-count is too big, refusing to compute"),
        (b"r=xyzd,s=c2FsdA==,i=4096", "The nonce received from the server doesn't start from the nonce sent"),
        (b"r=abc,s=c2FsdA==,i=4096", "The nonce received from the server doesn't start from the nonce sent"),
        (b"r=abcd,s=,i=4096", "The salt can't be empty"),
        (b"r=abcd,s=!!,i=4096", "Invalid base64 encoding of the salt"),
    ],
)
def test_bad_server_first(server_first: bytes, detail: str) -> None:
    assert detail in _second_step_error(server_first)


@pytest.mark.parametrize(
    ("server_final", "detail"),
    [
        (b"e=invalid-proof", "ServerSignature expected in SCRAM-SHA-1 input"),
        (b"v", "Invalid SCRAM-SHA-1 input expected"),
        (b"v=!!!!", "Invalid base64 encoding of the server proof"),
        (b"v=" + b64encode(b"short"), "Invalid server proof (truncated)"),
    ],
)
def test_bad_server_final(server_final: bytes, detail: str) -> None:
    m = create("SCRAM-SHA-1", user(), nonce=RFC5802["nonce"])
    m.start()
    m.step(RFC5802["server_first"])
    with pytest.raises(AuthFailedError) as ei:
        m.step(server_final)
    assert detail in str(ei.value)


def test_scram_refused_below_min_ssf_like_cyrus() -> None:
    m = create("SCRAM-SHA-256", user(), min_ssf=56, max_ssf=100000)
    with pytest.raises(AuthFailedError) as ei:
        m.start()
    assert str(ei.value) == (
        "authentication failed: Failed to start SASL negotiation: -15 (SASL(-15): mechanism too weak for "
        "this user: SSF requested of SCRAM-SHA-256 plugin)"
    )
    # an external layer (TLS) that covers min_ssf makes it acceptable
    assert create("SCRAM-SHA-256", user(), min_ssf=56, external_ssf=256).start() is not None


def _server_final_for(mech: str, first_bare: str, server_first: str, final_no_proof: str, pw: bytes) -> bytes:
    """An independent RFC 5802 server computation (hashlib/hmac only)."""
    h = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-224": "sha224", "SCRAM-SHA-256": "sha256",
         "SCRAM-SHA-384": "sha384", "SCRAM-SHA-512": "sha512"}[mech]
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    from base64 import b64decode

    salted = hashlib.pbkdf2_hmac(h, pw, b64decode(attrs["s"]), int(attrs["i"]))
    auth = f"{first_bare},{server_first},{final_no_proof}".encode()
    server_key = hmac.new(salted, b"Server Key", h).digest()
    return b"v=" + b64encode(hmac.new(server_key, auth, h).digest())


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-224", "SCRAM-SHA-256", "SCRAM-SHA-384", "SCRAM-SHA-512"])
def test_all_scram_variants_with_random_nonce_and_authzid(mech: str) -> None:
    creds = Credentials(authname="a,b=c", password="pw", username="admin",
                        supported=[C.VIR_CRED_USERNAME, C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE])
    m = create(mech, creds)
    first = (m.start() or b"").decode()
    gs2, bare = first[:first.index("n=", 3)], first[first.index("n=", 3):]
    assert gs2 == "n,a=admin,"
    assert bare.startswith("n=a=2Cb=3Dc,r=")
    nonce = bare.split(",r=")[1]
    assert len(nonce) == 32
    server_first = f"r={nonce}SERVER,s={b64encode(b'salty').decode()},i=4096"
    final = (m.step(server_first.encode()) or b"").decode()
    assert final.startswith(f"c={b64encode(gs2.encode()).decode()},r={nonce}SERVER,p=")
    no_proof = final[:final.index(",p=")]
    assert m.step(_server_final_for(mech, bare, server_first, no_proof, b"pw")) is None
    assert m.complete


def test_helpers() -> None:
    assert saslname("a=b,c") == "a=3Db=2Cc"
    # RFC 5802's SaltedPassword for its example
    assert salted_password("sha1", b"pencil", b"A%\xc2G\xe4:\xb1\xe9<m\xffv", 4096).hex() == (
        "1d96ee3a529b5a5f9e47c01f229a2cb8a6e15f7d"
    )
    assert issubclass(type(create("SCRAM-SHA-1", user())), Scram)


# ------------------------------------------------------------------ PLAIN
def test_plain() -> None:
    m = create("PLAIN", Credentials(authname="tim", password="tanstaaftanstaaf"))
    assert m.start() == b"\0tim\0tanstaaftanstaaf"  # RFC 4616 section 4
    assert m.complete
    creds = Credentials(authname="Kurt", password="xipj3plmq", username="Ursel",
                        supported=[C.VIR_CRED_USERNAME, C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE])
    assert create("PLAIN", creds).start() == b"Ursel\0Kurt\0xipj3plmq"
    with pytest.raises(AuthFailedError, match="SSF requested of PLAIN plugin"):
        create("PLAIN", creds, min_ssf=56).start()


def test_cram_md5_rfc2195() -> None:
    m = create("CRAM-MD5", Credentials(authname="tim", password="tanstaaftanstaaf"))
    assert m.start() is None
    out = m.step(b"<1896.697170952@postoffice.reston.mci.net>")
    assert out == b"tim b913a602c7eda7a495b4e6e7334d3890"
    assert m.complete
    m = create("CRAM-MD5", user())
    m.start()
    with pytest.raises(AuthFailedError, match="CRAM-MD5 input longer than 1024 bytes"):
        m.step(b"x" * 1025)


# ------------------------------------------------------------ credentials
def test_credentials_static_values_first_then_callback_batch() -> None:
    batches: list[list[CredentialRequest]] = []

    def cb(reqs: list[CredentialRequest]) -> None:
        batches.append(list(reqs))
        for r in reqs:
            r.result = "secret"

    creds = Credentials(authname="user", callback=cb)
    assert creds.supported == {C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE}
    create("SCRAM-SHA-1", creds).start()
    assert [[r.type for r in b] for b in batches] == [[C.VIR_CRED_PASSPHRASE]]
    assert batches[0][0].prompt == "Please enter your password"
    assert "secret" not in repr(batches[0][0])


def test_credentials_without_callback_or_with_a_failing_one() -> None:
    creds = Credentials(authname="user", supported=[C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE])
    with pytest.raises(AuthFailedError) as ei:
        create("PLAIN", creds).start()
    assert str(ei.value) == "authentication failed: No authentication callback available"
    assert ei.value.get_error_domain() == C.VIR_FROM_REMOTE

    def failing(reqs: list[CredentialRequest]) -> int:
        return -1

    def raising(reqs: list[CredentialRequest]) -> None:
        raise RuntimeError("the typed password was hunter2")

    for cb in (failing, raising):
        creds = Credentials(authname="user", callback=cb)
        with pytest.raises(AuthFailedError) as ei:
            create("PLAIN", creds).start()
        assert str(ei.value) == "authentication failed: Failed to collect auth credentials"
        assert ei.value.get_error_domain() == C.VIR_FROM_REMOTE
        assert "hunter2" not in str(ei.value) and ei.value.__cause__ is None


def test_authname_falls_back_to_cyrus_default_when_not_supported() -> None:
    creds = Credentials(password="pw", supported=[C.VIR_CRED_PASSPHRASE], fallback_authname="envuser")
    assert create("PLAIN", creds).start() == b"\0envuser\0pw"
