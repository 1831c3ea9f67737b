"""virConnect's event, keepalive and close-callback methods (a mixin), sync and asyncio.

Contract:

* :class:`EventsMixin` is mixed into :class:`pyvirtrpc.virConnect` and has
  libvirt-python's methods with its signatures, return values, callback
  arguments and quirks (``libvirt-override-virConnect.py``):
  ``domainEventRegisterAny(dom, eventID, cb, opaque) -> id`` calling e.g.
  ``cb(conn, dom, event, detail, opaque)``; ``domainEventDeregisterAny(id)``;
  the legacy ``domainEventRegister(cb, opaque)`` /
  ``domainEventDeregister(cb)`` (callbacks kept in ``conn.domainEventCallbacks``);
  ``network``/``storagePool``/``nodeDevice``/``secretEventRegisterAny`` and
  their ``DeregisterAny``; ``setKeepAlive(interval, count) -> 0 or 1``;
  ``registerCloseCallback(cb, opaque) -> 0`` with ``cb(conn, reason,
  opaque)``; ``unregisterCloseCallback()``.  The registered opaques are
  kept in ``conn.domainEventCallbackID`` etc. as libvirt-python does.  An
  event id the binding does not know raises ``libvirtError('...() failed')``
  as libvirt-python's C layer does; every other failure is the libvirt
  error, recorded as the thread's last error and passed to the error
  handler like any API error.  Each registered callback holds a reference
  on the connection, as in libvirt (close() then keeps it open).
* QEMU monitor events are reached through :mod:`pyvirtrpc.libvirt_qemu`
  (``qemuMonitorEventRegister(conn, dom, event, cb, opaque, flags)``).
* :class:`AsyncEventsMixin` gives :class:`pyvirtrpc.aio.AsyncConnect` the
  same methods (registrations are coroutines; ``setKeepAlive`` is not).
  Callbacks get the ``AsyncConnect`` and ``AsyncDomain`` objects and run on
  the asyncio loop; a coroutine function may be used as a callback.
* Delivery, dispatch and keepalive are in :mod:`pyvirtrpc._events`; see it
  for the threading rules (events come from the registered event loop).
"""

from __future__ import annotations

from ._gen import constants as C
from .errors import libvirtError, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from ._api import _Shared
    from ._events import AsyncEvents, Kind, SyncEvents


def _kinds() -> Any:
    from . import _events

    return _events


def _match_error(kind: Kind, cname: str, obj: Any) -> libvirtError:
    ev = _kinds()
    name = ev.object_name(kind, obj)
    if kind is ev.DOMAIN:
        msg = f"domain '{name}' must match connection"
    else:
        msg = f"{kind.what} '{name}' in {cname} must match connection"
    err: libvirtError = ev.invalid_arg(kind.domain, cname, kind.argname, msg)
    return err


def _same_connection(obj: Any, shared: Any, conn: Any) -> bool:
    """Whether ``obj`` belongs to this connection (the C API compares virConnectPtr)."""
    o = getattr(obj, "_o", None)
    if o is not None:
        return o is shared
    try:
        other = obj.connect()
    except Exception:  # noqa: BLE001 - a foreign object: let the struct conversion fail instead
        return True
    return other is conn or getattr(other, "_o", None) is shared or getattr(other, "connection", None) is shared


def _check_event_id(kind: Kind, event_id: Any) -> bool:
    return isinstance(event_id, int) and 0 <= event_id < kind.last


class EventsMixin:
    """Event methods of :class:`pyvirtrpc.virConnect` (see the module docstring)."""

    if TYPE_CHECKING:
        _o: Optional[_Shared]

        def _shared(self, cname: str) -> _Shared: ...

        def _fail(self, exc: libvirtError) -> libvirtError: ...

    # ------------------------------------------------------------ plumbing
    def _event_state(self, o: _Shared) -> SyncEvents:
        return _kinds().sync_state(o.client, o.result)  # type: ignore[no-any-return]

    def _register_any(self, kind: Kind, attr: str, obj: Any, eventID: int, cb: Any, opaque: Any) -> int:
        cname = kind.api + "RegisterAny"
        if not hasattr(self, attr):
            setattr(self, attr, {})
        if not _check_event_id(kind, eventID):
            # libvirt-python's C layer knows no callback for it: -1 without a new error
            raise libvirtError(f"{cname}() failed")
        o = self._shared(cname)
        raw = None
        if obj is not None:
            if not _same_connection(obj, o, self):
                raise self._fail(_match_error(kind, cname, obj))
            raw = _kinds().STRUCT_OF[kind](obj)
        try:
            ret = self._event_state(o).register(kind, self, raw, eventID, cb, opaque, holder=o)
        except libvirtError as exc:
            raise self._fail(exc) from None
        getattr(self, attr)[ret] = opaque
        return ret

    def _deregister_any(self, kind: Kind, attr: str, callbackID: int) -> None:
        cname = kind.api + "DeregisterAny"
        try:
            o = self._shared(cname)
            if callbackID < 0:
                raise self._fail(_kinds().not_negative(kind.domain, cname, "callbackID"))
            try:
                self._event_state(o).deregister(kind, callbackID)
            except libvirtError as exc:
                raise self._fail(exc) from None
            del getattr(self, attr)[callbackID]
        except AttributeError:  # libvirt-python: nothing was ever registered through this object
            pass

    # -------------------------------------------------------------- domain
    def domainEventRegisterAny(self, dom: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        """Adds a Domain Event Callback; returns its id (``cb(conn, dom, ..., opaque)``)."""
        return self._register_any(_kinds().DOMAIN, "domainEventCallbackID", dom, eventID, cb, opaque)

    def domainEventDeregisterAny(self, callbackID: int) -> None:
        """Removes a Domain Event Callback."""
        self._deregister_any(_kinds().DOMAIN, "domainEventCallbackID", callbackID)

    def domainEventRegister(self, cb: Callable[..., Any], opaque: Any) -> None:
        """Adds a legacy lifecycle callback ``cb(conn, dom, event, detail, opaque)``."""
        try:
            self.domainEventCallbacks[cb] = opaque
        except AttributeError:
            self.domainEventCallbacks: dict[Any, Any] = {cb: opaque}
            o = self._shared("virConnectDomainEventRegister")
            ev = _kinds()
            try:
                self._event_state(o).register(
                    ev.DOMAIN, self, None, C.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._dispatchDomainEventCallbacks, None,
                    legacy=True, holder=o,
                )  # fmt: skip
            except libvirtError as exc:
                raise self._fail(exc) from None

    def domainEventDeregister(self, cb: Callable[..., Any]) -> None:
        """Removes a legacy lifecycle callback (KeyError if it was not registered)."""
        try:
            del self.domainEventCallbacks[cb]
            if len(self.domainEventCallbacks) == 0:
                del self.domainEventCallbacks
                o = self._shared("virConnectDomainEventDeregister")
                st = self._event_state(o)
                cid = st.registry.legacy_id()
                try:
                    if cid is None:
                        raise make_error(
                            C.VIR_ERR_INVALID_ARG,
                            C.VIR_FROM_NONE,
                            f"event callback function {id(self):#x} not registered",
                        )
                    st.deregister(_kinds().DOMAIN, cid)
                except libvirtError as exc:
                    raise self._fail(exc) from None
        except AttributeError:
            pass

    def _dispatchDomainEventCallbacks(self, dom: Any, event: int, detail: int) -> None:
        """Dispatches events to python user domain event callbacks (libvirt-python's name)."""
        from ._api import virDomain

        try:
            for cb, opaque in self.domainEventCallbacks.items():
                cb(self, virDomain(self, dom), event, detail, opaque)  # type: ignore[arg-type]
        except AttributeError:
            pass

    # ---------------------------------------------------- other objects
    def networkEventRegisterAny(self, net: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        """Adds a Network Event Callback (``cb(conn, net, event, detail, opaque)`` for lifecycle)."""
        return self._register_any(_kinds().NETWORK, "networkEventCallbackID", net, eventID, cb, opaque)

    def networkEventDeregisterAny(self, callbackID: int) -> None:
        self._deregister_any(_kinds().NETWORK, "networkEventCallbackID", callbackID)

    def storagePoolEventRegisterAny(self, pool: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        """Adds a Storage Pool Event Callback (lifecycle or refresh ``cb(conn, pool, opaque)``)."""
        return self._register_any(_kinds().STORAGE_POOL, "storagePoolEventCallbackID", pool, eventID, cb, opaque)

    def storagePoolEventDeregisterAny(self, callbackID: int) -> None:
        self._deregister_any(_kinds().STORAGE_POOL, "storagePoolEventCallbackID", callbackID)

    def nodeDeviceEventRegisterAny(self, dev: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        """Adds a Node Device Event Callback (lifecycle or update ``cb(conn, dev, opaque)``)."""
        return self._register_any(_kinds().NODE_DEVICE, "nodeDeviceEventCallbackID", dev, eventID, cb, opaque)

    def nodeDeviceEventDeregisterAny(self, callbackID: int) -> None:
        self._deregister_any(_kinds().NODE_DEVICE, "nodeDeviceEventCallbackID", callbackID)

    def secretEventRegisterAny(self, secret: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        """Adds a Secret Event Callback (lifecycle or value changed ``cb(conn, secret, opaque)``)."""
        return self._register_any(_kinds().SECRET, "secretEventCallbackID", secret, eventID, cb, opaque)

    def secretEventDeregisterAny(self, callbackID: int) -> None:
        self._deregister_any(_kinds().SECRET, "secretEventCallbackID", callbackID)

    # ---------------------------------------------------------------- qemu
    def _qemu_monitor_event_register(self, dom: Any, event: Optional[str], cb: Any, opaque: Any, flags: int) -> int:
        ev = _kinds()
        kind = ev.QEMU_MONITOR
        cname = "virConnectDomainQemuMonitorEventRegister"
        o = self._shared(cname)
        raw = None
        if dom is not None:
            if not _same_connection(dom, o, self):
                name = ev.object_name(kind, dom)
                raise self._fail(
                    ev.invalid_arg(kind.domain, cname, "dom", f"domain '{name}' in {cname} must match connection")
                )
            raw = ev.domain_struct(dom)
        if getattr(o.plan, "open_flags", 0) & C.VIR_CONNECT_RO:
            raise self._fail(
                make_error(C.VIR_ERR_OPERATION_DENIED, C.VIR_FROM_NONE, f"read only access prevents {cname}")
            )
        try:
            return self._event_state(o).register(
                kind, self, raw, 0, cb, opaque, qemu_event=event, qemu_flags=flags, holder=o
            )
        except libvirtError as exc:
            raise self._fail(exc) from None

    def _qemu_monitor_event_deregister(self, callbackID: int) -> None:
        ev = _kinds()
        cname = "virConnectDomainQemuMonitorEventDeregister"
        o = self._shared(cname)
        if callbackID < 0:
            raise self._fail(ev.not_negative(C.VIR_FROM_NONE, cname, "callbackID"))
        try:
            self._event_state(o).deregister(ev.QEMU_MONITOR, callbackID)
        except libvirtError as exc:
            raise self._fail(exc) from None

    # ----------------------------------------------------------- keepalive
    def setKeepAlive(self, interval: int, count: int) -> int:
        """Start (interval > 0) or stop keepalive; 1 when the server does not support it.

        Needs an event loop registered before the connection was opened.  A
        PING goes out after ``interval`` seconds without traffic from the
        server; after ``count`` unanswered PINGs the connection is closed
        (close callback reason KEEPALIVE).
        """
        o = self._shared("virConnectSetKeepAlive")
        try:
            return self._event_state(o).set_keepalive(int(interval), int(count))
        except libvirtError as exc:
            raise self._fail(exc) from None

    # ------------------------------------------------------ close callback
    def registerCloseCallback(self, cb: Callable[..., Any], opaque: Any) -> int:
        """``cb(conn, reason, opaque)`` once when the connection closes other than by close()."""
        o = self._shared("virConnectRegisterCloseCallback")
        try:
            self._event_state(o).register_close(self, cb, opaque, holder=o)
        except libvirtError as exc:
            raise self._fail(exc) from None
        return 0

    def unregisterCloseCallback(self) -> None:
        """Removes the close callback."""
        o = self._shared("virConnectUnregisterCloseCallback")
        try:
            self._event_state(o).unregister_close()
        except libvirtError as exc:
            raise self._fail(exc) from None


# ----------------------------------------------------------------------------
class AsyncEventsMixin:
    """Event methods of :class:`pyvirtrpc.aio.AsyncConnect` (see the module docstring)."""

    if TYPE_CHECKING:
        connection: Any
        _result: Any
        _closed: bool

    _event_st: Optional[AsyncEvents] = None

    def _async_events(self, cname: str) -> AsyncEvents:
        if self._closed:
            raise make_error(C.VIR_ERR_INVALID_CONN, C.VIR_FROM_DOMAIN, cname)
        st = self._event_st
        if st is None:
            st = self._event_st = _kinds().AsyncEvents(self.connection, self._result)
        return st

    def _async_prepare(self, kind: Kind, obj: Any, eventID: int, cname: str) -> Any:
        if not _check_event_id(kind, eventID):
            if isinstance(eventID, int) and eventID < 0:
                raise _kinds().not_negative(kind.domain, cname, "eventID")
            raise _kinds().invalid_arg(
                kind.domain, cname, "eventID", f"eventID in {cname} must be less than {kind.last}"
            )
        if obj is None:
            return None
        if not _same_connection(obj, self.connection, self):
            raise _match_error(kind, cname, obj)
        return _kinds().STRUCT_OF[kind](obj)

    async def _async_register_any(self, kind: Kind, obj: Any, eventID: int, cb: Any, opaque: Any) -> int:
        cname = kind.api + "RegisterAny"
        st = self._async_events(cname)
        raw = self._async_prepare(kind, obj, eventID, cname)
        return await st.register(kind, self, raw, eventID, cb, opaque)

    async def _async_deregister_any(self, kind: Kind, callbackID: int) -> None:
        cname = kind.api + "DeregisterAny"
        st = self._async_events(cname)
        if callbackID < 0:
            raise _kinds().not_negative(kind.domain, cname, "callbackID")
        await st.deregister(kind, callbackID)

    async def domainEventRegisterAny(self, dom: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        """``cb(conn, dom, ..., opaque)`` with the AsyncConnect and an AsyncDomain; returns the id."""
        return await self._async_register_any(_kinds().DOMAIN, dom, eventID, cb, opaque)

    async def domainEventDeregisterAny(self, callbackID: int) -> None:
        await self._async_deregister_any(_kinds().DOMAIN, callbackID)

    async def domainEventRegister(self, cb: Callable[..., Any], opaque: Any) -> None:
        """The legacy lifecycle callback ``cb(conn, dom, event, detail, opaque)``."""
        callbacks: Optional[dict[Any, Any]] = getattr(self, "domainEventCallbacks", None)
        if callbacks is not None:
            callbacks[cb] = opaque
            return
        self.domainEventCallbacks: dict[Any, Any] = {cb: opaque}
        st = self._async_events("virConnectDomainEventRegister")
        try:
            await st.register(
                _kinds().DOMAIN, self, None, C.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._dispatchDomainEventCallbacks, None,
                legacy=True,
            )  # fmt: skip
        except BaseException:
            del self.domainEventCallbacks
            raise

    async def domainEventDeregister(self, cb: Callable[..., Any]) -> None:
        callbacks: Optional[dict[Any, Any]] = getattr(self, "domainEventCallbacks", None)
        if callbacks is None:
            return
        del callbacks[cb]
        if callbacks:
            return
        del self.domainEventCallbacks
        st = self._async_events("virConnectDomainEventDeregister")
        cid = st.registry.legacy_id()
        if cid is not None:
            await st.deregister(_kinds().DOMAIN, cid)

    def _dispatchDomainEventCallbacks(self, dom: Any, event: int, detail: int) -> None:
        from ._events import _maybe_schedule
        from .aio import AsyncDomain

        for cb, opaque in list(getattr(self, "domainEventCallbacks", {}).items()):
            try:
                _maybe_schedule(cb(self, AsyncDomain(self, dom), event, detail, opaque))  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001
                from .event import _report_exception

                _report_exception()

    async def networkEventRegisterAny(self, net: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        return await self._async_register_any(_kinds().NETWORK, net, eventID, cb, opaque)

    async def networkEventDeregisterAny(self, callbackID: int) -> None:
        await self._async_deregister_any(_kinds().NETWORK, callbackID)

    async def storagePoolEventRegisterAny(self, pool: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        return await self._async_register_any(_kinds().STORAGE_POOL, pool, eventID, cb, opaque)

    async def storagePoolEventDeregisterAny(self, callbackID: int) -> None:
        await self._async_deregister_any(_kinds().STORAGE_POOL, callbackID)

    async def nodeDeviceEventRegisterAny(self, dev: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        return await self._async_register_any(_kinds().NODE_DEVICE, dev, eventID, cb, opaque)

    async def nodeDeviceEventDeregisterAny(self, callbackID: int) -> None:
        await self._async_deregister_any(_kinds().NODE_DEVICE, callbackID)

    async def secretEventRegisterAny(self, secret: Any, eventID: int, cb: Callable[..., Any], opaque: Any) -> int:
        return await self._async_register_any(_kinds().SECRET, secret, eventID, cb, opaque)

    async def secretEventDeregisterAny(self, callbackID: int) -> None:
        await self._async_deregister_any(_kinds().SECRET, callbackID)

    async def qemuMonitorEventRegister(
        self, dom: Any, event: Optional[str], cb: Callable[..., Any], opaque: Any, flags: int = 0
    ) -> int:
        """``cb(conn, dom, event, seconds, micros, details, opaque)`` for QEMU monitor events."""
        ev = _kinds()
        cname = "virConnectDomainQemuMonitorEventRegister"
        st = self._async_events(cname)
        raw = None
        if dom is not None:
            if not _same_connection(dom, self.connection, self):
                name = ev.object_name(ev.QEMU_MONITOR, dom)
                raise ev.invalid_arg(C.VIR_FROM_NONE, cname, "dom", f"domain '{name}' in {cname} must match connection")
            raw = ev.domain_struct(dom)
        return await st.register(ev.QEMU_MONITOR, self, raw, 0, cb, opaque, qemu_event=event, qemu_flags=flags)

    async def qemuMonitorEventDeregister(self, callbackID: int) -> None:
        ev = _kinds()
        cname = "virConnectDomainQemuMonitorEventDeregister"
        st = self._async_events(cname)
        if callbackID < 0:
            raise ev.not_negative(C.VIR_FROM_NONE, cname, "callbackID")
        await st.deregister(ev.QEMU_MONITOR, callbackID)

    def setKeepAlive(self, interval: int, count: int) -> int:
        """As virConnect.setKeepAlive, on the asyncio loop (no event loop registration needed)."""
        return self._async_events("virConnectSetKeepAlive").set_keepalive(int(interval), int(count))

    async def registerCloseCallback(self, cb: Callable[..., Any], opaque: Any) -> int:
        """``cb(conn, reason, opaque)`` (may be a coroutine function) when the connection dies."""
        await self._async_events("virConnectRegisterCloseCallback").register_close(self, cb, opaque)
        return 0

    async def unregisterCloseCallback(self) -> None:
        await self._async_events("virConnectUnregisterCloseCallback").unregister_close()


__all__ = ["EventsMixin", "AsyncEventsMixin"]
