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
  :class:`~pyvirtrpc.errors.RPCError` or ``DecodeError``; the driver must then
  :meth:`RPC.fail_all` and close, because a byte stream cannot be
  resynchronised.  (Errors with code VIR_ERR_RPC, domain VIR_FROM_RPC.)
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
        #: set by the keepalive layer: called with every received packet
        self.on_packet: Optional[Callable[[], None]] = None
        self.pings_received = 0
        self.pongs_received = 0
        #: set by a driver that logs packets: called with every received Message
        self.trace: Optional[Callable[[Message], None]] = None

    # ------------------------------------------------------------- sending
    def request(self, program: int, version: int, proc: Procedure, args: Any = None) -> Call:
        """Encode a call of ``proc`` with ``args`` and enter it in the table.

        Encoding happens before a serial is taken, so a value that cannot be
        encoded (EncodeError) leaves no trace.
        """
        codec = proc.args
        if codec is None and args is None:  # the common void-argument call, without a buffer
            serial = self.serial
            self.serial = (serial + 1) & 0xFFFFFFFF
            packet = HEAD.pack(MIN_PACKET, program, version, proc.number, CALL, serial, OK)
            call = Call(serial, program, proc.number, proc.ret, packet, proc.name)
            self.calls[serial] = call
            return call
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
        call = Call(serial, program, proc.number, proc.ret, bytes(w), proc.name)
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
        # Fast path: one whole, successful REPLY to a waiting call, and nothing
        # buffered: no Message object, no deframer copy.  Anything else (events,
        # errors, partial packets, hooks installed) takes the general path.
        n = len(data)
        if (
            n >= MIN_PACKET
            and type(data) is bytes
            and self.on_packet is None
            and self.trace is None
            and not self.deframer.buffered
        ):
            length, prog, _vers, proc, mtype, serial, status = HEAD.unpack_from(data, 0)
            if length == n and mtype == REPLY and status == OK:
                call = self.calls.get(serial)
                codec = call.codec if call is not None else None
                if call is not None and codec is not None and call.program == prog and call.procedure == proc:
                    try:
                        value, o = codec.dec(data, MIN_PACKET, n)
                    except _xdr.DECODE_FAILURES:
                        o = -1
                    if o == n:
                        del self.calls[serial]
                        call.result = value
                        call.done = True
                        return [call]
        done: list[Call] = []
        for m in self.deframer.messages(data):
            call = self.handle(m)
            if call is not None:
                done.append(call)
        return done

    def handle(self, m: Message) -> Optional[Call]:
        if self.on_packet is not None:
            self.on_packet()
        if self.trace is not None:
            self.trace(m)
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
