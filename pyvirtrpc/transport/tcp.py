"""The tcp and tls transports: name resolution and the TCP connection.

Contract:

* :func:`connect` brings up the channel a tcp or tls :class:`~pyvirtrpc.uri.Plan`
  names, in the C client's order (``doRemoteOpen``): for tls first the TLS
  context (certificate files, sanity checks: :mod:`pyvirtrpc.transport.tls`),
  then the TCP connection, then the TLS session (handshake, certificate
  checks, the server's confirmation byte).  tcp gives a :class:`TcpChannel`
  (``is_secure`` false until SASL negotiates SSF >= 56, never encrypted by
  itself); tls gives a :class:`~pyvirtrpc.transport.tls.TlsChannel`.
* :func:`connect_tcp` is ``virNetSocketNewConnectTCP``: ``getaddrinfo``
  with ``AF_UNSPEC`` and ``AI_PASSIVE|AI_ADDRCONFIG|AI_V4MAPPED``, then every
  address in turn until one connects.  Failures are libvirt's:
  ``SYSTEM_ERROR``/RPC "Unable to resolve address '%s' service '%s': %s"
  (gai_strerror, int1 -1) and "unable to connect to server at '%s:%s'"
  with the errno of the last attempt.  ``timeout`` bounds the whole
  attempt (libvirt has none: a silent host blocks until the kernel gives
  up); running out is ETIMEDOUT.
* The ``ssl`` module is imported only for tls: a tcp (or unix) connection
  never loads it.

TCP_NODELAY is set (libvirt leaves Nagle on): pipelined calls from several
threads would otherwise wait for delayed ACKs; one call per write is
unaffected either way.
"""

from __future__ import annotations

import errno as _errno
import socket
from time import monotonic

from .._gen import constants as C
from ..errors import make_error, system_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from . import Channel

#: libvirt's getaddrinfo hints (virNetSocketNewConnectTCP)
AI_FLAGS = socket.AI_PASSIVE | socket.AI_ADDRCONFIG | socket.AI_V4MAPPED

#: name resolution, replaceable by tests that need a host with several addresses
getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo


class TcpChannel(socket.socket):
    """A connected TCP stream socket that knows it is a libvirt channel.

    ``is_secure`` is libvirt's ``priv->is_secure``: false on plain TCP (the
    SASL layer's channel says true once SSF >= 56 was negotiated).
    """

    is_secure = False
    is_encrypted = False
    transport = "tcp"


def connect_tcp(host: str, port: int | str, timeout: Optional[float] = None) -> TcpChannel:
    """virNetSocketNewConnectTCP (see the module docstring)."""
    service = str(port)
    deadline = None if timeout is None else monotonic() + timeout
    try:
        infos = getaddrinfo(host, service, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, AI_FLAGS)
    except socket.gaierror as exc:
        text = exc.strerror or str(exc)
        raise make_error(
            C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC, f"Unable to resolve address '{host}' service '{service}': {text}"
        ) from None
    saved = _errno.ENOENT
    for family, socktype, proto, _canon, addr in infos:
        try:
            sock = TcpChannel(family, socktype, proto)
        except OSError as exc:
            raise system_error(C.VIR_FROM_RPC, exc.errno or _errno.EIO, "Unable to create socket") from None
        try:
            if deadline is not None:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    sock.close()
                    saved = _errno.ETIMEDOUT
                    break
                sock.settimeout(remaining)
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            saved = exc.errno or (_errno.ETIMEDOUT if isinstance(exc, TimeoutError) else _errno.EIO)
            continue
        sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock
    raise system_error(C.VIR_FROM_RPC, saved, f"unable to connect to server at '{host}:{service}'") from None


def connect(plan: Any, timeout: Optional[float] = None) -> Channel:
    """The channel for a tcp or tls plan (see the module docstring)."""
    port = plan.port
    if plan.transport == "tls":
        from . import tls

        context = tls.client_context(plan)  # files and sanity checks come before the network
        deadline = None if timeout is None else monotonic() + timeout
        sock = connect_tcp(plan.host, port if port is not None else 16514, timeout)
        try:
            remaining = None if deadline is None else max(deadline - monotonic(), 0.0)
            return tls.start_session(context, sock, plan.host, remaining)
        except BaseException:
            sock.close()
            raise
    return connect_tcp(plan.host, port if port is not None else 16509, timeout)
