"""libvirt-python's API (open, virConnect, virDomain, errors) on the sync client.

Contract:

* Names, signatures, return shapes and errors are libvirt-python's, so that
  ``import pyvirtrpc as libvirt`` runs existing code.  Where libvirt-python
  is odd it is copied: ``getInfo()`` reports memory in MiB, ``close()``
  returns the remaining reference count and invalidates the Python object
  even when other references remain, methods of a closed connection fail
  with VIR_ERR_INVALID_CONN ("invalid connection pointer in virXxx").
* Every public call resets the thread's last error on entry and, when it
  fails, records the error and dispatches it to the registered error
  handler (or prints libvirt's default line) before raising, as libvirt
  does (see :mod:`pyvirtrpc._lasterror`).
* Extensions, all keyword-only or new names: ``open(..., timeout=)``,
  ``virConnect.ref()`` (virConnectRef, for the chapter's example 3.5),
  ``virConnect.rpc_call()`` (any generated procedure, by name or number),
  ``virConnect.setCallTimeout()``.
"""

from __future__ import annotations

from _thread import allocate_lock

from . import _domref, _gcpause, _lasterror, _ops
from ._api_events import EventsMixin
from ._gen import constants as C
from ._gen import remote as R
from .client import Connection
from .core import handshake as hs
from .errors import closed_error, libvirtError, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Union

    from ._xdr import Procedure

P = R.PROCEDURES
_reset = _lasterror.reset
_report = _lasterror.report
#: the per-thread last-error slot, reset inline on the hot path (virResetLastError)
_tls = _lasterror._state


#: public functions defined in libvirt.c (VIR_FROM_THIS = VIR_FROM_NONE); the
#: rest (libvirt-host.c, libvirt-domain.c) report from VIR_FROM_DOMAIN
_FROM_NONE = frozenset({"virConnectClose", "virConnectRef"})


def _invalid(kind: str, cname: str) -> libvirtError:
    """What libvirt reports for a NULL/closed object passed to ``cname``."""
    code = {"conn": C.VIR_ERR_INVALID_CONN, "dom": C.VIR_ERR_INVALID_DOMAIN}[kind]
    return make_error(code, C.VIR_FROM_NONE if cname in _FROM_NONE else C.VIR_FROM_DOMAIN, cname)


class _Shared:
    """The state behind a connection: the client, its reference counts, caches.

    Two kinds of reference keep a connection open, as in libvirt: the open
    and every ``ref()`` (``refs``, under ``lock``), and every object that
    holds the connection, such as a virDomain (``holders``: one token per
    object in a list, because list append/pop are atomic and a listing of
    10,000 domains must not take 20,000 locks).  The connection closes when
    both are gone.
    """

    __slots__ = (
        "client", "refs", "holders", "lock", "closed", "uri", "type_cache", "is_secure", "is_encrypted",
        "result", "plan",
    )

    def __init__(self, client: Connection, uri: Optional[str], result: hs.OpenResult, plan: Any) -> None:
        self.client = client
        self.refs = 1
        self.holders: list[None] = []
        self.lock = allocate_lock()
        self.closed = False
        self.uri = uri
        self.type_cache: Optional[str] = None
        self.result = result
        self.plan = plan
        channel = client.channel
        self.is_secure = bool(getattr(channel, "is_secure", False))
        self.is_encrypted = bool(getattr(channel, "is_encrypted", False))

    def ref(self) -> int:
        with self.lock:
            if self.refs + len(self.holders) <= 0:
                return -1
            self.refs += 1
            return self.refs

    def unref(self, *, finalizing: bool = False) -> int:
        with self.lock:
            self.refs -= 1
            remaining = self.refs + len(self.holders)
        if remaining == 0:
            self._close(finalizing)
        return remaining

    def hold(self, n: int = 1) -> None:
        """``n`` more objects hold this connection (atomic: one list extend)."""
        self.holders += [None] * n

    def release(self) -> None:
        """An object holding the connection went away (called from finalizers)."""
        holders = self.holders
        holders.pop()
        if not holders and self.refs <= 0:
            self._close(True)

    def _close(self, finalizing: bool) -> None:
        with self.lock:
            if self.closed or self.refs + len(self.holders) > 0:
                return
            self.closed = True
        if finalizing:
            # From a finalizer: no RPC (it could run inside a call on this
            # very thread); the daemon takes EOF as a close.
            self.client.abort(C.VIR_CONNECT_CLOSE_REASON_CLIENT, closed_error())
        else:
            self.client.close()


def _proc(name: Union[str, int]) -> Procedure:
    if isinstance(name, int):
        return P[name]
    key = name.upper()
    if not key.startswith("REMOTE_PROC_"):
        key = "REMOTE_PROC_" + key
    return R.PROC_BY_NAME[key]


class virConnect(EventsMixin):  # noqa: N801 - libvirt-python's name
    """A connection to a libvirt daemon (libvirt-python's virConnect)."""

    def __init__(self, shared: _Shared) -> None:
        self._o: Optional[_Shared] = shared
        self._own = 1  # references this object holds: the open plus every ref()
        self._last_error: Optional[tuple[Any, ...]] = None
        self._handler: Optional[tuple[Callable[[Any, Any], Any], Any]] = None

    # ---------------------------------------------------------- plumbing
    def _call(self, number: int, args: Any, cname: str, proc: Optional[Procedure] = None) -> Any:
        """Call a REMOTE procedure the libvirt way (reset, report, raise); ``proc``
        stands in for the table's row (a reply codec of our own)."""
        _tls.err = None
        o = self._o
        try:
            if o is None:
                raise _invalid("conn", cname)
            return o.client.call(P[number] if proc is None else proc, args)
        except libvirtError as exc:
            self._last_error = exc.err
            _report(exc, self._handler)
            raise

    def _fail(self, exc: libvirtError) -> libvirtError:
        self._last_error = exc.err
        _report(exc, self._handler)
        return exc

    def _shared(self, cname: str) -> _Shared:
        _reset()
        o = self._o
        if o is None:
            raise self._fail(_invalid("conn", cname))
        return o

    # -------------------------------------------------------- lifecycle
    def close(self) -> int:
        """virConnectClose: drop this object's reference.

        Returns 0 when that was the last reference (the connection is closed),
        and 1 while other references remain (further ``ref()`` calls, domains,
        registered callbacks), exactly as libvirt: its documentation warns the
        value is not the count.
        """
        _reset()
        o = self._o
        if o is None:
            raise self._fail(_invalid("conn", "virConnectClose"))
        self._own -= 1
        if self._own <= 0:
            self._o = None
        try:
            return 1 if o.unref() > 0 else 0
        except libvirtError as exc:
            raise self._fail(exc) from None

    def ref(self) -> int:
        """virConnectRef: one more reference, to be released by one more close()."""
        o = self._shared("virConnectRef")
        o.ref()
        self._own += 1
        return 0

    def __enter__(self) -> virConnect:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._o is not None:
            self.close()

    def __del__(self) -> None:
        o = getattr(self, "_o", None)
        if o is not None:
            self._o = None
            for _ in range(self._own):
                try:
                    o.unref(finalizing=True)
                except Exception:  # noqa: BLE001 - never raise from a finalizer
                    pass

    def isAlive(self) -> int:
        o = self._shared("virConnectIsAlive")
        return 1 if o.client.alive else 0

    # -------------------------------------------------- escape hatches
    def rpc_call(self, procedure: Union[str, int], args: Any = None, *, timeout: Any = None) -> Any:
        """Call any REMOTE procedure by name (``"CONNECT_GET_HOSTNAME"``) or number.

        ``args`` is the generated ``remote_*_args`` object (or None for void);
        returns the decoded ``remote_*_ret`` (or None).  Errors are raised
        as libvirtError like every other call.
        """
        o = self._shared("rpc_call")
        try:
            proc = _proc(procedure)
        except KeyError:
            raise self._fail(
                make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_RPC, f"unknown procedure {procedure!r}")
            ) from None
        try:
            if timeout is None:
                return o.client.call(proc, args)
            return o.client.call(proc, args, timeout=timeout)
        except libvirtError as exc:
            raise self._fail(exc) from None

    def setCallTimeout(self, seconds: Optional[float]) -> None:
        """Default timeout of every call on this connection (None: wait forever)."""
        o = self._shared("setCallTimeout")
        o.client.timeout = seconds

    # --------------------------------------------------- errors (deprecated API)
    def virConnGetLastError(self) -> Optional[tuple[Any, ...]]:
        return self._last_error

    def virConnResetLastError(self) -> None:
        self._last_error = None

    def virConnSetErrorFunc(self, handler: Optional[Callable[[Any, Any], Any]], ctx: Any = None) -> None:
        """pyvirtrpc extension (libvirt-python has none): libvirt's virConnSetErrorFunc.

        ``handler(ctx, err)`` is called for errors of this connection (and of
        its domains) instead of the global handler; None restores the global
        one.  The chapter's integrated example (3.9) uses it.
        """
        self._handler = None if handler is None else (handler, ctx)

    # ------------------------------------------------ host information
    def getHostname(self) -> str:
        return str(self._call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME, None, "virConnectGetHostname").hostname)

    def getMaxVcpus(self, type: Optional[str]) -> int:  # noqa: A002 - libvirt-python's name
        ret = self._call(
            R.REMOTE_PROC_CONNECT_GET_MAX_VCPUS, R.remote_connect_get_max_vcpus_args(type), "virConnectGetMaxVcpus"
        )
        return int(ret.max_vcpus)

    def getFreeMemory(self) -> int:
        return int(self._call(R.REMOTE_PROC_NODE_GET_FREE_MEMORY, None, "virNodeGetFreeMemory").freeMem)

    def getInfo(self) -> list[Any]:
        return _ops.node_info(self._call(R.REMOTE_PROC_NODE_GET_INFO, None, "virNodeGetInfo"))

    def getCellsFreeMemory(self, startCell: int, maxCells: int) -> list[int]:
        o = self._shared("virNodeGetCellsFreeMemory")
        if maxCells > R.REMOTE_NODE_MAX_CELLS:
            raise self._fail(
                make_error(
                    C.VIR_ERR_RPC, C.VIR_FROM_REMOTE, f"too many NUMA cells: {maxCells} > {R.REMOTE_NODE_MAX_CELLS}"
                )
            )
        try:
            ret = o.client.call(
                P[R.REMOTE_PROC_NODE_GET_CELLS_FREE_MEMORY],
                R.remote_node_get_cells_free_memory_args(startCell, maxCells),
            )
        except libvirtError as exc:
            raise self._fail(exc) from None
        return [int(c) for c in ret.cells]

    def getType(self) -> str:
        o = self._shared("virConnectGetType")
        if o.type_cache is None:  # remoteConnectGetType caches it
            o.type_cache = str(self._call(R.REMOTE_PROC_CONNECT_GET_TYPE, None, "virConnectGetType").type)
        return o.type_cache

    def getVersion(self) -> int:
        return int(self._call(R.REMOTE_PROC_CONNECT_GET_VERSION, None, "virConnectGetVersion").hv_ver)

    def getLibVersion(self) -> int:
        return int(self._call(R.REMOTE_PROC_CONNECT_GET_LIB_VERSION, None, "virConnectGetLibVersion").lib_ver)

    def getURI(self) -> str:
        o = self._shared("virConnectGetURI")
        if o.uri is None:
            raise self._fail(make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_REMOTE, "connection has no URI"))
        return o.uri

    def isSecure(self) -> int:
        o = self._shared("virConnectIsSecure")
        return _ops.secure(o.is_secure, self._call(R.REMOTE_PROC_CONNECT_IS_SECURE, None, "virConnectIsSecure"))

    def isEncrypted(self) -> int:
        o = self._shared("virConnectIsEncrypted")
        ret = self._call(R.REMOTE_PROC_CONNECT_IS_SECURE, None, "virConnectIsEncrypted")
        return _ops.encrypted(o.is_encrypted, o.result.auth_type, ret)

    def getCapabilities(self) -> str:
        return str(self._call(R.REMOTE_PROC_CONNECT_GET_CAPABILITIES, None, "virConnectGetCapabilities").capabilities)

    def getSysinfo(self, flags: int = 0) -> str:
        ret = self._call(
            R.REMOTE_PROC_CONNECT_GET_SYSINFO, R.remote_connect_get_sysinfo_args(flags), "virConnectGetSysinfo"
        )
        return str(ret.sysinfo)

    def getSecurityModel(self) -> list[str]:
        return _ops.security_model(self._call(R.REMOTE_PROC_NODE_GET_SECURITY_MODEL, None, "virNodeGetSecurityModel"))

    # ------------------------------------------------------- domains
    def _domain(self, d: Any) -> virDomain:
        return virDomain(self, d)

    def listAllDomains(self, flags: int = 0) -> list[virDomain]:
        ret = self._call(
            R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS,
            R.remote_connect_list_all_domains_args(1, flags),
            "virConnectListAllDomains",
            _domref.LIST_ALL_DOMAINS,  # decodes flat, for _domains
        )
        return _domains(self, _domref.flat(ret))

    def listDomainsID(self) -> list[int]:
        n = self.numOfDomains()
        if n == 0:
            return []
        ret = self._call(
            R.REMOTE_PROC_CONNECT_LIST_DOMAINS, R.remote_connect_list_domains_args(n), "virConnectListDomains"
        )
        return [int(i) for i in ret.ids]

    def numOfDomains(self) -> int:
        return int(self._call(R.REMOTE_PROC_CONNECT_NUM_OF_DOMAINS, None, "virConnectNumOfDomains").num)

    def listDefinedDomains(self) -> list[str]:
        n = int(self._call(R.REMOTE_PROC_CONNECT_NUM_OF_DEFINED_DOMAINS, None, "virConnectNumOfDefinedDomains").num)
        if n == 0:
            return []
        ret = self._call(
            R.REMOTE_PROC_CONNECT_LIST_DEFINED_DOMAINS,
            R.remote_connect_list_defined_domains_args(n),
            "virConnectListDefinedDomains",
        )
        return [str(x) for x in ret.names]

    def numOfDefinedDomains(self) -> int:
        return int(self._call(R.REMOTE_PROC_CONNECT_NUM_OF_DEFINED_DOMAINS, None, "virConnectNumOfDefinedDomains").num)

    def lookupByName(self, name: str) -> virDomain:
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME, R.remote_domain_lookup_by_name_args(name), "virDomainLookupByName"
        )
        return virDomain(self, ret.dom)

    def lookupByID(self, id: int) -> virDomain:  # noqa: A002
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_ID, R.remote_domain_lookup_by_id_args(id), "virDomainLookupByID"
        )
        return virDomain(self, ret.dom)

    def lookupByUUID(self, uuid: bytes) -> virDomain:
        if not isinstance(uuid, (bytes, bytearray)) or len(uuid) != 16:
            raise self._fail(
                make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_DOMAIN, "uuid in virDomainLookupByUUID must be 16 bytes")
            )
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID,
            R.remote_domain_lookup_by_uuid_args(bytes(uuid)),
            "virDomainLookupByUUID",
        )
        return virDomain(self, ret.dom)

    def lookupByUUIDString(self, uuidstr: str) -> virDomain:
        raw = _ops.parse_uuid(uuidstr)
        if raw is None:
            self._shared("virDomainLookupByUUIDString")
            raise self._fail(
                make_error(
                    C.VIR_ERR_INVALID_ARG,
                    C.VIR_FROM_DOMAIN,
                    "uuidstr in virDomainLookupByUUIDString must be a valid UUID",
                )
            )
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID, R.remote_domain_lookup_by_uuid_args(raw), "virDomainLookupByUUID"
        )
        return virDomain(self, ret.dom)

    def defineXML(self, xml: str) -> virDomain:
        ret = self._call(R.REMOTE_PROC_DOMAIN_DEFINE_XML, R.remote_domain_define_xml_args(xml), "virDomainDefineXML")
        return virDomain(self, ret.dom)

    def createXML(self, xmlDesc: str, flags: int = 0) -> virDomain:
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_CREATE_XML, R.remote_domain_create_xml_args(xmlDesc, flags), "virDomainCreateXML"
        )
        return virDomain(self, ret.dom)


class _Hold:
    """One reference on a connection, held by one or more objects (domains).

    An object that holds its connection (as a virDomainPtr does in C) keeps
    a ``_Hold``; the reference goes when the last of its holders is
    collected.  A listing shares one ``_Hold`` among all its domains, so that
    10,000 domains cost one finalizer, not 10,000.
    """

    __slots__ = ("shared",)

    def __init__(self, shared: _Shared) -> None:
        self.shared: Optional[_Shared] = shared
        shared.hold()

    def __del__(self) -> None:
        s = self.shared
        if s is not None:
            self.shared = None
            try:
                s.release()
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass


def _domains(conn: virConnect, flat: list[Any]) -> list[virDomain]:
    """virDomain objects for a listing's flat [name, uuid, id, ...], built in bulk
    (one _Hold for all; the collector paused for a long one)."""
    shared = conn._o
    hold = _Hold(shared) if shared is not None and flat else None
    new = object.__new__
    out = []
    it = iter(flat)
    with _gcpause.bulk(len(flat) // 3):
        for name, uuid, id_ in zip(it, it, it):
            v = new(virDomain)
            v._conn = conn
            v._o = shared
            v._hold = hold
            v._name = name
            v._uuid = uuid
            v._id = id_
            v._ref = None
            out.append(v)
    return out


class virDomain(_domref.DomainRef):  # noqa: N801
    """A domain (libvirt-python's virDomain)."""

    __slots__ = ("_conn", "_o", "_hold", "__weakref__", "__dict__")

    def __init__(self, conn: virConnect, dom: Any) -> None:
        self._conn = conn
        self._set(dom)  # remote_nonnull_domain: name, uuid, id
        shared = conn._o
        self._o: Optional[_Shared] = shared
        # a domain holds a reference on its connection, as in C
        self._hold = _Hold(shared) if shared is not None else None

    def _call(self, number: int, args: Any, cname: str) -> Any:
        _tls.err = None
        o = self._o
        try:
            if o is None:
                raise _invalid("dom", cname)
            return o.client.call(P[number], args)
        except libvirtError as exc:
            self._conn._last_error = exc.err
            _report(exc, self._conn._handler)
            raise

    def connect(self) -> virConnect:
        return self._conn

    def name(self) -> str:
        return self._name

    def ID(self) -> int:
        return self._id

    def UUID(self) -> bytes:
        return self._uuid

    def UUIDString(self) -> str:
        return _ops.format_uuid(self._uuid)

    def info(self) -> list[int]:
        return _ops.domain_info(
            self._call(R.REMOTE_PROC_DOMAIN_GET_INFO, R.remote_domain_get_info_args(self._dom), "virDomainGetInfo")
        )

    def state(self, flags: int = 0) -> list[int]:
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_GET_STATE, R.remote_domain_get_state_args(self._dom, flags), "virDomainGetState"
        )
        return [ret.state, ret.reason]

    def XMLDesc(self, flags: int = 0) -> str:
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_GET_XML_DESC,
            R.remote_domain_get_xml_desc_args(self._dom, flags),
            "virDomainGetXMLDesc",
        )
        return str(ret.xml)

    def _simple(self, number: int, args: Any, cname: str) -> int:
        self._call(number, args, cname)
        return 0

    def suspend(self) -> int:
        return self._simple(R.REMOTE_PROC_DOMAIN_SUSPEND, R.remote_domain_suspend_args(self._dom), "virDomainSuspend")

    def resume(self) -> int:
        return self._simple(R.REMOTE_PROC_DOMAIN_RESUME, R.remote_domain_resume_args(self._dom), "virDomainResume")

    def create(self) -> int:
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS,
            R.remote_domain_create_with_flags_args(self._dom, 0),
            "virDomainCreate",
        )
        self._dom = ret.dom  # the id changes when a domain starts
        return 0

    def createWithFlags(self, flags: int = 0) -> int:
        ret = self._call(
            R.REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS,
            R.remote_domain_create_with_flags_args(self._dom, flags),
            "virDomainCreateWithFlags",
        )
        self._dom = ret.dom
        return 0

    def destroy(self) -> int:
        self._call(R.REMOTE_PROC_DOMAIN_DESTROY, R.remote_domain_destroy_args(self._dom), "virDomainDestroy")
        self._stopped()
        return 0

    def destroyFlags(self, flags: int = 0) -> int:
        self._call(
            R.REMOTE_PROC_DOMAIN_DESTROY_FLAGS,
            R.remote_domain_destroy_flags_args(self._dom, flags),
            "virDomainDestroyFlags",
        )
        self._stopped()
        return 0

    def shutdown(self) -> int:
        return self._simple(
            R.REMOTE_PROC_DOMAIN_SHUTDOWN, R.remote_domain_shutdown_args(self._dom), "virDomainShutdown"
        )

    def reboot(self, flags: int = 0) -> int:
        return self._simple(
            R.REMOTE_PROC_DOMAIN_REBOOT, R.remote_domain_reboot_args(self._dom, flags), "virDomainReboot"
        )

    def undefine(self) -> int:
        return self._simple(
            R.REMOTE_PROC_DOMAIN_UNDEFINE, R.remote_domain_undefine_args(self._dom), "virDomainUndefine"
        )

    def undefineFlags(self, flags: int = 0) -> int:
        return self._simple(
            R.REMOTE_PROC_DOMAIN_UNDEFINE_FLAGS,
            R.remote_domain_undefine_flags_args(self._dom, flags),
            "virDomainUndefineFlags",
        )

    def isActive(self) -> int:
        return int(
            self._call(
                R.REMOTE_PROC_DOMAIN_IS_ACTIVE, R.remote_domain_is_active_args(self._dom), "virDomainIsActive"
            ).active
        )

    def isPersistent(self) -> int:
        return int(
            self._call(
                R.REMOTE_PROC_DOMAIN_IS_PERSISTENT,
                R.remote_domain_is_persistent_args(self._dom),
                "virDomainIsPersistent",
            ).persistent
        )

    def OSType(self) -> str:
        return str(
            self._call(
                R.REMOTE_PROC_DOMAIN_GET_OS_TYPE, R.remote_domain_get_os_type_args(self._dom), "virDomainGetOSType"
            ).type
        )

    def maxMemory(self) -> int:
        return int(
            self._call(
                R.REMOTE_PROC_DOMAIN_GET_MAX_MEMORY,
                R.remote_domain_get_max_memory_args(self._dom),
                "virDomainGetMaxMemory",
            ).memory
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, virDomain) and self._uuid == other._uuid and self._conn is other._conn

    def __hash__(self) -> int:
        return hash(self._uuid)

    def __repr__(self) -> str:
        return f"<virDomain {self._name!r} id={self._id}>"
