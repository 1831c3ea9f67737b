"""Our SASL client against the real Cyrus SASL server library (libsasl2, what libvirtd uses), in process.

libvirtd only ever offers DIGEST-MD5 with min SSF >= 56 (and no layer at all
over TLS/unix), so des, rc4-40, integrity-only and small maxbuf values cannot
be reached through the daemon.  Here the daemon's side of remoteDispatchAuthSasl*
is played by libsasl2 itself through ctypes, with security properties of our
choosing: every cipher, integrity-only, no layer, and SCRAM-SHA-*/PLAIN/CRAM-MD5
are negotiated with the C implementation, and each layer is checked both ways
against Cyrus's own ``sasl_encode``/``sasl_decode``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.sasl import Credentials, SaslClient, SecurityProps, create
from pyvirtrpc.sasl._common import SEC_NOANONYMOUS, SEC_NOPLAINTEXT

APP = "pyvirtrpc-sasl-test"
REALM = "cyrus-test"
USER, PASSWORD = "alice", "wonderland"
SASL_OK, SASL_CONTINUE = 0, 1
SASL_SSF, SASL_MAXOUTBUF, SASL_SSF_EXTERNAL, SASL_SEC_PROPS = 1, 2, 100, 101
SASL_SUCCESS_DATA = 0x0004
TCP_FLAGS = SEC_NOANONYMOUS | SEC_NOPLAINTEXT


class SecProps(ctypes.Structure):
    _fields_ = [
        ("min_ssf", ctypes.c_uint),
        ("max_ssf", ctypes.c_uint),
        ("maxbufsize", ctypes.c_uint),
        ("security_flags", ctypes.c_uint),
        ("property_names", ctypes.c_void_p),
        ("property_values", ctypes.c_void_p),
    ]


_LIB: Optional[ctypes.CDLL] = None


@pytest.fixture(scope="module")
def sasl_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ctypes.CDLL]:
    """libsasl2 initialised as a server with a private sasldb holding alice."""
    global _LIB
    if _LIB is not None:  # sasl_server_init may run only once per process
        yield _LIB
        return
    name = ctypes.util.find_library("sasl2")
    saslpasswd2 = shutil.which("saslpasswd2", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if name is None or saslpasswd2 is None:
        pytest.skip("needs libsasl2 and saslpasswd2 (Debian: libsasl2-2, libsasl2-modules, sasl2-bin)")
    d = tmp_path_factory.mktemp("cyrus")
    db = d / "passwd.db"
    (d / f"{APP}.conf").write_text(
        "mech_list: digest-md5 scram-sha-1 scram-sha-224 scram-sha-256 scram-sha-384 scram-sha-512 plain cram-md5\n"
        f"sasldb_path: {db}\n"
    )
    env = dict(os.environ, SASL_CONF_PATH=str(d))
    subprocess.run(
        [saslpasswd2, "-p", "-c", "-a", APP, "-u", REALM, "-f", str(db), USER],
        input=PASSWORD.encode(), env=env, check=True, capture_output=True,
    )
    # sasl_server_init reads SASL_CONF_PATH (the process is not setuid); put the
    # environment back afterwards so that later tests' subprocesses do not see it
    old = os.environ.get("SASL_CONF_PATH")
    os.environ["SASL_CONF_PATH"] = str(d)
    lib = ctypes.CDLL(name)
    lib.sasl_server_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.sasl_server_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                    ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
    for fn in (lib.sasl_server_start,):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint,
                       ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint)]
    for fn in (lib.sasl_server_step, lib.sasl_encode, lib.sasl_decode):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint,
                       ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint)]
    lib.sasl_setprop.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.sasl_getprop.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.sasl_errdetail.argtypes = [ctypes.c_void_p]
    lib.sasl_errdetail.restype = ctypes.c_char_p
    lib.sasl_listmech.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p, ctypes.c_void_p]
    lib.sasl_dispose.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    try:
        rc = lib.sasl_server_init(None, APP.encode())
    finally:
        if old is None:
            del os.environ["SASL_CONF_PATH"]
        else:
            os.environ["SASL_CONF_PATH"] = old
    assert rc == SASL_OK, rc
    _LIB = lib
    yield lib


class CyrusServer:
    """libvirtd's server half of the SASL exchange, done by libsasl2."""

    def __init__(self, lib: ctypes.CDLL, *, min_ssf: int, max_ssf: int, maxbuf: int = 65536,
                 external_ssf: int = 0, flags: int = 0) -> None:
        self.lib = lib
        self.conn = ctypes.c_void_p()
        rc = lib.sasl_server_new(b"libvirt", REALM.encode(), None, b"127.0.0.1;1", b"127.0.0.1;2", None,
                                 SASL_SUCCESS_DATA, ctypes.byref(self.conn))
        assert rc == SASL_OK, rc
        if external_ssf:
            ext = ctypes.c_uint(external_ssf)
            assert lib.sasl_setprop(self.conn, SASL_SSF_EXTERNAL, ctypes.byref(ext)) == SASL_OK
        self.props = SecProps(min_ssf, max_ssf, maxbuf, flags, None, None)
        assert lib.sasl_setprop(self.conn, SASL_SEC_PROPS, ctypes.byref(self.props)) == SASL_OK
        self.complete = False

    def close(self) -> None:
        self.lib.sasl_dispose(ctypes.byref(self.conn))

    def mechlist(self) -> str:
        out = ctypes.c_char_p()
        assert self.lib.sasl_listmech(self.conn, None, b"", b",", b"", ctypes.byref(out), None, None) == SASL_OK
        return (out.value or b"").decode()

    def _result(self, rc: int, out: ctypes.c_void_p, n: ctypes.c_uint) -> tuple[bool, Optional[bytes]]:
        if rc not in (SASL_OK, SASL_CONTINUE):
            raise RuntimeError(f"server: {rc} {self.lib.sasl_errdetail(self.conn)!r}")
        self.complete = rc == SASL_OK
        return self.complete, (ctypes.string_at(out, n.value) if out.value else None)

    def start(self, mech: str, data: Optional[bytes]) -> tuple[bool, Optional[bytes]]:
        out, n = ctypes.c_void_p(), ctypes.c_uint()
        rc = self.lib.sasl_server_start(self.conn, mech.encode(), data, len(data or b""), ctypes.byref(out),
                                        ctypes.byref(n))
        return self._result(rc, out, n)

    def step(self, data: Optional[bytes]) -> tuple[bool, Optional[bytes]]:
        out, n = ctypes.c_void_p(), ctypes.c_uint()
        rc = self.lib.sasl_server_step(self.conn, data, len(data or b""), ctypes.byref(out), ctypes.byref(n))
        return self._result(rc, out, n)

    def _prop(self, num: int) -> int:
        p = ctypes.c_void_p()
        assert self.lib.sasl_getprop(self.conn, num, ctypes.byref(p)) == SASL_OK
        return ctypes.cast(p, ctypes.POINTER(ctypes.c_uint)).contents.value

    @property
    def ssf(self) -> int:
        return self._prop(SASL_SSF)

    @property
    def maxoutbuf(self) -> int:
        return self._prop(SASL_MAXOUTBUF)

    def encode(self, data: bytes) -> bytes:
        """As virNetSocketWriteSASL: slices of at most SASL_MAXOUTBUF through sasl_encode."""
        out = b""
        step = self.maxoutbuf
        for i in range(0, len(data), step):  # Cyrus refuses to encode nothing (SASL_BADPARAM)
            o, n = ctypes.c_void_p(), ctypes.c_uint()
            chunk = data[i:i + step]
            assert self.lib.sasl_encode(self.conn, chunk, len(chunk), ctypes.byref(o), ctypes.byref(n)) == SASL_OK
            out += ctypes.string_at(o, n.value)
        return out

    def decode(self, raw: bytes) -> bytes:
        o, n = ctypes.c_void_p(), ctypes.c_uint()
        rc = self.lib.sasl_decode(self.conn, raw, len(raw), ctypes.byref(o), ctypes.byref(n))
        if rc != SASL_OK:
            raise ValueError(f"sasl_decode: {rc} {self.lib.sasl_errdetail(self.conn)!r}")
        return ctypes.string_at(o, n.value) if n.value else b""


def authenticate(client: SaslClient, server: CyrusServer) -> str:
    """remoteAuthSASL's loop, with libvirtd's dispatch replaced by direct calls."""
    mech, data = client.start(server.mechlist())
    complete, reply = server.start(mech, data)
    while True:
        data = client.receive(complete, reply)
        if client.done:
            return mech
        complete, reply = server.step(data)


def creds() -> Credentials:
    return Credentials(authname=USER, password=PASSWORD)


@pytest.fixture
def server_factory(sasl_lib: ctypes.CDLL) -> Iterator[Any]:
    made: list[CyrusServer] = []

    def make(**kw: Any) -> CyrusServer:
        s = CyrusServer(sasl_lib, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


LAYERS = [
    # client max_ssf, expected cipher, ssf (the daemon offers everything: min 0, max 100000)
    (100000, "rc4", 128),
    (127, "3des", 112),
    (111, "rc4-56", 56),
    (55, "des", 55),
    (54, "rc4-40", 40),
    (39, None, 1),  # integrity only
    (0, None, 0),  # no layer
]


@pytest.mark.parametrize(("max_ssf", "cipher", "ssf"), LAYERS)
@pytest.mark.parametrize("server_maxbuf", [65536, 1024])
def test_digest_md5_every_layer_against_cyrus(server_factory: Any, max_ssf: int, cipher: Optional[str], ssf: int,
                                              server_maxbuf: int) -> None:
    server = server_factory(min_ssf=0, max_ssf=100000, maxbuf=server_maxbuf)
    props = SecurityProps(0, max_ssf, 0, 65536, TCP_FLAGS)
    client = SaslClient(creds(), host=REALM, secure=True, props=props, forced="DIGEST-MD5")
    if cipher == "3des":
        # Debian 12's libsasl2 (2.1.28 on OpenSSL 3) cannot key 3DES: its init_3des
        # checks DES_key_sched()'s result (init_des does not), and that refuses the
        # slidebits() keys, whose parity bits are arbitrary.
        # The daemon fails the same way (test_sasl_daemon); 3des is checked
        # against an independent OpenSSL computation in test_sasl_layer instead.
        with pytest.raises(RuntimeError, match="couldn't init cipher '3des'"):
            authenticate(client, server)
        return
    assert authenticate(client, server) == "DIGEST-MD5"
    mech = client.mechanism
    assert mech is not None and mech.ssf == ssf == server.ssf
    assert getattr(mech, "cipher", None) == cipher
    layer = client.security_layer()
    if ssf == 0:
        assert layer is None
        return
    assert layer is not None
    assert layer.max_plaintext == server_maxbuf - (25 if cipher else 16)
    # Cyrus's server also keeps 4 bytes for the length word; its client (and we) do not
    assert server.maxoutbuf == 65536 - 4 - (25 if cipher else 16)
    for size in (0, 1, 7, 8, 100, 5000, 70000, 140000):
        msg = os.urandom(size)
        wire = layer.encode(msg)
        assert server.decode(wire) == msg  # Cyrus unseals what we sealed
        # and its packets, cut anywhere, come back to us
        back = server.encode(msg)
        got = b"".join(layer.feed(back[i:i + 4093]) for i in range(0, len(back), 4093))
        assert got == msg
    # Cyrus decodes our stream cut anywhere too
    wire = layer.encode(b"abc" * 1000) + layer.encode(b"tail")
    assert b"".join(server.decode(wire[i:i + 13]) for i in range(0, len(wire), 13)) == b"abc" * 1000 + b"tail"


def test_cyrus_rejects_our_tampered_packet_and_we_reject_its(server_factory: Any) -> None:
    server = server_factory(min_ssf=0, max_ssf=100000)
    client = SaslClient(creds(), host=REALM, secure=False)
    authenticate(client, server)
    layer = client.security_layer()
    assert layer is not None
    bad = bytearray(layer.encode(b"hello world"))
    bad[8] ^= 1
    with pytest.raises(ValueError, match="sasl_decode"):
        server.decode(bytes(bad))
    good = bytearray(server.encode(b"hello world"))
    good[8] ^= 1
    with pytest.raises(libvirtError):
        layer.feed(bytes(good))


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-224", "SCRAM-SHA-256", "SCRAM-SHA-384",
                                  "SCRAM-SHA-512", "PLAIN", "CRAM-MD5", "DIGEST-MD5"])
def test_every_mechanism_over_a_secure_transport(server_factory: Any, mech: str) -> None:
    server = server_factory(min_ssf=0, max_ssf=0, external_ssf=256)
    if mech not in server.mechlist().split(","):
        pytest.skip(f"this libsasl2 has no {mech}")
    client = SaslClient(creds(), host=REALM, secure=True, external_ssf=256, forced=mech)
    assert authenticate(client, server) == mech
    assert server.complete and client.ssf == 0 and client.security_layer() is None


def test_default_choice_over_tls_is_the_strongest_scram(server_factory: Any) -> None:
    server = server_factory(min_ssf=0, max_ssf=0, external_ssf=256)
    client = SaslClient(creds(), host=REALM, secure=True, external_ssf=256)
    assert authenticate(client, server) == "SCRAM-SHA-512"


def test_wrong_password_is_refused_by_cyrus(server_factory: Any) -> None:
    for mech in ("DIGEST-MD5", "SCRAM-SHA-256", "PLAIN", "CRAM-MD5"):
        server = server_factory(min_ssf=0, max_ssf=0)
        client = SaslClient(Credentials(authname=USER, password="wrong"), host=REALM, secure=True, forced=mech)
        with pytest.raises(RuntimeError, match="server: -13"):
            authenticate(client, server)


def test_weak_layer_fails_libvirts_final_ssf_check(server_factory: Any) -> None:
    """With properties that let rc4-40 through, libvirt's own check after auth still refuses it."""
    server = server_factory(min_ssf=0, max_ssf=100000)
    props = SecurityProps(0, 54, 0, 65536, TCP_FLAGS)
    client = SaslClient(creds(), host=REALM, secure=False, props=props, forced="DIGEST-MD5")
    with pytest.raises(libvirtError) as ei:
        authenticate(client, server)
    err = ei.value
    assert (err.get_error_code(), err.get_error_domain()) == (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_REMOTE)
    assert str(err) == "authentication failed: negotiation SSF 40 was not strong enough"
    # min SSF 0 on an insecure transport even lets Cyrus pick SCRAM (SSF 0): refused the same way
    client = SaslClient(creds(), host=REALM, secure=False, props=props)
    with pytest.raises(libvirtError, match="negotiation SSF 0 was not strong enough"):
        authenticate(client, server_factory(min_ssf=0, max_ssf=100000))


def test_rc4_56_on_tcp_warns_like_libvirt(server_factory: Any) -> None:
    server = server_factory(min_ssf=56, max_ssf=100000, flags=TCP_FLAGS)
    client = SaslClient(creds(), host=REALM, secure=False, props=SecurityProps(56, 111, 0, 65536, TCP_FLAGS))
    authenticate(client, server)
    assert client.ssf == 56
    assert client.warning == "negotiation SSF 56 lower than 112 will be deprecated. Please upgrade your ciphers."


def test_server_without_acceptable_cipher_on_tcp(server_factory: Any) -> None:
    """A server offering only rc4-40/des: Cyrus's client gives SASL_TOOWEAK."""
    server = server_factory(min_ssf=0, max_ssf=55)
    client = SaslClient(creds(), host=REALM, secure=False)
    with pytest.raises(libvirtError) as ei:
        authenticate(client, server)
    assert ei.value.get_error_domain() == C.VIR_FROM_RPC
    assert "Failed to step SASL negotiation: -15" in str(ei.value)
    assert "Can't find an acceptable layer" in str(ei.value)


def test_create_scram_against_cyrus_directly(server_factory: Any) -> None:
    server = server_factory(min_ssf=0, max_ssf=0)
    mech = create("SCRAM-SHA-256", creds(), host=REALM)
    complete, reply = server.start("SCRAM-SHA-256", mech.start())
    assert not complete
    complete, reply = server.step(mech.step(reply))
    assert complete and reply and reply.startswith(b"v=")
    assert mech.step(reply) is None and mech.complete


def test_layer_against_cyrus_is_path_independent(server_factory: Any, tmp_path: Path) -> None:
    """Interleaved traffic in both directions keeps both sequence counters in step."""
    server = server_factory(min_ssf=0, max_ssf=100000)
    client = SaslClient(creds(), host=REALM, secure=False)
    authenticate(client, server)
    layer = client.security_layer()
    assert layer is not None
    for i in range(50):
        msg = bytes([i]) * (i * 37 + 1)
        assert server.decode(layer.encode(msg)) == msg
        assert layer.feed(server.encode(msg[::-1])) == msg[::-1]
