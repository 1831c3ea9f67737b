"""DIGEST-MD5: the real virsh <-> libvirtd capture, RFC 2831's examples, Cyrus's edge cases.

The golden test replays tests/vectors/capture-tcp-sasl-hostname.txt (virsh
over TCP, DIGEST-MD5 auth-conf rc4, alice/wonderland, realm vm): our client
must produce the captured response byte for byte from the captured nonce and
cnonce, accept the captured rspauth, decrypt every SASL frame in both
directions into the expected RPC traffic, and re-encrypt it identically.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from captures import streams  # noqa: E402

from pyvirtrpc import _xdr, wire  # noqa: E402
from pyvirtrpc._gen import constants as C  # noqa: E402
from pyvirtrpc._gen import remote as R  # noqa: E402
from pyvirtrpc.errors import AuthFailedError, libvirtError  # noqa: E402
from pyvirtrpc.packet import Deframer  # noqa: E402
from pyvirtrpc.sasl import CredentialRequest, Credentials, DigestLayer, create  # noqa: E402
from pyvirtrpc.sasl import digestmd5 as D  # noqa: E402

CAPTURE = "capture-tcp-sasl-hostname.txt"
TCP = {"min_ssf": 56, "max_ssf": 100000}  # libvirt's plain-TCP properties


def alice(**kw: object) -> Credentials:
    return Credentials(authname="alice", password="wonderland", **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------- golden
def _split_clear(data: bytes, count: int) -> tuple[list, bytes]:
    """The first ``count`` RPC packets (sent in clear) and the SASL-encoded rest."""
    msgs = []
    pos = 0
    for _ in range(count):
        n = struct.unpack_from(">I", data, pos)[0]
        d = Deframer()
        d.feed(data[pos:pos + n])
        msgs.append(d.next())
        pos += n
    return msgs, data[pos:]


def _sasl_packets(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        n = struct.unpack_from(">I", data, pos)[0]
        out.append(data[pos:pos + 4 + n])
        pos += 4 + n
    assert pos == len(data)
    return out


@pytest.fixture(scope="module")
def golden() -> dict:
    s = streams(CAPTURE)
    cmsgs, crest = _split_clear(s[">"], 4)  # AUTH_LIST, SASL_INIT, SASL_START, SASL_STEP
    smsgs, srest = _split_clear(s["<"], 4)
    procs = [m.procedure for m in cmsgs]
    assert procs == [R.REMOTE_PROC_AUTH_LIST, R.REMOTE_PROC_AUTH_SASL_INIT,
                     R.REMOTE_PROC_AUTH_SASL_START, R.REMOTE_PROC_AUTH_SASL_STEP]
    return {
        "mechlist": _xdr.decode(R.PROCEDURES[67].ret, smsgs[1].data, smsgs[1].offset).mechlist,
        "start_args": _xdr.decode(R.PROCEDURES[68].args, cmsgs[2].data, cmsgs[2].offset),
        "start_ret": _xdr.decode(R.PROCEDURES[68].ret, smsgs[2].data, smsgs[2].offset),
        "step_args": _xdr.decode(R.PROCEDURES[69].args, cmsgs[3].data, cmsgs[3].offset),
        "step_ret": _xdr.decode(R.PROCEDURES[69].ret, smsgs[3].data, smsgs[3].offset),
        "client_frames": crest,
        "server_frames": srest,
    }


def _replay(golden: dict) -> D.DigestMD5:
    sent = dict(D.parse_pairs(golden["step_args"].data))
    mech = create("DIGEST-MD5", alice(), host="127.0.0.1", cnonce=sent[b"cnonce"].decode(), **TCP)
    assert isinstance(mech, D.DigestMD5)
    return mech


def test_golden_response_matches_virsh(golden: dict) -> None:
    assert golden["mechlist"] == "DIGEST-MD5"
    start = golden["start_args"]
    assert (start.mech, start.nil, start.data) == ("DIGEST-MD5", 1, b"")
    mech = _replay(golden)
    assert mech.start() is None  # server-first: libvirt sends nil=1
    out = mech.step(golden["start_ret"].data)
    assert out == golden["step_args"].data  # byte for byte, response= included
    assert b"response=e8b45e99b538008425b802d1aedb588f" in out
    assert (mech.protection, mech.cipher, mech.ssf, mech.realm) == (D.PRIVACY, "rc4", 128, "vm")
    assert golden["step_ret"].complete == 1
    assert mech.step(golden["step_ret"].data) is None  # rspauth verified
    assert mech.complete


def test_golden_rspauth_is_the_rfc_value(golden: dict) -> None:
    sent = dict(D.parse_pairs(golden["step_args"].data))
    chal = dict(D.parse_pairs(golden["start_ret"].data))
    ha1 = D.session_key(b"alice", b"vm", b"wonderland", chal[b"nonce"], sent[b"cnonce"])
    uri = b"libvirt/127.0.0.1"
    assert D.response_value(ha1, chal[b"nonce"], sent[b"cnonce"], "auth-conf", uri) == sent[b"response"].decode()
    rsp = D.response_value(ha1, chal[b"nonce"], sent[b"cnonce"], "auth-conf", uri, server=True)
    assert golden["step_ret"].data == b"rspauth=" + rsp.encode()


def test_golden_frames_decrypt_to_the_rpc_traffic(golden: dict) -> None:
    mech = _replay(golden)
    mech.start()
    mech.step(golden["start_ret"].data)
    mech.step(golden["step_ret"].data)
    client_layer = mech.security_layer()
    assert isinstance(client_layer, DigestLayer)
    assert (client_layer.ssf, client_layer.max_plaintext) == (128, 65536 - 25)
    server_layer = DigestLayer(mech._ha1, "rc4", server=True)

    # what the daemon received from virsh, and what virsh received
    calls = wire.decode(server_layer.feed(golden["client_frames"]))
    replies = wire.decode(client_layer.feed(golden["server_frames"]))
    expected = [
        "REMOTE_PROC_CONNECT_SUPPORTS_FEATURE", "REMOTE_PROC_CONNECT_OPEN",
        "REMOTE_PROC_CONNECT_SUPPORTS_FEATURE", "REMOTE_PROC_CONNECT_SUPPORTS_FEATURE",
        "REMOTE_PROC_CONNECT_REGISTER_CLOSE_CALLBACK", "REMOTE_PROC_CONNECT_GET_HOSTNAME",
        "REMOTE_PROC_CONNECT_UNREGISTER_CLOSE_CALLBACK", "REMOTE_PROC_CONNECT_CLOSE",
    ]
    assert [m.procedure_name for m in calls] == expected
    assert [m.procedure_name for m in replies] == expected
    assert [m.serial for m in calls] == list(range(4, 12))
    assert calls[0].body.feature == 10
    assert calls[1].body.name == "test:///default"
    assert replies[5].body.hostname == "vm"
    assert all(int(m.status) == 0 for m in replies)
    assert client_layer.buffered == 0 and server_layer.buffered == 0


def test_golden_frames_reencrypt_byte_for_byte(golden: dict) -> None:
    """Fresh layers fed the decrypted plaintexts, packet by packet, rebuild the capture."""
    mech = _replay(golden)
    mech.start()
    mech.step(golden["start_ret"].data)
    mech.step(golden["step_ret"].data)
    ha1 = mech._ha1
    for frames, server in ((golden["client_frames"], False), (golden["server_frames"], True)):
        reader = DigestLayer(ha1, "rc4", server=not server)
        writer = DigestLayer(ha1, "rc4", server=server)
        packets = _sasl_packets(frames)
        assert len(packets) == 8
        rebuilt = b"".join(writer.encode(reader.feed(p)) for p in packets)
        assert rebuilt == frames


def test_golden_frames_fed_in_every_split(golden: dict) -> None:
    frames = golden["server_frames"]
    mech = _replay(golden)
    mech.start()
    mech.step(golden["start_ret"].data)
    mech.step(golden["step_ret"].data)
    whole = DigestLayer(mech._ha1, "rc4").feed(frames)
    for cut in range(0, len(frames), 7):
        layer = DigestLayer(mech._ha1, "rc4")
        assert layer.feed(frames[:cut]) + layer.feed(frames[cut:]) == whole
    layer = DigestLayer(mech._ha1, "rc4")
    assert b"".join(layer.feed(frames[i:i + 1]) for i in range(len(frames))) == whole


def test_golden_any_bit_flip_is_rejected(golden: dict) -> None:
    frames = golden["server_frames"]
    first = _sasl_packets(frames)[0]
    mech = _replay(golden)
    mech.start()
    mech.step(golden["start_ret"].data)
    mech.step(golden["step_ret"].data)
    for bit in range(32, len(first) * 8):  # every bit of the body
        bad = bytearray(first)
        bad[bit // 8] ^= 1 << (bit % 8)
        layer = DigestLayer(mech._ha1, "rc4")
        with pytest.raises(libvirtError) as ei:
            layer.feed(bytes(bad))
        err = ei.value
        assert (err.get_error_code(), err.get_error_domain()) == (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC)
        assert str(err) == "internal error: failed to decode SASL data: -1 (generic failure)"


# ------------------------------------------------------------ RFC 2831 §4
@pytest.mark.parametrize(
    ("service", "nonce", "cnonce", "response", "rspauth"),
    [
        ("imap", b"OA6MG9tEQGm2hh", b"OA6MHXh6VqTrRk",
         "d388dad90d4bbd760a152321f2143af7", "ea40f60335c427b5527b84dbabcdfffd"),
        ("acap", b"OA9BSXrbuRhWay", b"OA9BSuZWMSpW8m",
         "6084c6db3fede7352c551284490fd0fc", "2f0b3d7c3c2e486600ef710726aa2eae"),
    ],
)
def test_rfc2831_examples(service: str, nonce: bytes, cnonce: bytes, response: str, rspauth: str) -> None:
    host = "elwood.innosoft.com"
    challenge = b'realm="elwood.innosoft.com",nonce="' + nonce + b'",qop="auth",algorithm=md5-sess,charset=utf-8'
    creds = Credentials(authname="chris", password="secret")
    mech = create("DIGEST-MD5", creds, service=service, host=host, cnonce=cnonce.decode())
    assert mech.start() is None
    out = mech.step(challenge)
    assert out is not None
    pairs = dict(D.parse_pairs(out))
    assert pairs[b"response"].decode() == response
    assert pairs[b"qop"] == b"auth" and b"cipher" not in pairs
    assert pairs[b"digest-uri"] == f"{service}/{host}".encode()
    assert mech.step(b"rspauth=" + rspauth.encode()) is None
    assert mech.complete and mech.ssf == 0 and mech.security_layer() is None


# ------------------------------------------------------------ negotiation
CHAL = (
    b'realm="vm",nonce="abc",qop="auth,auth-int,auth-conf",cipher="rc4-40,rc4-56,rc4,des,3des",'
    b"maxbuf=4096,charset=utf-8,algorithm=md5-sess"
)


@pytest.mark.parametrize(
    ("props", "challenge", "protection", "cipher", "ssf"),
    [
        (TCP, CHAL, D.PRIVACY, "rc4", 128),
        ({"min_ssf": 56, "max_ssf": 127}, CHAL, D.PRIVACY, "3des", 112),
        ({"min_ssf": 56, "max_ssf": 111}, CHAL, D.PRIVACY, "rc4-56", 56),
        ({"min_ssf": 0, "max_ssf": 55}, CHAL, D.PRIVACY, "des", 55),
        ({"min_ssf": 0, "max_ssf": 54}, CHAL, D.PRIVACY, "rc4-40", 40),
        ({"min_ssf": 0, "max_ssf": 39}, CHAL, D.INTEGRITY, None, 1),
        ({"min_ssf": 0, "max_ssf": 0}, CHAL, D.NOLAYER, None, 0),  # libvirt over TLS/unix
        ({"min_ssf": 0, "max_ssf": 256, "external_ssf": 256}, CHAL, D.NOLAYER, None, 0),
        (TCP, CHAL.replace(b"rc4-40,rc4-56,rc4,des,3des", b"des,3des"), D.PRIVACY, "3des", 112),
        ({"min_ssf": 1, "max_ssf": 100000}, CHAL.replace(b'cipher="rc4-40,rc4-56,rc4,des,3des",', b""),
         D.INTEGRITY, None, 1),
        ({}, b'nonce="x",algorithm=md5-sess', D.NOLAYER, None, 0),  # qop defaults to auth
    ],
)
def test_layer_choice_follows_cyrus(props: dict, challenge: bytes, protection: int, cipher: str, ssf: int) -> None:
    mech = create("DIGEST-MD5", alice(), host="vm", **props)
    mech.start()
    out = mech.step(challenge)
    assert isinstance(mech, D.DigestMD5)
    assert (mech.protection, mech.cipher, mech.ssf) == (protection, cipher, ssf)
    pairs = dict(D.parse_pairs(out or b""))
    assert pairs[b"qop"] == D.QOP_NAMES[protection].encode()
    assert pairs.get(b"cipher") == (cipher.encode() if cipher else None)
    assert pairs[b"maxbuf"] == b"65536"
    assert b"charset" not in pairs  # Cyrus's client never sends it


def _fail(challenge: bytes, **props: object) -> libvirtError:
    mech = create("DIGEST-MD5", alice(), host="vm", **props)  # type: ignore[arg-type]
    mech.start()
    with pytest.raises(libvirtError) as ei:
        mech.step(challenge)
    return ei.value


@pytest.mark.parametrize(
    ("challenge", "props", "code", "detail"),
    [
        (b"", {}, -1, "no server challenge"),
        (b'nonce="x",algorithm=md5-sess,realm="unterminated', {}, -13, "Parse error"),
        (b'nonce="x",algorithm=md5-sess garbage', {}, -13, "Parse error"),
        (b'nonce="x",algorithm=md5', {}, -1, "'algorithm' isn't 'md5-sess'"),
        (b'nonce="x",algorithm=md5-sess,algorithm=md5-sess', {}, -1, "Must see 'algorithm' only once"),
        (b'nonce="x"', {}, -1, "Must see 'algorithm' once. Didn't see at all"),
        (b"algorithm=md5-sess", {}, -1, "Don't have nonce."),
        (b'nonce="x",algorithm=md5-sess,qop="bogus"', {}, -13, "Server doesn't support any known qop level"),
        (b'nonce="x",algorithm=md5-sess,charset=latin1', {}, -13, "Charset must be UTF-8"),
        (b'nonce="x",algorithm=md5-sess,maxbuf=16', {}, -13,
         "Invalid maxbuf parameter received from server (too small: 16)"),
        (b'nonce="x",algorithm=md5-sess,maxbuf=16777216', {}, -13,
         "Invalid maxbuf parameter received from server (too big: 16777216)"),
        (b'nonce="x",algorithm=md5-sess,maxbuf=1x', {}, -13, "Invalid maxbuf parameter received from server (1x)"),
        (b'nonce="x",algorithm=md5-sess,maxbuf=99,maxbuf=99', {}, -13,
         "At least two maxbuf directives found. Authentication aborted"),
        (b'nonce="x",algorithm=md5-sess,qop="auth"', TCP, -15, "Can't find an acceptable layer"),
        # des (55) and integrity-only are never acceptable on plain TCP
        (b'nonce="x",algorithm=md5-sess,qop="auth-int,auth-conf",cipher="des,rc4-40"', TCP, -15,
         "Can't find an acceptable layer"),
        (b'nonce="x",algorithm=md5-sess,qop="auth-conf",cipher="rc4"', {}, -1, 'Server doesn\'t support "no layer"'),
        (b"x" * 2049, {}, -5, ""),
    ],
)
def test_bad_challenges_fail_as_cyrus(challenge: bytes, props: dict, code: int, detail: str) -> None:
    err = _fail(challenge, **props)
    assert isinstance(err, AuthFailedError)
    assert (err.get_error_code(), err.get_error_domain()) == (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC)
    from pyvirtrpc.sasl._common import errstring

    assert str(err) == (
        f"authentication failed: Failed to step SASL negotiation: {code} (SASL({code}): {errstring(code)}: {detail})"
    )
    assert "wonderland" not in str(err) and "wonderland" not in repr(err.err)


def test_wrong_rspauth_is_badserv() -> None:
    mech = create("DIGEST-MD5", alice(), host="vm")
    mech.start()
    mech.step(b'nonce="x",realm="vm",algorithm=md5-sess,qop="auth"')
    with pytest.raises(AuthFailedError) as ei:
        mech.step(b"rspauth=00000000000000000000000000000000")
    assert str(ei.value) == (
        "authentication failed: Failed to step SASL negotiation: -10 (SASL(-10): server failed mutual "
        "authentication step: DIGEST-MD5: This server wants us to believe that he knows shared secret)"
    )
    assert ei.value.get_error_domain() == C.VIR_FROM_RPC
    assert not mech.complete
    with pytest.raises(AuthFailedError):  # the mechanism stays failed
        mech.step(b"rspauth=00000000000000000000000000000000")


def test_final_message_without_rspauth_fails() -> None:
    mech = create("DIGEST-MD5", alice(), host="vm")
    mech.start()
    mech.step(b'nonce="x",realm="vm",algorithm=md5-sess,qop="auth"')
    with pytest.raises(AuthFailedError, match=r"-1 \(SASL\(-1\): generic failure: \)"):
        mech.step(b"foo=bar")
    mech = create("DIGEST-MD5", alice(), host="vm")
    mech.start()
    mech.step(b'nonce="x",realm="vm",algorithm=md5-sess,qop="auth"')
    with pytest.raises(AuthFailedError, match="DIGEST-MD5 Received Garbage"):
        mech.step(b"rspauth")


# ------------------------------------------------------------ credentials
def test_realm_defaults_to_the_host_without_a_server_realm() -> None:
    mech = create("DIGEST-MD5", alice(), host="example.org", cnonce="c")
    mech.start()
    out = mech.step(b'nonce="n",algorithm=md5-sess')
    pairs = dict(D.parse_pairs(out or b""))
    assert pairs[b"realm"] == b"example.org"
    ha1 = D.session_key(b"alice", b"example.org", b"wonderland", b"n", b"c")
    assert pairs[b"response"].decode() == D.response_value(ha1, b"n", b"c", "auth", b"libvirt/example.org")


def test_several_realms_ask_the_realm_with_cyrus_prompt() -> None:
    asked: list[CredentialRequest] = []

    def cb(reqs: list[CredentialRequest]) -> int:
        asked.extend(reqs)
        for r in reqs:
            r.result = {C.VIR_CRED_AUTHNAME: "bob", C.VIR_CRED_PASSPHRASE: "pw", C.VIR_CRED_REALM: "two"}[r.type]
        return 0

    creds = Credentials(callback=cb, supported=[C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE, C.VIR_CRED_REALM])
    mech = create("DIGEST-MD5", creds, host="h")
    mech.start()
    out = mech.step(b'realm="one",realm="two",nonce="n",algorithm=md5-sess')
    assert [r.type for r in asked] == [C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE, C.VIR_CRED_REALM]
    assert [r.prompt for r in asked] == [
        "Please enter your authentication name", "Please enter your password", "Please enter your realm"]
    assert asked[2].challenge == "Available realms: {one}, {two}."
    assert asked[2].defresult == "h"
    assert dict(D.parse_pairs(out or b""))[b"realm"] == b"two"
    assert "pw" not in repr(asked)


def test_several_realms_without_realm_support_use_the_host() -> None:
    mech = create("DIGEST-MD5", alice(), host="h")
    mech.start()
    out = mech.step(b'realm="one",realm="two",nonce="n",algorithm=md5-sess')
    assert dict(D.parse_pairs(out or b""))[b"realm"] == b"h"


def test_authzid_only_when_it_differs() -> None:
    for username, sent in (("alice", None), ("admin", b"admin"), ("", None)):
        creds = Credentials(authname="alice", password="pw", username=username,
                            supported=[C.VIR_CRED_USERNAME, C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE])
        mech = create("DIGEST-MD5", creds, host="h", cnonce="c")
        mech.start()
        pairs = dict(D.parse_pairs(mech.step(b'realm="r",nonce="n",algorithm=md5-sess') or b""))
        assert pairs.get(b"authzid") == sent
        ha1 = D.session_key(b"alice", b"r", b"pw", b"n", b"c", sent)
        assert pairs[b"response"].decode() == D.response_value(ha1, b"n", b"c", "auth", b"libvirt/h")


def test_latin1_names_and_passwords_are_hashed_as_latin1() -> None:
    creds = Credentials(authname="jürgen", password="pässwörd")
    mech = create("DIGEST-MD5", creds, host="h", cnonce="c")
    mech.start()
    pairs = dict(D.parse_pairs(mech.step(b'realm="r",nonce="n",algorithm=md5-sess') or b""))
    assert pairs[b"username"] == "jürgen".encode()  # sent as UTF-8
    ha1 = D.session_key("jürgen".encode("latin-1"), b"r", "pässwörd".encode("latin-1"), b"n", b"c")
    assert pairs[b"response"].decode() == D.response_value(ha1, b"n", b"c", "auth", b"libvirt/h")
    # outside Latin-1 the UTF-8 bytes are hashed as they are
    assert D._latin1("€".encode()) == "€".encode()
    assert D._latin1("é".encode()) == b"\xe9"


def test_quoting_of_names() -> None:
    creds = Credentials(authname='a"b\\c', password="pw")
    mech = create("DIGEST-MD5", creds, host="h")
    mech.start()
    out = mech.step(b'nonce="n",algorithm=md5-sess') or b""
    assert out.startswith(b'username="a\\"b\\\\c",')
    assert dict(D.parse_pairs(out))[b"username"] == b'a"b\\c'


def test_parse_pairs_like_cyrus_get_pair() -> None:
    assert D.parse_pairs(b' , a = "x\\"y" ,b=tok , ,c="" ') == [(b"a", b'x"y'), (b"b", b"tok"), (b"c", b"")]
    assert D.parse_pairs(b"A=1") == [(b"a", b"1")]
    assert D.parse_pairs(b"a") is None
    assert D.parse_pairs(b'a="x') is None
    assert D.parse_pairs(b"a=x y") is None
    assert D.parse_pairs(b"") == []


def test_no_password_callback_is_cyrus_missing_callback() -> None:
    creds = Credentials(authname="alice", supported=[C.VIR_CRED_AUTHNAME])
    mech = create("DIGEST-MD5", creds, host="h")
    mech.start()
    with pytest.raises(AuthFailedError, match="Unable to find a callback: 16388"):
        mech.step(b'nonce="n",algorithm=md5-sess')


# ------------------------------------------------------------ the layer itself
def test_slidebits_matches_cyrus() -> None:
    def cyrus(k: bytes) -> bytes:  # lib's slidebits, with its parity bits
        return bytes([
            k[0], (k[0] << 7 | k[1] >> 1) & 0xFF, (k[1] << 6 | k[2] >> 2) & 0xFF, (k[2] << 5 | k[3] >> 3) & 0xFF,
            (k[3] << 4 | k[4] >> 4) & 0xFF, (k[4] << 3 | k[5] >> 5) & 0xFF, (k[5] << 2 | k[6] >> 6) & 0xFF,
            (k[6] << 1) & 0xFF,
        ])

    for key in (bytes(range(7)), b"\xff" * 7, b"\x80\x01\x7f\xfe\x55\xaa\x33"):
        assert bytes(b & 0xFE for b in cyrus(key)) == D._slidebits(key)


def test_layer_keys_are_symmetric() -> None:
    ha1 = bytes(range(16))
    for cipher in (None, "rc4", "rc4-40", "rc4-56", "des", "3des"):
        c = D.layer_keys(ha1, cipher)
        s = D.layer_keys(ha1, cipher, server=True)
        assert (c[0], c[1], c[2], c[3]) == (s[1], s[0], s[3], s[2])
    # rc4-40 and rc4-56 key from a shorter HA1 prefix
    assert D.layer_keys(ha1, "rc4-40")[2] == D._md5(ha1[:5] + D.SEAL_C2S)
    assert D.layer_keys(ha1, "rc4-56")[2] == D._md5(ha1[:7] + D.SEAL_C2S)


def test_security_layer_is_one_object_per_session(golden: dict) -> None:
    mech = _replay(golden)
    assert mech.security_layer() is None  # not before completion
    mech.start()
    mech.step(golden["start_ret"].data)
    assert mech.security_layer() is None
    mech.step(golden["step_ret"].data)
    assert mech.security_layer() is mech.security_layer()
