"""Transports: turn a URI plan into a connected, blocking byte channel.

Contract: each transport module exposes ``connect(...) -> Channel`` where a
:class:`Channel` is a blocking byte stream with ``sendall``, ``recv``,
``settimeout``, ``fileno`` and ``close`` (a plain ``socket.socket`` is one)
plus what the client needs to know about it: ``is_secure`` (libvirt's
``priv->is_secure``: true for unix, tls and the ssh family, false for tcp
and ext) and ``is_encrypted`` (TLS or a SASL layer with SSF > 0).
Connection failures raise :class:`~pyvirtrpc.errors.TransportError` shaped
as libvirt reports them (VIR_ERR_SYSTEM_ERROR, VIR_FROM_RPC, errno in int1).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Protocol

    class Channel(Protocol):
        is_secure: bool
        is_encrypted: bool

        def sendall(self, data: bytes, /) -> None: ...

        def recv(self, n: int, /) -> bytes: ...

        def settimeout(self, t: Optional[float], /) -> None: ...

        def fileno(self) -> int: ...

        def close(self) -> None: ...
