"""Raw libvirt RPC for tests: hand-built packets over any byte stream, no client library.

Contract: :class:`RawRPC` wraps a ``send(bytes)`` / ``recv(n) -> bytes``
pair (a socket, an ``ssl`` socket, or the pipes of an ``ssh`` process), sends
CALL packets built with :func:`pyvirtrpc.packet.encode_packet` and the
generated codecs, and returns the matching REPLY (other messages, e.g.
keepalive PINGs or events, are kept in :attr:`RawRPC.messages`).  An ERROR
reply raises :class:`RawError` carrying the decoded ``virNetMessageError``.
Every read has a deadline, so a silent peer gives :class:`TimeoutError`,
never a hang.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from typing import Any, Callable, Optional

from pyvirtrpc import _xdr, packet
from pyvirtrpc._gen import remote as R
from pyvirtrpc._gen import virnet as V

#: VIR_DRV_FEATURE_PROGRAM_KEEPALIVE (libvirt-internal, not a public constant)
FEATURE_PROGRAM_KEEPALIVE = 10


class RawError(Exception):
    """The daemon answered with status ERROR; ``.error`` is the virNetMessageError."""

    def __init__(self, error: Any) -> None:
        super().__init__(f"code={error.code} domain={error.domain}: {error.message}")
        self.error = error
        self.code: int = error.code
        self.domain: int = error.domain


class RawRPC:
    def __init__(
        self,
        send: Callable[[bytes], Any],
        recv: Callable[[int], bytes],
        wait_readable: Optional[Callable[[float], bool]] = None,
    ) -> None:
        self._send = send
        self._recv = recv
        self._wait = wait_readable
        self.deframer = packet.Deframer()
        self.serial = 0
        self.messages: list[packet.Message] = []

    # ------------------------------------------------------------ factories
    @classmethod
    def over_socket(cls, sock: socket.socket) -> RawRPC:
        def wait(timeout: float) -> bool:
            # ssl sockets may hold decrypted bytes that select() cannot see
            pending = getattr(sock, "pending", None)
            if pending is not None and pending() > 0:
                return True
            return bool(select.select([sock], [], [], timeout)[0])

        return cls(sock.sendall, sock.recv, wait)

    @classmethod
    def over_process(cls, proc: subprocess.Popen[bytes]) -> RawRPC:
        """Over the stdin/stdout pipes of e.g. ``ssh ... nc -U SOCKET``."""
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def send(data: bytes) -> None:
            stdin.write(data)
            stdin.flush()

        def recv(n: int) -> bytes:
            return os.read(stdout.fileno(), n)

        def wait(timeout: float) -> bool:
            return bool(select.select([stdout], [], [], timeout)[0])

        return cls(send, recv, wait)

    @classmethod
    def unix(cls, path: str, timeout: float = 10.0) -> tuple[RawRPC, socket.socket]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
        except BaseException:
            s.close()
            raise
        return cls.over_socket(s), s

    # ------------------------------------------------------------- messages
    def send_call(self, proc: int, args: Any = None, *, program: int = R.REMOTE_PROGRAM, version: int = 1,
                  module: Any = R) -> int:
        p = module.PROCEDURES[proc]
        payload = b"" if p.args is None else _xdr.encode(p.args, args)
        serial = self.serial
        self.serial += 1
        self._send(packet.encode_packet(program, version, proc, packet.CALL, serial, packet.OK, payload))
        return serial

    def read_message(self, timeout: float = 10.0) -> packet.Message:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.deframer.next()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0 or (self._wait is not None and not self._wait(left)):
                raise TimeoutError(f"no complete message from the daemon within {timeout} s")
            data = self._recv(65536)
            if not data:
                raise EOFError("the daemon closed the connection")
            self.deframer.feed(data)

    def call(self, proc: int, args: Any = None, *, timeout: float = 10.0, program: int = R.REMOTE_PROGRAM,
             version: int = 1, module: Any = R) -> Any:
        """Send one CALL and return the decoded reply value (None for void)."""
        serial = self.send_call(proc, args, program=program, version=version, module=module)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read_message(max(deadline - time.monotonic(), 0.0))
            if msg.type == packet.REPLY and msg.serial == serial and msg.procedure == proc:
                break
            self.messages.append(msg)
        if msg.status == packet.ERROR:
            raise RawError(_xdr.decode(V._c_virNetMessageError, msg.data, msg.offset))
        ret = module.PROCEDURES[proc].ret
        return None if ret is None else _xdr.decode(ret, msg.data, msg.offset)

    # -------------------------------------------------------------- shortcuts
    def auth_list(self, timeout: float = 10.0) -> list[int]:
        return [int(t) for t in self.call(R.REMOTE_PROC_AUTH_LIST, timeout=timeout).types]

    def open(self, name: Optional[str] = "test:///default", flags: int = 0) -> None:
        self.call(R.REMOTE_PROC_CONNECT_OPEN, R.remote_connect_open_args(name, flags))
