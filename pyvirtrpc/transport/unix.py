"""The unix-socket transport (and fd passing).

Contract: :func:`connect` returns a connected ``AF_UNIX`` stream socket
wrapped as a :class:`UnixChannel` (secure, not encrypted), or raises the
error libvirt's ``virNetSocketNewConnectUNIX`` reports: VIR_ERR_SYSTEM_ERROR
in VIR_FROM_RPC with errno, message ``Failed to connect socket to 'PATH':
<strerror>``.  No daemon is ever started (libvirt's session autostart is
out of scope; the URI layer reports that case).
"""

from __future__ import annotations

# _socket, not socket.py: the socket module imports enum and selectors, about
# 6 ms of start-up that a process opening a unix connection never needs.
import _socket

from .._gen import constants as C
from ..errors import make_error, system_error

#: sun_path is 108 bytes on Linux, NUL included.
UNIX_PATH_MAX = 108


class UnixChannel(_socket.socket):
    """A connected unix stream socket that knows it is a libvirt channel."""

    is_secure = True
    is_encrypted = False
    transport = "unix"
    #: the reader polls before recv() (faster on unix sockets: see client._read_until)
    poll_first = True

    def __repr__(self) -> str:
        return f"<UnixChannel fd={self.fileno()}>"

    def __del__(self) -> None:
        # A connection dropped without close() (or collected in a reference
        # cycle, where finalizers run in any order) closes its socket quietly,
        # as the C library does when the last reference goes.
        try:
            self.close()
        except OSError:
            pass


def connect(path: str, timeout: float | None = None) -> UnixChannel:
    if len(path.encode()) >= UNIX_PATH_MAX:
        raise make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, f"Path {path} too long for unix socket")
    sock = UnixChannel(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except OSError as exc:
        sock.close()
        errno = exc.errno or (110 if isinstance(exc, _socket.timeout) else 5)
        raise system_error(C.VIR_FROM_RPC, errno, f"Failed to connect socket to '{path}'") from None
    return sock
