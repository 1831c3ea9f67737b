"""Logging, configured from libvirt's environment variables.

Contract:

* ``LIBVIRT_DEBUG`` (``1|debug``, ``2|info``, ``3|warn``, ``4|error``; the
  default priority), ``LIBVIRT_LOG_FILTERS`` (space-separated ``L:match``:
  records whose category contains ``match`` use priority ``L``; a leading
  ``+`` is ignored) and ``LIBVIRT_LOG_OUTPUTS`` (space-separated
  ``L:stderr``, ``L:file:PATH``, ``L:syslog:IDENT``, ``L:journald`` (sent to
  syslog)) are honoured through the standard :mod:`logging` module, on the
  ``pyvirtrpc`` logger tree.  Categories are libvirt's names: ``rpc``
  (packets, framing), ``rpc.sasl``, ``rpc.tls``, ``remote`` (the open and
  auth steps), ``event``, ``uri``, ``conf``.
* When none of the variables is set, nothing is configured: the
  application's own logging setup applies (records propagate as usual).
* Invalid values are ignored with a warning, as libvirt does.
* :mod:`logging` is only imported when a variable is set or the
  application already imported it: importing it costs milliseconds of
  start-up, and an application that never logs never pays for it.
* Secrets are never passed to a logger (the SASL and auth code log
  mechanism names and sizes, never data).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Optional

ROOT = "pyvirtrpc"
_PRIORITIES = {"1": 10, "debug": 10, "2": 20, "info": 20, "3": 30, "warn": 30, "warning": 30, "4": 40, "error": 40}
_configured = False


def _env() -> tuple[Optional[str], Optional[str], Optional[str]]:
    return (
        os.environ.get("LIBVIRT_DEBUG") or None,
        os.environ.get("LIBVIRT_LOG_FILTERS") or None,
        os.environ.get("LIBVIRT_LOG_OUTPUTS") or None,
    )


def active() -> bool:
    """Is logging in use at all (a LIBVIRT_* variable set, or logging imported)?"""
    return "logging" in sys.modules or any(_env())


def logger(category: str) -> Optional[logging.Logger]:
    """The logger for a libvirt category, or None when logging is not in use."""
    if not active():
        return None
    configure()
    import logging

    return logging.getLogger(f"{ROOT}.{category}")


def debug_enabled(category: str) -> bool:
    log = logger(category)
    return log is not None and log.isEnabledFor(10)


def _priority(text: str) -> Optional[int]:
    return _PRIORITIES.get(text.strip().lower())


def configure(force: bool = False) -> None:
    """Apply the LIBVIRT_* variables once (or again with ``force``)."""
    global _configured
    if _configured and not force:
        return
    _configured = True
    debug, filters, outputs = _env()
    if not (debug or filters or outputs):
        return
    import logging
    import logging.handlers

    root = logging.getLogger(ROOT)
    warn = logging.getLogger(f"{ROOT}.conf").warning
    default = 30
    if debug:
        p = _priority(debug)
        if p is None:
            warn("ignoring invalid LIBVIRT_DEBUG value %r", debug)
        else:
            default = p
    rules: list[tuple[int, str]] = []
    for item in (filters or "").split():
        level, _, match = item.partition(":")
        p = _priority(level)
        match = match.lstrip("+")
        if p is None or not match:
            warn("ignoring invalid LIBVIRT_LOG_FILTERS entry %r", item)
            continue
        rules.append((p, match))

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            category = record.name[len(ROOT) + 1 :] if record.name.startswith(ROOT + ".") else record.name
            for p, match in rules:
                if match in category:
                    return record.levelno >= p
            return record.levelno >= default

    handlers: list[logging.Handler] = []
    fmt = logging.Formatter("%(asctime)s: %(process)d: %(levelname)s : %(name)s : %(message)s")
    for item in (outputs or "1:stderr").split():
        parts = item.split(":", 2)
        p = _priority(parts[0]) if parts else None
        if p is None or len(parts) < 2:
            warn("ignoring invalid LIBVIRT_LOG_OUTPUTS entry %r", item)
            continue
        kind = parts[1]
        handler: logging.Handler
        if kind == "stderr":
            handler = logging.StreamHandler(sys.stderr)
        elif kind == "file" and len(parts) == 3 and parts[2]:
            handler = logging.FileHandler(parts[2])
        elif kind in ("syslog", "journald"):
            address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
            handler = logging.handlers.SysLogHandler(address=address)
            ident = parts[2] if kind == "syslog" and len(parts) == 3 else "libvirt"
            handler.ident = f"{ident}: "
        else:
            warn("ignoring invalid LIBVIRT_LOG_OUTPUTS entry %r", item)
            continue
        handler.setLevel(p)
        handler.setFormatter(fmt)
        handler.addFilter(_Filter())
        handlers.append(handler)
    for old in list(root.handlers):
        if getattr(old, "_pyvirtrpc", False):
            root.removeHandler(old)
    for handler in handlers:
        handler._pyvirtrpc = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    lowest = min([default] + [p for p, _ in rules])
    root.setLevel(lowest)
    if handlers:
        root.propagate = False
