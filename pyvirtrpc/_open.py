"""Opening a connection: URI plan -> transport -> handshake -> virConnect.

Contract: :func:`open_uri` does what ``virConnectOpenAuth`` does for the
remote driver: resolve the URI (default URI, aliases, socket selection:
:func:`pyvirtrpc.uri.plan`), bring up the transport the plan names, run
the open handshake (:mod:`pyvirtrpc.core.handshake`), and wrap the result
in a :class:`~pyvirtrpc._api.virConnect`.  On failure the channel is
closed and the libvirtError the C client would report is raised (the
caller reports it to the last-error machinery).  Transports other than
unix are imported only when a URI needs them, so the unix path never
imports ``ssl`` or ``subprocess``.
"""

from __future__ import annotations

from . import uri as _uri
from ._api import _Shared, virConnect
from ._cache import remember
from ._gen import constants as C
from .client import Connection
from .core import handshake as hs
from .errors import closed_error, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from .transport import Channel

#: set by the event-loop module when an event loop implementation is registered
#: (libvirt probes keepalive only when it can run keepalive timers)
keepalive_possible = False


def connect_channel(plan: Any, auth: Any, timeout: Optional[float]) -> Channel:
    transport = plan.transport
    if transport == "unix":
        from .transport import unix

        _uri.check_autostart(plan)
        return unix.connect(plan.socket_path, timeout)
    if transport in ("tcp", "tls"):
        from .transport import tcp

        return tcp.connect(plan, timeout)
    if transport in ("ssh", "libssh", "libssh2", "ext"):
        from .transport import command

        return command.connect(plan, timeout)
    raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_REMOTE, f"transport {transport!r} is not supported")


def sasl_steps_factory(plan: Any, auth: Any, channel: Any) -> Callable[[Optional[str]], Any]:
    """The SASL sub-handshake for this open, imported only if the server asks for SASL."""

    def steps(mech: Optional[str]) -> Any:
        from .core import auth as _auth

        return _auth.sasl_steps(plan, auth, channel, mech)

    return steps


def canonical_uri(plan: Any, result: hs.OpenResult) -> Optional[str]:
    """virConnectGetURI: the URI as libvirt formats it (virURIFormat of the opened
    URI after aliases, or of the one the daemon reported for a probed open)."""
    if not plan.get_uri and plan.parsed is not None:
        return str(plan.parsed.format())
    if result.uri is None:
        return None
    return str(_uri.parse(result.uri, validate=False).format())


#: endpoints whose daemon asked for no authentication on the last open (a
#: later open pipelines CONNECT_OPEN behind AUTH_LIST: one round trip less)
_no_auth: dict[tuple[Any, ...], None] = {}


def _endpoint(plan: Any) -> tuple[Any, ...]:
    return (plan.transport, plan.socket_path, plan.host, plan.port, plan.open_flags, tuple(plan.argv or ()))


def speculate(plan: Any) -> bool:
    """Did this endpoint's daemon ask for no authentication on the last open?
    (``OpenParams.speculate``; both drivers.)"""
    return _endpoint(plan) in _no_auth


def remember_auth(plan: Any, result: hs.OpenResult) -> None:
    key = _endpoint(plan)
    if result.auth_type == 0 and not result.speculation_failed:  # REMOTE_AUTH_NONE
        remember(_no_auth, key, None, 257)
    else:
        _no_auth.pop(key, None)


def open_uri(name: Optional[str], flags: int, auth: Any, *, timeout: Optional[float] = None) -> virConnect:
    plan = _uri.plan(name, flags)
    channel = connect_channel(plan, auth, timeout)
    client = Connection(channel, timeout=timeout)
    try:
        params = hs.OpenParams(
            plan.open_name,
            plan.open_flags,
            plan.auth,
            want_keepalive=keepalive_possible,
            need_uri=plan.get_uri,
            sasl=sasl_steps_factory(plan, auth, channel),
        )
        params.speculate = speculate(plan)
        result = client.run_steps(hs.open_connection(params))
        remember_auth(plan, result)
    except BaseException:  # a failed open (libvirtError), or KeyboardInterrupt in the handshake
        client.abort(
            C.VIR_CONNECT_CLOSE_REASON_CLIENT,
            closed_error(),
        )
        raise
    conn = virConnect(_Shared(client, canonical_uri(plan, result), result, plan))
    if keepalive_possible:
        # an event loop is registered: it watches the socket and runs keepalive/event timers
        from ._events import attach

        attach(client, result)
    return conn
