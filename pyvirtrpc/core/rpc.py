"""Serial allocation, the table of calls in flight, reply matching, dispatch.

Contract:

* :meth:`RPC.request` allocates the next serial (one counter shared by all
  programs, from 0, as libvirt's ``callFull``), records a :class:`Call` and
  returns it with the packet to send in ``call.packet``.
* :meth:`RPC.receive` feeds bytes from the peer; every complete packet is
  handled: a REPLY completes its call (``call.result`` decoded with the
  call's return codec, or ``call.error`` built from the ``remote_error``
  exactly as the C client re-raises it); a keepalive PING queues a PONG in
  :attr:`RPC.outgoing`; an event MESSAGE is appended to :attr:`RPC.events`
  as ``(Procedure, decoded body)``; stream packets go to the stream
  registered for (program, procedure, serial).  It returns the calls that
  completed.
* Anything the protocol does not allow (a reply nobody waits for, a CALL
  from the server, a bad status, an undecodable packet) is fatal: it raises
  :class:`ReceiveError`, whose ``error`` is the
  :class:`~pyvirtrpc.errors.RPCError` or ``DecodeError`` (code VIR_ERR_RPC,
  domain VIR_FROM_RPC) and whose ``completed`` are the calls the same bytes
  completed before the bad packet (they are out of the table: their callers
  must still be given their results).  The driver must then
  :meth:`RPC.fail_all` and close, because a byte stream cannot be
  resynchronised.
* Data of :data:`BULK_BYTES` or more (a large reply) is decoded inside the
  driver's :attr:`RPC.bulk` context manager, if it set one.
* :meth:`RPC.abandon` forgets a call (timeout or cancellation) without
  desynchronising: its late reply is recognised and dropped.

No I/O, no threads, no clock: drivers lock around it as they need.
"""

from __future__ import annotations

from .. import _xdr
from .._gen import constants as C
from .._gen import keepalive as _ka
from ..errors import DecodeError, from_remote, libvirtError, make_error
from ..packet import (
    CALL,
    ERROR,
    HEAD,
    MAX_PACKET,
    MESSAGE,
    MIN_PACKET,
    OK,
    REPLY,
    REPLY_WITH_FDS,
    STREAM,
    STREAM_HOLE,
    Deframer,
    Message,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Any, Callable, Optional

    from .._xdr import Codec, Procedure

KEEPALIVE_PROGRAM = _ka.KEEPALIVE_PROGRAM
KEEPALIVE_VERSION = _ka.KEEPALIVE_PROTOCOL_VERSION
PING = _ka.KEEPALIVE_PROC_PING
PONG = _ka.KEEPALIVE_PROC_PONG
#: The PONG packet: program "keep", MESSAGE, serial 0, status OK, no payload.
PONG_PACKET = HEAD.pack(MIN_PACKET, KEEPALIVE_PROGRAM, KEEPALIVE_VERSION, PONG, MESSAGE, 0, OK)
PING_PACKET = HEAD.pack(MIN_PACKET, KEEPALIVE_PROGRAM, KEEPALIVE_VERSION, PING, MESSAGE, 0, OK)

#: How many abandoned serials are remembered so that their late replies are dropped.
ABANDONED_MAX = 4096
#: Bytes at hand (a read and what the deframer holds) from which decoding is
#: done under :attr:`RPC.bulk`; such data always takes the general path.
BULK_BYTES = 65536



class Call:
    """One call in flight.  ``waiter`` belongs to the driver (an Event, a Future...)."""

    __slots__ = ("serial", "program", "procedure", "codec", "packet", "done", "result", "error", "waiter", "name")

    def __init__(
        self, serial: int, program: int, procedure: int, codec: Optional[Codec], packet: bytes, name: str
    ) -> None:
        self.serial = serial
        self.program = program
        self.procedure = procedure
        self.codec = codec
        self.packet = packet
        self.done = False
        self.result: Any = None
        self.error: Optional[libvirtError] = None
        self.waiter: Any = None
        self.name = name

    def __repr__(self) -> str:
        return f"<Call {self.name} serial={self.serial} done={self.done}>"


def remote_error(m: Message, *, stream: bool = False) -> libvirtError:
    """The libvirtError a ``remote_error`` payload stands for."""
    from .._gen import virnet  # only needed when a call fails: not at start-up

    e = _xdr.decode(virnet._c_virNetMessageError, m.data, m.offset)
    return from_remote(e.code, e.domain, e.message, e.level, e.str1, e.str2, e.str3, e.int1, e.int2, stream=stream)


class ReceiveError(Exception):
    """:meth:`RPC.receive` met a protocol violation (see the module docstring)."""

    def __init__(self, error: libvirtError, completed: list[Call]) -> None:
        super().__init__(str(error))
        #: what the connection dies of
        self.error = error
        #: calls the same bytes completed before the violation
        self.completed = completed


class RPC:
    """The sans-I/O state of one connection (see the module docstring)."""

    def __init__(self, programs: dict[int, dict[int, Procedure]]) -> None:
        #: program number -> procedure table, for events and names
        self.programs = programs
        self.serial = 0
        self.calls: dict[int, Call] = {}
        self.abandoned: dict[int, None] = {}
        self.deframer = Deframer()
        #: packets the driver must send (PONGs), in order
        self.outgoing: list[bytes] = []
        #: events received: (procedure, decoded message body)
        self.events: list[tuple[Procedure, Any]] = []
        #: streams: (program, procedure, serial) -> object with .receive(Message)
        self.streams: dict[tuple[int, int, int], Any] = {}
        self._on_packet: Optional[Callable[[], None]] = None
        self._trace: Optional[Callable[[Message], None]] = None
        #: a hook is set: every packet takes the general path
        self._hooked = False
        self.pings_received = 0
        self.pongs_received = 0
        #: set by a driver: a context manager held while :data:`BULK_BYTES` or
        #: more are decoded at once (the drivers pause the garbage collector)
        self.bulk: Optional[AbstractContextManager[Any]] = None

    @property
    def on_packet(self) -> Optional[Callable[[], None]]:
        """Set by the keepalive layer: called with every received packet."""
        return self._on_packet

    @on_packet.setter
    def on_packet(self, hook: Optional[Callable[[], None]]) -> None:
        self._on_packet = hook
        self._hooked = hook is not None or self._trace is not None

    @property
    def trace(self) -> Optional[Callable[[Message], None]]:
        """Set by a driver that logs packets: called with every received Message."""
        return self._trace

    @trace.setter
    def trace(self, hook: Optional[Callable[[Message], None]]) -> None:
        self._trace = hook
        self._hooked = hook is not None or self._on_packet is not None

    # ------------------------------------------------------------- sending
    def request(self, program: int, version: int, proc: Procedure, args: Any = None) -> Call:
        """Encode a call of ``proc`` with ``args`` and enter it in the table.

        Encoding happens before a serial is taken, so a value that cannot be
        encoded (EncodeError) leaves no trace.
        """
        serial, packet = self.encode(program, version, proc, args)
        return self.enter(serial, program, proc, packet)

    def encode(self, program: int, version: int, proc: Procedure, args: Any = None) -> tuple[int, bytes]:
        """The first half of :meth:`request`: the serial and packet, the call not yet entered.

        For a driver that sends before it enters the call (off the critical
        path), which is only right when nothing can read the reply before
        :meth:`enter`: the driver holds the reader role.
        """
        codec = proc.args
        if codec is None and args is None:  # the common void-argument call, without a buffer
            serial = self.serial
            self.serial = (serial + 1) & 0xFFFFFFFF
            return serial, HEAD.pack(MIN_PACKET, program, version, proc.number, CALL, serial, OK)
        w = bytearray(MIN_PACKET)
        if codec is not None:
            _xdr.encode_into(codec, args, w)
        elif args is not None:
            raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_RPC, f"{proc.name} takes no arguments")
        n = len(w)
        if n > MAX_PACKET:
            raise make_error(
                C.VIR_ERR_RPC, C.VIR_FROM_RPC, f"{proc.name}: message of {n} bytes exceeds the limit of {MAX_PACKET}"
            )
        serial = self.serial
        self.serial = (serial + 1) & 0xFFFFFFFF
        HEAD.pack_into(w, 0, n, program, version, proc.number, CALL, serial, OK)
        return serial, bytes(w)

    def enter(self, serial: int, program: int, proc: Procedure, packet: bytes) -> Call:
        """The second half of :meth:`request`: the call, entered in the table."""
        call = Call(serial, program, proc.number, proc.ret, packet, proc.name)
        self.calls[serial] = call
        return call

    def abandon(self, call: Call) -> None:
        """Forget ``call`` (timed out or cancelled); drop its reply when it comes."""
        if self.calls.pop(call.serial, None) is not None:
            self.abandoned[call.serial] = None
            if len(self.abandoned) > ABANDONED_MAX:
                del self.abandoned[next(iter(self.abandoned))]

    def fail_all(self, error: libvirtError) -> list[Call]:
        """Complete every call in flight with ``error`` (the connection died)."""
        failed = list(self.calls.values())
        self.calls.clear()
        for call in failed:
            call.error = error
            call.done = True
        for stream in list(self.streams.values()):
            stream.fail(error)
        self.streams.clear()
        return failed

    # ----------------------------------------------------------- receiving
    def receive(self, data: bytes) -> list[Call]:
        """Feed bytes from the peer; return the calls they completed."""
        # Fast path: whole, successful REPLYs to waiting calls, and nothing
        # buffered (the deframer's buffer is empty whenever it holds nothing
        # back): no Message objects, no deframer copy.  Several replies may
        # come in one read (calls of several threads, or pipelined).  The
        # first packet that is anything else (an event, an error, a partial
        # packet) and everything after it take the general path; so does all
        # of it when hooks are installed, or when it is BULK_BYTES or more
        # (decoded under self.bulk).  This is the per-call path: it is
        # kept to few lookups (measured: each costs several times its
        # in-cache time after the process slept in poll()).
        done: list[Call] = []
        n = len(data)
        if n < BULK_BYTES and not self._hooked and not self.deframer._buf and type(data) is bytes:
            calls = self.calls
            pos = 0
            while n - pos >= MIN_PACKET:
                length, prog, _vers, proc, mtype, serial, status = HEAD.unpack_from(data, pos)
                end = pos + length
                if mtype != REPLY or status != OK or end > n or length < MIN_PACKET:
                    break
                call = calls.get(serial)
                if call is None or call.procedure != proc or call.program != prog:
                    break
                codec = call.codec
                if codec is None:
                    break
                try:
                    value, o = codec.dec(data, pos + MIN_PACKET, end)
                except _xdr.DECODE_FAILURES:
                    break
                if o != end:
                    break
                del calls[serial]
                call.result = value
                call.done = True
                done.append(call)
                pos = end
            if pos:
                if pos == n:
                    return done
                data = data[pos:]
        bulk = self.bulk
        try:
            if bulk is not None and len(data) + self.deframer.buffered >= BULK_BYTES:
                with bulk:
                    self._handle_all(data, done)
            else:
                self._handle_all(data, done)
        except libvirtError as exc:
            raise ReceiveError(exc, done) from None
        return done

    def _handle_all(self, data: bytes, done: list[Call]) -> None:
        for m in self.deframer.messages(data):
            call = self.handle(m)
            if call is not None:
                done.append(call)

    def handle(self, m: Message) -> Optional[Call]:
        if self._on_packet is not None:
            self._on_packet()
        if self._trace is not None:
            self._trace(m)
        mtype = m.type
        if mtype == REPLY or mtype == REPLY_WITH_FDS:
            call = self.calls.pop(m.serial, None)
            if call is None or call.program != m.program or call.procedure != m.procedure:
                if call is not None:
                    self.calls[m.serial] = call
                elif m.serial in self.abandoned:
                    del self.abandoned[m.serial]
                    return None
                raise make_error(
                    C.VIR_ERR_RPC,
                    C.VIR_FROM_RPC,
                    f"unexpected reply prog={m.program:#x} proc={m.procedure} serial={m.serial}: "
                    "no call with that serial is waiting",
                )
            status = m.status
            if status == OK:
                codec = call.codec
                if codec is None:
                    if len(m.data) != m.offset:
                        raise DecodeError(
                            f"{call.name or call.procedure}: reply should be empty, got {len(m.data) - m.offset} bytes"
                        )
                else:
                    # the generated decoder directly; _xdr.decode (which explains
                    # failures precisely) only when it does not take the whole payload
                    data = m.data
                    try:
                        value, o = codec.dec(data, m.offset, len(data))
                    except _xdr.DECODE_FAILURES:
                        o = -1
                    call.result = value if o == len(data) else _xdr.decode(codec, data, m.offset)
            elif status == ERROR:
                call.error = remote_error(m)
            else:
                raise DecodeError(f"reply to {call.name or call.procedure} has status {status}; expected OK or ERROR")
            call.done = True
            return call
        if mtype == MESSAGE:
            if m.program == KEEPALIVE_PROGRAM:
                if m.procedure == PING:
                    self.pings_received += 1
                    self.outgoing.append(PONG_PACKET)
                elif m.procedure == PONG:
                    self.pongs_received += 1
                else:
                    raise DecodeError(f"unknown keepalive procedure {m.procedure}")
                return None
            table = self.programs.get(m.program)
            proc = table.get(m.procedure) if table is not None else None
            if proc is None or proc.msg is None:
                # An event from a newer daemon that we cannot decode: the
                # C client logs and drops these; the stream stays in sync.
                return None
            self.events.append((proc, _xdr.decode(proc.msg, m.data, m.offset)))
            return None
        if mtype == STREAM or mtype == STREAM_HOLE:
            stream = self.streams.get((m.program, m.procedure, m.serial))
            if stream is None:
                # Data for a stream we aborted or finished: drop it.
                return None
            stream.receive(m)
            return None
        raise make_error(
            C.VIR_ERR_RPC,
            C.VIR_FROM_RPC,
            f"unexpected message type {m.type} from the server (prog={m.program:#x} proc={m.procedure})",
        )
