"""An in-process fake libvirt daemon, for what a real libvirtd cannot be made to do.

Use the real daemon (``tests/harness``) whenever it can show the behaviour;
this one exists for never answering, dying mid-call, PING storms, events
on demand, hostile bytes.  It speaks the real framing
(:mod:`pyvirtrpc.packet`) and the generated XDR codecs on a unix socket::

    with FakeDaemon(tmp_path) as fake:
        fake.handlers["CONNECT_GET_HOSTNAME"] = lambda peer, call: NO_REPLY
        conn = pyvirtrpc.open(fake.uri)
        peer = fake.peer()                  # the server side of that connection
        peer.send_event("DOMAIN_EVENT_CALLBACK_LIFECYCLE", msg)
        peer.reply(call, value)             # answer a held call later
        peer.die()                          # EOF; peer.reset(): RST
        peer.freeze(); peer.thaw()          # stop/resume reading and answering (SIGSTOP)
        peer.ping(1000)                     # a PING storm
        peer.send_raw(b"\\xff" * 64)         # hostile bytes

    with default_loop_thread():             # pyvirtrpc's default event loop in a thread,
        ...                                 # unregistered again afterwards

Contract:

* The open handshake is answered as libvirtd answers it with auth "none":
  AUTH_LIST -> [NONE]; CONNECT_SUPPORTS_FEATURE -> 1 for the numbers in
  ``features`` (default 10 keepalive, 14 event callbacks, 15 close
  callbacks); CONNECT_OPEN, CONNECT_GET_URI (:attr:`FakeDaemon.uri_reply`),
  CONNECT_CLOSE (reply, then close).  Event (de)registration of every kind
  is accepted and recorded in :attr:`Peer.registrations` (server callback
  ids count from 100, so that tests notice a client that confuses them with
  its own ids); REGISTER/UNREGISTER_CLOSE_CALLBACK and CONNECT_GET_HOSTNAME
  (``"fakehost"``) are answered; anything else gets libvirt's "unknown
  procedure" error.
* ``handlers[NAME]`` (the procedure name without its ``REMOTE_PROC_`` /
  ``QEMU_PROC_`` prefix) overrides a procedure: ``handler(peer, call)`` runs
  in the peer's thread and returns the reply value (None for void),
  :data:`NO_REPLY` (answer later with :meth:`Peer.reply`, or never),
  :data:`DIE` (close the connection instead), or raises :class:`Fail` for
  an error reply.
* Client PINGs are answered with PONG unless the peer is frozen; every
  received packet is kept in :attr:`Peer.received`.
* Threads are daemon threads; :meth:`FakeDaemon.stop` (or leaving the
  ``with``) closes everything.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from pyvirtrpc import _xdr
from pyvirtrpc._gen import constants as C
from pyvirtrpc._gen import qemu as Q
from pyvirtrpc._gen import remote as R
from pyvirtrpc._gen import virnet as V
from pyvirtrpc.core.rpc import KEEPALIVE_PROGRAM, PING, PING_PACKET, PONG, PONG_PACKET
from pyvirtrpc.packet import CALL, ERROR, MESSAGE, OK, REPLY, Deframer, Message, encode_packet

__all__ = ["FakeDaemon", "Peer", "Call", "Fail", "NO_REPLY", "DIE", "domain", "network", "default_loop_thread"]

#: handler results
NO_REPLY = object()
DIE = object()

PROGRAMS = {R.PROGRAM: ("REMOTE_PROC_", R.PROCEDURES), Q.PROGRAM: ("QEMU_PROC_", Q.PROCEDURES)}


class Fail(Exception):
    """Raised by a handler: reply with this libvirt error."""

    def __init__(self, code: int, domain: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.message = message


class Call:
    """A call received by the fake: ``name`` (no prefix), ``args`` (decoded), header fields."""

    def __init__(self, m: Message, name: str, proc: Any, args: Any) -> None:
        self.program = m.program
        self.version = m.version
        self.procedure = m.procedure
        self.serial = m.serial
        self.name = name
        self.proc = proc
        self.args = args
        self.at = time.monotonic()

    def __repr__(self) -> str:
        return f"<Call {self.name} serial={self.serial}>"


def domain(name: str = "fakedom", uuid: bytes = bytes(range(16)), id: int = 1) -> Any:  # noqa: A002
    """A ``remote_nonnull_domain`` for event messages."""
    return R.remote_nonnull_domain(name, uuid, id)


def network(name: str = "fakenet", uuid: bytes = bytes(range(16, 32))) -> Any:
    return R.remote_nonnull_network(name, uuid)


class Peer:
    """The server side of one client connection."""

    def __init__(self, daemon: FakeDaemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.received: list[Message] = []
        self.calls: list[Call] = []
        #: server callback id -> (register procedure name, decoded register args)
        self.registrations: dict[int, tuple[str, Any]] = {}
        self.pings = 0
        self.pongs = 0
        self.closed = threading.Event()
        self._frozen = threading.Event()
        self._thawed = threading.Event()
        self._thawed.set()
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="fakedaemon-peer", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------- sending
    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (hostile input)."""
        with self._send_lock:
            self.sock.sendall(data)

    def reply(self, call: Call, value: Any = None) -> None:
        """Answer ``call`` with ``value`` (its procedure's return struct, or None)."""
        codec = call.proc.ret
        payload = b"" if codec is None else _xdr.encode(codec, value)
        self.send_raw(encode_packet(call.program, call.version, call.procedure, REPLY, call.serial, OK, payload))

    def reply_error(self, call: Call, code: int, domain: int, message: str) -> None:
        err = V.virNetMessageError(code, domain, message, C.VIR_ERR_ERROR, None, message, None, None, -1, -1, None)
        payload = _xdr.encode(V._c_virNetMessageError, err)
        self.send_raw(encode_packet(call.program, call.version, call.procedure, REPLY, call.serial, ERROR, payload))

    def send_event(self, name: str, body: Any, *, program: int = R.PROGRAM) -> None:
        """Send event message ``name`` (e.g. ``"DOMAIN_EVENT_CALLBACK_LIFECYCLE"``) with serial 1, as libvirtd."""
        prefix, table = PROGRAMS[program]
        number = (R.PROC_BY_NAME if program == R.PROGRAM else Q.PROC_BY_NAME)[prefix + name].number
        proc = table[number]
        payload = _xdr.encode(proc.msg, body)
        self.send_raw(encode_packet(program, 1, number, MESSAGE, 1, OK, payload))

    def ping(self, n: int = 1) -> None:
        """Send ``n`` keepalive PINGs at once."""
        self.send_raw(PING_PACKET * n)

    # -------------------------------------------------------------- state
    def freeze(self) -> None:
        """Stop reading and answering, keeping the socket open (a SIGSTOPped daemon)."""
        self._thawed.clear()
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()
        self._thawed.set()

    def die(self) -> None:
        """Close the connection (the client reads EOF)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.closed.set()

    def reset(self) -> None:
        """Abort the connection with a RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.die()

    def wait_call(self, name: str, timeout: float = 10.0, count: int = 1) -> Call:
        """Wait until the ``count``-th call of ``name`` has arrived; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.calls if c.name == name]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no call {name} (#{count}) within {timeout} s; got {self.calls}")
                self._cond.wait(left)

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("condition not met")
                self._cond.wait(left)

    def registration(self, name: str, event_id: Optional[int] = None) -> int:
        """The server callback id of the latest registration by ``name`` (and event id)."""
        for cid, (n, args) in reversed(list(self.registrations.items())):
            if n == name and (event_id is None or getattr(args, "eventID", None) == event_id):
                return cid
        raise KeyError(f"no {name} registration for event {event_id}: {self.registrations}")

    # ------------------------------------------------------------ reading
    def _run(self) -> None:
        d = Deframer()
        try:
            while True:
                if self._frozen.is_set():
                    self._thawed.wait()
                    continue
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                d.feed(data)
                if self._frozen.is_set():  # frozen while this recv() was waiting: hold it
                    self._thawed.wait()
                while True:
                    m = d.next()
                    if m is None:
                        break
                    self._handle(m)
                    if self.closed.is_set():
                        return
        except Exception:  # noqa: BLE001 - a test peer sending garbage to us ends the connection
            pass
        finally:
            # the client went away (EOF) or we died: release the socket now,
            # not whenever the garbage collector gets to it
            try:
                self.sock.close()
            except OSError:
                pass
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def _handle(self, m: Message) -> None:
        with self._cond:
            self.received.append(m)
            self._cond.notify_all()
        if m.program == KEEPALIVE_PROGRAM:
            if m.procedure == PING:
                with self._cond:
                    self.pings += 1
                if not self._frozen.is_set():
                    self.send_raw(PONG_PACKET)
            elif m.procedure == PONG:
                with self._cond:
                    self.pongs += 1
            return
        if m.type != CALL:
            return
        prefix, table = PROGRAMS.get(m.program, ("", {}))
        proc = table.get(m.procedure)
        if proc is None:
            self._unknown(m)
            return
        name = proc.name[len(prefix) :]
        args = None if proc.args is None else _xdr.decode(proc.args, m.data, m.offset)
        call = Call(m, name, proc, args)
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()
        handler = self.daemon.handlers.get(name) or _DEFAULTS.get(name)
        if handler is None:
            self.reply_error(call, C.VIR_ERR_RPC, C.VIR_FROM_RPC, f"unknown procedure: {m.procedure}")
            return
        try:
            value = handler(self, call)
        except Fail as f:
            self.reply_error(call, f.code, f.domain, f.message)
            return
        if value is NO_REPLY:
            return
        if value is DIE:
            self.die()
            return
        self.reply(call, value)
        if name == "CONNECT_CLOSE":
            self.die()

    def _unknown(self, m: Message) -> None:
        payload = _xdr.encode(
            V._c_virNetMessageError,
            V.virNetMessageError(
                C.VIR_ERR_RPC, C.VIR_FROM_RPC, f"unknown program {m.program:#x}", C.VIR_ERR_ERROR,
                None, None, None, None, -1, -1, None,
            ),
        )  # fmt: skip
        self.send_raw(encode_packet(m.program, m.version, m.procedure, REPLY, m.serial, ERROR, payload))


# ------------------------------------------------------------------ defaults
def _register(ret_cls: Callable[[int], Any]) -> Callable[[Peer, Call], Any]:
    def handler(peer: Peer, call: Call) -> Any:
        with peer.daemon.lock:
            cid = peer.daemon.next_callback_id
            peer.daemon.next_callback_id += 1
        peer.registrations[cid] = (call.name, call.args)
        return ret_cls(cid)

    return handler


def _deregister(peer: Peer, call: Call) -> None:
    cid = call.args.callbackID
    if cid not in peer.registrations:
        raise Fail(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_RPC, f"event callback {cid} not registered")
    del peer.registrations[cid]


_DEFAULTS: dict[str, Callable[[Peer, Call], Any]] = {
    "AUTH_LIST": lambda peer, call: R.remote_auth_list_ret([R.REMOTE_AUTH_NONE]),
    "CONNECT_SUPPORTS_FEATURE": lambda peer, call: R.remote_connect_supports_feature_ret(
        1 if call.args.feature in peer.daemon.features else 0
    ),
    "CONNECT_OPEN": lambda peer, call: None,
    "CONNECT_CLOSE": lambda peer, call: None,
    "CONNECT_GET_URI": lambda peer, call: R.remote_connect_get_uri_ret(peer.daemon.uri_reply),
    "CONNECT_GET_HOSTNAME": lambda peer, call: R.remote_connect_get_hostname_ret("fakehost"),
    "CONNECT_REGISTER_CLOSE_CALLBACK": lambda peer, call: None,
    "CONNECT_UNREGISTER_CLOSE_CALLBACK": lambda peer, call: None,
    "CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY": _register(R.remote_connect_domain_event_callback_register_any_ret),
    "CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY": _deregister,
    "CONNECT_NETWORK_EVENT_REGISTER_ANY": _register(R.remote_connect_network_event_register_any_ret),
    "CONNECT_NETWORK_EVENT_DEREGISTER_ANY": _deregister,
    "CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY": _register(R.remote_connect_storage_pool_event_register_any_ret),
    "CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY": _deregister,
    "CONNECT_NODE_DEVICE_EVENT_REGISTER_ANY": _register(R.remote_connect_node_device_event_register_any_ret),
    "CONNECT_NODE_DEVICE_EVENT_DEREGISTER_ANY": _deregister,
    "CONNECT_SECRET_EVENT_REGISTER_ANY": _register(R.remote_connect_secret_event_register_any_ret),
    "CONNECT_SECRET_EVENT_DEREGISTER_ANY": _deregister,
    "CONNECT_DOMAIN_MONITOR_EVENT_REGISTER": _register(Q.qemu_connect_domain_monitor_event_register_ret),
    "CONNECT_DOMAIN_MONITOR_EVENT_DEREGISTER": _deregister,
}


class FakeDaemon:
    """A scripted daemon on a unix socket in ``dir`` (see the module docstring)."""

    def __init__(
        self,
        dir: Union[str, os.PathLike[str]],  # noqa: A002
        *,
        features: tuple[int, ...] = (10, 14, 15),
        uri_reply: str = "test:///default",
    ) -> None:
        self.path = str(Path(dir) / f"fake-{os.getpid()}-{id(self):x}.sock")
        self.features = set(features)
        self.uri_reply = uri_reply
        self.handlers: dict[str, Callable[[Peer, Call], Any]] = {}
        self.peers: list[Peer] = []
        self.lock = threading.Lock()
        self.next_callback_id = 100
        self._cond = threading.Condition(self.lock)
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.path}"

    def hold(self, name: str) -> list[Call]:
        """Leave calls of ``name`` unanswered; returns the list they are collected in
        (answer them later with :meth:`Peer.reply`)."""
        held: list[Call] = []

        def handler(peer: Peer, call: Call) -> Any:
            held.append(call)
            return NO_REPLY

        self.handlers[name] = handler
        return held

    def start(self) -> FakeDaemon:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        s.listen(16)
        self._listener = s
        self._thread = threading.Thread(target=self._accept, name="fakedaemon", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            peer = Peer(self, sock)
            with self._cond:
                self.peers.append(peer)
                self._cond.notify_all()

    def peer(self, index: int = -1, timeout: float = 10.0) -> Peer:
        """A connected peer (default: the latest), waiting for one to connect."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.peers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no client connected to the fake daemon")
                self._cond.wait(left)
            return self.peers[index]

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
            self._listener = None
        for p in list(self.peers):
            if not p.closed.is_set():
                p.thaw()
                p.die()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------- event loop helper
@contextlib.contextmanager
def default_loop_thread(max_wait: float = 0.05) -> Iterator[Any]:
    """Register pyvirtrpc's default event loop and run it in a thread; undo both on exit.

    libvirt allows one registration per process and never forgets it; tests
    must not leave one behind (an open with a loop probes keepalive), so this
    unregisters with ``pyvirtrpc.event._reset_for_tests``.  Yields the loop.
    """
    from pyvirtrpc import event

    event._reset_for_tests()
    event.virEventRegisterDefaultImpl()
    loop = event.default_loop()
    assert loop is not None
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            loop.run_once(max_wait)

    t = threading.Thread(target=run, name="test-event-loop", daemon=True)
    t.start()
    try:
        yield loop
    finally:
        stop.set()
        t.join(10)
        event._reset_for_tests()
