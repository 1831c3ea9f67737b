"""Framing: the length word, the header, every message type and status, fds, remote_error, the deframer."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtrpc import packet, wire
from pyvirtrpc._gen import constants as C
from pyvirtrpc._gen import keepalive as K
from pyvirtrpc._gen import remote as R
from pyvirtrpc._gen import virnet as V
from pyvirtrpc._xdr import encode
from pyvirtrpc.errors import DecodeError, RPCError, libvirtError

PROG = R.REMOTE_PROGRAM


def pkt(proc: int, mtype: int, status: int = packet.OK, payload: bytes = b"", serial: int = 7, **kw: int) -> bytes:
    return packet.encode_packet(PROG, 1, proc, mtype, serial, status, payload, **kw)


# ---------------------------------------------------------------- length word


@pytest.mark.parametrize("n", [0, 1, 4, 27, packet.MAX_PACKET + 1, 2**31, 0xFFFFFFFF])
def test_length_word_out_of_range_is_rejected(n: int) -> None:
    with pytest.raises(DecodeError, match=f"packet length word is {n}") as info:
        packet.check_length(n)
    assert isinstance(info.value, libvirtError) and isinstance(info.value, RPCError)
    assert info.value.get_error_code() == C.VIR_ERR_RPC
    assert info.value.get_error_domain() == C.VIR_FROM_RPC


@pytest.mark.parametrize("n", [28, 29, 4096, packet.MAX_PACKET])
def test_length_word_in_range_is_accepted(n: int) -> None:
    packet.check_length(n)
    assert packet.MIN_PACKET == 28 and packet.MAX_PACKET == 4 + 33554432


@pytest.mark.parametrize("n", [0, 27, packet.MAX_PACKET + 1, 0xFFFFFFF0])
@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_deframer_refuses_bad_length_before_buffering(n: int, split: int) -> None:
    word = struct.pack(">I", n)
    d = packet.Deframer()
    d.feed(word[:split - 1] if split > 1 else b"")
    with pytest.raises(DecodeError, match="packet length word"):
        d.feed(word[split - 1:] if split > 1 else word)
    assert d.buffered <= 4
    # poisoned: a byte stream cannot be resynchronised
    with pytest.raises(DecodeError):
        d.feed(b"\0" * 100)
    with pytest.raises(DecodeError):
        d.next()
    assert d.buffered <= 4


def test_deframer_does_not_allocate_toward_an_announced_length() -> None:
    d = packet.Deframer()
    tracemalloc.start()
    try:
        d.feed(struct.pack(">I", packet.MAX_PACKET) + b"\0" * 100)
        assert d.next() is None
        assert d.wanted() == packet.MAX_PACKET - 104
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_good_packet_before_a_bad_length_is_not_lost() -> None:
    good = pkt(R.REMOTE_PROC_CONNECT_GET_HOSTNAME, packet.CALL)
    d = packet.Deframer()
    d.feed(good + struct.pack(">I", 3))
    m = d.next()
    assert m is not None and m.procedure == R.REMOTE_PROC_CONNECT_GET_HOSTNAME
    with pytest.raises(DecodeError, match="length word is 3"):
        d.next()


# ------------------------------------------------------------- header, types


ALL_TYPES = [
    (packet.CALL, "CALL"), (packet.REPLY, "REPLY"), (packet.MESSAGE, "MESSAGE"), (packet.STREAM, "STREAM"),
    (packet.CALL_WITH_FDS, "CALL_WITH_FDS"), (packet.REPLY_WITH_FDS, "REPLY_WITH_FDS"),
    (packet.STREAM_HOLE, "STREAM_HOLE"),
]


def test_type_and_status_constants_match_the_protocol() -> None:
    assert [t for t, _ in ALL_TYPES] == list(range(7))
    for t, name in ALL_TYPES:
        assert packet.TYPE_NAMES[t] == name
        assert V.virNetMessageType(t).name == "VIR_NET_" + name
    for s, name in ((packet.OK, "OK"), (packet.ERROR, "ERROR"), (packet.CONTINUE, "CONTINUE")):
        assert packet.STATUS_NAMES[s] == name
        assert V.virNetMessageStatus(s).name == "VIR_NET_" + name


@pytest.mark.parametrize(("mtype", "name"), ALL_TYPES)
@pytest.mark.parametrize("status", [packet.OK, packet.ERROR, packet.CONTINUE])
def test_every_type_and_status_frames_and_parses(mtype: int, name: str, status: int) -> None:
    kw = {"nfds": 3} if mtype in packet.WITH_FDS else {}
    data = packet.encode_packet(PROG, 1, 59, mtype, 0xFFFFFFFF, status, b"\1\2\3\4", **kw)
    assert struct.unpack_from(">I", data)[0] == len(data)
    m = packet.parse_packet(data)
    assert (m.program, m.version, m.procedure, m.type, m.serial, m.status) == (PROG, 1, 59, mtype, 0xFFFFFFFF, status)
    assert m.payload == b"\1\2\3\4"
    assert m.nfds == (3 if kw else 0)
    assert name in repr(m)
    d = packet.Deframer()
    d.feed(data)
    (again,) = list(d)
    assert again.payload == m.payload and again.nfds == m.nfds


def test_header_layout_is_big_endian_with_signed_proc_and_status() -> None:
    data = packet.encode_packet(0x20008086, 1, -1, packet.REPLY, 0x80000000, packet.ERROR)
    assert data.hex() == "0000001c" "20008086" "00000001" "ffffffff" "00000001" "80000000" "00000001"
    m = packet.parse_packet(data)
    assert m.procedure == -1 and m.serial == 0x80000000


# --------------------------------------------------------------------- fds


@pytest.mark.parametrize("mtype", packet.WITH_FDS)
def test_fd_count_is_a_u32_between_header_and_payload(mtype: int) -> None:
    data = pkt(59, mtype, payload=b"\0\0\0\2vm\0\0", nfds=2)
    assert data[28:32] == b"\0\0\0\2"  # a u32, although the .x comment says "int8"
    m = packet.parse_packet(data)
    assert m.nfds == 2 and m.payload == b"\0\0\0\2vm\0\0"
    assert pkt(59, mtype, nfds=packet.NUM_FDS_MAX)[28:32] == b"\0\0\0\x20"


@pytest.mark.parametrize("mtype", packet.WITH_FDS)
@pytest.mark.parametrize("nfds", [33, 0x100, 0x01000000, 0xFFFFFFFF])
def test_fd_count_over_the_limit_is_rejected(mtype: int, nfds: int) -> None:
    data = bytearray(pkt(59, mtype, nfds=0))
    data[28:32] = struct.pack(">I", nfds)
    with pytest.raises(DecodeError, match=f"announces {nfds} fds; the most allowed is 32"):
        packet.parse_packet(bytes(data))
    d = packet.Deframer()
    d.feed(bytes(data))
    with pytest.raises(DecodeError):
        d.next()
    with pytest.raises(ValueError):
        pkt(59, mtype, nfds=33)


@pytest.mark.parametrize("mtype", packet.WITH_FDS)
def test_fd_count_must_be_present(mtype: int) -> None:
    bare = packet.encode_packet(PROG, 1, 59, packet.CALL, 1, 0)
    data = bare[:16] + struct.pack(">i", mtype) + bare[20:]
    with pytest.raises(DecodeError, match="no room for its fd count"):
        packet.parse_packet(data)
    with pytest.raises(ValueError):
        packet.encode_packet(PROG, 1, 59, mtype, 1, 0)
    with pytest.raises(ValueError):
        packet.encode_packet(PROG, 1, 59, packet.CALL, 1, 0, nfds=1)


def test_parse_packet_checks_the_length_word() -> None:
    data = pkt(59, packet.CALL, payload=b"abcd")
    with pytest.raises(DecodeError, match="says 32 bytes but the packet has 36"):
        packet.parse_packet(data + b"\0" * 4)
    with pytest.raises(DecodeError, match="truncated packet: 20 bytes"):
        packet.parse_packet(data[:20])


def test_encode_packet_refuses_oversized_payload() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        packet.encode_packet(PROG, 1, 59, packet.CALL, 1, 0, b"\0" * (packet.MESSAGE_MAX - 23))


# ------------------------------------------------------------- remote_error


def full_error() -> V.virNetMessageError:
    return V.virNetMessageError(
        C.VIR_ERR_NO_DOMAIN, C.VIR_FROM_QEMU, "Domain not found: no domain with matching name 'x'", 2,
        V.virNetMessageNonnullDomain("x", bytes(range(16)), -1),
        "Domain not found: %s", "no domain with matching name 'x'", None, 42, -1,
        V.virNetMessageNonnullNetwork("default", b"\xff" * 16),
    )


def test_remote_error_decodes_every_field() -> None:
    err = full_error()
    data = pkt(R.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME, packet.REPLY, packet.ERROR, encode(V._c_virNetMessageError, err))
    (m,) = wire.decode(data)
    assert m.status == packet.ERROR and m.status.name == "VIR_NET_ERROR"
    e = m.body
    assert isinstance(e, V.virNetMessageError)
    assert (e.code, e.domain, e.level) == (C.VIR_ERR_NO_DOMAIN, C.VIR_FROM_QEMU, 2)
    assert e.message == "Domain not found: no domain with matching name 'x'"
    assert e.dom == V.virNetMessageNonnullDomain("x", bytes(range(16)), -1)
    assert (e.str1, e.str2, e.str3) == ("Domain not found: %s", "no domain with matching name 'x'", None)
    assert (e.int1, e.int2) == (42, -1)
    assert e.net == V.virNetMessageNonnullNetwork("default", b"\xff" * 16)
    assert e == err
    assert m.encode() == data


def test_remote_error_as_libvirtd_sends_it() -> None:
    # dom and net are always absent; a missing message is a null string
    err = V.virNetMessageError(C.VIR_ERR_RPC, C.VIR_FROM_RPC, None, 2, None, None, None, None, 0, 0, None)
    payload = encode(V._c_virNetMessageError, err)
    assert payload == struct.pack(">iiIiIIIIiiI", 39, 7, 0, 2, 0, 0, 0, 0, 0, 0, 0)
    (m,) = wire.decode(pkt(R.REMOTE_PROC_CONNECT_OPEN, packet.REPLY, packet.ERROR, payload))
    assert m.body == err


# ------------------------------------------------------------ stream bodies


def test_stream_bodies() -> None:
    proc = R.REMOTE_PROC_STORAGE_VOL_DOWNLOAD
    data = pkt(proc, packet.STREAM, packet.CONTINUE, b"raw\0data")
    (m,) = wire.decode(data)
    assert m.body == b"raw\0data" and m.encode() == data
    (m,) = wire.decode(pkt(proc, packet.STREAM, packet.OK))
    assert m.body is None
    (m,) = wire.decode(pkt(proc, packet.STREAM, packet.ERROR))  # a client's abort: empty
    assert m.body is None
    err = full_error()
    (m,) = wire.decode(pkt(proc, packet.STREAM, packet.ERROR, encode(V._c_virNetMessageError, err)))
    assert m.body == err
    hole = encode(V._c_virNetStreamHole, V.virNetStreamHole(2**40, 0))
    (m,) = wire.decode(pkt(proc, packet.STREAM_HOLE, packet.CONTINUE, hole))
    assert m.body == V.virNetStreamHole(2**40, 0)
    with pytest.raises(DecodeError, match="expected an empty payload, got 4 bytes"):
        wire.decode(pkt(proc, packet.STREAM, packet.OK, b"abcd"))


def test_unknown_program_and_procedure_keep_raw_payload() -> None:
    data = packet.encode_packet(0x12345678, 1, 5, packet.CALL, 1, packet.OK, b"\0\0\0\1")
    (m,) = wire.decode(data)
    assert m.procedure_name is None and m.body == b"\0\0\0\1" and m.encode() == data
    data = pkt(99999, packet.CALL, payload=b"\0\0\0\1")
    (m,) = wire.decode(data)
    assert m.procedure_name is None and m.body == b"\0\0\0\1"


def test_keepalive_and_events() -> None:
    ping = packet.encode_packet(K.KEEPALIVE_PROGRAM, 1, K.KEEPALIVE_PROC_PING, packet.MESSAGE, 0, packet.OK)
    (m,) = wire.decode(ping)
    assert m.procedure_name == "KEEPALIVE_PROC_PING" and m.body is None and len(ping) == 28
    ev = R.remote_domain_event_lifecycle_msg(R.remote_nonnull_domain("vm1", b"\1" * 16, 3), 2, 0)
    payload = encode(R._c_remote_domain_event_lifecycle_msg, ev)
    data = pkt(R.REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE, packet.MESSAGE, payload=payload)
    (m,) = wire.decode(data)
    assert m.body == ev and m.procedure_name == "REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE"


def test_void_procedure_with_payload_is_rejected() -> None:
    with pytest.raises(DecodeError, match="REMOTE_PROC_CONNECT_GET_HOSTNAME CALL: expected an empty payload"):
        wire.decode(pkt(R.REMOTE_PROC_CONNECT_GET_HOSTNAME, packet.CALL, payload=b"\0\0\0\0"))


def test_bad_body_names_the_field() -> None:
    with pytest.raises(DecodeError, match=r"remote_connect_open_args\.name: optional-data flag must be 0 or 1, got 2"):
        wire.decode(pkt(R.REMOTE_PROC_CONNECT_OPEN, packet.CALL, payload=b"\0\0\0\2\0\0\0\0"))


# ------------------------------------------------- any split (hypothesis)

header = st.tuples(
    st.sampled_from([PROG, K.KEEPALIVE_PROGRAM, 0x12345678]),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([t for t, _ in ALL_TYPES] + [9]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([packet.OK, packet.ERROR, packet.CONTINUE]),
    st.binary(max_size=64),
    st.integers(0, packet.NUM_FDS_MAX),
)


def build(h: tuple[int, int, int, int, int, int, bytes, int]) -> bytes:
    prog, vers, proc, mtype, serial, status, payload, nfds = h
    return packet.encode_packet(
        prog, vers, proc, mtype, serial, status, payload, nfds if mtype in packet.WITH_FDS else None
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(header, min_size=1, max_size=6), st.data())
def test_deframer_accepts_any_split(
    hs: list[tuple[int, int, int, int, int, int, bytes, int]], data: st.DataObject
) -> None:
    stream = b"".join(build(h) for h in hs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    d = packet.Deframer()
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        d.feed(stream[prev:cut])
        prev = cut
        got.extend(d)
    assert d.buffered == 0
    assert len(got) == len(hs)
    for m, h in zip(got, hs):
        prog, vers, proc, mtype, serial, status, payload, nfds = h
        head = (m.program, m.version, m.procedure, m.type, m.serial, m.status)
        assert head == (prog, vers, proc, mtype, serial, status)
        assert m.payload == payload
        assert m.nfds == (nfds if mtype in packet.WITH_FDS else 0)
