"""Framing: the libvirt RPC packet, its header, and an incremental deframer.

Contract (``virnetprotocol.x``, libvirt's ``virnetmessage.c``):

* A packet is a big-endian ``u32`` length that counts itself, a 24-byte
  header ``(prog, vers, proc, type, serial, status)`` and the payload.  For
  the ``*_WITH_FDS`` types a ``u32`` fd count sits between header and
  payload (the ``.x`` comment says "int8"; libvirt writes a u32).
* :class:`Deframer` takes bytes in any split and yields :class:`Message`
  objects.  The length word is validated (at least :data:`MIN_PACKET`, at
  most :data:`MAX_PACKET`) before any buffer grows to hold the packet; a bad
  length, or a bad fd count, raises :class:`~pyvirtrpc.errors.DecodeError`
  and poisons the deframer (a byte stream cannot be resynchronised).
* :func:`encode_packet` builds a packet.

No I/O, no clock, no threads.
"""

from __future__ import annotations

from struct import Struct

from .errors import DecodeError

# ---------------------------------------------------------------- limits
#: The length word itself (VIR_NET_MESSAGE_LEN_MAX).
LEN_SIZE = 4
#: The XDR header (VIR_NET_MESSAGE_HEADER_MAX).
HEADER_SIZE = 24
#: Largest message after the length word (VIR_NET_MESSAGE_MAX).
MESSAGE_MAX = 33554432
#: Smallest and largest valid value of the length word.
MIN_PACKET = LEN_SIZE + HEADER_SIZE
MAX_PACKET = LEN_SIZE + MESSAGE_MAX
#: Most fds one message may carry (VIR_NET_MESSAGE_NUM_FDS_MAX).
NUM_FDS_MAX = 32
#: Largest stream data chunk libvirt sends (VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX).
STREAM_CHUNK_MAX = 262120

# ----------------------------------------------------------- header enums
CALL = 0
REPLY = 1
MESSAGE = 2
STREAM = 3
CALL_WITH_FDS = 4
REPLY_WITH_FDS = 5
STREAM_HOLE = 6
TYPE_NAMES = ("CALL", "REPLY", "MESSAGE", "STREAM", "CALL_WITH_FDS", "REPLY_WITH_FDS", "STREAM_HOLE")

OK = 0
ERROR = 1
CONTINUE = 2
STATUS_NAMES = ("OK", "ERROR", "CONTINUE")

WITH_FDS = (CALL_WITH_FDS, REPLY_WITH_FDS)

#: length word + header, packed or unpacked in one go
HEAD = Struct(">IIIiiIi")
_U32 = Struct(">I")


class Message:
    """One packet: header fields and the payload, kept inside ``data``.

    The payload is ``data[offset:]``; it is not copied out, so a decoder can
    read it in place.  ``nfds`` is the fd count of ``*_WITH_FDS`` packets
    (the fds themselves travel beside the packet, see the unix transport).
    """

    __slots__ = ("program", "version", "procedure", "type", "serial", "status", "nfds", "data", "offset")

    def __init__(
        self,
        program: int,
        version: int,
        procedure: int,
        type: int,
        serial: int,
        status: int,
        data: bytes,
        offset: int,
        nfds: int = 0,
    ) -> None:
        self.program = program
        self.version = version
        self.procedure = procedure
        self.type = type
        self.serial = serial
        self.status = status
        self.data = data
        self.offset = offset
        self.nfds = nfds

    @property
    def payload(self) -> bytes:
        return self.data[self.offset:]

    def __repr__(self) -> str:
        t = TYPE_NAMES[self.type] if 0 <= self.type < len(TYPE_NAMES) else str(self.type)
        s = STATUS_NAMES[self.status] if 0 <= self.status < len(STATUS_NAMES) else str(self.status)
        return (
            f"<Message prog={self.program:#x} vers={self.version} proc={self.procedure} "
            f"type={t} serial={self.serial} status={s} payload={len(self.data) - self.offset}B>"
        )


def check_length(n: int) -> None:
    if n < MIN_PACKET:
        raise DecodeError(
            f"packet length word is {n}; a packet is at least {MIN_PACKET} bytes (length word and header)"
        )
    if n > MAX_PACKET:
        raise DecodeError(f"packet length word is {n}; the most libvirt allows is {MAX_PACKET} (4 + {MESSAGE_MAX})")


def parse_packet(packet: bytes) -> Message:
    """Split one whole packet (length word included) into a :class:`Message`."""
    if len(packet) < MIN_PACKET:
        raise DecodeError(f"truncated packet: {len(packet)} bytes, a header needs {MIN_PACKET}")
    n, prog, vers, proc, mtype, serial, status = HEAD.unpack_from(packet, 0)
    check_length(n)
    if n != len(packet):
        raise DecodeError(f"packet length word says {n} bytes but the packet has {len(packet)}")
    offset = MIN_PACKET
    nfds = 0
    if mtype == CALL_WITH_FDS or mtype == REPLY_WITH_FDS:
        if n < MIN_PACKET + 4:
            raise DecodeError(f"{TYPE_NAMES[mtype]} packet of {n} bytes has no room for its fd count")
        nfds = _U32.unpack_from(packet, MIN_PACKET)[0]
        if nfds > NUM_FDS_MAX:
            raise DecodeError(f"{TYPE_NAMES[mtype]} packet announces {nfds} fds; the most allowed is {NUM_FDS_MAX}")
        offset += 4
    return Message(prog, vers, proc, mtype, serial, status, packet, offset, nfds)


def encode_packet(
    program: int,
    version: int,
    procedure: int,
    mtype: int,
    serial: int,
    status: int,
    payload: bytes = b"",
    nfds: int | None = None,
) -> bytes:
    """Build one packet.  ``nfds`` is required for the ``*_WITH_FDS`` types."""
    if mtype in WITH_FDS:
        if nfds is None or not 0 <= nfds <= NUM_FDS_MAX:
            raise ValueError(f"{TYPE_NAMES[mtype]} needs an fd count between 0 and {NUM_FDS_MAX}")
        body = _U32.pack(nfds) + payload
    else:
        if nfds:
            raise ValueError("only CALL_WITH_FDS and REPLY_WITH_FDS carry fds")
        body = payload
    n = MIN_PACKET + len(body)
    if n > MAX_PACKET:
        raise ValueError(f"packet of {n} bytes exceeds the limit of {MAX_PACKET}")
    return HEAD.pack(n, program, version, procedure, mtype, serial, status) + body


class Deframer:
    """Incremental packet splitter: ``feed(bytes)``, then iterate or :meth:`next`."""

    __slots__ = ("_buf", "_pos", "_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._error: DecodeError | None = None

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data
        # Validate the next length word as soon as it is complete, so that a
        # hostile length is refused before we keep buffering toward it.
        if len(self._buf) - self._pos >= 4:
            self._check(_U32.unpack_from(self._buf, self._pos)[0])

    def _check(self, n: int) -> None:
        try:
            check_length(n)
        except DecodeError as exc:
            self._error = exc
            raise

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def wanted(self) -> int:
        """Bytes still missing for the packet being received (0 when one is complete)."""
        avail = len(self._buf) - self._pos
        if avail < 4:
            return 4 - avail
        n: int = _U32.unpack_from(self._buf, self._pos)[0]
        return max(n - avail, 0)

    def next(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        n = _U32.unpack_from(buf, pos)[0]
        self._check(n)
        if avail < n:
            return None
        packet = bytes(buf[pos:pos + n])
        pos += n
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos > 65536 and pos * 2 > len(buf):
            del buf[:pos]
            pos = 0
        self._pos = pos
        try:
            msg = parse_packet(packet)
        except DecodeError as exc:
            self._error = exc
            raise
        if avail - n >= 4:
            # Refuse a bad length word that follows as soon as it is seen,
            # but only from the next call: this packet was good.
            try:
                check_length(_U32.unpack_from(buf, pos)[0])
            except DecodeError as exc:
                self._error = exc
        return msg

    def messages(self, data: bytes) -> list[Message]:
        """``feed(data)`` and return every message now complete, in order.

        Fast path for the common case of a reply that arrives whole into an
        empty buffer: the received bytes become the message without being
        copied into (and back out of) the buffer.
        """
        if (
            type(data) is bytes
            and self._error is None
            and self._pos == len(self._buf)
            and len(data) >= MIN_PACKET
            and _U32.unpack_from(data, 0)[0] == len(data)
        ):
            try:
                check_length(len(data))
                return [parse_packet(data)]
            except DecodeError as exc:
                self._error = exc
                raise
        self.feed(data)
        out: list[Message] = []
        while True:
            m = self.next()
            if m is None:
                return out
            out.append(m)

    def __iter__(self) -> Deframer:
        return self

    def __next__(self) -> Message:
        msg = self.next()
        if msg is None:
            raise StopIteration
        return msg
