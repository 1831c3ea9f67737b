"""Golden vectors: real virsh <-> libvirtd captures decode to the expected values and re-encode byte for byte."""

from __future__ import annotations

import struct

import pytest
from captures import CAPTURES, read_capture, rpc_streams, sasl_frames, streams

from pyvirtrpc import packet, wire
from pyvirtrpc._gen import remote as R
from pyvirtrpc.errors import DecodeError

P = "REMOTE_PROC_"
# The client side of `virsh hostname` over unix and TLS (no authentication).
PLAIN_CALLS = [
    "AUTH_LIST", "CONNECT_SUPPORTS_FEATURE", "CONNECT_OPEN", "CONNECT_SUPPORTS_FEATURE",
    "CONNECT_SUPPORTS_FEATURE", "CONNECT_REGISTER_CLOSE_CALLBACK", "CONNECT_GET_HOSTNAME",
    "CONNECT_UNREGISTER_CLOSE_CALLBACK", "CONNECT_CLOSE",
]
SASL_CALLS = ["AUTH_LIST", "AUTH_SASL_INIT", "AUTH_SASL_START", "AUTH_SASL_STEP"]

NONCE = "1BaTVuJSR4v1OL142+VDZJzQKMbza7jo2bT1Ttdz6S8="
CHALLENGE = (
    f'nonce="{NONCE}",realm="vm",qop="auth-conf",cipher="rc4-56,rc4,3des",'
    "maxbuf=65536,charset=utf-8,algorithm=md5-sess"
).encode()
RESPONSE = (
    f'username="alice",realm="vm",nonce="{NONCE}",cnonce="b/K/xTqQ66HLo7cZcUUbX/ylYguulkgJao2VQ9G2+EU=",'
    'nc=00000001,qop=auth-conf,cipher=rc4,maxbuf=65536,digest-uri="libvirt/127.0.0.1",'
    "response=e8b45e99b538008425b802d1aedb588f"
).encode()

ALL = [(short, d) for short in CAPTURES for d in "><"]


def packets(data: bytes) -> list[bytes]:
    """Split a stream of whole packets by their length words (an oracle independent of Deframer)."""
    out = []
    while data:
        (n,) = struct.unpack_from(">I", data, 0)
        out.append(data[:n])
        data = data[n:]
    return out


# ------------------------------------------------------------------ captures


def test_capture_reader_checks_lengths() -> None:
    for name in CAPTURES.values():
        chunks = read_capture(name)
        assert chunks and all(d in "<>" for d, _ in chunks)
    # socat splits rows at newline bytes (0x0a); the reader still gets every byte
    assert len(streams(CAPTURES["tcp-sasl"])["<"]) == 1324


def test_sasl_security_layer_frames_are_not_rpc() -> None:
    frames = sasl_frames()
    assert [len(f) for f in frames[">"]] == [48, 72, 48, 48, 44, 44, 44, 44]
    assert [len(f) for f in frames["<"]] == [48, 44, 48, 48, 44, 52, 44, 44]
    full = streams(CAPTURES["tcp-sasl"])
    for d in "<>":
        # Past the security layer the bytes are ciphertext with SASL's own framing.
        with pytest.raises(DecodeError):
            wire.decode(full[d])


def test_tls_confirmation_byte_is_not_a_packet() -> None:
    raw = streams(CAPTURES["tls"])["<"]
    assert raw[0] == 1
    with pytest.raises(DecodeError, match="stream ends inside a packet"):
        wire.decode(raw)  # 01 00 00 00 reads as a 16 MiB length word


# ------------------------------------------------------------ decoded values


def bodies(short: str, d: str) -> list[wire.WireMessage]:
    return wire.decode(rpc_streams(short)[d])


@pytest.mark.parametrize("short", ["unix", "tls"])
def test_plain_handshake_values(short: str) -> None:
    calls = bodies(short, ">")
    replies = bodies(short, "<")
    assert [m.procedure_name for m in calls] == [P + n for n in PLAIN_CALLS]
    assert [m.procedure_name for m in replies] == [P + n for n in PLAIN_CALLS]
    assert [m.serial for m in calls] == list(range(9)) == [m.serial for m in replies]
    for m in calls:
        assert (m.program, m.version, m.type, m.status) == (R.REMOTE_PROGRAM, 1, packet.CALL, packet.OK)
        assert m.type.name == "VIR_NET_CALL"
    for m in replies:
        assert (m.program, m.version, m.type, m.status) == (R.REMOTE_PROGRAM, 1, packet.REPLY, packet.OK)

    assert calls[0].body is None
    assert replies[0].body == R.remote_auth_list_ret([R.REMOTE_AUTH_NONE])
    assert replies[0].body.types[0] is R.remote_auth_type.REMOTE_AUTH_NONE
    assert [calls[i].body.feature for i in (1, 3, 4)] == [10, 14, 15]
    assert all(replies[i].body == R.remote_connect_supports_feature_ret(1) for i in (1, 3, 4))
    assert calls[2].body == R.remote_connect_open_args("test:///default", 0)
    assert calls[2].body.name == "test:///default"
    assert replies[2].body is None
    assert replies[6].body.hostname == "vm"
    assert all(calls[i].body is None and replies[i].body is None for i in (5, 7, 8))


def test_sasl_handshake_values() -> None:
    calls = bodies("tcp-sasl", ">")
    replies = bodies("tcp-sasl", "<")
    assert [m.procedure_name for m in calls] == [P + n for n in SASL_CALLS]
    assert [m.procedure_name for m in replies] == [P + n for n in SASL_CALLS]
    assert [m.serial for m in calls] == [0, 1, 2, 3]
    assert replies[0].body.types == [R.remote_auth_type.REMOTE_AUTH_SASL]
    assert calls[1].body is None
    assert replies[1].body.mechlist == "DIGEST-MD5"
    assert calls[2].body == R.remote_auth_sasl_start_args("DIGEST-MD5", 1, b"")
    assert replies[2].body == R.remote_auth_sasl_start_ret(0, 0, CHALLENGE)
    assert calls[3].body == R.remote_auth_sasl_step_args(0, RESPONSE)
    assert replies[3].body == R.remote_auth_sasl_step_ret(1, 0, b"rspauth=a7b142f52e9e909036b78d58be77f06c")
    # char data<65536>: 4 bytes on the wire per byte of data
    assert len(rpc_streams("tcp-sasl")["<"][80:720]) == 28 + 12 + 4 * len(CHALLENGE)


# ------------------------------------------------------------- byte for byte


@pytest.mark.parametrize(("short", "d"), ALL)
def test_reencode_byte_for_byte(short: str, d: str) -> None:
    data = rpc_streams(short)[d]
    msgs = wire.decode(data)
    raw = packets(data)
    assert len(msgs) == len(raw)
    for m, pkt in zip(msgs, raw):
        assert m.encode() == pkt
    assert b"".join(m.encode() for m in msgs) == data


def headers(msgs: list[packet.Message]) -> list[tuple[int, ...]]:
    return [(m.program, m.version, m.procedure, m.type, m.serial, m.status, m.nfds) for m in msgs]


@pytest.mark.parametrize(("short", "d"), ALL)
def test_fed_whole_and_byte_by_byte(short: str, d: str) -> None:
    data = rpc_streams(short)[d]
    expect = [(h, p) for h, p in zip(headers([packet.parse_packet(p) for p in packets(data)]), packets(data))]

    whole = packet.Deframer()
    whole.feed(data)
    got = list(whole)
    assert [(h, m.data) for h, m in zip(headers(got), got)] == expect
    assert whole.buffered == 0

    single = packet.Deframer()
    got = []
    for i in range(len(data)):
        single.feed(data[i:i + 1])
        got.extend(single)
    assert [(h, m.data) for h, m in zip(headers(got), got)] == expect
    assert single.buffered == 0 and single.wanted() == 4

    # the socat chunks, as they came off the socket
    skip = 1 if (short, d) == ("tls", "<") else 0
    pieces: list[bytes] = []
    for direction, chunk in read_capture(CAPTURES[short]):
        if direction == d:
            chunk = chunk[skip:][: len(data) - sum(map(len, pieces))]
            skip = 0
            if chunk:
                pieces.append(chunk)
    assert b"".join(pieces) == data
    chunked = packet.Deframer()
    got = []
    for chunk in pieces:
        chunked.feed(chunk)
        got.extend(chunked)
    assert [m.data for m in got] == [p for _, p in expect]


@pytest.mark.parametrize(("short", "d"), ALL)
def test_trailing_partial_packet_is_reported(short: str, d: str) -> None:
    data = rpc_streams(short)[d]
    last = packets(data)[-1]
    for cut in (1, 3, 4, 27, len(last) - 1):
        tail = last[:cut]
        with pytest.raises(DecodeError, match=rf"{cut} bytes left over, {len(last) - cut if cut >= 4 else 4 - cut}"):
            wire.decode(data + tail)
        d2 = packet.Deframer()
        d2.feed(data + tail)
        assert len(list(d2)) == len(packets(data))
        assert d2.buffered == cut
        assert d2.next() is None


@pytest.mark.parametrize(("short", "d"), ALL)
@pytest.mark.parametrize("word", [0, 27, packet.MAX_PACKET + 1, 0xFFFFFFFF])
def test_trailing_garbage_length_is_rejected(short: str, d: str, word: int) -> None:
    data = rpc_streams(short)[d]
    junk = struct.pack(">I", word) + b"\xaa" * 24
    with pytest.raises(DecodeError, match=f"packet length word is {word}"):
        wire.decode(data + junk)
    # The good packets before it still come out of the deframer; then it stops for good.
    dfr = packet.Deframer()
    dfr.feed(data)
    dfr.feed(junk[:4])
    good = []
    with pytest.raises(DecodeError) as info:
        while (m := dfr.next()) is not None:
            good.append(m)
    assert len(good) == len(packets(data))
    assert info.value.get_error_code() == 39  # VIR_ERR_RPC
    with pytest.raises(DecodeError):
        dfr.feed(b"\0")
