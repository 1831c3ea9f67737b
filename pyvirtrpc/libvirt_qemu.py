"""libvirt-python's ``libvirt_qemu`` module: QEMU-specific functions.

``import pyvirtrpc.libvirt_qemu as libvirt_qemu``.

Contract: the functions take the connection first, as libvirt-python's do.

* ``qemuMonitorEventRegister(conn, dom, event, cb, opaque, flags=0) -> id``:
  ``cb(conn, dom, event, seconds, micros, details, opaque)`` for every QEMU
  monitor event named ``event`` (None: all; ``flags`` may ask for a regex
  and/or case-insensitive match) of ``dom`` (None: every domain).  The
  daemon filters; each registration is its own server callback.  Needs an
  event loop (see :mod:`pyvirtrpc.event`) and a read-write connection.
* ``qemuMonitorEventDeregister(conn, callbackID)``.
* The registered opaques are kept in ``conn.qemuMonitorEventCallbackID``.
"""

from __future__ import annotations

from ._gen.constants_qemu import *  # noqa: F403 - libvirt_qemu exposes its VIR_* constants

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from ._api import virConnect

__all__ = ["qemuMonitorEventRegister", "qemuMonitorEventDeregister"]


def qemuMonitorEventRegister(
    conn: virConnect, dom: Any, event: Optional[str], cb: Callable[..., Any], opaque: Any, flags: int = 0
) -> int:
    """Adds a qemu monitor event callback; returns its id."""
    if not hasattr(conn, "qemuMonitorEventCallbackID"):
        conn.qemuMonitorEventCallbackID = {}  # type: ignore[attr-defined]
    ret = conn._qemu_monitor_event_register(dom, event, cb, opaque, flags)
    conn.qemuMonitorEventCallbackID[ret] = opaque  # type: ignore[attr-defined]
    return ret


def qemuMonitorEventDeregister(conn: virConnect, callbackID: int) -> None:
    """Removes a qemu monitor event callback."""
    try:
        conn._qemu_monitor_event_deregister(callbackID)
        del conn.qemuMonitorEventCallbackID[callbackID]  # type: ignore[attr-defined]
    except AttributeError:
        pass
