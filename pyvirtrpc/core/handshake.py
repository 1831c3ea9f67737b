"""The open and close sequences, written once as generators (psycopg style).

Contract: :func:`open_connection` is a generator that yields the steps a
driver must perform and receives their results:

* ``Call(procedure, args)``: send the call, ``send()`` back the decoded
  return value, or ``throw()`` the libvirtError the call failed with;
* ``Batch(call, ...)``: send several independent calls at once and
  ``send()`` back the list of their results (a libvirtError in place of a
  failed call's value);
* ``InstallLayer(layer)``: put a negotiated SASL security layer under the
  framing before the next packet (nothing is sent back);
* ``Log(level, category, message, *args)``: log through the driver.

It follows the C client's ``doRemoteOpen``/``remoteAuthenticate`` step for
step: AUTH_LIST (an old daemon's NO_SUPPORT means no auth), the forced or
first-listed auth type (SASL, POLKIT or NONE), the keepalive probe
(``CONNECT_SUPPORTS_FEATURE(PROGRAM_KEEPALIVE)``) only when the driver can
run keepalive, CONNECT_OPEN with the name and flags libvirt sends,
CONNECT_GET_URI when the application gave no URI, then the probes for
features 14 (REMOTE_EVENT_CALLBACK) and 15 (REMOTE_CLOSE_CALLBACK).  Its
return value is an :class:`OpenResult`.

The calls and their order on the wire are the C client's; only the waiting
differs.  Calls that do not depend on each other's answers are pipelined
(GET_URI and the two probes), and with ``OpenParams.speculate`` (the driver
saw this daemon ask for no authentication before) AUTH_LIST, the keepalive
probe and CONNECT_OPEN go out together: if the daemon now wants
authentication, the early calls fail harmlessly and are made again after it.

SASL negotiation is delegated to ``auth.sasl_steps`` (a sub-generator) so
that this module stays the readable outline of the open.
"""

from __future__ import annotations

from .._gen import constants as C
from .._gen import remote as R
from ..errors import libvirtError, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Generator, Optional

    from .._xdr import Procedure

    Steps = Generator["Step", Any, "OpenResult"]

#: Remote driver feature numbers (libvirt_internal.h VIR_DRV_FEATURE_*).
FEATURE_PROGRAM_KEEPALIVE = 10
FEATURE_REMOTE_EVENT_CALLBACK = 14
FEATURE_REMOTE_CLOSE_CALLBACK = 15

#: Flags of CONNECT_OPEN: the remote driver's own bits (remote_driver.h).
OPEN_RO = 1
OPEN_USER = 2
OPEN_AUTOSTART = 4


class Step:
    __slots__ = ()


class Call(Step):
    """Make one RPC call in the REMOTE program."""

    __slots__ = ("procedure", "args")

    def __init__(self, procedure: int, args: Any = None) -> None:
        self.procedure: Procedure = R.PROCEDURES[procedure]
        self.args = args

    def __repr__(self) -> str:
        return f"<Call {self.procedure.name}>"


class Batch(Step):
    """Make several independent calls at once (pipelined: one round trip).

    The driver sends every call, then waits for all, and sends back a list
    with each call's return value, or the libvirtError it failed with.
    """

    __slots__ = ("calls",)

    def __init__(self, *calls: Call) -> None:
        self.calls = calls

    def __repr__(self) -> str:
        return f"<Batch {self.calls!r}>"


class Log(Step):
    """Have the driver log a message (the core itself never imports logging).

    ``level`` is a :mod:`logging` level number (10 debug, 30 warning); the
    driver sends nothing back.  Messages never contain secrets.
    """

    __slots__ = ("level", "category", "message", "args")

    def __init__(self, level: int, category: str, message: str, *args: Any) -> None:
        self.level = level
        self.category = category
        self.message = message
        self.args = args


class InstallLayer(Step):
    """Install a SASL security layer under the framing."""

    __slots__ = ("layer",)

    def __init__(self, layer: Any) -> None:
        self.layer = layer


class OpenResult:
    __slots__ = (
        "auth_type", "keepalive", "uri", "event_callback", "close_callback", "sasl_ssf", "sasl_mech",
        "speculation_failed",
    )

    def __init__(self) -> None:
        self.auth_type: int = int(R.REMOTE_AUTH_NONE)
        #: the server runs keepalive for us (we probed it and it said yes)
        self.keepalive = False
        #: the URI the daemon chose, when the application gave none
        self.uri: Optional[str] = None
        #: server-side event filtering (feature 14) and close callbacks (15)
        self.event_callback = False
        self.close_callback = False
        #: SASL: negotiated security strength factor (0: no layer) and mechanism
        self.sasl_ssf = 0
        self.sasl_mech: Optional[str] = None
        #: CONNECT_OPEN was sent early but the daemon wanted authentication
        self.speculation_failed = False


class OpenParams:
    """What the driver knows about this open (from the URI plan and the caller)."""

    __slots__ = ("name", "flags", "auth", "want_keepalive", "need_uri", "sasl", "speculate")

    def __init__(
        self,
        name: str,
        flags: int = 0,
        auth: Optional[str] = None,
        want_keepalive: bool = False,
        need_uri: bool = False,
        sasl: Optional[Callable[[Optional[str]], Steps]] = None,
    ) -> None:
        #: the name sent in CONNECT_OPEN ("" lets the daemon probe)
        self.name = name
        #: OPEN_RO / OPEN_USER / OPEN_AUTOSTART
        self.flags = flags
        #: the URI's auth= value: "sasl", "sasl.MECH", "polkit" or None
        self.auth = auth
        self.want_keepalive = want_keepalive
        self.need_uri = need_uri
        #: runs the SASL exchange; given the forced mechanism (or None)
        self.sasl = sasl
        #: the daemon asked for no authentication last time: send CONNECT_OPEN
        #: right behind AUTH_LIST instead of waiting for its answer
        self.speculate = False


def _remote_error(code: int, detail: str) -> libvirtError:
    return make_error(code, C.VIR_FROM_REMOTE, detail)


_UNSET: Any = object()


def authenticate(params: OpenParams, result: OpenResult, listed: Any = _UNSET) -> Generator[Step, Any, None]:
    """remoteAuthenticate: pick the auth type and run it.

    ``listed`` is AUTH_LIST's answer (a value or the libvirtError) when the
    caller already has it.
    """
    if listed is _UNSET:
        try:
            listed = yield Call(R.REMOTE_PROC_AUTH_LIST)
        except libvirtError as exc:
            listed = exc
    if isinstance(listed, libvirtError):
        if listed.get_error_code() == C.VIR_ERR_NO_SUPPORT:
            return  # a daemon older than AUTH_LIST: no authentication
        raise listed
    types = [int(t) for t in listed.types]
    if not types:
        return
    if params.auth is not None:
        authtype = params.auth
        lowered = authtype.lower()
        if lowered == "sasl" or lowered.startswith("sasl."):
            want = int(R.REMOTE_AUTH_SASL)
        elif lowered == "polkit":
            want = int(R.REMOTE_AUTH_POLKIT)
        else:
            raise _remote_error(C.VIR_ERR_AUTH_FAILED, f"unknown authentication type {authtype}")
        if want not in types:
            raise _remote_error(C.VIR_ERR_AUTH_FAILED, f"requested authentication type {authtype} rejected")
        chosen = want
    else:
        chosen = types[0]
    result.auth_type = chosen
    if chosen == R.REMOTE_AUTH_NONE:
        return
    if chosen == R.REMOTE_AUTH_POLKIT:
        yield Call(R.REMOTE_PROC_AUTH_POLKIT)
        return
    if chosen == R.REMOTE_AUTH_SASL:
        if params.sasl is None:
            raise _remote_error(C.VIR_ERR_AUTH_FAILED, "SASL authentication is not available in this client")
        mech = None
        if params.auth is not None and params.auth.lower().startswith("sasl."):
            mech = params.auth[5:]
        sasl_result = yield from params.sasl(mech)
        result.sasl_ssf = sasl_result.sasl_ssf
        result.sasl_mech = sasl_result.sasl_mech
        return
    raise _remote_error(C.VIR_ERR_AUTH_FAILED, f"unsupported authentication type {chosen}")


def _supported(answer: Any) -> bool:
    """A SUPPORTS_FEATURE answer from a Batch: a failed probe means "not
    supported", as in remoteConnectSupportsFeatureUnlocked."""
    return not isinstance(answer, libvirtError) and bool(answer.supported)


def _needs_no_auth(listed: Any) -> bool:
    if isinstance(listed, libvirtError):
        return listed.get_error_code() == C.VIR_ERR_NO_SUPPORT
    return not listed.types or int(listed.types[0]) == R.REMOTE_AUTH_NONE


def open_connection(params: OpenParams) -> Steps:
    """doRemoteOpen after the transport is up (see the module docstring)."""
    result = OpenResult()
    open_call = Call(R.REMOTE_PROC_CONNECT_OPEN, R.remote_connect_open_args(params.name, params.flags))
    keepalive_call = Call(
        R.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE, R.remote_connect_supports_feature_args(FEATURE_PROGRAM_KEEPALIVE)
    )
    opened = False
    if params.speculate and params.auth is None:
        # Same calls in the same order as the C client, without waiting for
        # each answer.  If the daemon wants authentication after all, the
        # early calls fail ("authentication required") and are made again
        # after authenticating.
        calls = [Call(R.REMOTE_PROC_AUTH_LIST)] + ([keepalive_call] if params.want_keepalive else []) + [open_call]
        answers = yield Batch(*calls)
        listed = answers[0]
        if _needs_no_auth(listed):
            yield from authenticate(params, result, listed)
            if params.want_keepalive:
                result.keepalive = _supported(answers[1])
            if isinstance(answers[-1], libvirtError):
                raise answers[-1]
            opened = True
        else:
            result.speculation_failed = True
            yield from authenticate(params, result, listed)
    else:
        yield from authenticate(params, result)
    if not opened:
        if params.want_keepalive:
            try:
                ret = yield keepalive_call
                result.keepalive = bool(ret.supported)
            except libvirtError:
                # remoteConnectSupportsFeatureUnlocked treats a failure as "no"
                result.keepalive = False
        yield open_call
    # GET_URI and the two feature probes need the open connection but not
    # each other: they travel together (the C client sends them one after
    # the other; the daemon answers the same).
    after = [
        Call(R.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE, R.remote_connect_supports_feature_args(feature))
        for feature in (FEATURE_REMOTE_EVENT_CALLBACK, FEATURE_REMOTE_CLOSE_CALLBACK)
    ]
    if params.need_uri:
        after.insert(0, Call(R.REMOTE_PROC_CONNECT_GET_URI))
    answers = yield Batch(*after)
    if params.need_uri:
        got = answers.pop(0)
        if isinstance(got, libvirtError):
            raise got
        result.uri = got.uri
    result.event_callback, result.close_callback = (_supported(ret) for ret in answers)
    return result
