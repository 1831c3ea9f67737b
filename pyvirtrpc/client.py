"""The blocking (sync) driver of the protocol core: one connection, many threads.

Contract:

* :class:`Connection` wraps a connected :mod:`~pyvirtrpc.transport` channel
  and an :class:`~pyvirtrpc.core.rpc.RPC`.  :meth:`Connection.call` sends a
  call and returns its decoded reply, raising the call's libvirtError.
* Thread-safe, and calls from several threads are in flight together,
  multiplexed by serial: a caller sends its packet and then either becomes
  the *reader* (reads from the channel and completes whichever calls the
  replies belong to, its own included) or waits to be woken by the reader.
  When the reader's own call completes it hands the reader role to a
  waiting thread (libvirt's virNetClient "buck passing").  No lock is held
  across the round trip, and a single-threaded caller reads for itself: no
  extra thread is on its path.
* Under load (at least :data:`BATCH_AT` calls in flight) the reader
  batches: it sleeps :data:`BATCH_DELAY` (0.1 ms) instead of waiting in
  poll() for each reply, and callers leave their packets in the send queue
  for it, which it writes after each sleep.  A reply or a request may so
  wait up to ~0.2 ms longer; the daemon, which has the other calls to work
  on meanwhile, is not kept waiting.  The callers a batch completed are
  woken one after another, not all at once: the reader wakes the first
  before it sleeps, and each woken caller wakes the next when it blocks
  in its next call (so that it does not wake only to wait for the GIL);
  if a sleep passes without that chain moving on (its callers made no
  new call), the reader wakes the rest at once.  When :data:`BATCH_IDLE`
  sleeps in a row bring no reply (slow calls), the reader goes back to
  waiting in poll() and callers write their own packets again.
* A call may have a timeout (per connection, or per call).  A call that
  times out fails with :class:`~pyvirtrpc.errors.OperationTimeoutError`
  and is abandoned: its reply, when it comes, is dropped, and the
  connection stays usable.
* When the channel fails (EOF, I/O error, a protocol violation), every call
  in flight fails at once with the error libvirt reports (``End of file
  while reading data``, ``Cannot recv data``, ...), the channel is closed,
  later calls fail with ``client socket is closed``, and the close
  listeners run with the reason (ERROR, EOF, KEEPALIVE or CLIENT).
* Keepalive PINGs are answered whenever packets are read; events are handed
  to :attr:`Connection.event_sink` in arrival order.
"""

from __future__ import annotations

import _socket  # not socket.py: that imports enum and selectors (~6 ms of start-up)
import errno as _errno
import select
from _thread import allocate_lock
from time import monotonic
from time import sleep as _sleep

from . import _gcpause, _log
from ._gen import constants as C
from ._gen import remote as _remote
from .core import handshake as hs
from .core.rpc import RPC, Call, ReceiveError
from .errors import (
    OperationTimeoutError,
    TransportError,
    closed_error,
    from_fields,
    libvirtError,
    make_error,
    system_error,
)
from .packet import HEAD, STATUS_NAMES, TYPE_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Generator, Optional

    from ._xdr import Procedure
    from .packet import Message
    from .transport import Channel

#: libvirt's close reasons (virConnectCloseReason)
CLOSE_ERROR = C.VIR_CONNECT_CLOSE_REASON_ERROR
CLOSE_EOF = C.VIR_CONNECT_CLOSE_REASON_EOF
CLOSE_KEEPALIVE = C.VIR_CONNECT_CLOSE_REASON_KEEPALIVE
CLOSE_CLIENT = C.VIR_CONNECT_CLOSE_REASON_CLIENT

class _Programs(dict):  # type: ignore[type-arg]
    """program number -> procedure table; the QEMU and LXC tables are imported on
    first use (an event or a call of those programs), not at start-up."""

    _LAZY = {0x20008087: "qemu", 0x00068000: "lxc"}

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __missing__(self, key: int) -> Any:
        name = self._LAZY.get(key)
        if name is None:
            raise KeyError(key)
        from importlib import import_module

        table = import_module(f"pyvirtrpc._gen.{name}").PROCEDURES
        self[key] = table
        return table


PROGRAMS: dict[int, Any] = _Programs({_remote.PROGRAM: _remote.PROCEDURES})
REMOTE = _remote.PROGRAM
#: How much one recv() asks for.  Kept below glibc's mmap threshold (128 KiB):
#: recv(n) allocates an n-byte buffer first, and a 256 KiB one costs an
#: mmap/munmap pair, ~18 us per call (measured), more than the rest of a call.
RECV_SIZE = 65536

_USE_DEFAULT: Any = object()

#: Batching under load (see the module docstring).  With this many calls in
#: flight the reader sleeps BATCH_DELAY seconds instead of waiting in poll()
#: for each reply, then reads what came meanwhile in one go; callers leave
#: their packets to it rather than write them themselves.  A reader asleep
#: in poll() costs the daemon a wake-up per reply it writes, and a caller
#: writing its own packet costs a GIL hand-over per call; measured on this
#: project's 2-core VM with 16 threads on one connection (A/B, 4 rounds):
#: client CPU 34-41 -> 31-38 us per call, daemon CPU 70-78 -> 67-73 us,
#: throughput +5-10%.  The delay is short enough that the daemon, which
#: takes ~45 us for its fastest calls, still has queued work when it ends.
BATCH_AT = 6
BATCH_DELAY = 0.0001
#: After this many delays in a row without a reply the reader stops batching
#: (the daemon is slow with these calls) and waits in poll() again.
BATCH_IDLE = 2


class _Waiter:
    """A binary semaphore a waiting caller blocks on (cheaper than threading.Event)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        # called with the connection lock held
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: Optional[float]) -> bool:
        ok = self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        if ok:
            self._set = False
        return ok


def _readable(channel: Any, timeout: Optional[float]) -> bool:
    """poll() the channel for input (hang-ups and errors count: recv() reports them)."""
    p = select.poll()
    try:
        p.register(channel.fileno(), select.POLLIN)
    except (OSError, ValueError):
        return True  # let recv() report the broken channel
    return bool(p.poll(None if timeout is None else max(int(timeout * 1000), 0)))


def _shutdown(channel: Any) -> None:
    """shutdown(SHUT_RDWR) the channel's socket, whatever wraps it (TLS, SASL), without closing it."""
    shut = getattr(channel, "shutdown", None)
    if shut is not None:  # a socket, or a channel that knows what its shutdown means
        try:
            shut(_socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass
        return
    try:
        fd = channel.fileno()
        s = _socket.socket(fileno=fd) if fd >= 0 else None
    except (OSError, ValueError, AttributeError):
        return  # not a socket (or already closed): nothing blocks on it
    if s is None:
        return
    try:
        s.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.detach()


def _hung_up(channel: Any) -> bool:
    """True if the peer hung up (POLLHUP), which libvirt reports as reason EOF."""
    p = select.poll()
    try:
        p.register(channel.fileno(), select.POLLIN)
        ready = p.poll(0)
    except (OSError, ValueError):
        return False
    return any(ev & select.POLLHUP for _fd, ev in ready)


def _log_step(step: hs.Log) -> None:
    """Log what a handshake step asked to log (the core cannot import logging)."""
    log = _log.logger(step.category)
    if log is not None and log.isEnabledFor(step.level):
        log.log(step.level, step.message, *step.args)


def _copy(error: libvirtError) -> libvirtError:
    """A fresh exception with the same fields (one instance per raising thread)."""
    return from_fields(error.err) if error.err is not None else libvirtError(str(error))


class Connection:
    """See the module docstring."""

    def __init__(self, channel: Channel, *, timeout: Optional[float] = None) -> None:
        self.channel = channel
        self.rpc = RPC(PROGRAMS)
        self.rpc.bulk = _gcpause.PAUSED
        self.timeout = timeout
        self._lock = allocate_lock()
        #: held by the thread writing to the channel; packets of other threads
        #: wait in _send_queue for it (see _send)
        self._send_lock = allocate_lock()
        self._send_queue: list[bytes] = []
        self._reading = False
        #: set (under the lock) by a reader that batches: callers queue their packets for it
        self._batching = False
        #: waiters of completed calls not woken yet (batching: woken one at a time, see _pass)
        self._chain: list[_Waiter] = []
        #: how many times a waiter of the chain was woken (the reader sees whether it moves)
        self._passes = 0
        self._dead: Optional[libvirtError] = None
        self._close_reason: Optional[int] = None
        #: (channel, recv, pending, poll_first, poll object) for the reader (see _channel_facts)
        self._reader_facts: Any = None
        #: called (without locks held) after events were queued in rpc.events
        self.event_sink: Optional[Callable[[list[tuple[Procedure, Any]]], None]] = None
        #: called once when the connection goes away: (reason, error or None)
        self.close_listeners: list[Callable[[int, Optional[libvirtError]], None]] = []
        self._log = _log.logger("rpc") if _log.debug_enabled("rpc") else None
        if self._log is not None:
            self.rpc.trace = self._trace_in
        # --- event loop integration (pyvirtrpc._events) ---
        #: called under the lock with True when a caller holds the reader role while an
        #: event loop wants to read (the loop stops watching the socket), False once free
        self.park: Optional[Callable[[bool], None]] = None
        self._parked = False
        #: called on every death, close() included: (reason, error)
        self.death_hooks: list[Callable[[int, Optional[libvirtError]], None]] = []
        #: per-connection events/keepalive state, owned by pyvirtrpc._events
        self.event_state: Any = None

    # ------------------------------------------------------------ tracing
    def _trace_in(self, m: Message) -> None:
        self._trace("<", m.program, m.procedure, m.type, m.serial, m.status, len(m.data))

    def _trace_out(self, packet: bytes) -> None:
        n, prog, _vers, proc, mtype, serial, status = HEAD.unpack_from(packet, 0)
        self._trace(">", prog, proc, mtype, serial, status, n)

    def _trace(self, direction: str, prog: int, proc: int, mtype: int, serial: int, status: int, size: int) -> None:
        assert self._log is not None
        table = PROGRAMS.get(prog)
        p = table.get(proc) if table is not None else None
        if prog == 0x6B656570:
            name = {1: "KEEPALIVE_PROC_PING", 2: "KEEPALIVE_PROC_PONG"}.get(proc, str(proc))
        else:
            name = p.name if p is not None else str(proc)
        t = TYPE_NAMES[mtype] if 0 <= mtype < len(TYPE_NAMES) else str(mtype)
        s = STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else str(status)
        self._log.debug(
            "%s prog=%#x proc=%s type=%s serial=%d status=%s size=%d", direction, prog, name, t, serial, s, size
        )

    # --------------------------------------------------------------- calls
    @property
    def alive(self) -> bool:
        return self._dead is None

    def call(
        self, proc: Procedure, args: Any = None, *, program: int = REMOTE, version: int = 1, timeout: Any = _USE_DEFAULT
    ) -> Any:
        """Make one call and return its decoded reply (None for void)."""
        if timeout is _USE_DEFAULT:
            timeout = self.timeout
        lock = self._lock
        lock.acquire()
        if self._reading or timeout is not None or self._dead is not None:
            lock.release()
            return self._wait(self.start(proc, args, program, version), timeout)
        # Nobody is reading (a single-threaded caller, the common case): take
        # the reader role, send, and only then enter the call in the table
        # (while the daemon works on it: off the critical path).  That is
        # safe because nobody else can read the reply before we do.
        rpc = self.rpc
        try:
            serial, packet = rpc.encode(program, version, proc, args)
        except BaseException:
            lock.release()
            raise
        self._reading = True
        lock.release()
        try:
            self._send(packet)
        except BaseException:
            with lock:
                self._release()
            raise
        with lock:
            call = rpc.enter(serial, program, proc, packet)
            dead = self._dead
            if dead is not None:  # died after our send, before the call was in the table to fail
                rpc.abandon(call)
                self._release()
                raise _copy(dead)
        self._read_until(call, None, None)
        if call.error is not None:
            raise call.error
        return call.result

    def start(self, proc: Procedure, args: Any = None, program: int = REMOTE, version: int = 1) -> Call:
        """Send a call without waiting; :meth:`finish` waits for its reply."""
        lock = self._lock
        with lock:
            if self._dead is not None:
                raise closed_error()
            call = self.rpc.request(program, version, proc, args)
            if self._batching:  # the reader sends it within BATCH_DELAY
                if self._log is not None:
                    self._trace_out(call.packet)
                self._send_queue.append(call.packet)
                return call
        self._send(call.packet)
        return call

    def finish(self, call: Call, timeout: Any = _USE_DEFAULT) -> Any:
        """The decoded reply of a call sent with :meth:`start` (raises its error)."""
        return self._wait(call, self.timeout if timeout is _USE_DEFAULT else timeout)

    def send_packet(self, packet: bytes) -> None:
        """Send a raw packet (stream data, keepalive) in order with the calls."""
        with self._lock:
            if self._dead is not None:
                raise closed_error()
        self._send(packet)

    def _send(self, packet: bytes) -> None:
        """Write ``packet`` (b"": only the queued packets), or leave it to the thread writing."""
        if self._log is not None and packet:
            self._trace_out(packet)
        send_lock = self._send_lock
        queue = self._send_queue
        if not send_lock.acquire(False):
            # Another thread is writing: leave the packet to it rather than
            # block (combining: one write for the packets of several threads,
            # and no thread parked on the lock).  The writer looks at the
            # queue again after it lets go of the lock, and we try the lock
            # again after queueing, so a packet is never stranded.
            # list.append and slice deletion are atomic under the GIL.
            if packet:
                queue.append(packet)
            if not send_lock.acquire(False):
                return
            packet = b""
        elif queue:
            # packets queued before ours (the last writer has not looked at them
            # yet; some may be ours, e.g. stream data) go first
            if packet:
                queue.append(packet)
            packet = b""
        try:
            try:
                if packet:
                    self.channel.sendall(packet)
            finally:
                send_lock.release()
            if self._send_queue and send_lock.acquire(False):
                self._write(b"")
        except libvirtError as exc:  # a SASL layer may fail to encode
            self._die(exc, CLOSE_ERROR)
            raise _copy(exc) from None
        except OSError as exc:
            error = system_error(C.VIR_FROM_RPC, exc.errno or _errno.EIO, "Cannot write data")
            self._die(error, CLOSE_ERROR)
            # if it had died already (and the socket was closed under us), what it died of
            raise _copy(self._dead or error) from None

    def _write(self, packet: bytes) -> None:
        """Write ``packet`` and the queued packets; called holding the send lock, releases it."""
        queue = self._send_queue
        send_lock = self._send_lock
        channel = self.channel
        while True:
            try:
                if packet:
                    channel.sendall(packet)
                while queue:
                    n = len(queue)
                    packet = queue[0] if n == 1 else b"".join(queue[:n])
                    del queue[:n]
                    channel.sendall(packet)
            finally:
                send_lock.release()
            if not queue or not send_lock.acquire(False):
                return
            packet = b""

    def _wait(self, call: Call, timeout: Optional[float]) -> Any:
        lock = self._lock
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            lock.acquire()
            if call.done:
                lock.release()
                break
            if not self._reading:
                self._reading = True
                lock.release()
                self._read_until(call, deadline, timeout)
                break
            waiter = call.waiter
            if waiter is None:
                waiter = call.waiter = _Waiter()
            if self._chain:
                self._pass()
            lock.release()
            remaining = None if deadline is None else deadline - monotonic()
            try:
                woken = waiter.wait(remaining)
            except BaseException:  # KeyboardInterrupt in the wait
                self._give_up(call)
                raise
            if not woken and self._give_up(call):
                raise self._timeout_error(call, timeout)
        if call.error is not None:
            raise call.error
        return call.result

    def _give_up(self, call: Call) -> bool:
        """A waiting caller stops waiting: abandon its call unless it completed (then False).

        A reader that gave up its role may have picked this caller to take
        it over (:meth:`_promote`) just as it stopped waiting: the role
        then goes to another waiting caller, or else no one would read.
        """
        with self._lock:
            if call.done:
                return False
            self.rpc.abandon(call)
            if not self._reading:
                self._hand_over()
            return True

    @staticmethod
    def _timeout_error(call: Call, timeout: Optional[float]) -> libvirtError:
        return make_error(
            C.VIR_ERR_OPERATION_TIMEOUT,
            C.VIR_FROM_RPC,
            f"no reply to {call.name or call.procedure} (serial {call.serial}) within {timeout} s; "
            "the call was abandoned",
        )

    def _read_until(self, call: Call, deadline: Optional[float], timeout: Optional[float]) -> None:
        """Be the reader until ``call`` completes (or times out, or the channel dies)."""
        rpc = self.rpc
        lock = self._lock
        channel = self.channel
        facts = self._reader_facts
        if facts is None or facts[0] is not channel:
            facts = self._reader_facts = self._channel_facts(channel)
        _channel, recv, pending, poll_first, poller = facts
        reading = True  # we hold the reader role (given up in the finally clause, or before returning)
        idle = 0  # batching delays in a row that brought nothing
        try:
            while True:
                if self._send_queue:  # left by callers while a reader batched
                    self._send(b"")
                if poller is None:
                    pass  # closed already: recv() reports it
                elif deadline is None:
                    if len(rpc.calls) >= BATCH_AT and idle < BATCH_IDLE:
                        if not self._batching:
                            with lock:
                                self._batching = True
                        if self._chain:
                            # start a chain (another, if one is moving): the
                            # woken caller wakes the next when it blocks again
                            with lock:
                                if self._chain:  # a caller may have woken the last while we waited for the lock
                                    self._pass()
                        passes = self._passes
                        _sleep(BATCH_DELAY)
                        if self._chain and self._passes == passes:
                            with lock:  # the chain stalled (its callers made no new call): wake the rest
                                self._wake_all()
                        if self._send_queue:
                            self._send(b"")
                        if not (pending is not None and pending()) and not poller.poll(0):
                            idle += 1  # nothing came meanwhile: sleep again (callers' packets may queue)
                            continue
                        idle = 0
                    else:
                        # few calls in flight, or the daemon is slow with them (nothing came in
                        # BATCH_IDLE delays): callers write their own packets, and we wait in poll()
                        idle = 0
                        if self._batching:
                            with lock:
                                self._batching = False
                                self._wake_all()
                            if self._send_queue:
                                self._send(b"")
                        if poll_first and not (pending is not None and pending()):
                            poller.poll()
                elif not (pending is not None and pending()):
                    remaining = deadline - monotonic()
                    if remaining <= 0 or not poller.poll(remaining * 1000.0):
                        raise _socket.timeout()
                try:
                    data = recv(RECV_SIZE)
                except _socket.timeout:
                    raise
                except libvirtError as exc:  # SASL layer rejected a packet
                    self._die(exc, CLOSE_ERROR)
                    break
                except OSError as exc:
                    self._die(system_error(C.VIR_FROM_RPC, exc.errno or _errno.EIO, "Cannot recv data"), CLOSE_ERROR)
                    break
                if not data:
                    self._die(system_error(C.VIR_FROM_RPC, _errno.EIO, "End of file while reading data"), CLOSE_EOF)
                    break
                with lock:
                    try:
                        completed = rpc.receive(data)
                        protocol_error: Optional[libvirtError] = None
                    except ReceiveError as exc:
                        # the connection dies of it (below); calls completed before the bad packet still complete
                        completed, protocol_error = exc.completed, exc.error
                    # batching: their callers are woken one after another (see _pass; _die wakes the rest)
                    chain = self._chain if self._batching else None
                    for c in completed:
                        w = c.waiter
                        if w is not None:
                            if chain is not None and c is not call:
                                chain.append(w)
                            else:
                                w.set()
                    outgoing = rpc.outgoing
                    if outgoing:
                        rpc.outgoing = []
                    events = rpc.events
                    if events:
                        rpc.events = []
                    elif call.done and not outgoing:
                        # done, nothing else to do: give up the role in this
                        # same locked region (the per-call path)
                        reading = False
                        self._release()
                        return
                if protocol_error is not None:
                    self._die(protocol_error, CLOSE_ERROR)
                    break
                for packet in outgoing:
                    self._send(packet)
                if events:
                    self._deliver(events)
                if call.done:
                    break
        except _socket.timeout:
            with lock:
                if not call.done:
                    rpc.abandon(call)
                    call.error = self._timeout_error(call, timeout)
                    call.done = True
        except BaseException:
            # (an event callback's exception, KeyboardInterrupt): the call is given up, or
            # _promote could hand the role to its waiter, which nobody waits on any more
            with lock:
                if not call.done:
                    rpc.abandon(call)
            raise
        finally:
            if reading:
                with lock:
                    self._release()

    @staticmethod
    def _channel_facts(channel: Any) -> tuple[Any, Any, Any, bool, Any]:
        """What the reader needs of a channel, looked up once per channel (not per call).

        ``pending``: a TLS/SASL channel may hold decoded bytes a poll() of the
        socket does not show.  With a deadline the reader waits in poll()
        then recv(): a deadline must not be a socket timeout (that would
        also apply to other threads' sendall()).  Without one, poll+recv is
        faster than a blocking recv on unix sockets and slower on TCP
        (measured, per call: unix -3 us, tcp and tls +3 us): the channel
        says which (``poll_first``).
        """
        try:
            fd = channel.fileno()
        except (OSError, ValueError):
            fd = -1
        poller = None  # closed already: recv() reports it
        if fd >= 0:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
        return (
            channel,
            channel.recv,
            getattr(channel, "pending", None),
            bool(getattr(channel, "poll_first", False)),
            poller,
        )

    def _pass(self) -> None:
        """Wake the next waiter of the chain (lock held).

        The reader completes calls in batches; waking all their threads at
        once would have all but one of them wake only to wait for the GIL
        (two context switches each).  Instead each woken thread wakes the
        next just before it blocks again, when the GIL is about to be free.
        Measured with 16 threads on one connection (alternating A/B, four
        runs of 6-8 rounds): +1% to +7.5% calls/s, with 2-4 us less client
        CPU and ~3 us less daemon CPU per call.  The reader starts a chain
        before each of its sleeps even while one is moving; a single chain
        at a time was 3% slower, two or three per sleep 5-6% slower.
        """
        self._passes += 1
        self._chain.pop(0).set()

    def _wake_all(self) -> None:
        """Wake every waiter of the chain (lock held)."""
        chain = self._chain
        for w in chain:
            w.set()
        chain.clear()

    def _promote(self) -> bool:
        """Wake one waiting caller so that it takes over reading (lock held)."""
        for c in self.rpc.calls.values():
            w = c.waiter
            if w is not None:
                w.set()
                return True
        return False

    def _release(self) -> None:
        """Give up the reader role (lock held): to a waiting caller, else back to the event loop."""
        self._reading = False
        # packets still queued go out with the next reader (the caller woken here)
        self._batching = False
        if self._chain:
            self._wake_all()
        if self.rpc.calls or self._parked:
            self._hand_over()

    def _hand_over(self) -> None:
        """After the reader role was given up (lock held): wake a waiting caller, else unpark the loop."""
        if not self._promote() and self._parked:
            self._parked = False
            park = self.park
            if park is not None:
                park(False)

    def _deliver(self, events: list[tuple[Procedure, Any]]) -> None:
        sink = self.event_sink
        if sink is not None:
            sink(events)

    def pump(self, timeout: Optional[float] = 0.0) -> bool:
        """Read and dispatch what has arrived, if no caller is reading (event loops use this).

        Waits at most ``timeout`` seconds (None: without limit) for the channel
        to become readable, and never blocks in recv() on a channel with
        nothing to read.  When a caller holds the reader role it returns at
        once and, through :attr:`park`, has the loop stop watching the socket
        until the role is free.  Returns False when the connection is dead.
        """
        with self._lock:
            if self._dead is not None:
                return False
            if self._reading:
                park = self.park
                if park is not None and not self._parked:
                    self._parked = True
                    park(True)
                return True
            self._reading = True
        try:
            if self._send_queue:  # left by callers while a reader batched
                self._send(b"")
            channel = self.channel
            pending = getattr(channel, "pending", None)
            if not (pending is not None and pending()) and not _readable(channel, timeout):
                return True
            chunks = []
            try:
                data = channel.recv(RECV_SIZE)
                # a TLS/SASL channel may hold decoded data the socket no longer shows
                while data and pending is not None and pending():
                    chunks.append(data)
                    data = channel.recv(RECV_SIZE)
            except libvirtError as exc:
                self._die(exc, CLOSE_ERROR)
                return False
            except OSError as exc:
                self._die(system_error(C.VIR_FROM_RPC, exc.errno or _errno.EIO, "Cannot recv data"), CLOSE_ERROR)
                return False
            if chunks:
                chunks.append(data)
                data = b"".join(chunks)
            if not data:
                self._die(system_error(C.VIR_FROM_RPC, _errno.EIO, "End of file while reading data"), CLOSE_EOF)
                return False
            with self._lock:
                try:
                    completed = self.rpc.receive(data)
                except ReceiveError as exc:  # the calls it completed before the bad packet still complete
                    error: Optional[libvirtError] = exc.error
                    completed = exc.completed
                else:
                    error = None
                for c in completed:
                    if c.waiter is not None:
                        c.waiter.set()
                outgoing, self.rpc.outgoing = self.rpc.outgoing, []
                events, self.rpc.events = self.rpc.events, []
            if error is not None:
                self._die(error, CLOSE_ERROR)
                return False
            for packet in outgoing:
                self._send(packet)
            if events:
                self._deliver(events)
            return True
        finally:
            with self._lock:
                self._release()

    def try_send(self, packet: bytes) -> bool:
        """Send ``packet`` unless another thread is sending (keepalive PINGs: never block a loop)."""
        if self._dead is not None or not self._send_lock.acquire(False):
            return False
        try:
            self._write(packet)
        except (OSError, libvirtError):
            return False  # the channel is broken: the reader will see the failure
        return True

    # --------------------------------------------------------------- death
    def _die(self, error: libvirtError, reason: int) -> None:
        with self._lock:
            if self._dead is not None:
                return
            if reason == CLOSE_EOF or reason == CLOSE_ERROR:
                # libvirt's reason comes from poll(): EOF when the socket hung up, else ERROR
                reason = CLOSE_EOF if _hung_up(self.channel) else CLOSE_ERROR
            self._dead = error
            self._close_reason = reason
            failed = self.rpc.fail_all(error)
            self._wake_all()
            for c in failed:
                c.error = _copy(error)
                if c.waiter is not None:
                    c.waiter.set()
        _shutdown(self.channel)  # wakes a reader blocked in recv() (close() alone does not)
        try:
            self.channel.close()
        except OSError:
            pass
        for hook in self.death_hooks:
            hook(reason, error)
        self._notify_close(reason, error)

    def _notify_close(self, reason: int, error: Optional[libvirtError]) -> None:
        listeners, self.close_listeners = self.close_listeners, []
        for listener in listeners:
            listener(reason, error)

    def abort(self, reason: int, error: libvirtError) -> None:
        """Kill the connection from outside (keepalive timeout, ...)."""
        self._die(error, reason)

    def close(self) -> None:
        """CONNECT_CLOSE, then close the channel (listeners are not told: libvirt drops them first).

        A failed CONNECT_CLOSE is not an error: libvirt closes from its
        connection's dispose function, which ignores the result (a daemon, or
        virt-ssh-helper, may hang up before the reply gets through).
        """
        self.close_listeners = []
        try:
            if self._dead is None:
                self.call(_remote.PROCEDURES[_remote.REMOTE_PROC_CONNECT_CLOSE])
        except libvirtError:
            pass
        finally:
            self._die(closed_error(), CLOSE_CLIENT)

    # ----------------------------------------------------------- handshake
    def run_steps(self, gen: Generator[hs.Step, Any, Any]) -> Any:
        """Drive a handshake generator (see pyvirtrpc.core.handshake)."""
        try:
            step = next(gen)
            while True:
                if isinstance(step, hs.Call):
                    try:
                        result = self.call(step.procedure, step.args)
                    except libvirtError as exc:
                        step = gen.throw(exc)
                        continue
                    step = gen.send(result)
                elif isinstance(step, hs.Batch):
                    results: list[Any] = []
                    started: list[Any] = []
                    for c in step.calls:
                        try:
                            started.append(self.start(c.procedure, c.args))
                        except libvirtError as exc:
                            started.append(exc)
                    for item in started:
                        if isinstance(item, libvirtError):
                            results.append(item)
                            continue
                        try:
                            results.append(self.finish(item))
                        except libvirtError as exc:
                            results.append(exc)
                    step = gen.send(results)
                elif isinstance(step, hs.Log):
                    _log_step(step)
                    step = gen.send(None)
                elif isinstance(step, hs.InstallLayer):
                    self.install_layer(step.layer)
                    step = gen.send(None)
                else:
                    raise TypeError(f"unknown handshake step {step!r}")
        except StopIteration as stop:
            return stop.value

    def install_layer(self, layer: Any) -> None:
        """Put a SASL security layer under the framing (after the last auth step)."""
        from .transport.sasl import SaslChannel

        with self._lock, self._send_lock:
            self.channel = SaslChannel(self.channel, layer)


__all__ = ["Connection", "TransportError", "OperationTimeoutError"]
