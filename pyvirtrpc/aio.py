"""The asyncio client: the same operations as coroutines, on the same core.

Contract::

    import pyvirtrpc.aio as aio
    conn = await aio.open("qemu:///system")
    host = await conn.getHostname()
    doms = await conn.listAllDomains()
    await conn.close()

* :func:`open`, :func:`openReadOnly`, :func:`openAuth` resolve the URI and
  run the same handshake as the sync client
  (:mod:`pyvirtrpc.core.handshake`), over an ``asyncio.Protocol``.
* Many calls may be in flight on one connection (``asyncio.gather``); they
  are multiplexed by serial.  While at least :data:`BATCH_AT` calls are in
  flight, replies are read in batches: after handling what arrived, the
  connection stops reading for :data:`BATCH_DELAY` (1 ms), so a reply may
  reach its caller up to that much later, events and keepalive PINGs
  included.  The daemon is not kept waiting (it has more queued work than
  that), and throughput rises (fewer wake-ups on both sides).
* Cancelling a call (``task.cancel()``, or ``asyncio.wait_for``) abandons
  it without desynchronising the connection: its late reply is dropped.
  ``timeout=`` on a call, or a default per connection, fails it with
  :class:`~pyvirtrpc.errors.OperationTimeoutError`.
* Errors are libvirtErrors with the same codes and fields as the sync API;
  unlike the sync API (which mirrors libvirt-python) they are not recorded
  as the thread's last error nor printed: asyncio code handles exceptions.
* When the connection dies every pending call fails at once with the
  error libvirt reports, and close listeners run with the reason.
* :meth:`AsyncConnection.call` is the raw escape hatch: any generated
  procedure with its argument struct; :meth:`AsyncConnect.rpc_call` takes
  a name or number.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import socket

from . import _domref, _gcpause, _ops
from . import uri as _uri
from ._api_events import AsyncEventsMixin
from ._gen import constants as C
from ._gen import remote as R
from .client import CLOSE_CLIENT, CLOSE_EOF, CLOSE_ERROR, PROGRAMS, REMOTE, _log_step
from .core import handshake as hs
from .core.rpc import RPC, Call, ReceiveError
from .errors import closed_error, from_fields, libvirtError, make_error, system_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Generator, Optional, Union

    from ._xdr import Procedure

P = R.PROCEDURES


#: Size of the protocol's receive buffer.  asyncio's default recv() asks for
#: 256 KiB, and allocating that per read costs an mmap/munmap pair (~18 us);
#: a BufferedProtocol reads into one reused buffer instead.
RECV_BUFFER = 65536

#: Reply batching under load (see the module docstring).  With this many calls
#: still in flight after handling what arrived, the connection stops reading
#: for BATCH_DELAY seconds: the daemon has at least that long of queued work
#: (its fastest calls take ~45 us each here, so 32 calls cover ~1.5 ms), so it
#: never waits for us, and the replies it writes meanwhile are read in one go.
#: Reading each reply as it comes costs the daemon a wake-up of our loop per
#: reply and us a loop turn per reply; measured on this project's 2-core VM
#: with 64 getHostname calls in flight: client CPU 26 -> 9 us per call,
#: daemon CPU 69 -> 66 us, throughput +20%.
BATCH_AT = 32
#: asyncio's default loop sleeps in whole milliseconds (epoll), so this is the
#: shortest pause it can make.
BATCH_DELAY = 0.001


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.conn._received(bytes(self._view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        # used by transports that do not support buffered protocols
        self.conn._received(data)

    def eof_received(self) -> Optional[bool]:
        self.conn._die(system_error(C.VIR_FROM_RPC, _errno.EIO, "End of file while reading data"), CLOSE_EOF)
        return None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if exc is None:
            err = system_error(C.VIR_FROM_RPC, _errno.EIO, "End of file while reading data")
            self.conn._die(err, CLOSE_EOF)
        else:
            eno = getattr(exc, "errno", None) or _errno.EIO
            # libvirt says EOF when poll() saw the peer hang up, which a reset or broken pipe implies
            reason = CLOSE_EOF if eno in (_errno.ECONNRESET, _errno.EPIPE) else CLOSE_ERROR
            # asyncio does not say which direction failed; EPIPE only comes from a write
            what = "Cannot write data" if eno == _errno.EPIPE else "Cannot recv data"
            self.conn._die(system_error(C.VIR_FROM_RPC, eno, what), reason)


class AsyncConnection:
    """The asyncio driver of :class:`~pyvirtrpc.core.rpc.RPC` (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, timeout: Optional[float] = None) -> None:
        self.loop = loop
        self.rpc = RPC(PROGRAMS)
        self.rpc.bulk = _gcpause.PAUSED
        self.timeout = timeout
        self._transport: Optional[asyncio.Transport] = None
        self._wbuf: Optional[list[bytes]] = None
        self._paused = False
        self._dead: Optional[libvirtError] = None
        self.layer: Any = None  # SASL security layer, once negotiated
        self.is_secure = True
        self.is_encrypted = False
        self.event_sink: Optional[Callable[[list[tuple[Procedure, Any]]], None]] = None
        self.close_listeners: list[Callable[[int, Optional[libvirtError]], None]] = []

    @property
    def alive(self) -> bool:
        return self._dead is None

    # -------------------------------------------------------------- data
    def _received(self, data: bytes) -> None:
        if self.layer is not None:
            try:
                data = self.layer.feed(data)
            except libvirtError as exc:
                self._die(exc, CLOSE_ERROR)
                return
            if not data:
                return
        rpc = self.rpc
        try:
            completed = rpc.receive(data)
        except ReceiveError as exc:
            # the calls completed before the bad packet get their results, the others the error
            self._complete(exc.completed)
            self._die(exc.error, CLOSE_ERROR)
            return
        self._complete(completed)
        if rpc.outgoing:
            out, rpc.outgoing = rpc.outgoing, []
            for packet in out:
                self._write(packet)
        if rpc.events:
            events, rpc.events = rpc.events, []
            sink = self.event_sink
            if sink is not None:
                sink(events)
        if len(rpc.calls) >= BATCH_AT and not self._paused:
            self._pause()

    @staticmethod
    def _complete(completed: list[Call]) -> None:
        """Resolve the futures of completed calls."""
        for c in completed:
            fut = c.waiter
            if fut is not None and not fut.done():
                if c.error is not None:
                    fut.set_exception(c.error)
                else:
                    fut.set_result(c.result)

    def _pause(self) -> None:
        """Stop reading for BATCH_DELAY (many calls in flight: read their replies in batches)."""
        t = self._transport
        if t is None or t.is_closing() or self._dead is not None:
            return
        self._paused = True
        t.pause_reading()
        self.loop.call_later(BATCH_DELAY, self._resume)

    def _resume(self) -> None:
        self._paused = False
        t = self._transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def _write(self, packet: bytes) -> None:
        # Packets written in one turn of the event loop (e.g. 64 coroutines each
        # making a call) leave in one write at the end of the turn: one syscall
        # instead of 64.
        pending = self._wbuf
        if pending is not None:
            pending.append(packet)
        elif len(self.rpc.calls) <= 1:  # a lone call goes at once: no extra loop turn
            assert self._transport is not None
            self._transport.write(packet if self.layer is None else self.layer.encode(packet))
        else:
            self._wbuf = [packet]
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        pending = self._wbuf
        self._wbuf = None
        if not pending or self._transport is None or self._transport.is_closing():
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        if self.layer is not None:
            data = self.layer.encode(data)
        self._transport.write(data)

    def send_packet(self, packet: bytes) -> None:
        if self._dead is not None:
            raise closed_error()
        self._write(packet)

    # ------------------------------------------------------------- calls
    async def call(
        self, proc: Procedure, args: Any = None, *, program: int = REMOTE, version: int = 1, timeout: Any = None
    ) -> Any:
        """Make one call and return its decoded reply (None for void)."""
        if self._dead is not None:
            raise closed_error()
        call = self.rpc.request(program, version, proc, args)
        fut = self.loop.create_future()
        call.waiter = fut
        self._write(call.packet)
        if timeout is None:
            timeout = self.timeout
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.rpc.abandon(call)
            raise make_error(
                C.VIR_ERR_OPERATION_TIMEOUT,
                C.VIR_FROM_RPC,
                f"no reply to {proc.name} (serial {call.serial}) within {timeout} s; the call was abandoned",
            ) from None
        except asyncio.CancelledError:
            self.rpc.abandon(call)
            raise

    async def run_steps(self, gen: Generator[hs.Step, Any, Any]) -> Any:
        try:
            step = next(gen)
            while True:
                if isinstance(step, hs.Call):
                    try:
                        result = await self.call(step.procedure, step.args)
                    except libvirtError as exc:
                        step = gen.throw(exc)
                        continue
                    step = gen.send(result)
                elif isinstance(step, hs.Batch):
                    outcomes = await asyncio.gather(
                        *(self.call(c.procedure, c.args) for c in step.calls), return_exceptions=True
                    )
                    for item in outcomes:
                        if isinstance(item, BaseException) and not isinstance(item, libvirtError):
                            raise item
                    step = gen.send(list(outcomes))
                elif isinstance(step, hs.Log):
                    _log_step(step)
                    step = gen.send(None)
                elif isinstance(step, hs.InstallLayer):
                    self.layer = step.layer
                    ssf = int(getattr(step.layer, "ssf", 0))
                    self.is_encrypted = self.is_encrypted or ssf > 0
                    # remoteAuthSASL: an insecure transport becomes secure at SSF >= 56
                    self.is_secure = self.is_secure or ssf >= 56
                    step = gen.send(None)
                else:
                    raise TypeError(f"unknown handshake step {step!r}")
        except StopIteration as stop:
            return stop.value

    # ------------------------------------------------------------- death
    def _die(self, error: libvirtError, reason: int) -> None:
        if self._dead is not None:
            return
        self._dead = error
        for c in self.rpc.fail_all(error):
            fut = c.waiter
            if fut is not None and not fut.done():
                fut.set_exception(from_fields(error.err) if error.err else error)
        if self._transport is not None:
            self._transport.close()
        listeners, self.close_listeners = self.close_listeners, []
        for listener in listeners:
            listener(reason, error)

    def abort(self, reason: int, error: libvirtError) -> None:
        self._die(error, reason)

    async def close(self) -> None:
        """CONNECT_CLOSE (its failure ignored, as libvirt's dispose does), then close."""
        self.close_listeners = []
        try:
            if self._dead is None:
                await self.call(P[R.REMOTE_PROC_CONNECT_CLOSE])
        except libvirtError:
            pass
        finally:
            self._die(closed_error(), CLOSE_CLIENT)


async def _connect(plan: Any, auth: Any, conn: AsyncConnection) -> None:
    loop = conn.loop
    if plan.transport == "unix":
        _uri.check_autostart(plan)
        path = plan.socket_path
        try:
            await loop.create_unix_connection(lambda: _Protocol(conn), path)
        except OSError as exc:
            raise system_error(
                C.VIR_FROM_RPC, exc.errno or _errno.EIO, f"Failed to connect socket to '{path}'"
            ) from None
        return
    # Other transports: bring the channel up with the blocking transport code
    # in a worker thread (TLS handshake, ssh process), then hand asyncio the socket.
    from ._open import connect_channel

    channel = await loop.run_in_executor(None, connect_channel, plan, auth, None)
    conn.is_secure = bool(getattr(channel, "is_secure", False))
    conn.is_encrypted = bool(getattr(channel, "is_encrypted", False))
    adopt = getattr(channel, "asyncio_adopt", None)
    if adopt is not None:
        await adopt(loop, lambda: _Protocol(conn))
    else:
        sock: socket.socket = channel  # type: ignore[assignment]  # unix/tcp channels are sockets
        await loop.create_connection(lambda: _Protocol(conn), sock=sock)


async def _open(name: Optional[str], flags: int, auth: Any, timeout: Optional[float]) -> AsyncConnect:
    plan = _uri.plan(name, flags)
    conn = AsyncConnection(asyncio.get_running_loop(), timeout=timeout)
    await _connect(plan, auth, conn)
    try:
        sasl = None
        from ._open import sasl_steps_factory

        sasl = sasl_steps_factory(plan, auth, conn)
        params = hs.OpenParams(
            plan.open_name, plan.open_flags, plan.auth, want_keepalive=True, need_uri=plan.get_uri, sasl=sasl
        )
        from ._open import remember_auth, speculate

        params.speculate = speculate(plan)
        result = await conn.run_steps(hs.open_connection(params))
        remember_auth(plan, result)
    except BaseException:
        conn.abort(CLOSE_CLIENT, closed_error())
        raise
    from ._open import canonical_uri

    return AsyncConnect(conn, canonical_uri(plan, result), result)


async def open(name: Optional[str] = None, flags: int = 0, *, timeout: Optional[float] = None) -> AsyncConnect:  # noqa: A001
    return await _open(name, flags, None, timeout)


async def openReadOnly(name: Optional[str] = None, *, timeout: Optional[float] = None) -> AsyncConnect:
    return await _open(name, C.VIR_CONNECT_RO, None, timeout)


async def openAuth(uri: Optional[str], auth: Any, flags: int = 0, *, timeout: Optional[float] = None) -> AsyncConnect:
    return await _open(uri, flags, auth, timeout)


class AsyncConnect(AsyncEventsMixin):
    """A connection: virConnect's operations as coroutines."""

    def __init__(self, conn: AsyncConnection, uri: Optional[str], result: hs.OpenResult) -> None:
        self.connection = conn
        self._uri = uri
        self._result = result
        self._type: Optional[str] = None
        self._closed = False

    async def _call(self, number: int, args: Any = None, cname: str = "", proc: Optional[Procedure] = None) -> Any:
        if self._closed:
            raise make_error(C.VIR_ERR_INVALID_CONN, C.VIR_FROM_DOMAIN, cname)
        return await self.connection.call(P[number] if proc is None else proc, args)

    async def __aenter__(self) -> AsyncConnect:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if not self._closed:
            await self.close()

    async def close(self) -> int:
        if self._closed:
            raise make_error(C.VIR_ERR_INVALID_CONN, C.VIR_FROM_DOMAIN, "virConnectClose")
        self._closed = True
        await self.connection.close()
        return 0

    def isAlive(self) -> int:
        return 1 if self.connection.alive and not self._closed else 0

    async def rpc_call(self, procedure: Union[str, int], args: Any = None, *, timeout: Any = None) -> Any:
        from ._api import _proc

        try:
            proc = _proc(procedure)
        except KeyError:
            raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_RPC, f"unknown procedure {procedure!r}") from None
        return await self.connection.call(proc, args, timeout=timeout)

    async def getHostname(self) -> str:
        return str((await self._call(R.REMOTE_PROC_CONNECT_GET_HOSTNAME, None, "virConnectGetHostname")).hostname)

    async def getMaxVcpus(self, type: Optional[str]) -> int:  # noqa: A002
        ret = await self._call(
            R.REMOTE_PROC_CONNECT_GET_MAX_VCPUS, R.remote_connect_get_max_vcpus_args(type), "virConnectGetMaxVcpus"
        )
        return int(ret.max_vcpus)

    async def getFreeMemory(self) -> int:
        return int((await self._call(R.REMOTE_PROC_NODE_GET_FREE_MEMORY, None, "virNodeGetFreeMemory")).freeMem)

    async def getInfo(self) -> list[Any]:
        return _ops.node_info(await self._call(R.REMOTE_PROC_NODE_GET_INFO, None, "virNodeGetInfo"))

    async def getCellsFreeMemory(self, startCell: int, maxCells: int) -> list[int]:
        if maxCells > R.REMOTE_NODE_MAX_CELLS:
            raise make_error(
                C.VIR_ERR_RPC, C.VIR_FROM_REMOTE, f"too many NUMA cells: {maxCells} > {R.REMOTE_NODE_MAX_CELLS}"
            )
        ret = await self._call(
            R.REMOTE_PROC_NODE_GET_CELLS_FREE_MEMORY,
            R.remote_node_get_cells_free_memory_args(startCell, maxCells),
            "virNodeGetCellsFreeMemory",
        )
        return [int(c) for c in ret.cells]

    async def getType(self) -> str:
        if self._type is None:
            self._type = str((await self._call(R.REMOTE_PROC_CONNECT_GET_TYPE, None, "virConnectGetType")).type)
        return self._type

    async def getVersion(self) -> int:
        return int((await self._call(R.REMOTE_PROC_CONNECT_GET_VERSION, None, "virConnectGetVersion")).hv_ver)

    async def getLibVersion(self) -> int:
        return int((await self._call(R.REMOTE_PROC_CONNECT_GET_LIB_VERSION, None, "virConnectGetLibVersion")).lib_ver)

    def getURI(self) -> str:
        if self._uri is None:
            raise make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_REMOTE, "connection has no URI")
        return self._uri

    async def isSecure(self) -> int:
        ret = await self._call(R.REMOTE_PROC_CONNECT_IS_SECURE, None, "virConnectIsSecure")
        return _ops.secure(self.connection.is_secure, ret)

    async def isEncrypted(self) -> int:
        ret = await self._call(R.REMOTE_PROC_CONNECT_IS_SECURE, None, "virConnectIsEncrypted")
        return _ops.encrypted(self.connection.is_encrypted, self._result.auth_type, ret)

    async def getCapabilities(self) -> str:
        return str(
            (await self._call(R.REMOTE_PROC_CONNECT_GET_CAPABILITIES, None, "virConnectGetCapabilities")).capabilities
        )

    async def getSysinfo(self, flags: int = 0) -> str:
        ret = await self._call(
            R.REMOTE_PROC_CONNECT_GET_SYSINFO, R.remote_connect_get_sysinfo_args(flags), "virConnectGetSysinfo"
        )
        return str(ret.sysinfo)

    async def getSecurityModel(self) -> list[str]:
        return _ops.security_model(
            await self._call(R.REMOTE_PROC_NODE_GET_SECURITY_MODEL, None, "virNodeGetSecurityModel")
        )

    async def listAllDomains(self, flags: int = 0) -> list[AsyncDomain]:
        ret = await self._call(
            R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS,
            R.remote_connect_list_all_domains_args(1, flags),
            "virConnectListAllDomains",
            _domref.LIST_ALL_DOMAINS,  # decodes flat
        )
        flat = _domref.flat(ret)
        new = object.__new__
        out = []
        it = iter(flat)
        with _gcpause.bulk(len(flat) // 3):
            for name, uuid, id_ in zip(it, it, it):
                d = new(AsyncDomain)
                d._conn = self
                d._name = name
                d._uuid = uuid
                d._id = id_
                d._ref = None
                out.append(d)
        return out

    async def lookupByName(self, name: str) -> AsyncDomain:
        ret = await self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME, R.remote_domain_lookup_by_name_args(name), "virDomainLookupByName"
        )
        return AsyncDomain(self, ret.dom)

    async def lookupByID(self, id: int) -> AsyncDomain:  # noqa: A002
        ret = await self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_ID, R.remote_domain_lookup_by_id_args(id), "virDomainLookupByID"
        )
        return AsyncDomain(self, ret.dom)

    async def lookupByUUIDString(self, uuidstr: str) -> AsyncDomain:
        raw = _ops.parse_uuid(uuidstr)
        if raw is None:
            raise make_error(
                C.VIR_ERR_INVALID_ARG, C.VIR_FROM_DOMAIN, "uuidstr in virDomainLookupByUUIDString must be a valid UUID"
            )
        ret = await self._call(
            R.REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID, R.remote_domain_lookup_by_uuid_args(raw), "virDomainLookupByUUID"
        )
        return AsyncDomain(self, ret.dom)


class AsyncDomain(_domref.DomainRef):
    """A domain: virDomain's operations as coroutines."""

    __slots__ = ("_conn", "__weakref__", "__dict__")

    def __init__(self, conn: AsyncConnect, dom: Any) -> None:
        self._conn = conn
        self._set(dom)

    async def _call(self, number: int, args: Any, cname: str) -> Any:
        return await self._conn.connection.call(P[number], args)

    def connect(self) -> AsyncConnect:
        return self._conn

    def name(self) -> str:
        return self._name

    def ID(self) -> int:
        return self._id

    def UUID(self) -> bytes:
        return self._uuid

    def UUIDString(self) -> str:
        return _ops.format_uuid(self._uuid)

    async def info(self) -> list[int]:
        return _ops.domain_info(
            await self._call(
                R.REMOTE_PROC_DOMAIN_GET_INFO, R.remote_domain_get_info_args(self._dom), "virDomainGetInfo"
            )
        )

    async def state(self, flags: int = 0) -> list[int]:
        ret = await self._call(
            R.REMOTE_PROC_DOMAIN_GET_STATE, R.remote_domain_get_state_args(self._dom, flags), "virDomainGetState"
        )
        return [ret.state, ret.reason]

    async def XMLDesc(self, flags: int = 0) -> str:
        ret = await self._call(
            R.REMOTE_PROC_DOMAIN_GET_XML_DESC,
            R.remote_domain_get_xml_desc_args(self._dom, flags),
            "virDomainGetXMLDesc",
        )
        return str(ret.xml)

    async def suspend(self) -> int:
        await self._call(R.REMOTE_PROC_DOMAIN_SUSPEND, R.remote_domain_suspend_args(self._dom), "virDomainSuspend")
        return 0

    async def resume(self) -> int:
        await self._call(R.REMOTE_PROC_DOMAIN_RESUME, R.remote_domain_resume_args(self._dom), "virDomainResume")
        return 0

    async def create(self) -> int:
        ret = await self._call(
            R.REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS,
            R.remote_domain_create_with_flags_args(self._dom, 0),
            "virDomainCreate",
        )
        self._dom = ret.dom
        return 0

    async def destroy(self) -> int:
        await self._call(R.REMOTE_PROC_DOMAIN_DESTROY, R.remote_domain_destroy_args(self._dom), "virDomainDestroy")
        self._stopped()
        return 0

    def __repr__(self) -> str:
        return f"<AsyncDomain {self._name!r} id={self._id}>"


__all__ = ["open", "openReadOnly", "openAuth", "AsyncConnect", "AsyncDomain", "AsyncConnection", "Call"]
