"""pyvirtrpc: a pure-Python client of the libvirt remote RPC protocol.

Drop-in for libvirt-python: ``import pyvirtrpc as libvirt`` and existing
programs run unchanged, over unix, tcp, tls and ssh, with no C library.

This module is libvirt-python's ``libvirt`` module: the ``VIR_*``
constants, :func:`open`, :func:`openReadOnly`, :func:`openAuth`,
:class:`virConnect`, :class:`virDomain`, :class:`libvirtError` and the
error functions.  The asyncio client is :mod:`pyvirtrpc.aio`, the wire
decoder for protocol debugging :mod:`pyvirtrpc.wire`, the URI parser
:mod:`pyvirtrpc.uri`.

Importing it loads neither ``asyncio`` nor ``ssl``: those come only when a
TLS URI or the asyncio client is used.
"""

from __future__ import annotations

from . import _lasterror
from ._api import virConnect as virConnect
from ._api import virDomain as virDomain
from ._gen.constants import *  # noqa: F403 - libvirt-python exposes every VIR_* constant
from ._gen.constants import LIBVIR_VERSION_NUMBER
from .errors import libvirtError as libvirtError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Union

    from .event import virEventAddHandle as virEventAddHandle
    from .event import virEventAddTimeout as virEventAddTimeout
    from .event import virEventInvokeFreeCallback as virEventInvokeFreeCallback
    from .event import virEventRegisterDefaultImpl as virEventRegisterDefaultImpl
    from .event import virEventRegisterImpl as virEventRegisterImpl
    from .event import virEventRemoveHandle as virEventRemoveHandle
    from .event import virEventRemoveTimeout as virEventRemoveTimeout
    from .event import virEventRunDefaultImpl as virEventRunDefaultImpl
    from .event import virEventUpdateHandle as virEventUpdateHandle
    from .event import virEventUpdateTimeout as virEventUpdateTimeout

__version__ = "0.1.0"


def _opened(name: Optional[str], flags: int, auth: Any, timeout: Optional[float]) -> virConnect:
    _lasterror.reset()
    try:
        from ._open import open_uri

        return open_uri(name, flags, auth, timeout=timeout)
    except libvirtError as exc:
        _lasterror.report(exc)
        raise


def open(name: Optional[str] = None, flags: int = 0, *, timeout: Optional[float] = None) -> virConnect:  # noqa: A001
    """virConnectOpen: a read-write connection to the URI (None: the default URI)."""
    return _opened(name, flags, None, timeout)


def openReadOnly(name: Optional[str] = None, *, timeout: Optional[float] = None) -> virConnect:
    """virConnectOpenReadOnly: a read-only connection."""
    return _opened(name, VIR_CONNECT_RO, None, timeout)  # noqa: F405


def openAuth(uri: Optional[str], auth: Any, flags: int = 0, *, timeout: Optional[float] = None) -> virConnect:
    """virConnectOpenAuth; ``auth`` is ``[credtypes, callback, cbdata]``.

    The callback is called as ``callback(creds, cbdata)`` with ``creds`` a
    list of ``[type, prompt, challenge, defresult, result]`` lists; it
    fills ``cred[4]`` and returns 0 (or -1 to fail the open).
    """
    return _opened(uri, flags, auth, timeout)


def getVersion(name: Optional[str] = None) -> Union[int, tuple[int, int]]:
    """virGetVersion: the libvirt version this library implements (and a driver's)."""
    if name is None:
        return LIBVIR_VERSION_NUMBER
    return (LIBVIR_VERSION_NUMBER, LIBVIR_VERSION_NUMBER)


def virInitialize() -> int:
    """Nothing to initialise in a pure client; kept for compatibility."""
    return 0


def registerErrorHandler(f: Optional[Callable[[Any, Any], Any]], ctx: Any) -> int:
    """Call ``f(ctx, err)`` for every error instead of printing it to stderr."""
    return _lasterror.register_handler(f, ctx)


def virGetLastError() -> Optional[tuple[Any, ...]]:
    return _lasterror.get()


def virGetLastErrorCode() -> int:
    err = _lasterror.get()
    return 0 if err is None else int(err[0])


def virGetLastErrorDomain() -> int:
    err = _lasterror.get()
    return 0 if err is None else int(err[1])


def virGetLastErrorMessage() -> str:
    err = _lasterror.get()
    if err is None:
        return "no error"
    return err[2] if err[2] is not None else "unknown error"


def virResetLastError() -> None:
    _lasterror.reset()


_EVENT_NAMES = frozenset(
    {
        'virEventAddHandle',
        'virEventAddTimeout',
        'virEventInvokeFreeCallback',
        'virEventRegisterDefaultImpl',
        'virEventRegisterImpl',
        'virEventRemoveHandle',
        'virEventRemoveTimeout',
        'virEventRunDefaultImpl',
        'virEventUpdateHandle',
        'virEventUpdateTimeout',
    }
)


def __getattr__(name: str) -> Any:
    """The virEvent* functions, imported on first use (pyvirtrpc.event pulls in
    threading, which the sync unix path otherwise never needs)."""
    if name in _EVENT_NAMES:
        from . import event

        value = getattr(event, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _EVENT_NAMES)
