"""The per-thread "last error" and the error handler, as libvirt-python has them.

Contract:

* :func:`get` returns the calling thread's last error as libvirt-python's
  9-tuple ``(code, domain, message, level, str1, str2, str3, int1, int2)``
  or None; :func:`reset` clears it.  Public API calls reset it on entry
  and :func:`report` sets it when they fail (libvirt's virResetLastError /
  virDispatchError).
* :func:`report` then calls the handler registered with
  :func:`register_handler` as ``handler(ctx, err_tuple)``; with no handler
  it prints libvirt's default line to stderr
  (``libvirt: <domain name> error : <message>``), as libvirt-python does
  until an application registers one.
* Importing this module makes ``libvirtError(defmsg)`` pick up the last
  error, as libvirt-python's constructor does.
"""

from __future__ import annotations

import sys
from _thread import _local

from . import errors
from ._errtables import DOMAIN_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from .errors import ErrTuple

    Handler = Callable[[Any, ErrTuple], Any]

_state = _local()  # threading.local, without importing threading
_handler: Optional[Handler] = None
_handler_ctx: Any = None


def get() -> Optional[ErrTuple]:
    err: Optional[ErrTuple] = getattr(_state, "err", None)
    return err


def reset() -> None:
    _state.err = None


def set_error(err: Optional[ErrTuple]) -> None:
    _state.err = err


def register_handler(handler: Optional[Handler], ctx: Any) -> int:
    """libvirt.registerErrorHandler: always returns 1; None restores the default."""
    global _handler, _handler_ctx
    if handler is not None and not callable(handler):
        raise TypeError("registerErrorHandler: handler must be callable or None")
    _handler = handler
    _handler_ctx = ctx
    return 1


def default_line(err: ErrTuple) -> str:
    """virDefaultErrorFunc's line (without the object-name part we never have)."""
    code, domain, message, level = err[0], err[1], err[2], err[3]
    dom = DOMAIN_NAMES[domain] if 0 <= domain < len(DOMAIN_NAMES) else "Unknown"
    lvl = {1: "warning", 2: "error"}.get(level, "")
    msg = message or ""
    line = f"libvirt: {dom} {lvl} : {msg}"
    if code == 35 and domain == 5 and err[7]:  # VIR_ERR_XML_DETAIL / VIR_FROM_XML
        line = f"libvirt: {dom} {lvl} : line {err[7]}: {msg}"
    return line if msg.endswith("\n") else line + "\n"


def report(exc: errors.libvirtError, conn_handler: Optional[tuple[Handler, Any]] = None) -> None:
    """Record ``exc`` as this thread's last error and dispatch it to the handler.

    ``conn_handler`` is a connection's own ``(handler, ctx)``, which takes
    priority over the global one as in libvirt's virDispatchError.
    """
    err = exc.err
    if err is None:
        err = (1, 0, str(exc) or "An error occurred, but the cause is unknown", 2, None, None, None, 0, 0)
        exc.err = err
    _state.err = err
    if conn_handler is not None:
        conn_handler[0](conn_handler[1], err)
        return
    handler = _handler
    if handler is not None:
        handler(_handler_ctx, err)
    else:
        try:
            sys.stderr.write(default_line(err))
        except (OSError, ValueError):
            pass  # stderr closed: libvirt ignores fprintf failures too


errors.last_error_getter = get
