"""The client side of libvirt's keepalive protocol, as a state machine without I/O.

Contract (libvirt's ``virkeepalive.c``, with time as an argument):

* :class:`KeepAlive` starts disabled.  Every packet received from the peer
  (of any kind) is reported with :meth:`KeepAlive.received`; it resets the
  dead-peer counter and restarts the silence interval.
* :meth:`KeepAlive.start` (``virConnectSetKeepAlive(interval > 0, count)``)
  arms it and returns when the driver's timer must first fire, in
  milliseconds; a second start while armed is a no-op (``None``); a start
  with a new interval after :meth:`KeepAlive.stop` fails as libvirt's does
  ("keepalive interval already set"), and so does an interval that
  overflows libvirt's millisecond timer.
* The driver runs one timer and calls :meth:`KeepAlive.trigger` when it
  fires.  The result says what to do (:data:`NOTHING`, :data:`PING`: send
  :data:`PING_PACKET`, :data:`DEAD`: close the connection with reason
  KEEPALIVE and :func:`dead_error`) and when the timer must fire next
  (milliseconds, -1 for never).  A PING goes out after ``interval`` seconds
  without a packet from the peer; after ``count`` PINGs without an answer
  the peer is dead, ``interval * (count + 1)`` seconds after the last
  packet (``count == 0``: dead after one silent interval, no PING).
* Unlike libvirt, which uses whole seconds (``time(NULL)``), ``now`` is any
  monotonic clock in float seconds: the driver passes ``time.monotonic()``.
  The driver need not move its timer on every received packet: a timer
  that fires early is simply re-armed for the rest of the interval.

Answering the peer's PINGs is not this module's job: the protocol core
(:mod:`pyvirtrpc.core.rpc`) answers every PING with a PONG, keepalive
armed or not.
"""

from __future__ import annotations

from .._gen import constants as C
from ..errors import libvirtError, make_error
from .rpc import PING_PACKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

#: what :meth:`KeepAlive.trigger` asks the driver to do
NOTHING = 0
PING = 1
DEAD = 2

#: libvirt guards the timer's millisecond value against int overflow
INTERVAL_MAX = 2147483647 // 1000

__all__ = ["KeepAlive", "NOTHING", "PING", "DEAD", "PING_PACKET", "dead_error", "INTERVAL_MAX"]


def dead_error() -> libvirtError:
    """The error libvirt reports (to the close callback's connection and every call in flight)."""
    return make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, "connection closed due to keepalive timeout")


class KeepAlive:
    """See the module docstring."""

    __slots__ = ("interval", "count", "count_to_death", "last_packet", "interval_start", "armed")

    def __init__(self, now: float = 0.0) -> None:
        #: seconds of silence before a PING (<= 0: disabled)
        self.interval = -1
        #: PINGs without an answer before the peer is declared dead
        self.count = 0
        self.count_to_death = 0
        #: when the last packet came from the peer
        self.last_packet = now
        #: start of the current silence interval (None: none yet)
        self.interval_start: Optional[float] = None
        #: the driver's timer exists (libvirt's ``ka->timer >= 0``)
        self.armed = False

    def received(self, now: float) -> None:
        """A packet came from the peer (virKeepAliveCheckMessage)."""
        self.count_to_death = self.count
        self.last_packet = self.interval_start = now

    def start(self, interval: int, count: int, now: float) -> Optional[int]:
        """Arm keepalive (virKeepAliveStart); return the first timer delay in ms, or None.

        None means there is nothing to arm: keepalive is already running, or
        disabled (``interval <= 0`` and none set before).  Raises the
        libvirtError libvirt reports for an interval set twice or too large.
        """
        if self.armed:
            return None  # "Keepalive messages already enabled"
        if interval > 0:
            if self.interval > 0:
                raise make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, "keepalive interval already set")
            if interval > INTERVAL_MAX:
                raise make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, f"keepalive interval {interval} too large")
            self.interval = interval
            self.count = count
            self.count_to_death = count
        if self.interval <= 0:
            return None
        delay = now - self.last_packet
        timeout = 0.0 if delay > self.interval else self.interval - delay
        self.interval_start = now - (self.interval - timeout)
        self.armed = True
        return int(timeout * 1000)

    def stop(self) -> None:
        """Disarm (virKeepAliveStop); the interval stays set, as in libvirt."""
        self.armed = False

    def timeout(self, now: float) -> int:
        """Milliseconds until :meth:`trigger` has something to do, -1 if never (virKeepAliveTimeout)."""
        if self.interval <= 0 or self.interval_start is None:
            return -1
        left = self.interval - (now - self.interval_start)
        if left < 0:
            left = 0.0
        return int(min(left, INTERVAL_MAX) * 1000)

    def trigger(self, now: float) -> tuple[int, int]:
        """The timer fired (virKeepAliveTimerInternal): ``(action, next timer delay in ms)``."""
        if self.interval <= 0 or self.interval_start is None:
            return NOTHING, -1
        elapsed = now - self.interval_start
        if elapsed < self.interval:
            # a packet arrived since the timer was set: wait for the rest
            return NOTHING, max(int((self.interval - elapsed) * 1000), 1)
        if self.count_to_death == 0:
            return DEAD, -1
        self.count_to_death -= 1
        self.interval_start = now
        return PING, self.interval * 1000
