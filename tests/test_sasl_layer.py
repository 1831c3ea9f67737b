"""Property tests of the DIGEST-MD5 security layer: round trips for every cipher and for
integrity-only, chunking above maxbuf, arbitrary splits, and rejection of any corruption."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.sasl import DigestLayer

CIPHERS = [None, "rc4", "rc4-56", "rc4-40", "des", "3des"]
HA1 = bytes.fromhex("00112233445566778899aabbccddeeff")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(cipher: str | None, client_maxbuf: int = 65536, server_maxbuf: int = 65536) -> tuple[DigestLayer, DigestLayer]:
    client = DigestLayer(HA1, cipher, peer_maxbuf=server_maxbuf, our_maxbuf=client_maxbuf)
    server = DigestLayer(HA1, cipher, peer_maxbuf=client_maxbuf, our_maxbuf=server_maxbuf, server=True)
    return client, server


def packets(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = struct.unpack_from(">I", data, pos)[0]
        out.append(data[pos:pos + 4 + n])
        pos += 4 + n
    return out


def feed_split(layer: DigestLayer, data: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = b"", 0
    for p in points + [len(data)]:
        out += layer.feed(data[last:p])
        last = p
    return out


def assert_decode_error(exc: libvirtError) -> None:
    assert (exc.get_error_code(), exc.get_error_domain()) == (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC)
    assert str(exc) == "internal error: failed to decode SASL data: -1 (generic failure)"


@pytest.mark.parametrize("cipher", CIPHERS)
@SETTINGS
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=12),
    maxbuf=st.sampled_from([65536, 4096, 100, 41]),
)
def test_round_trip_both_ways(cipher: str | None, messages: list[bytes], cuts: list[int], maxbuf: int) -> None:
    client, server = pair(cipher, server_maxbuf=maxbuf)
    wire = b"".join(client.encode(m) for m in messages)
    assert all(len(p) - 4 <= maxbuf for p in packets(wire))  # never more than the peer accepts
    assert feed_split(server, wire, cuts) == b"".join(messages)
    back = b"".join(server.encode(m) for m in reversed(messages))
    assert feed_split(client, back, cuts) == b"".join(reversed(messages))
    assert client.buffered == server.buffered == 0


@pytest.mark.parametrize("cipher", CIPHERS)
@settings(max_examples=8, deadline=None)
@given(size=st.integers(min_value=65000, max_value=200000), cuts=st.lists(st.integers(0, 10**6), max_size=5))
def test_large_messages_are_chunked_at_maxout(cipher: str | None, size: int, cuts: list[int]) -> None:
    client, server = pair(cipher)
    data = bytes(i & 0xFF for i in range(size))
    wire = client.encode(data)
    overhead = 25 if cipher else 16
    sizes = [len(p) - 4 for p in packets(wire)]
    assert client.max_plaintext == 65536 - overhead
    assert len(sizes) == -(-size // (65536 - overhead))
    assert all(s <= 65536 for s in sizes)
    assert feed_split(server, wire, cuts) == data


@pytest.mark.parametrize("cipher", CIPHERS)
@SETTINGS
@given(message=st.binary(max_size=300), data=st.data())
def test_any_single_bit_flip_is_rejected(cipher: str | None, message: bytes, data: st.DataObject) -> None:
    client, server = pair(cipher)
    client.encode(b"warm-up")  # flip in a packet that is not the first of the stream
    server.feed(DigestLayer(HA1, cipher, server=False).encode(b"warm-up"))
    packet = bytearray(client.encode(message))
    bit = data.draw(st.integers(min_value=0, max_value=len(packet) * 8 - 1), label="bit")
    packet[bit // 8] ^= 1 << (bit % 8)
    got = b""
    with pytest.raises(libvirtError) as ei:
        got += server.feed(bytes(packet))
        # A flip in the length word may only make the layer wait for more:
        # the bytes that follow must then fail it, never yield plaintext.
        got += server.feed(b"\0" * 70000)
    assert_decode_error(ei.value)
    assert got == b""
    with pytest.raises(libvirtError):  # and it stays failed
        server.feed(b"")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_replay_reorder_and_truncation_are_rejected(cipher: str | None) -> None:
    client, _ = pair(cipher)
    p1, p2 = client.encode(b"one"), client.encode(b"two")
    for stream in (p1 + p1, p2 + p1, p2):
        _, server = pair(cipher)
        with pytest.raises(libvirtError) as ei:
            server.feed(stream)
        assert_decode_error(ei.value)
        assert "Sequence Number" in ei.value.reason  # type: ignore[attr-defined]
    _, server = pair(cipher)
    short = struct.pack(">I", 15) + p1[4:19]
    with pytest.raises(libvirtError) as ei:
        server.feed(short)
    assert ei.value.reason == "DIGEST-MD5 SASL packets must be at least 16 bytes long"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_version_and_mac(cipher: str | None) -> None:
    client, server = pair(cipher)
    packet = bytearray(client.encode(b"hello"))
    packet[-6:-4] = b"\x00\x02"
    with pytest.raises(libvirtError) as ei:
        server.feed(bytes(packet))
    assert ei.value.reason == "Wrong Version"  # type: ignore[attr-defined]
    client, server = pair(cipher)
    packet = bytearray(client.encode(b"hello"))
    packet[5] ^= 0x40
    with pytest.raises(libvirtError) as ei:
        server.feed(bytes(packet))
    assert ei.value.reason in ("CMAC doesn't match", "bad padding")  # type: ignore[attr-defined]


def test_length_limits_before_buffering() -> None:
    for n in (0, 65537, 0xFFFFFFFF):
        _, server = pair("rc4")
        with pytest.raises(libvirtError) as ei:
            server.feed(struct.pack(">I", n))  # rejected as soon as the length word is complete
        assert_decode_error(ei.value)
    _, server = pair("rc4")
    assert server.feed(struct.pack(">I", 65536)[:3]) == b""
    assert server.buffered == 3


def test_wrong_keys_are_rejected() -> None:
    client = DigestLayer(HA1, "rc4")
    other = DigestLayer(bytes(16), "rc4", server=True)
    with pytest.raises(libvirtError):
        other.feed(client.encode(b"x" * 40))
    # the same keys in the same direction (client talking to a client) fail too
    with pytest.raises(libvirtError):
        DigestLayer(HA1, "3des").feed(DigestLayer(HA1, "3des").encode(b"y"))


def test_sequence_numbers_and_trailer() -> None:
    client, _ = pair(None)
    for i in range(3):
        p = client.encode(b"abc")
        assert p[:4] == struct.pack(">I", 3 + 16)
        assert p[-6:] == b"\x00\x01" + struct.pack(">I", i)
        assert p[4:7] == b"abc"  # integrity only: the message travels in clear
    client, _ = pair("3des")
    for msg_len in range(0, 20):
        body = client.encode(b"m" * msg_len)[4:]
        assert (len(body) - 6) % 8 == 0 and 1 <= len(body) - 6 - 10 - msg_len <= 8


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200), cipher=st.sampled_from(CIPHERS))
def test_garbage_never_escapes_as_anything_but_libvirterror(raw: bytes, cipher: str | None) -> None:
    _, server = pair(cipher)
    try:
        server.feed(raw)
    except libvirtError as exc:
        assert_decode_error(exc)


def _independent_packets(ha1: bytes, cipher: str, messages: list[bytes]) -> bytes:
    """RFC 2831 section 2.4 packets computed without pyvirtrpc (hashlib, hmac, OpenSSL via cryptography)."""
    import hashlib
    import hmac

    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4, TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    n = {"rc4-40": 5, "rc4-56": 7}.get(cipher, 16)
    kc = hashlib.md5(ha1[:n] + b"Digest H(A1) to client-to-server sealing key magic constant").digest()
    ki = hashlib.md5(ha1 + b"Digest session key to client-to-server signing key magic constant").digest()

    def des_key(k: bytes) -> bytes:  # Cyrus's slidebits, parity bits as they fall
        return bytes([k[0], (k[0] << 7 | k[1] >> 1) & 0xFF, (k[1] << 6 | k[2] >> 2) & 0xFF,
                      (k[2] << 5 | k[3] >> 3) & 0xFF, (k[3] << 4 | k[4] >> 4) & 0xFF,
                      (k[4] << 3 | k[5] >> 5) & 0xFF, (k[5] << 2 | k[6] >> 6) & 0xFF, (k[6] << 1) & 0xFF])

    if cipher.startswith("rc4"):
        enc = Cipher(ARC4(kc), mode=None).encryptor()
    else:
        k1 = des_key(kc[:7])
        k2 = k1 if cipher == "des" else des_key(kc[7:14])
        enc = Cipher(TripleDES(k1 + k2 + k1), modes.CBC(kc[8:])).encryptor()
    out = b""
    for seq, msg in enumerate(messages):
        s = struct.pack(">I", seq)
        mac = hmac.new(ki, s + msg, "md5").digest()[:10]
        pad = b"" if cipher.startswith("rc4") else bytes([8 - (len(msg) + 10) % 8]) * (8 - (len(msg) + 10) % 8)
        body = enc.update(msg + pad + mac) + b"\x00\x01" + s
        out += struct.pack(">I", len(body)) + body
    return out


@pytest.mark.parametrize("cipher", ["rc4", "rc4-56", "rc4-40", "des", "3des"])
def test_packets_match_an_independent_computation(cipher: str) -> None:
    messages = [b"", b"a", b"x" * 13, b"y" * 14, bytes(range(256)) * 5]
    client = DigestLayer(HA1, cipher)
    assert b"".join(client.encode(m) for m in messages) == _independent_packets(HA1, cipher, messages)
