"""The exception hierarchy: ``libvirtError`` and its finer subclasses.

Contract:

* :class:`libvirtError` behaves as libvirt-python's: ``libvirtError(defmsg)``
  picks up the calling thread's last error (``.err``, the 9-tuple
  ``(code, domain, message, level, str1, str2, str3, int1, int2)``),
  ``str(e)`` is the libvirt message (or ``defmsg`` without one), and the
  ``get_error_*``/``get_str*``/``get_int*`` accessors read ``.err``.
* Errors that pyvirtrpc raises itself carry their fields explicitly (built
  by :func:`make_error`, :func:`system_error` or :func:`from_remote`), in
  the same shape libvirt's ``virReportErrorHelper`` gives them: message
  formatted from libvirt's table for the code, ``str1`` the format, ``str2``
  the detail, ``int1``/``int2`` -1 (or errno for system errors).
* One subclass per error code of interest is registered through
  ``__init_subclass__``; :func:`error_class` maps any code to its class, so
  ``except libvirtError`` still catches everything.

This module holds no thread state: the per-thread last error lives in
:mod:`pyvirtrpc._lasterror`, which installs the getter used by
``libvirtError(defmsg)`` when it is imported.
"""

from __future__ import annotations

import os

from ._errtables import MESSAGES
from ._gen import constants as C

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations only
    from typing import Any, Callable, ClassVar, Optional

    ErrTuple = tuple[int, int, Optional[str], int, Optional[str], Optional[str], Optional[str], int, int]


def _no_last_error() -> Optional[ErrTuple]:
    return None


#: Replaced by pyvirtrpc._lasterror with the per-thread getter.
last_error_getter: Callable[[], Optional[ErrTuple]] = _no_last_error


class libvirtError(Exception):  # noqa: N801 - libvirt-python's name
    """A libvirt error; the root of every error pyvirtrpc raises."""

    _by_code: ClassVar[dict[int, type[libvirtError]]] = {}
    #: the code this class stands for (None for the root)
    code: ClassVar[Optional[int]] = None

    def __init_subclass__(cls, code: Optional[int] = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            libvirtError._by_code.setdefault(code, cls)

    def __init__(self, defmsg: str, *, err: Optional[ErrTuple] = None) -> None:
        if err is None:
            err = last_error_getter()
        self.err: Optional[ErrTuple] = err
        msg = defmsg if err is None or err[2] is None else err[2]
        Exception.__init__(self, msg)

    # libvirt-python accessors -------------------------------------------
    def get_error_code(self) -> Optional[int]:
        return None if self.err is None else self.err[0]

    def get_error_domain(self) -> Optional[int]:
        return None if self.err is None else self.err[1]

    def get_error_message(self) -> Optional[str]:
        return None if self.err is None else self.err[2]

    def get_error_level(self) -> Optional[int]:
        return None if self.err is None else self.err[3]

    def get_str1(self) -> Optional[str]:
        return None if self.err is None else self.err[4]

    def get_str2(self) -> Optional[str]:
        return None if self.err is None else self.err[5]

    def get_str3(self) -> Optional[str]:
        return None if self.err is None else self.err[6]

    def get_int1(self) -> Optional[int]:
        return None if self.err is None else self.err[7]

    def get_int2(self) -> Optional[int]:
        return None if self.err is None else self.err[8]


# ------------------------------------------------------- finer classes
class InternalError(libvirtError, code=C.VIR_ERR_INTERNAL_ERROR):
    """A client-side failure: closed socket, keepalive timeout, ..."""


class NoSupportError(libvirtError, code=C.VIR_ERR_NO_SUPPORT):
    """The daemon does not know the procedure ("unknown procedure")."""


class NoConnectError(libvirtError, code=C.VIR_ERR_NO_CONNECT):
    """No driver for the URI, or a URI without a scheme."""


class InvalidArgError(libvirtError, code=C.VIR_ERR_INVALID_ARG):
    """A bad argument or URI parameter, found before anything was sent."""


class ConfSyntaxError(libvirtError, code=C.VIR_ERR_CONF_SYNTAX):
    """A malformed libvirt.conf or auth.conf."""


class TransportError(libvirtError, code=C.VIR_ERR_SYSTEM_ERROR):
    """connect/read/write failed or the peer hung up; ``get_int1()`` is errno."""


class RPCError(libvirtError, code=C.VIR_ERR_RPC):
    """A protocol violation: framing, decoding, unmatched reply, TLS confirmation."""


class DecodeError(RPCError):
    """Bytes that are not a valid message or value (VIR_ERR_RPC, VIR_FROM_RPC)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, err=_fields(C.VIR_ERR_RPC, C.VIR_FROM_RPC, detail))


class EncodeError(RPCError):
    """A value that cannot be encoded as its XDR type (VIR_ERR_RPC, VIR_FROM_RPC)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, err=_fields(C.VIR_ERR_RPC, C.VIR_FROM_RPC, detail))


class AuthFailedError(libvirtError, code=C.VIR_ERR_AUTH_FAILED):
    """Authentication or certificate verification failed."""


class AuthCancelledError(libvirtError, code=C.VIR_ERR_AUTH_CANCELLED):
    """The user (or polkit) cancelled authentication."""


class AuthUnavailableError(libvirtError, code=C.VIR_ERR_AUTH_UNAVAILABLE):
    """No authentication agent was available (polkit)."""


class OperationInvalidError(libvirtError, code=C.VIR_ERR_OPERATION_INVALID):
    """The operation is not valid in the current state."""


class OperationUnsupportedError(libvirtError, code=C.VIR_ERR_OPERATION_UNSUPPORTED):
    """Not supported in this configuration (e.g. mode=direct over tcp)."""


class OperationTimeoutError(libvirtError, code=C.VIR_ERR_OPERATION_TIMEOUT):
    """A call exceeded its timeout; the connection stays usable."""


class ConfigUnsupportedError(libvirtError, code=C.VIR_ERR_CONFIG_UNSUPPORTED):
    """Unsupported configuration (e.g. no event loop registered)."""


def error_class(code: int) -> type[libvirtError]:
    return libvirtError._by_code.get(code, libvirtError)


def _fields(code: int, domain: int, detail: Optional[str]) -> ErrTuple:
    """The fields virReportErrorHelper gives an error (libvirt's virerror.c)."""
    msg, fmt = MESSAGES.get(code, ("unknown error", "%s"))
    if detail is None:
        return (code, domain, msg, C.VIR_ERR_ERROR, msg, None, None, -1, -1)
    return (code, domain, fmt % detail, C.VIR_ERR_ERROR, fmt, detail, None, -1, -1)


def make_error(code: int, domain: int, detail: Optional[str] = None) -> libvirtError:
    """A locally detected error, shaped as libvirt would report it."""
    err = _fields(code, domain, detail)
    cls = error_class(code)
    exc = cls.__new__(cls)
    libvirtError.__init__(exc, err[2] or "", err=err)
    return exc


def closed_error() -> libvirtError:
    """libvirt's error for a connection whose socket is gone (closed, or never opened)."""
    return make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, "client socket is closed")


def system_error(domain: int, errno: int, detail: Optional[str]) -> TransportError:
    """libvirt's virReportSystemError: ``"<detail>: <strerror>"``, int1 = errno."""
    text = os.strerror(errno)
    full = f"{detail}: {text}" if detail else text
    err: ErrTuple = (C.VIR_ERR_SYSTEM_ERROR, domain, full, C.VIR_ERR_ERROR, "%s", full, None, errno, -1)
    exc = TransportError.__new__(TransportError)
    libvirtError.__init__(exc, full, err=err)
    return exc


def from_fields(err: ErrTuple) -> libvirtError:
    """An error with exactly these fields (as received from the daemon)."""
    cls = error_class(err[0])
    exc = cls.__new__(cls)
    libvirtError.__init__(exc, err[2] or "", err=err)
    return exc


def from_remote(
    code: int,
    domain: int,
    message: Optional[str],
    level: int,
    str1: Optional[str],
    str2: Optional[str],
    str3: Optional[str],
    int1: int,
    int2: int,
    *,
    stream: bool = False,
) -> libvirtError:
    """Re-raise a ``remote_error`` as the C client does (virnetclientprogram.c).

    The one rewrite: an "unknown procedure" RPC error from an older daemon
    becomes ``VIR_ERR_NO_SUPPORT``; for stream errors only when the domain
    is REMOTE.  A missing message reads "Unknown error".
    """
    if message is None:
        message = "Unknown error"
    if (
        code == C.VIR_ERR_RPC
        and level == C.VIR_ERR_ERROR
        and message.startswith("unknown procedure")
        and (domain == C.VIR_FROM_REMOTE or (not stream and domain == C.VIR_FROM_RPC))
    ):
        code = C.VIR_ERR_NO_SUPPORT
    return from_fields((code, domain, message, level, str1, str2, str3, int1, int2))
