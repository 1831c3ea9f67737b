"""A channel with a SASL security layer under the RPC framing (virNetSocket's SASL I/O).

Contract: :class:`SaslChannel` wraps a connected channel and a negotiated
:class:`~pyvirtrpc.sasl.SecurityLayer` (``encode(plaintext) -> bytes`` and
the incremental ``feed(raw) -> plaintext``):

* ``sendall(data)`` encodes ``data`` through the layer (one or more SASL
  packets, as ``virNetSocketWriteSASL`` does per RPC packet) and writes
  them on the inner channel.  Callers serialise their sends (the client's
  send lock), so the layer's sequence numbers follow the wire order.
* ``recv(n)`` reads raw bytes from the inner channel and returns the
  plaintext of the SASL packets they complete: at least one byte, or b""
  at EOF (a partial SASL packet at EOF is just EOF, as in libvirt).  It may
  return more than ``n`` bytes (a whole decoded packet); the RPC deframer
  takes any length.  A packet the layer rejects (bad MAC, sequence, size)
  raises the layer's libvirtError (``failed to decode SASL data``), and
  the channel stays failed.  Only one thread receives at a time (the
  client's reader role).
* ``is_secure`` is libvirt's ``priv->is_secure`` after SASL: the inner
  channel's, or true once the layer gives SSF >= 56 (remoteAuthSASL marks
  a plain TCP connection secure then); ``is_encrypted`` is true (libvirt
  counts any SASL session).  ``ssf`` is the layer's strength;
  ``tls_key_bits`` and the rest are the inner channel's.
* ``settimeout``, ``fileno`` and ``close`` go to the inner channel.

No extra copies on the hot path: encoded packets go to the socket as the
layer returns them, and decoded plaintext is returned as is.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from . import Channel

#: libvirt calls a SASL session strong enough for an insecure transport at this SSF
SECURE_SSF = 56
#: bytes asked from the inner channel per read (below glibc's 128 KiB mmap threshold: a larger
#: buffer costs an mmap/munmap pair per read, ~30 us on the 2-core test VM)
RECV_SIZE = 65536


class SaslChannel:
    """See the module docstring."""

    __slots__ = ("inner", "layer", "is_secure", "is_encrypted", "ssf", "pending", "_send", "_recv", "_encode", "_feed")

    def __init__(self, inner: Channel, layer: Any) -> None:
        self.inner = inner
        self.layer = layer
        self.ssf = int(getattr(layer, "ssf", 0))
        self.is_secure = bool(getattr(inner, "is_secure", False)) or self.ssf >= SECURE_SSF
        self.is_encrypted = True
        # bound methods, looked up once: this is the per-call path
        self._send = inner.sendall
        self._recv = inner.recv
        self._encode = layer.encode
        self._feed = layer.feed
        #: plaintext waiting without a socket read: only an inner TLS channel
        #: may hold records (decoded data never waits here: ``recv`` returns
        #: every complete SASL packet); None when the inner channel has no
        #: buffer, so that readers skip the check
        self.pending: Optional[Callable[[], Any]] = getattr(inner, "pending", None)

    def __repr__(self) -> str:
        return f"<SaslChannel ssf={self.ssf} over {self.inner!r}>"

    def __getattr__(self, name: str) -> Any:
        # transport facts of the inner channel (transport, tls_key_bits, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def sendall(self, data: bytes) -> None:
        self._send(self._encode(data))

    def recv(self, n: int) -> bytes:
        recv = self._recv
        feed = self._feed
        while True:
            raw = recv(RECV_SIZE)
            if not raw:
                return b""
            plain: bytes = feed(raw)
            if plain:
                return plain

    def settimeout(self, t: Optional[float]) -> None:
        self.inner.settimeout(t)

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()
