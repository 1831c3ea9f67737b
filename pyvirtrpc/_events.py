"""Event callbacks, close callbacks and keepalive for one connection.

Contract:

* :class:`Registry` is libvirt's client-side callback list
  (``conf/object_event.c`` as the remote driver uses it), without I/O:
  callback ids count from 0 per connection and are shared by every kind of
  event; the daemon is asked for an event (``*_EVENT_REGISTER_ANY``, with
  the per-object filter on the wire when the daemon supports feature 14)
  only by the first local callback of an (event id, object) pair and told
  to stop by the last one, exactly when the C client does; a second
  callback for the same pair fails with "event callback already tracked"
  as it does with libvirt-python (whose C callback is the same function
  for every Python callback of an event id); QEMU monitor callbacks are
  registered one to one.  Operations are generators that yield
  :class:`RPC` steps (the sync and asyncio drivers run them) and return
  the callback id.
* :func:`convert` turns every event message of the vendored protocol
  (domain events 0-27 in their legacy and callback forms, network,
  storage pool, node device, secret and QEMU monitor events) into the
  arguments libvirt-python passes to the callback (``libvirt-override.c``
  and ``libvirt-override-virConnect.py``), e.g. ``cb(conn, dom, event,
  detail, opaque)`` for a lifecycle event; typed parameters become dicts,
  graphics addresses dicts, absent strings None.
* :class:`SyncEvents` is the per-connection state of the sync API: when an
  event loop is registered (:mod:`pyvirtrpc.event`) it watches the socket
  (reading with :meth:`pyvirtrpc.client.Connection.pump` when no caller is
  reading, and pausing the watch while one is), runs the keepalive timer
  (:mod:`pyvirtrpc.core.keepalive`) and delivers events from the loop
  through a timer, as libvirt does: a reader thread only queues events, so
  a slow callback never holds up replies to other calls.  Without a loop,
  event registration fails as in libvirt ("could not initialize domain
  event timer") and ``setKeepAlive`` reports the missing loop.
* The close callback follows ``virConnectCloseCallbackData``: it fires
  once, with the reason (ERROR, EOF, KEEPALIVE, or the one relayed by the
  daemon in CONNECT_EVENT_CONNECTION_CLOSED), never for ``close()``; it
  stays "registered" after firing, so registering again needs an
  unregister first, as in libvirt.
* As in libvirt, every event callback, and the close callback until it
  fires, holds a reference on the connection: ``close()`` with callbacks
  still registered drops only the application's reference (the C
  binding's close() then returns 1) and the connection stays open.
* :class:`AsyncEvents` is the same for :mod:`pyvirtrpc.aio`: callbacks run
  on the asyncio loop (scheduled with ``call_soon``, never inside the
  protocol's ``data_received``); a callback that returns an awaitable has
  it scheduled as a task; keepalive runs on ``loop.call_later``.
* Objects handed to callbacks come from the API layer when it has the
  class (``virDomain``; ``virNetwork``, ``virStoragePool``,
  ``virNodeDevice``, ``virSecret`` once :mod:`pyvirtrpc._api` defines them,
  built as ``cls(conn, remote_nonnull_*)``) and otherwise from the small
  read-only stand-ins below (name/UUID/usage accessors, ``connect()``).
"""

from __future__ import annotations

import threading
from collections import deque
from time import monotonic

from . import _ops
from . import event as _event
from ._gen import constants as C
from ._gen import qemu as Q
from ._gen import remote as R
from .core import keepalive as _ka
from .errors import from_fields, libvirtError, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Generator, Iterable, Optional

    from ._xdr import Procedure
    from .core.handshake import OpenResult

    Steps = Generator["RPC", Any, Any]

P = R.PROCEDURES

#: event ids newer than the C headers the constants were generated from
VIR_DOMAIN_EVENT_ID_NIC_MAC_CHANGE = 27
VIR_NETWORK_EVENT_ID_METADATA_CHANGE = 1
REMOTE_PROC_CONNECT_EVENT_CONNECTION_CLOSED = "REMOTE_PROC_CONNECT_EVENT_CONNECTION_CLOSED"


class RPC:
    """A step of a registration: make this call and send back its reply (or throw its error)."""

    __slots__ = ("program", "proc", "args")

    def __init__(self, program: int, proc: Procedure, args: Any) -> None:
        self.program = program
        self.proc = proc
        self.args = args

    def __repr__(self) -> str:
        return f"<RPC {self.proc.name}>"


# ----------------------------------------------------------------------------
# kinds of events
class Kind:
    """One family of events: its register/deregister procedures and API names."""

    __slots__ = ("name", "last", "program", "register", "deregister", "api", "domain", "argname", "what")

    def __init__(
        self,
        name: str,
        last: int,
        program: int,
        register: int,
        deregister: int,
        api: str,
        domain: int,
        argname: str,
        what: str,
    ) -> None:
        self.name = name
        #: event ids 0 .. last-1 are valid
        self.last = last
        self.program = program
        self.register = register
        self.deregister = deregister
        #: the C API name without its verb, e.g. "virConnectNetworkEvent"
        self.api = api
        #: VIR_FROM_* of the public API's argument checks
        self.domain = domain
        #: name of the object argument in the C API ("dom", "net", ...)
        self.argname = argname
        #: how the C API names the object in "... must match connection"
        self.what = what

    def __repr__(self) -> str:
        return f"<Kind {self.name}>"


DOMAIN = Kind(
    "domain", 28, R.PROGRAM,
    R.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
    R.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
    "virConnectDomainEvent", C.VIR_FROM_DOMAIN, "dom", "domain",
)  # fmt: skip
NETWORK = Kind(
    "network", 2, R.PROGRAM,
    R.REMOTE_PROC_CONNECT_NETWORK_EVENT_REGISTER_ANY, R.REMOTE_PROC_CONNECT_NETWORK_EVENT_DEREGISTER_ANY,
    "virConnectNetworkEvent", C.VIR_FROM_NETWORK, "net", "network",
)  # fmt: skip
STORAGE_POOL = Kind(
    "storage pool", 2, R.PROGRAM,
    R.REMOTE_PROC_CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, R.REMOTE_PROC_CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY,
    "virConnectStoragePoolEvent", C.VIR_FROM_STORAGE, "pool", "storage pool",
)  # fmt: skip
NODE_DEVICE = Kind(
    "node device", 2, R.PROGRAM,
    R.REMOTE_PROC_CONNECT_NODE_DEVICE_EVENT_REGISTER_ANY, R.REMOTE_PROC_CONNECT_NODE_DEVICE_EVENT_DEREGISTER_ANY,
    "virConnectNodeDeviceEvent", C.VIR_FROM_NODEDEV, "dev", "node device",
)  # fmt: skip
SECRET = Kind(
    "secret", 2, R.PROGRAM,
    R.REMOTE_PROC_CONNECT_SECRET_EVENT_REGISTER_ANY, R.REMOTE_PROC_CONNECT_SECRET_EVENT_DEREGISTER_ANY,
    "virConnectSecretEvent", C.VIR_FROM_SECRET, "secret", "secret",
)  # fmt: skip
QEMU_MONITOR = Kind(
    "qemu monitor", 1, Q.PROGRAM,
    Q.QEMU_PROC_CONNECT_DOMAIN_MONITOR_EVENT_REGISTER, Q.QEMU_PROC_CONNECT_DOMAIN_MONITOR_EVENT_DEREGISTER,
    "virConnectDomainQemuMonitorEvent", C.VIR_FROM_NONE, "dom", "domain",
)  # fmt: skip

KINDS = (DOMAIN, NETWORK, STORAGE_POOL, NODE_DEVICE, SECRET, QEMU_MONITOR)


def _procedure(kind: Kind, number: int) -> Procedure:
    return (Q.PROCEDURES if kind.program == Q.PROGRAM else P)[number]


# ----------------------------------------------------------------------------
# errors shaped as the C API reports them
def invalid_arg(domain: int, func: str, argname: str, message: str) -> libvirtError:
    """virReportInvalidArg: the message as is, str1 the function, str2 the argument."""
    return from_fields((C.VIR_ERR_INVALID_ARG, domain, message, C.VIR_ERR_ERROR, func, argname, None, 0, 0))


def not_negative(domain: int, func: str, argname: str) -> libvirtError:
    return invalid_arg(domain, func, argname, f"{argname} in {func} must be zero or greater")


def no_event_timer() -> libvirtError:
    return make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_NONE, "could not initialize domain event timer")


def no_loop_keepalive() -> libvirtError:
    return make_error(
        C.VIR_ERR_INTERNAL_ERROR,
        C.VIR_FROM_REMOTE,
        "the caller doesn't support keepalive protocol; perhaps it's missing event loop implementation",
    )


# ----------------------------------------------------------------------------
# object structs and keys
def domain_struct(dom: Any) -> Any:
    """The ``remote_nonnull_domain`` of a domain object (ours, or anything with name/UUID/ID)."""
    raw = getattr(dom, "_dom", None)
    if isinstance(raw, R.remote_nonnull_domain):
        return raw
    return R.remote_nonnull_domain(dom.name(), bytes(dom.UUID()), int(dom.ID()))


def network_struct(net: Any) -> Any:
    raw = getattr(net, "_net", None)
    if isinstance(raw, R.remote_nonnull_network):
        return raw
    return R.remote_nonnull_network(net.name(), bytes(net.UUID()))


def pool_struct(pool: Any) -> Any:
    raw = getattr(pool, "_pool", None)
    if isinstance(raw, R.remote_nonnull_storage_pool):
        return raw
    return R.remote_nonnull_storage_pool(pool.name(), bytes(pool.UUID()))


def node_device_struct(dev: Any) -> Any:
    raw = getattr(dev, "_dev", None)
    if isinstance(raw, R.remote_nonnull_node_device):
        return raw
    return R.remote_nonnull_node_device(dev.name())


def secret_struct(secret: Any) -> Any:
    raw = getattr(secret, "_secret", None)
    if isinstance(raw, R.remote_nonnull_secret):
        return raw
    return R.remote_nonnull_secret(bytes(secret.UUID()), int(secret.usageType()), secret.usageID())


STRUCT_OF: dict[Kind, Callable[[Any], Any]] = {
    DOMAIN: domain_struct,
    NETWORK: network_struct,
    STORAGE_POOL: pool_struct,
    NODE_DEVICE: node_device_struct,
    SECRET: secret_struct,
    QEMU_MONITOR: domain_struct,
}


def key_of(kind: Kind, struct: Any) -> str:
    """The filter key libvirt uses: the UUID string, or a node device's name."""
    if kind is NODE_DEVICE:
        return str(struct.name)
    return _ops.format_uuid(struct.uuid)


def object_name(kind: Kind, obj: Any) -> str:
    try:
        return str(obj.UUIDString() if kind is SECRET else obj.name())
    except Exception:  # noqa: BLE001 - only for an error message
        return "?"


# ----------------------------------------------------------------------------
# stand-in objects for the kinds the API layer does not have yet
class _EventObject:
    __slots__ = ("_conn", "_raw")

    def __init__(self, conn: Any, raw: Any) -> None:
        self._conn = conn
        self._raw = raw

    def connect(self) -> Any:
        return self._conn

    def UUID(self) -> bytes:
        return bytes(self._raw.uuid)

    def UUIDString(self) -> str:
        return _ops.format_uuid(self._raw.uuid)

    def name(self) -> str:
        return str(self._raw.name)

    def _ident(self) -> str:
        return _ops.format_uuid(self._raw.uuid)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._ident() == other._ident()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._ident()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ident()!r}>"


class EventNetwork(_EventObject):
    """A network as an event callback gets it (until the API layer has virNetwork)."""

    __slots__ = ()

    @property
    def _net(self) -> Any:
        return self._raw


class EventStoragePool(_EventObject):
    """A storage pool as an event callback gets it."""

    __slots__ = ()

    @property
    def _pool(self) -> Any:
        return self._raw


class EventNodeDevice(_EventObject):
    """A node device as an event callback gets it (it has a name only)."""

    __slots__ = ()

    @property
    def _dev(self) -> Any:
        return self._raw

    def _ident(self) -> str:
        return str(self._raw.name)

    def UUID(self) -> bytes:
        raise AttributeError("a node device has no UUID")

    def UUIDString(self) -> str:
        raise AttributeError("a node device has no UUID")


class EventSecret(_EventObject):
    """A secret as an event callback gets it (UUID, usage type and id)."""

    __slots__ = ()

    @property
    def _secret(self) -> Any:
        return self._raw

    def name(self) -> str:
        raise AttributeError("a secret has no name; use UUIDString() or usageID()")

    def usageType(self) -> int:
        return int(self._raw.usageType)

    def usageID(self) -> str:
        return str(self._raw.usageID)


_STANDINS: dict[Kind, type[_EventObject]] = {
    NETWORK: EventNetwork,
    STORAGE_POOL: EventStoragePool,
    NODE_DEVICE: EventNodeDevice,
    SECRET: EventSecret,
}
_API_CLASSES = {
    NETWORK: "virNetwork",
    STORAGE_POOL: "virStoragePool",
    NODE_DEVICE: "virNodeDevice",
    SECRET: "virSecret",
}


def sync_object(kind: Kind, conn: Any, raw: Any) -> Any:
    """The object a sync callback gets: the API layer's class when there is one."""
    from . import _api

    if kind is DOMAIN or kind is QEMU_MONITOR:
        return _api.virDomain(conn, raw)
    cls = getattr(_api, _API_CLASSES[kind], None)
    if cls is not None:
        try:
            return cls(conn, raw)
        except TypeError:  # a different constructor than (conn, remote_nonnull_*)
            pass
    return _STANDINS[kind](conn, raw)


def async_object(kind: Kind, conn: Any, raw: Any) -> Any:
    """The object an asyncio callback gets."""
    if kind is DOMAIN or kind is QEMU_MONITOR:
        from .aio import AsyncDomain

        return AsyncDomain(conn, raw)
    return _STANDINS[kind](conn, raw)


# ----------------------------------------------------------------------------
# event messages -> callback arguments
def typed_params(params: Iterable[Any]) -> dict[str, Any]:
    """libvirt-python's getPyVirTypedParameter: name -> int/float/bool/str."""
    out: dict[str, Any] = {}
    for p in params:
        v = p.value
        t = v.type
        if t == C.VIR_TYPED_PARAM_BOOLEAN:
            out[p.field] = bool(v.value)
        elif t == C.VIR_TYPED_PARAM_DOUBLE:
            out[p.field] = float(v.value)
        else:
            out[p.field] = v.value
    return out


def _address(a: Any) -> dict[str, Any]:
    return {"family": a.family, "node": a.node, "service": a.service}


class EventSpec:
    """How one event message maps to callbacks: kind, event id, and an argument extractor."""

    __slots__ = ("kind", "event_id", "extract", "with_id")

    def __init__(
        self, kind: Kind, event_id: int, extract: Callable[[Any], tuple[Any, tuple[Any, ...]]], with_id: bool
    ) -> None:
        self.kind = kind
        self.event_id = event_id
        #: body -> (object struct, callback arguments between the object and opaque)
        self.extract = extract
        #: the message carries the server-side callbackID
        self.with_id = with_id


SPECS: dict[str, EventSpec] = {}


def _domain_event(
    event_id: int, legacy: Optional[int], callback: Optional[int], args: Callable[[Any], tuple[Any, ...]]
) -> None:
    """Register a domain event: ``legacy`` carries no callbackID, ``callback`` wraps it as ``.msg``."""
    if legacy is not None:
        SPECS[P[legacy].name] = EventSpec(DOMAIN, event_id, lambda b: (b.dom, args(b)), False)
    if callback is not None:
        SPECS[P[callback].name] = EventSpec(DOMAIN, event_id, lambda b: (b.msg.dom, args(b.msg)), True)


def _flat_event(kind: Kind, event_id: int, number: int, obj: str, args: Callable[[Any], tuple[Any, ...]]) -> None:
    """An event whose message has callbackID and the object at the top level."""
    SPECS[_procedure(kind, number).name] = EventSpec(kind, event_id, lambda b: (getattr(b, obj), args(b)), True)


def _none(b: Any) -> tuple[Any, ...]:
    return ()


# fmt: off
_domain_event(0, R.REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE,
              lambda m: (m.event, m.detail))
_domain_event(1, R.REMOTE_PROC_DOMAIN_EVENT_REBOOT, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_REBOOT, _none)
_domain_event(2, R.REMOTE_PROC_DOMAIN_EVENT_RTC_CHANGE, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_RTC_CHANGE,
              lambda m: (m.offset,))
_domain_event(3, R.REMOTE_PROC_DOMAIN_EVENT_WATCHDOG, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_WATCHDOG,
              lambda m: (m.action,))
_domain_event(4, R.REMOTE_PROC_DOMAIN_EVENT_IO_ERROR, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_IO_ERROR,
              lambda m: (m.srcPath, m.devAlias, m.action))
_domain_event(5, R.REMOTE_PROC_DOMAIN_EVENT_GRAPHICS, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_GRAPHICS,
              lambda m: (m.phase, _address(m.local), _address(m.remote), m.authScheme,
                         [(i.type, i.name) for i in m.subject]))
_domain_event(6, R.REMOTE_PROC_DOMAIN_EVENT_IO_ERROR_REASON, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_IO_ERROR_REASON,
              lambda m: (m.srcPath, m.devAlias, m.action, m.reason))
_domain_event(7, R.REMOTE_PROC_DOMAIN_EVENT_CONTROL_ERROR, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_CONTROL_ERROR, _none)
_domain_event(8, R.REMOTE_PROC_DOMAIN_EVENT_BLOCK_JOB, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_BLOCK_JOB,
              lambda m: (m.path, m.type, m.status))
_domain_event(9, R.REMOTE_PROC_DOMAIN_EVENT_DISK_CHANGE, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_DISK_CHANGE,
              lambda m: (m.oldSrcPath, m.newSrcPath, m.devAlias, m.reason))
_domain_event(10, R.REMOTE_PROC_DOMAIN_EVENT_TRAY_CHANGE, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_TRAY_CHANGE,
              lambda m: (m.devAlias, m.reason))
_domain_event(13, R.REMOTE_PROC_DOMAIN_EVENT_BALLOON_CHANGE, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_BALLOON_CHANGE,
              lambda m: (m.actual,))
_domain_event(15, R.REMOTE_PROC_DOMAIN_EVENT_DEVICE_REMOVED, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED,
              lambda m: (m.devAlias,))
# PM events: the reason is in the callback wrapper only (legacy messages give 0)
for _eid, _legacy, _cb in (
    (11, R.REMOTE_PROC_DOMAIN_EVENT_PMWAKEUP, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_PMWAKEUP),
    (12, R.REMOTE_PROC_DOMAIN_EVENT_PMSUSPEND, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_PMSUSPEND),
    (14, R.REMOTE_PROC_DOMAIN_EVENT_PMSUSPEND_DISK, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_PMSUSPEND_DISK),
):
    SPECS[P[_legacy].name] = EventSpec(DOMAIN, _eid, lambda b: (b.dom, (0,)), False)
    SPECS[P[_cb].name] = EventSpec(DOMAIN, _eid, lambda b: (b.msg.dom, (b.reason,)), True)
_flat_event(DOMAIN, 16, R.REMOTE_PROC_DOMAIN_EVENT_BLOCK_JOB_2, "dom", lambda b: (b.dst, b.type, b.status))
_flat_event(DOMAIN, 17, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_TUNABLE, "dom", lambda b: (typed_params(b.params),))
_flat_event(DOMAIN, 18, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_AGENT_LIFECYCLE, "dom", lambda b: (b.state, b.reason))
_flat_event(DOMAIN, 19, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_DEVICE_ADDED, "dom", lambda b: (b.devAlias,))
_flat_event(DOMAIN, 20, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION, "dom", lambda b: (b.iteration,))
_flat_event(DOMAIN, 21, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_JOB_COMPLETED, "dom", lambda b: (typed_params(b.params),))
_flat_event(DOMAIN, 22, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_DEVICE_REMOVAL_FAILED, "dom", lambda b: (b.devAlias,))
_flat_event(DOMAIN, 23, R.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_METADATA_CHANGE, "dom", lambda b: (b.type, b.nsuri))
_flat_event(DOMAIN, 24, R.REMOTE_PROC_DOMAIN_EVENT_BLOCK_THRESHOLD, "dom",
            lambda b: (b.dev, b.path, b.threshold, b.excess))
_flat_event(DOMAIN, 25, R.REMOTE_PROC_DOMAIN_EVENT_MEMORY_FAILURE, "dom", lambda b: (b.recipient, b.action, b.flags))
_flat_event(DOMAIN, 26, R.REMOTE_PROC_DOMAIN_EVENT_MEMORY_DEVICE_SIZE_CHANGE, "dom", lambda b: (b.alias, b.size))
_flat_event(DOMAIN, 27, R.REMOTE_PROC_DOMAIN_EVENT_NIC_MAC_CHANGE, "dom", lambda b: (b.alias, b.oldMAC, b.newMAC))
_flat_event(NETWORK, 0, R.REMOTE_PROC_NETWORK_EVENT_LIFECYCLE, "net", lambda b: (b.event, b.detail))
_flat_event(NETWORK, 1, R.REMOTE_PROC_NETWORK_EVENT_CALLBACK_METADATA_CHANGE, "net", lambda b: (b.type, b.nsuri))
_flat_event(STORAGE_POOL, 0, R.REMOTE_PROC_STORAGE_POOL_EVENT_LIFECYCLE, "pool", lambda b: (b.event, b.detail))
_flat_event(STORAGE_POOL, 1, R.REMOTE_PROC_STORAGE_POOL_EVENT_REFRESH, "pool", _none)
_flat_event(NODE_DEVICE, 0, R.REMOTE_PROC_NODE_DEVICE_EVENT_LIFECYCLE, "dev", lambda b: (b.event, b.detail))
_flat_event(NODE_DEVICE, 1, R.REMOTE_PROC_NODE_DEVICE_EVENT_UPDATE, "dev", _none)
_flat_event(SECRET, 0, R.REMOTE_PROC_SECRET_EVENT_LIFECYCLE, "secret", lambda b: (b.event, b.detail))
_flat_event(SECRET, 1, R.REMOTE_PROC_SECRET_EVENT_VALUE_CHANGED, "secret", _none)
_flat_event(QEMU_MONITOR, 0, Q.QEMU_PROC_DOMAIN_MONITOR_EVENT, "dom",
            lambda b: (b.event, b.seconds, b.micros, b.details))
# fmt: on


def convert(proc: Procedure, body: Any) -> Optional[tuple[EventSpec, int, Any, str, tuple[Any, ...]]]:
    """``(spec, server callback id or -1, object struct, filter key, arguments)`` of an event message.

    None for a message that is not a callback event (the connection-closed
    message is handled apart; unknown ones are dropped, as the C client does).
    """
    spec = SPECS.get(proc.name)
    if spec is None:
        return None
    raw, args = spec.extract(body)
    remote_id = body.callbackID if spec.with_id else -1
    return spec, remote_id, raw, key_of(spec.kind, raw), args


# ----------------------------------------------------------------------------
# the callback list
class Entry:
    """One local callback (libvirt's virObjectEventCallback)."""

    __slots__ = (
        "id", "kind", "event_id", "key", "legacy", "remote_id", "cb", "opaque", "conn", "filtered", "deleted", "holder",
    )  # fmt: skip

    def __init__(
        self, id: int, kind: Kind, event_id: int, key: Optional[str], legacy: bool, cb: Any, opaque: Any, conn: Any
    ) -> None:
        self.id = id
        self.kind = kind
        self.event_id = event_id
        self.key = key
        self.legacy = legacy
        self.remote_id = -1
        self.cb = cb
        self.opaque = opaque
        self.conn = conn
        #: registered one to one with the daemon (QEMU monitor events)
        self.filtered = False
        self.deleted = False
        #: what holds a reference on the connection for this callback (libvirt: cb->conn), or None
        self.holder: Any = None

    def __repr__(self) -> str:
        return f"<Entry {self.id} {self.kind.name}:{self.event_id} key={self.key} remote={self.remote_id}>"


class Registry:
    """libvirt's client-side event callback list (see the module docstring).

    ``activate`` runs before the first callback is added (libvirt adds its
    dispatch timer there; it may raise), ``deactivate`` after the last one
    is gone.  Thread-safe for state; the drivers serialise whole
    register/deregister operations (the C driver lock does the same).
    """

    def __init__(
        self,
        server_filter: bool,
        activate: Optional[Callable[[], None]] = None,
        deactivate: Optional[Callable[[], None]] = None,
    ) -> None:
        #: the daemon filters per object and tags events with callback ids (feature 14)
        self.server_filter = server_filter
        self.entries: dict[int, Entry] = {}
        self.next_id = 0
        self.lock = threading.Lock()
        self.activate = activate
        self.deactivate = deactivate
        #: entries removed since the driver last looked (it drops their connection references
        #: outside every lock: dropping the last one closes the connection)
        self.released: list[Entry] = []

    # ----------------------------------------------------------- counting
    def _count(self, kind: Kind, event_id: int, key: Optional[str], sf: bool) -> int:
        """virObjectEventCallbackListCount (lock held).

        With ``sf`` (server-side filtering) only the callbacks already tied to
        a server callback for the same object count; without, every callback
        of the event id (one global server registration feeds them all).
        """
        n = 0
        for e in self.entries.values():
            if e.filtered or e.deleted or e.kind is not kind or e.event_id != event_id:
                continue
            if not sf or (e.remote_id >= 0 and e.key == key):
                n += 1
        return n

    def _lookup(self, kind: Kind, event_id: int, key: Optional[str], legacy: bool) -> tuple[Optional[Entry], int]:
        """virObjectEventCallbackLookup: (the same callback, remote id of a matching one)."""
        remote_id = -1
        for e in self.entries.values():
            if e.deleted or e.kind is not kind or e.event_id != event_id or e.key != key:
                continue
            remote_id = e.remote_id
            if e.legacy == legacy:
                return e, remote_id
        return None, remote_id

    # ---------------------------------------------------------- register
    def register(
        self,
        kind: Kind,
        conn: Any,
        raw: Any,
        event_id: int,
        cb: Any,
        opaque: Any,
        *,
        legacy: bool = False,
        qemu_event: Optional[str] = None,
        qemu_flags: int = 0,
        holder: Any = None,
    ) -> Steps:
        """Add a callback; yields the register RPC when the daemon must be told. Returns the id.

        ``holder`` (with ``ref()``/``unref()``) is referenced while the callback
        exists, as libvirt's callback references its connection.
        """
        key = None if raw is None else key_of(kind, raw)
        filtered = kind is QEMU_MONITOR
        sf = self.server_filter or kind is not DOMAIN
        with self.lock:
            if not self.entries and self.activate is not None:
                self.activate()
            if not filtered:
                same, remote_id = self._lookup(kind, event_id, key, legacy)
                if same is not None:
                    if not self.entries and self.deactivate is not None:
                        self.deactivate()
                    raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_NONE, "event callback already tracked")
            else:
                remote_id = -1
            entry = Entry(self.next_id, kind, event_id, key, legacy, cb, opaque, conn)
            self.next_id += 1
            if holder is not None:
                holder.ref()
                entry.holder = holder
            entry.remote_id = remote_id
            entry.filtered = filtered
            self.entries[entry.id] = entry
            if filtered:
                count = 1
            else:
                count = self._count(kind, event_id, key, sf)
                if sf and remote_id < 0:
                    count += 1
        if count != 1:
            return entry.id
        step = self._register_rpc(kind, raw, event_id, legacy, qemu_event, qemu_flags)
        try:
            ret = yield step
        except BaseException:
            with self.lock:
                self._remove(entry)
            raise
        if sf:
            with self.lock:
                if not entry.deleted:
                    entry.remote_id = int(ret.callbackID)
        return entry.id

    def _register_rpc(
        self, kind: Kind, raw: Any, event_id: int, legacy: bool, qemu_event: Optional[str], qemu_flags: int
    ) -> RPC:
        if kind is QEMU_MONITOR:
            args: Any = Q.qemu_connect_domain_monitor_event_register_args(raw, qemu_event, qemu_flags)
            return RPC(Q.PROGRAM, Q.PROCEDURES[kind.register], args)
        if kind is DOMAIN:
            if self.server_filter:
                args = R.remote_connect_domain_event_callback_register_any_args(event_id, raw)
                return RPC(R.PROGRAM, P[kind.register], args)
            if legacy:
                return RPC(R.PROGRAM, P[R.REMOTE_PROC_CONNECT_DOMAIN_EVENT_REGISTER], None)
            args = R.remote_connect_domain_event_register_any_args(event_id)
            return RPC(R.PROGRAM, P[R.REMOTE_PROC_CONNECT_DOMAIN_EVENT_REGISTER_ANY], args)
        proc = P[kind.register]
        assert proc.args is not None
        return RPC(R.PROGRAM, proc, _args_of(proc.name)(event_id, raw))

    # -------------------------------------------------------- deregister
    def _remove(self, entry: Entry) -> None:
        # lock held
        entry.deleted = True
        self.entries.pop(entry.id, None)
        if entry.holder is not None:
            self.released.append(entry)
        if not self.entries and self.deactivate is not None:
            self.deactivate()

    def deregister(self, kind: Kind, callback_id: int) -> Steps:
        """Remove callback ``callback_id``; yields the deregister RPC when it was the last of its kind."""
        with self.lock:
            entry = self.entries.get(callback_id)
            if entry is None or entry.deleted:
                raise make_error(
                    C.VIR_ERR_INVALID_ARG, C.VIR_FROM_NONE, f"event callback id {callback_id} not registered"
                )
            event_id, remote_id = entry.event_id, entry.remote_id
            if entry.filtered:
                count = 0
            else:
                # the callback itself is still in the list: it counts itself once
                count = self._count(entry.kind, entry.event_id, entry.key, entry.remote_id >= 0) - 1
            legacy = entry.legacy
            self._remove(entry)
        if count != 0:
            return None
        # as in the C driver, the procedure follows the API used, not the callback's kind
        yield self._deregister_rpc(kind, event_id, remote_id, legacy)
        return None

    def _deregister_rpc(self, kind: Kind, event_id: int, remote_id: int, legacy: bool) -> RPC:
        if kind is QEMU_MONITOR:
            args: Any = Q.qemu_connect_domain_monitor_event_deregister_args(remote_id)
            return RPC(Q.PROGRAM, Q.PROCEDURES[kind.deregister], args)
        if kind is DOMAIN and not self.server_filter:
            if legacy:
                return RPC(R.PROGRAM, P[R.REMOTE_PROC_CONNECT_DOMAIN_EVENT_DEREGISTER], None)
            args = R.remote_connect_domain_event_deregister_any_args(event_id)
            return RPC(R.PROGRAM, P[R.REMOTE_PROC_CONNECT_DOMAIN_EVENT_DEREGISTER_ANY], args)
        proc = P[kind.deregister]
        return RPC(R.PROGRAM, proc, _args_of(proc.name)(remote_id))

    def legacy_id(self) -> Optional[int]:
        """The id of the legacy lifecycle callback (domainEventRegister), if any."""
        with self.lock:
            for e in self.entries.values():
                if e.legacy and not e.deleted:
                    return e.id
        return None

    # ---------------------------------------------------------- dispatch
    def matches(self, spec: EventSpec, remote_id: int, key: str) -> list[Entry]:
        """The callbacks an event goes to (virObjectEventDispatchMatchCallback)."""
        with self.lock:
            return [
                e
                for e in self.entries.values()
                if e.kind is spec.kind
                and e.event_id == spec.event_id
                and e.remote_id == remote_id
                and (e.key is None or e.key == key)
                and not e.deleted
            ]

    def clear(self) -> None:
        """Forget every callback (the connection is gone; its references with it)."""
        with self.lock:
            for e in self.entries.values():
                e.deleted = True
            self.entries.clear()
            self.released.clear()

    def take_released(self) -> list[Entry]:
        with self.lock:
            out, self.released = self.released, []
        return out


def _args_of(proc_name: str) -> Callable[..., Any]:
    """The generated args class of a REMOTE procedure (``REMOTE_PROC_X`` -> ``remote_x_args``)."""
    return getattr(R, "remote_" + proc_name[len("REMOTE_PROC_") :].lower() + "_args")  # type: ignore[no-any-return]


def run_steps(client: Any, gen: Steps) -> Any:
    """Run a registry generator on the sync client (``client.call``)."""
    try:
        step = next(gen)
        while True:
            try:
                result = client.call(step.proc, step.args, program=step.program)
            except libvirtError as exc:
                step = gen.throw(exc)
                continue
            except BaseException:
                gen.close()  # interrupted (KeyboardInterrupt...): let the registry undo its step
                raise
            step = gen.send(result)
    except StopIteration as stop:
        return stop.value


async def run_steps_async(aconn: Any, gen: Steps) -> Any:
    """Run a registry generator on the asyncio client."""
    try:
        step = next(gen)
        while True:
            try:
                result = await aconn.call(step.proc, step.args, program=step.program)
            except libvirtError as exc:
                step = gen.throw(exc)
                continue
            except BaseException:
                gen.close()  # cancelled: let the registry undo its step
                raise
            step = gen.send(result)
    except StopIteration as stop:
        return stop.value


def invoke(entry: Entry, obj: Any, args: tuple[Any, ...]) -> Any:
    """Call one callback as libvirt-python does; its exception is printed, not raised."""
    try:
        if entry.legacy:
            # the legacy callback is the connection's own dispatcher of domainEventCallbacks
            return entry.cb(obj, *args)
        return entry.cb(entry.conn, obj, *args, entry.opaque)
    except Exception:  # noqa: BLE001 - the C binding prints and goes on (PyErr_Print)
        _event._report_exception()
        return None


# ----------------------------------------------------------------------------
# close callback
class CloseCallback:
    """virConnectCloseCallbackData: at most one callback; fires once; stays registered after."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: libvirt's ``callback`` pointer: set by register, cleared only by unregister
        self.armed = False
        self.conn: Any = None
        self.cb: Any = None
        self.opaque: Any = None
        #: a reference on the connection while armed and not fired (libvirt: closeData->conn)
        self.holder: Any = None

    def check_register(self) -> None:
        if self.armed:
            raise make_error(C.VIR_ERR_OPERATION_INVALID, C.VIR_FROM_REMOTE, "A close callback is already registered")

    def check_unregister(self) -> None:
        if not self.armed:
            raise make_error(C.VIR_ERR_OPERATION_INVALID, C.VIR_FROM_REMOTE, "A different callback was requested")

    def register(self, conn: Any, cb: Any, opaque: Any, holder: Any = None) -> None:
        with self.lock:
            if self.armed:
                return
            self.armed = True
            self.conn, self.cb, self.opaque = conn, cb, opaque
            if holder is not None:
                holder.ref()
                self.holder = holder

    def unregister(self) -> None:
        with self.lock:
            self.armed = False
            self.conn = self.cb = self.opaque = None
            holder, self.holder = self.holder, None
        if holder is not None:
            holder.unref()

    def fire(self, reason: int) -> None:
        """virConnectCloseCallbackDataCall: call it (once) with ``reason``."""
        with self.lock:
            conn, cb, opaque = self.conn, self.cb, self.opaque
            if conn is None:
                return
            self.conn = self.cb = self.opaque = None
            holder, self.holder = self.holder, None
        try:
            res = cb(conn, reason, opaque)
        except Exception:  # noqa: BLE001
            _event._report_exception()
            res = None
        finally:
            if holder is not None:
                holder.unref()
        _maybe_schedule(res)

    def drop(self) -> None:
        """The connection was closed by the application: never fire."""
        with self.lock:
            self.conn = self.cb = self.opaque = self.holder = None


def _maybe_schedule(res: Any) -> None:
    """An asyncio callback may be a coroutine function: run what it returned as a task."""
    if res is not None and hasattr(res, "__await__"):
        import asyncio

        task = asyncio.ensure_future(res)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)


_TASKS: set[Any] = set()


# ----------------------------------------------------------------------------
# the sync connection's state
class SyncEvents:
    """Events, close callback and keepalive of one sync connection (see the module docstring)."""

    def __init__(self, client: Any, result: OpenResult) -> None:
        self.client = client
        self.server_keepalive = bool(result.keepalive)
        self.server_close = bool(result.close_callback)
        self.registry = Registry(bool(result.event_callback), self._activate, self._deactivate)
        #: serialises register/deregister operations (libvirt's driver lock)
        self.op_lock = threading.Lock()
        self.close = CloseCallback()
        self._close_listening = False
        self._qlock = threading.Lock()
        self._queue: deque[tuple[Procedure, Any]] = deque()
        self._dispatch_timer = -1
        self.watch = -1
        #: the socket is watched by an event loop (libvirt's asyncIO)
        self.async_io = False
        self.keepalive = _ka.KeepAlive(monotonic())
        self._ka_timer = -1
        self._dead = False
        #: the event loop implementation this connection uses (libvirt has one per process)
        self.impl = _event.current_impl()
        client.event_sink = self.sink
        client.death_hooks.append(self._on_death)

    # -------------------------------------------------------- event loop
    def start_async_io(self) -> bool:
        """Watch the socket on the registered loop (virNetClientRegisterAsyncIO)."""
        client = self.client
        try:
            fd = client.channel.fileno()
        except (OSError, ValueError, AttributeError):
            return False
        impl = self.impl = self.impl or _event.current_impl()
        if impl is None:
            return False
        watch = impl.add_handle(fd, _event.READABLE, self._on_io, None, None)
        if watch < 0:
            return False  # "Failed to add event watch, disabling events and support for keepalive messages"
        self.watch = watch
        self.async_io = True
        ka = self.keepalive

        def on_packet() -> None:
            ka.received(monotonic())

        client.rpc.on_packet = on_packet
        client.park = self._park
        return True

    def _on_io(self, watch: int, fd: int, events: int, opaque: Any) -> None:
        if not self.client.pump(0.0):
            self._stop_io()

    def _park(self, parked: bool) -> None:
        # connection lock held: a caller is (no longer) reading, the loop must (again) watch
        if self.watch >= 0 and self.impl is not None:
            self.impl.update_handle(self.watch, 0 if parked else _event.READABLE)

    def _stop_io(self) -> None:
        impl = self.impl
        watch, self.watch = self.watch, -1
        timer, self._ka_timer = self._ka_timer, -1
        self.keepalive.stop()
        if impl is not None:
            if watch >= 0:
                impl.remove_handle(watch)
            if timer >= 0:
                impl.remove_timeout(timer)

    def _on_death(self, reason: int, error: Optional[libvirtError]) -> None:
        self._dead = True
        self._stop_io()
        if reason == C.VIR_CONNECT_CLOSE_REASON_CLIENT:
            # closed by the application: nothing will be delivered any more
            self.close.drop()
            self.registry.clear()
            self._deactivate()

    # ---------------------------------------------------------- keepalive
    def set_keepalive(self, interval: int, count: int) -> int:
        """remoteConnectSetKeepAlive: 0, or 1 when the server cannot do keepalive."""
        if not self.async_io or self._dead:
            # libvirt drops the keepalive object when the connection closes
            raise no_loop_keepalive()
        if not self.server_keepalive:
            return 1
        ka = self.keepalive
        if interval > 0:
            ms = ka.start(interval, count, monotonic())
            if ms is not None:
                assert self.impl is not None  # async_io
                timer = self.impl.add_timeout(ms, self._on_keepalive_timer, None, None)
                if timer < 0:
                    ka.stop()
                    raise make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, "Unable to add keepalive timer")
                self._ka_timer = timer
            return 0
        ka.stop()
        timer, self._ka_timer = self._ka_timer, -1
        if timer >= 0 and self.impl is not None:
            self.impl.remove_timeout(timer)
        return 0

    def _on_keepalive_timer(self, timer: int, opaque: Any) -> None:
        if timer != self._ka_timer:
            return
        action, next_ms = self.keepalive.trigger(monotonic())
        if action == _ka.DEAD:
            self.client.abort(C.VIR_CONNECT_CLOSE_REASON_KEEPALIVE, _ka.dead_error())
            return
        if action == _ka.PING:
            # never block the loop behind a caller stuck writing to a frozen peer
            self.client.try_send(_ka.PING_PACKET)
        if next_ms >= 0 and self._ka_timer == timer and self.impl is not None:
            self.impl.update_timeout(timer, next_ms)

    # ------------------------------------------------------------ events
    def _activate(self) -> None:
        # registry lock held: libvirt's virObjectEventStateRegisterID adds the dispatch timer
        if self._dispatch_timer < 0:
            impl = self.impl = self.impl or _event.current_impl()
            timer = -1 if impl is None else impl.add_timeout(-1, self._flush, None, None)
            if timer < 0:
                raise no_event_timer()
            self._dispatch_timer = timer

    def _deactivate(self) -> None:
        timer, self._dispatch_timer = self._dispatch_timer, -1
        with self._qlock:
            self._queue.clear()
        if timer >= 0 and self.impl is not None:
            self.impl.remove_timeout(timer)

    def sink(self, events: list[tuple[Procedure, Any]]) -> None:
        """Connection.event_sink: queue events for the loop (the connection-closed relay acts at once)."""
        wake = False
        closed: list[int] = []
        with self._qlock:
            for item in events:
                if item[0].name == REMOTE_PROC_CONNECT_EVENT_CONNECTION_CLOSED:
                    closed.append(int(item[1].reason))
                    continue
                if self._dispatch_timer < 0:
                    continue  # nobody registered: libvirt drops it too
                if not self._queue:
                    wake = True
                self._queue.append(item)
            timer = self._dispatch_timer
        if wake and timer >= 0 and self.impl is not None:
            self.impl.update_timeout(timer, 0)
        for reason in closed:
            self.close.fire(reason)

    def _flush(self, timer: int, opaque: Any) -> None:
        with self._qlock:
            items = list(self._queue)
            self._queue.clear()
            if self._dispatch_timer >= 0 and self.impl is not None:
                self.impl.update_timeout(self._dispatch_timer, -1)
        for proc, body in items:
            self.dispatch(proc, body)

    def dispatch(self, proc: Procedure, body: Any) -> None:
        """Deliver one event message to its callbacks (on the loop thread)."""
        try:
            converted = convert(proc, body)
        except Exception:  # noqa: BLE001 - a malformed message must not kill the loop
            _event._report_exception()
            return
        if converted is None:
            return
        spec, remote_id, raw, key, args = converted
        for entry in self.registry.matches(spec, remote_id, key):
            if entry.deleted:
                continue  # deregistered by an earlier callback of this batch
            invoke(entry, raw if entry.legacy else sync_object(spec.kind, entry.conn, raw), args)

    # ------------------------------------------------------ registration
    def register(self, kind: Kind, conn: Any, raw: Any, event_id: int, cb: Any, opaque: Any, **kw: Any) -> int:
        try:
            with self.op_lock:
                gen = self.registry.register(kind, conn, raw, event_id, cb, opaque, **kw)
                return int(run_steps(self.client, gen))
        finally:
            self._release()

    def deregister(self, kind: Kind, callback_id: int) -> None:
        try:
            with self.op_lock:
                run_steps(self.client, self.registry.deregister(kind, callback_id))
        finally:
            self._release()

    def _release(self) -> None:
        """Drop the connection references of removed callbacks (no lock held: the last one closes)."""
        for entry in self.registry.take_released():
            holder, entry.holder = entry.holder, None
            if holder is not None:
                holder.unref()

    # ---------------------------------------------------- close callback
    def register_close(self, conn: Any, cb: Any, opaque: Any, holder: Any = None) -> None:
        with self.op_lock:
            self.close.check_register()
            if self.server_close:
                self.client.call(P[R.REMOTE_PROC_CONNECT_REGISTER_CLOSE_CALLBACK])
            self.close.register(conn, cb, opaque, holder)
            if not self._close_listening:
                self._close_listening = True
                self.client.close_listeners.append(self._on_close)

    def unregister_close(self) -> None:
        with self.op_lock:
            self.close.check_unregister()
            if self.server_close:
                self.client.call(P[R.REMOTE_PROC_CONNECT_UNREGISTER_CLOSE_CALLBACK])
            self.close.unregister()

    def _on_close(self, reason: int, error: Optional[libvirtError]) -> None:
        self.close.fire(reason)


def sync_state(client: Any, result: OpenResult) -> SyncEvents:
    """The connection's :class:`SyncEvents` (created on first use)."""
    st = client.event_state
    if st is None:
        with _STATE_LOCK:
            st = client.event_state
            if st is None:
                st = client.event_state = SyncEvents(client, result)
    return st  # type: ignore[no-any-return]


_STATE_LOCK = threading.Lock()


def attach(client: Any, result: OpenResult) -> SyncEvents:
    """After open, with an event loop registered: watch the socket and prepare keepalive."""
    st = sync_state(client, result)
    st.start_async_io()
    return st


# ----------------------------------------------------------------------------
# the asyncio connection's state
class AsyncEvents:
    """Events, close callback and keepalive of one :class:`pyvirtrpc.aio.AsyncConnection`."""

    def __init__(self, aconn: Any, result: OpenResult) -> None:
        import asyncio

        self.aconn = aconn
        self.loop = aconn.loop
        self.server_keepalive = bool(result.keepalive)
        self.server_close = bool(result.close_callback)
        self.registry = Registry(bool(result.event_callback))
        self.op_lock = asyncio.Lock()
        self.close = CloseCallback()
        self._close_listening = False
        self.keepalive = _ka.KeepAlive(self.loop.time())
        self._ka_handle: Any = None
        ka = self.keepalive
        loop = self.loop

        def on_packet() -> None:
            ka.received(loop.time())

        aconn.rpc.on_packet = on_packet
        aconn.event_sink = self.sink
        aconn.close_listeners.append(self._on_close)

    def sink(self, events: list[tuple[Procedure, Any]]) -> None:
        for proc, body in events:
            if proc.name == REMOTE_PROC_CONNECT_EVENT_CONNECTION_CLOSED:
                self.close.fire(int(body.reason))
            elif self.registry.entries:
                self.loop.call_soon(self.dispatch, proc, body)

    def dispatch(self, proc: Procedure, body: Any) -> None:
        try:
            converted = convert(proc, body)
        except Exception:  # noqa: BLE001
            _event._report_exception()
            return
        if converted is None:
            return
        spec, remote_id, raw, key, args = converted
        for entry in self.registry.matches(spec, remote_id, key):
            if entry.deleted:
                continue
            _maybe_schedule(invoke(entry, raw if entry.legacy else async_object(spec.kind, entry.conn, raw), args))

    async def register(self, kind: Kind, conn: Any, raw: Any, event_id: int, cb: Any, opaque: Any, **kw: Any) -> int:
        async with self.op_lock:
            gen = self.registry.register(kind, conn, raw, event_id, cb, opaque, **kw)
            return int(await run_steps_async(self.aconn, gen))

    async def deregister(self, kind: Kind, callback_id: int) -> None:
        async with self.op_lock:
            await run_steps_async(self.aconn, self.registry.deregister(kind, callback_id))

    async def register_close(self, conn: Any, cb: Any, opaque: Any) -> None:
        async with self.op_lock:
            self.close.check_register()
            if self.server_close:
                await self.aconn.call(P[R.REMOTE_PROC_CONNECT_REGISTER_CLOSE_CALLBACK])
            self.close.register(conn, cb, opaque)

    async def unregister_close(self) -> None:
        async with self.op_lock:
            self.close.check_unregister()
            if self.server_close:
                await self.aconn.call(P[R.REMOTE_PROC_CONNECT_UNREGISTER_CLOSE_CALLBACK])
            self.close.unregister()

    def _on_close(self, reason: int, error: Optional[libvirtError]) -> None:
        self._stop_keepalive()
        self.close.fire(reason)

    # ---------------------------------------------------------- keepalive
    def set_keepalive(self, interval: int, count: int) -> int:
        if not self.server_keepalive:
            return 1
        ka = self.keepalive
        if interval > 0:
            if not self.aconn.alive:
                return 0
            ms = ka.start(interval, count, self.loop.time())
            if ms is not None:
                self._ka_handle = self.loop.call_later(ms / 1000.0, self._on_keepalive_timer)
            return 0
        self._stop_keepalive()
        return 0

    def _stop_keepalive(self) -> None:
        self.keepalive.stop()
        handle, self._ka_handle = self._ka_handle, None
        if handle is not None:
            handle.cancel()

    def _on_keepalive_timer(self) -> None:
        self._ka_handle = None
        if not self.aconn.alive or not self.keepalive.armed:
            return
        action, next_ms = self.keepalive.trigger(self.loop.time())
        if action == _ka.DEAD:
            self.aconn.abort(C.VIR_CONNECT_CLOSE_REASON_KEEPALIVE, _ka.dead_error())
            return
        if action == _ka.PING:
            self.aconn.send_packet(_ka.PING_PACKET)
        if next_ms >= 0:
            self._ka_handle = self.loop.call_later(next_ms / 1000.0, self._on_keepalive_timer)
