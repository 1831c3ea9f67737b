"""TLS as libvirt's client does it (virnettlscontext.c, virnetclient.c), on OpenSSL.

Contract:

* :func:`client_context` is ``virNetTLSContextNewClientPath``, run before
  any network I/O: it locates the files (:func:`locate_credentials`:
  ``pkipath=DIR`` as given, else for non-root ``~/.pki/libvirt/`` with
  per-file fallbacks to ``/etc/pki/CA/cacert.pem``, ``/etc/pki/CA/cacrl.pem``,
  ``/etc/pki/libvirt/clientcert.pem`` and
  ``/etc/pki/libvirt/private/clientkey.pem``), sanity-checks our own
  certificate and the CAs unless ``no_sanity`` (:func:`sanity_check`), and
  loads the CA, the CRL (if the file exists) and the certificate/key pair
  (optional on a client).  Every failure is libvirt's ``SYSTEM_ERROR`` in
  domain RPC with libvirt's message ("Cannot read CA certificate '%s'",
  "The client certificate %s has expired", "Our own certificate %s failed
  validation against %s: %s", ...).
* :func:`start_session` takes the connected TCP socket through
  ``virNetClientSetTLSSession``: the priority string (URI ``tls_priority``,
  libvirt.conf, else ``NORMAL``) is mapped onto OpenSSL
  (:func:`map_priority`; a valid GnuTLS string that OpenSSL cannot express
  is refused, an invalid one gets GnuTLS's own text: ``SYSTEM_ERROR``
  "Failed to set TLS session priority to %s: %s"), the handshake runs
  without SNI (handshake failures are ``AUTH_FAILED`` "TLS handshake
  failed %s" with GnuTLS's wording where the cause is the same), then the
  server certificate is checked as ``virNetTLSContextCheckCertificate``
  does: chain to the CA (OpenSSL), validity, the host name (IP SANs for an
  IP), not a CA, key usage and purpose (enforced only when the extension
  is critical, else a warning), not revoked by the CRL.  Any failure is
  ``AUTH_FAILED``/RPC "Failed to verify peer's certificate", the detail
  going to the log; with ``no_verify=1`` it is logged as a warning and
  ignored.  Last the server's one-byte confirmation is read: a read error
  or EOF without close_notify is ``SYSTEM_ERROR`` "Unable to read TLS
  confirmation" (errno; EIO as GnuTLS gives), a clean close or a byte
  other than 1 is ``VIR_ERR_RPC`` "server verification (of our
  certificate or IP address) failed".  libvirt waits for ever; here the
  handshake and confirmation share the open's timeout, or
  :data:`SETUP_TIMEOUT` without one (ETIMEDOUT).
* :class:`TlsChannel` is the resulting channel (``is_secure`` and
  ``is_encrypted`` true, ``tls_key_bits`` the cipher's key size in bits,
  libvirt's SASL external SSF).  It runs OpenSSL over memory BIOs: the SSL
  state is touched under a lock and socket I/O happens outside it, so one
  thread may send while another receives; :meth:`TlsChannel.asyncio_adopt`
  hands the same session to an asyncio event loop.

* Parsed certificates and loaded OpenSSL contexts are kept between opens,
  keyed by the files' identities (inode, size, mtime), the verification
  mode and the priority: a changed file is read again, and every check
  runs on every open.

Where this differs from libvirt + GnuTLS: OpenSSL builds and checks the
chain (it also refuses a server certificate whose extended key usage omits
TLS server even when not critical, where libvirt only warns); OpenSSL
sends our certificate even when the server's CA list does not name its
issuer (GnuTLS sends none; the server refuses either way); GnuTLS priority
keywords that select signature algorithms, groups, TLS 1.3 cipher suites
or GnuTLS's own security profiles (SECURE192, SECURE256, SUITEB*) are
refused because Python's ``ssl`` cannot express them; the handshake and
the confirmation have a deadline.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import ssl
import time
import warnings
from _thread import allocate_lock
from time import monotonic

from .. import _log
from .._cache import file_sig, remember
from .._gen import constants as C
from ..errors import libvirtError, make_error, system_error
from . import _x509

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Callable, Optional

#: SYSCONFDIR "/pki" paths (virnettlscontext.c)
LIBVIRT_CACERT = "/etc/pki/CA/cacert.pem"
LIBVIRT_CACRL = "/etc/pki/CA/cacrl.pem"
LIBVIRT_CLIENTCERT = "/etc/pki/libvirt/clientcert.pem"
LIBVIRT_CLIENTKEY = "/etc/pki/libvirt/private/clientkey.pem"

#: libvirt's build default priority (meson option tls_priority)
DEFAULT_PRIORITY = "NORMAL"
#: how long the handshake plus confirmation may take when the open has no timeout
SETUP_TIMEOUT = 30.0
#: libvirt reads at most this many CA certificates from cacert.pem (MAX_CERTS)
MAX_CA_CERTS = 16
#: bytes asked from the socket per read (below glibc's 128 KiB mmap threshold: a larger
#: buffer costs an mmap/munmap pair per read, ~30 us on the 2-core test VM)
RECV_SIZE = 65536
#: plaintext asked from OpenSSL per read: one record's worth (TLS records carry
#: at most 16 KiB), so that a small reply does not cost a 64 KiB allocation
RECORD_SIZE = 16384


def _rpc_error(code: int, detail: str) -> libvirtError:
    return make_error(code, C.VIR_FROM_RPC, detail)


def _warn(message: str) -> None:
    """libvirt's VIR_WARN: to the rpc.tls logger, stderr when nothing is configured."""
    log = _log.logger("rpc.tls")
    if log is None:
        import logging

        log = logging.getLogger(f"{_log.ROOT}.rpc.tls")
    log.warning("%s", message)


def _debug(message: str, *args: object) -> None:
    if _log.debug_enabled("rpc.tls"):
        log = _log.logger("rpc.tls")
        if log is not None:
            log.debug(message, *args)


# ------------------------------------------------------------ credentials
class Credentials:
    """The four file paths of a client TLS context (None: not used)."""

    __slots__ = ("cacert", "cacrl", "cert", "key")

    def __init__(self, cacert: str, cacrl: Optional[str], cert: Optional[str], key: Optional[str]) -> None:
        self.cacert = cacert
        self.cacrl = cacrl
        self.cert = cert
        self.key = key

    def __repr__(self) -> str:
        return f"Credentials(cacert={self.cacert!r}, cacrl={self.cacrl!r}, cert={self.cert!r}, key={self.key!r})"


def _exists(path: Optional[str]) -> bool:
    return path is not None and os.path.exists(path)


def locate_credentials(pkipath: Optional[str], try_user: bool, home: Optional[str] = None) -> Credentials:
    """virNetTLSContextLocateCredentials for a client (see the module docstring)."""
    cacert: Optional[str] = None
    cacrl: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    if pkipath:
        # an explicit directory is used whether or not the files exist
        cacert, cacrl = f"{pkipath}/cacert.pem", f"{pkipath}/cacrl.pem"
        cert, key = f"{pkipath}/clientcert.pem", f"{pkipath}/clientkey.pem"
    elif try_user:
        if home is None:
            from ..config import home_dir

            home = home_dir()
        user = f"{home}/.pki/libvirt"
        cacert, cacrl = f"{user}/cacert.pem", f"{user}/cacrl.pem"
        cert, key = f"{user}/clientcert.pem", f"{user}/clientkey.pem"
        # each trust file falls back on its own, the identity pair together
        if not _exists(cacert):
            cacert = None
        if not _exists(cacrl):
            cacrl = None
        if not _exists(key) or not _exists(cert):
            cert = key = None
    return Credentials(
        cacert or LIBVIRT_CACERT,
        cacrl or LIBVIRT_CACRL,
        cert or LIBVIRT_CLIENTCERT,
        key or LIBVIRT_CLIENTKEY,
    )


def _read_limited(path: str) -> bytes:
    """virFileReadAll(path, 1 << 16): the file, or libvirt's error."""
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 16) + 1)
    except OSError as exc:
        raise system_error(C.VIR_FROM_RPC, exc.errno or _errno.EIO, f"Failed to open file '{path}'") from None
    if len(data) > 1 << 16:
        raise _rpc_error(C.VIR_ERR_INTERNAL_ERROR, f"File '{path}' is too large")
    return data


# ------------------------------------------------------- certificate checks
class CertProblem(Exception):
    """A failed certificate check (libvirt reports it; non-critical usage problems are only warnings)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check_times(cert: _x509.Cert, name: str, is_server: bool, is_ca: bool, now: float) -> None:
    kind = "CA" if is_ca else ("server" if is_server else "client")
    if cert.not_after < now:
        raise CertProblem(f"The {kind} certificate {name} has expired")
    if cert.not_before > now:
        raise CertProblem(f"The {kind} certificate {name} is not yet active")


def _check_basic_constraints(cert: _x509.Cert, name: str, is_server: bool, is_ca: bool) -> None:
    try:
        ca = cert.is_ca
    except _x509.X509Error as exc:
        raise CertProblem(f"Unable to query certificate {name} basic constraints {exc}") from None
    if ca is True and not is_ca:
        role = "server" if is_server else "client"
        raise CertProblem(f"The certificate {name} basic constraints show a CA, but we need one for a {role}")
    if ca is False and is_ca:
        raise CertProblem(f"The certificate {name} basic constraints do not show a CA")
    if ca is None and is_ca:
        raise CertProblem(f"The certificate {name} is missing basic constraints for a CA")


def _check_key_usage(cert: _x509.Cert, name: str, is_ca: bool, warnings: list[str]) -> None:
    try:
        ku = cert.key_usage
    except _x509.X509Error as exc:
        raise CertProblem(f"Unable to query certificate {name} key usage {exc}") from None
    if ku is None:
        return  # no extension: every usage is allowed
    usage, critical = ku
    needed = (
        [(_x509.KEY_KEY_CERT_SIGN, "certificate signing")]
        if is_ca
        else [(_x509.KEY_DIGITAL_SIGNATURE, "digital signature"), (_x509.KEY_KEY_ENCIPHERMENT, "key encipherment")]
    )
    for bit, what in needed:
        if not usage & bit:
            message = f"Certificate {name} usage does not permit {what}"
            if critical:
                raise CertProblem(message)
            warnings.append(message)


def _check_key_purpose(cert: _x509.Cert, name: str, is_server: bool, warnings: list[str]) -> None:
    try:
        kp = cert.key_purposes
    except _x509.X509Error as exc:
        raise CertProblem(f"Unable to query certificate {name} key purpose {exc}") from None
    if kp is None or not kp[0]:
        return  # no purpose at all: client and server both allowed
    oids, critical = kp
    allow_server = allow_client = False
    for oid in oids:
        if oid == _x509.KP_TLS_WWW_SERVER:
            allow_server = True
        elif oid == _x509.KP_TLS_WWW_CLIENT:
            allow_client = True
        elif oid != _x509.KP_ANY:
            # libvirt lets any other purpose stand for both
            allow_server = allow_client = True
    if not (allow_server if is_server else allow_client):
        message = f"Certificate {name} purpose does not allow use for with a TLS {'server' if is_server else 'client'}"
        if critical:
            raise CertProblem(message)
        warnings.append(message)


def check_certificate(
    cert: _x509.Cert, name: str, is_server: bool, is_ca: bool, now: float, warnings: list[str]
) -> None:
    """virNetTLSContextCheckCert: times, basic constraints, key usage, purpose."""
    _check_times(cert, name, is_server, is_ca, now)
    _check_basic_constraints(cert, name, is_server, is_ca)
    _check_key_usage(cert, name, is_ca, warnings)
    if not is_ca:
        _check_key_purpose(cert, name, is_server, warnings)


_STATUS_REASONS = (
    (_x509.CERT_INSECURE_ALGORITHM, "The certificate uses an insecure algorithm"),
    (_x509.CERT_REVOKED, "The certificate has been revoked."),
    (_x509.CERT_SIGNER_NOT_FOUND, "The certificate hasn't got a known issuer."),
    (_x509.CERT_INVALID, "The certificate is not trusted."),
)


def status_reason(status: int) -> str:
    """libvirt's text for a GnuTLS verification status (the last matching test wins)."""
    for bit, text in _STATUS_REASONS:
        if status & bit:
            return text
    return "Invalid certificate"


#: parsed certificate files, by path and file identity (inode, size, mtime):
#: an open re-reads nothing that did not change, and sees any file that did
_PARSED: dict[tuple[str, int, Optional[tuple[int, int, int, int]]], list[_x509.Cert]] = {}
#: issuer checks of our own certificate, by both files' identities
_PAIRS: dict[tuple[Any, ...], int] = {}
#: loaded OpenSSL contexts, by everything that went into them
_CONTEXTS: dict[tuple[Any, ...], tuple[ssl.SSLContext, list[_x509.Cert], list[_x509.Crl]]] = {}
_CACHE_LIMIT = 32


def _load_certs(path: str, limit: int) -> list[_x509.Cert]:
    """The certificates of a PEM file (raises OSError, X509Error)."""
    key = (path, limit, file_sig(path))
    certs = _PARSED.get(key)
    if certs is None:
        certs = _x509.load_pem_certs(_read_limited(path), limit)
        remember(_PARSED, key, certs, _CACHE_LIMIT)
    return certs


def sanity_check(cacert: str, cert: Optional[str], now: Optional[float] = None) -> None:
    """virNetTLSContextSanityCheckCredentials for a client (raises libvirt's error)."""
    if now is None:
        now = time.time()
    own: Optional[_x509.Cert] = None
    cas: list[_x509.Cert] = []
    if cert is not None and os.access(cert, os.R_OK):
        try:
            certs = _load_certs(cert, 1)
        except _x509.X509Error:
            certs = []
        if not certs:
            raise _rpc_error(C.VIR_ERR_SYSTEM_ERROR, f"Unable to import client certificate {cert}")
        own = certs[0]
    if os.access(cacert, os.R_OK):
        try:
            cas = _load_certs(cacert, MAX_CA_CERTS)
        except _x509.X509Error:
            cas = []
        if not cas:
            raise _rpc_error(C.VIR_ERR_SYSTEM_ERROR, f"Unable to import CA certificate list {cacert}")
    warnings: list[str] = []
    try:
        if own is not None:
            assert cert is not None
            check_certificate(own, cert, False, False, now, warnings)
        for ca in cas:
            check_certificate(ca, cacert, False, True, now, warnings)
    except CertProblem as problem:
        raise _rpc_error(C.VIR_ERR_SYSTEM_ERROR, problem.message) from None
    finally:
        for w in warnings:
            _warn(w)
    if own is not None and cas:
        key = (cert, file_sig(cert), cacert, file_sig(cacert))
        status = _PAIRS.get(key)
        if status is None:
            status = _x509.issuer_status(own, cas)
            remember(_PAIRS, key, status, _CACHE_LIMIT)
        if status:
            raise _rpc_error(
                C.VIR_ERR_SYSTEM_ERROR,
                f"Our own certificate {cert} failed validation against {cacert}: {status_reason(status)}",
            )


# ---------------------------------------------------------------- context
class ClientContext:
    """virNetTLSContext for a client: the loaded OpenSSL context and what the checks need.

    ``priority_error`` is a priority string OpenSSL cannot take: libvirt
    reports it when the session starts, after the TCP connection.
    """

    __slots__ = ("ssl_context", "creds", "cas", "crls", "verify", "priority", "settings", "priority_error")

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        creds: Credentials,
        cas: list[_x509.Cert],
        crls: list[_x509.Crl],
        verify: bool,
        priority: str,
        settings: Optional[PrioritySettings] = None,
        priority_error: Optional[libvirtError] = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.creds = creds
        self.cas = cas
        self.crls = crls
        self.verify = verify
        self.priority = priority
        self.settings = settings
        self.priority_error = priority_error


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{text}" if not reason else f"{reason}: {text}"


def _no_password() -> str:
    # An encrypted key would make OpenSSL prompt on the terminal; libvirt
    # cannot use one either, so it fails to load.
    raise ValueError("encrypted private keys are not supported")


def client_context(plan: Any) -> ClientContext:
    """virNetTLSContextNewClientPath for a plan (see the module docstring).

    The loaded OpenSSL context is kept for later opens with the same files
    (same inode, size and mtime), verification mode and priority: loading
    the key is most of the cost, and every check still runs on each open.
    """
    creds = locate_credentials(plan.pkipath, os.geteuid() != 0)
    if not plan.no_sanity:
        sanity_check(creds.cacert, creds.cert)
    verify = not plan.no_verify
    priority = plan.tls_priority if plan.tls_priority else DEFAULT_PRIORITY
    settings: Optional[PrioritySettings]
    priority_error: Optional[libvirtError] = None
    try:
        settings = map_priority(priority)
    except libvirtError as exc:
        settings, priority_error = None, exc
    key = (
        creds.cacert,
        file_sig(creds.cacert),
        creds.cacrl,
        file_sig(creds.cacrl),
        creds.cert,
        file_sig(creds.cert),
        creds.key,
        file_sig(creds.key),
        verify,
        priority if settings is not None else None,
    )
    cached = _CONTEXTS.get(key)
    if cached is None:
        ctx, cas, crls = _load_context(creds, verify)
        if settings is not None:
            try:
                _apply_priority(ctx, settings)
            except (ssl.SSLError, ValueError) as exc:
                priority_error = _priority_error(priority, f"OpenSSL refused it ({_ssl_reason(exc)})")
                settings = None
        if priority_error is None:
            remember(_CONTEXTS, key, (ctx, cas, crls), _CACHE_LIMIT)
    else:
        ctx, cas, crls = cached
    return ClientContext(ctx, creds, cas, crls, verify, priority, settings, priority_error)


def _load_context(creds: Credentials, verify: bool) -> tuple[ssl.SSLContext, list[_x509.Cert], list[_x509.Crl]]:
    """virNetTLSContextLoadCredentials: CA, CRL, then our certificate and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # A TCP close without close_notify must be an error, as it is for GnuTLS
    # (it tells "the server refused our certificate" from a clean "no").  Some
    # Python builds (Debian's 3.11.2) set OP_IGNORE_UNEXPECTED_EOF by default.
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    # libvirt checks the host name itself, after the handshake, and sends no SNI
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if not os.path.exists(creds.cacert):
        raise system_error(C.VIR_FROM_RPC, _errno.ENOENT, f"Cannot read CA certificate '{creds.cacert}'")
    try:
        ctx.load_verify_locations(cafile=creds.cacert)
        cas = _load_certs(creds.cacert, MAX_CA_CERTS)
    except (ssl.SSLError, OSError, _x509.X509Error) as exc:
        raise _rpc_error(
            C.VIR_ERR_SYSTEM_ERROR, f"Unable to set x509 CA certificate: {creds.cacert}: {_ssl_reason(exc)}"
        ) from None
    crls: list[_x509.Crl] = []
    if creds.cacrl and os.path.exists(creds.cacrl):
        try:
            crls = _x509.load_pem_crls(_read_limited(creds.cacrl))
        except (OSError, _x509.X509Error) as exc:
            raise _rpc_error(
                C.VIR_ERR_SYSTEM_ERROR,
                f"Unable to set x509 certificate revocation list: {creds.cacrl}: {_ssl_reason(exc)}",
            ) from None
    if creds.cert and creds.key and os.path.exists(creds.cert) and os.path.exists(creds.key):
        try:
            ctx.load_cert_chain(creds.cert, creds.key, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _rpc_error(
                C.VIR_ERR_SYSTEM_ERROR,
                f"Unable to set x509 key and certificate: {creds.key}, {creds.cert}: {_ssl_reason(exc)}",
            ) from None
    else:
        _debug("Skipping non-existent cert %s key %s on client", creds.cert, creds.key)
    return ctx, cas, crls


# ------------------------------------------------------------ priorities
_INVALID = "The request is invalid."
_VERSIONS = ("TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3")
_SSL_VERSIONS = {
    "TLS1.0": ssl.TLSVersion.TLSv1,
    "TLS1.1": ssl.TLSVersion.TLSv1_1,
    "TLS1.2": ssl.TLSVersion.TLSv1_2,
    "TLS1.3": ssl.TLSVersion.TLSv1_3,
}
#: GnuTLS cipher name -> OpenSSL cipher-string element (TLS <= 1.2 suites)
_CIPHERS = {
    "AES-128-GCM": "AESGCM+AES128",
    "AES-256-GCM": "AESGCM+AES256",
    "AES-128-CCM": "AESCCM+AES128",
    "AES-256-CCM": "AESCCM+AES256",
    "AES-128-CBC": "AES128+SHA",
    "AES-256-CBC": "AES256+SHA",
    "CHACHA20-POLY1305": "CHACHA20",
    "CAMELLIA-128-CBC": "CAMELLIA128",
    "CAMELLIA-256-CBC": "CAMELLIA256",
    "CAMELLIA-128-GCM": "CAMELLIA128",
    "CAMELLIA-256-GCM": "CAMELLIA256",
    "3DES-CBC": "3DES",
    "ARCFOUR-128": "RC4",
}
#: the TLS 1.3 suites (Python's ssl cannot restrict them)
_TLS13_CIPHERS = {"AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305", "AES-128-CCM"}
_KX = {
    "RSA": "kRSA",
    "DHE-RSA": "kDHE+aRSA",
    "DHE-DSS": "kDHE+aDSS",
    "ECDHE-RSA": "kECDHE+aRSA",
    "ECDHE-ECDSA": "kECDHE+aECDSA",
}
#: key exchanges GnuTLS knows that have no OpenSSL counterpart here
_OTHER_KX = {
    "PSK",
    "DHE-PSK",
    "ECDHE-PSK",
    "ANON-DH",
    "ANON-ECDH",
    "SRP",
    "SRP-RSA",
    "SRP-DSS",
    "RSA-PSK",
    "VKO-GOST-12",
}
_MACS = {"SHA1": "SHA1", "SHA256": "SHA256", "SHA384": "SHA384", "MD5": "MD5", "AEAD": "AESGCM:CHACHA20"}
_BASES = {"NORMAL", "PFS", "PERFORMANCE", "SECURE128", "LEGACY", "NONE", "@SYSTEM", "SYSTEM"}
_UNMAPPABLE_BASES = {"SECURE192", "SECURE256", "SUITEB128", "SUITEB192"}
#: %-flags with no effect on a client of this kind, accepted and ignored
_IGNORED_FLAGS = {
    "COMPAT",
    "DUMBFW",
    "SERVER_PRECEDENCE",
    "SAFE_RENEGOTIATION",
    "PARTIAL_RENEGOTIATION",
    "STATELESS_COMPRESSION",
    "NO_EXTENSIONS",
    "NO_SESSION_HASH",
    "FORCE_ETM",
    "NO_ETM",
    "ALLOW_SMALL_RECORDS",
    "NO_STATUS_REQUEST",
    "VERIFY_ALLOW_SIGN_WITH_SHA1",
    "VERIFY_ALLOW_X509_V1_CA_CRT",
    "VERIFY_DISABLE_CRL_CHECKS",
}
_UNMAPPABLE_PREFIXES = ("SIGN-", "GROUP-", "CURVE-", "CTYPE-CLI-", "CTYPE-SRV-")


class PrioritySettings:
    """What a GnuTLS priority string becomes for OpenSSL."""

    __slots__ = ("min_version", "max_version", "ciphers", "no_tickets", "min_key_bits")

    def __init__(self) -> None:
        self.min_version: Optional[ssl.TLSVersion] = None
        self.max_version: Optional[ssl.TLSVersion] = None
        self.ciphers: Optional[str] = None
        self.no_tickets = False
        self.min_key_bits = 0


def _priority_error(priority: str, detail: str) -> libvirtError:
    return _rpc_error(C.VIR_ERR_SYSTEM_ERROR, f"Failed to set TLS session priority to {priority}: {detail}")


def map_priority(priority: str) -> PrioritySettings:
    """A GnuTLS priority string as OpenSSL settings, or libvirt's priority error.

    Handled: the base keywords NORMAL, PFS, PERFORMANCE, SECURE128, LEGACY,
    @SYSTEM and NONE; ``+/-VERS-*`` (a contiguous range of TLS 1.0-1.3);
    ``+/-`` ciphers, key exchanges and MACs for TLS <= 1.2 suites (removing
    a TLS 1.3 suite needs ``-VERS-TLS1.3``); ``%NO_TICKETS``; %-flags that
    do not matter to a client.  Anything else GnuTLS knows is refused as
    not mappable; anything it does not know gets its "The request is
    invalid.".
    """
    tokens = priority.split(":")
    settings = PrioritySettings()
    base = tokens[0].upper()
    if base in _UNMAPPABLE_BASES:
        raise _priority_error(priority, f"the GnuTLS profile {tokens[0]} cannot be expressed with OpenSSL")
    if base not in _BASES:
        raise _priority_error(priority, _INVALID)
    versions = set() if base == "NONE" else {"TLS1.2", "TLS1.3"}
    if base == "LEGACY":
        versions = set(_VERSIONS)
    ciphers: dict[str, bool] = {}
    kx: dict[str, bool] = {}
    macs: dict[str, bool] = {}
    any_cipher = base != "NONE"
    for token in tokens[1:]:
        if not token:
            continue
        op, name = token[0], token[1:].upper()
        if op == "%":
            if name in ("NO_TICKETS", "NO_TICKETS_TLS12"):
                settings.no_tickets = True
            elif name in _IGNORED_FLAGS or name.startswith("PROFILE_"):
                pass
            elif name in ("UNSAFE_RENEGOTIATION", "DISABLE_SAFE_RENEGOTIATION"):
                raise _priority_error(priority, f"%{name} cannot be expressed with OpenSSL")
            else:
                raise _priority_error(priority, _INVALID)
            continue
        if op not in "+-!":
            raise _priority_error(priority, _INVALID)
        add = op == "+"
        if name.startswith("VERS-"):
            v = name[5:]
            if v in ("ALL", "TLS-ALL"):
                versions = set(_VERSIONS) if add else set()
            elif v in _VERSIONS:
                if add:
                    versions.add(v)
                else:
                    versions.discard(v)
            elif v.startswith("DTLS") or v == "SSL3.0":
                if add and v == "SSL3.0":
                    raise _priority_error(priority, "SSL 3.0 is not available in OpenSSL")
            else:
                raise _priority_error(priority, _INVALID)
        elif name in ("CIPHER-ALL",) or name in _CIPHERS or name == "NULL":
            if name == "CIPHER-ALL":
                any_cipher = add
                ciphers = {}
            else:
                ciphers[name] = add
        elif name == "KX-ALL" or name in _KX or name in _OTHER_KX:
            if name in _KX:
                kx[name] = add
            elif name != "KX-ALL" and add:
                raise _priority_error(priority, f"key exchange {name} cannot be expressed with OpenSSL")
        elif name in ("MAC-ALL",) or name in _MACS or name in ("UMAC-96", "UMAC-128", "GOST28147-TC26Z-IMIT"):
            if name in _MACS:
                macs[name] = add
        elif name.startswith("COMP-"):
            if add and name not in ("COMP-NULL", "COMP-ALL"):
                raise _priority_error(priority, f"{name} cannot be expressed with OpenSSL")
        elif name.startswith("CTYPE-") and not name.startswith(_UNMAPPABLE_PREFIXES):
            if add and name not in ("CTYPE-X509", "CTYPE-ALL", "CTYPE-X.509"):
                raise _priority_error(priority, f"{name} cannot be expressed with OpenSSL")
        elif name.startswith(_UNMAPPABLE_PREFIXES):
            raise _priority_error(priority, f"{token} cannot be expressed with OpenSSL (Python's ssl module)")
        else:
            raise _priority_error(priority, _INVALID)
    if not versions:
        raise _priority_error(priority, "No or insufficient priorities were set.")
    order = [v for v in _VERSIONS if v in versions]
    first, last = _VERSIONS.index(order[0]), _VERSIONS.index(order[-1])
    if last - first + 1 != len(order):
        raise _priority_error(priority, "OpenSSL needs a contiguous range of TLS versions")
    settings.min_version = _SSL_VERSIONS[order[0]]
    settings.max_version = _SSL_VERSIONS[order[-1]]
    if "TLS1.3" in versions:
        removed13 = [c for c in _TLS13_CIPHERS if ciphers.get(c) is False or (not any_cipher and not ciphers.get(c))]
        if len(removed13) == len(_TLS13_CIPHERS) and order == ["TLS1.3"]:
            raise _priority_error(priority, "No or insufficient priorities were set.")
        if removed13:
            raise _priority_error(
                priority, "TLS 1.3 cipher suites cannot be chosen with OpenSSL here; add -VERS-TLS1.3 or keep them"
            )
    elements: list[str] = []
    if not any_cipher:
        wanted = [_CIPHERS[c] for c, on in ciphers.items() if on and c in _CIPHERS]
        if not wanted and order[0] != "TLS1.3":
            raise _priority_error(priority, "No or insufficient priorities were set.")
        elements.append(":".join(wanted) if wanted else "DEFAULT")
    else:
        elements.append("ALL:!aNULL:!eNULL:!EXPORT" if base == "LEGACY" else "DEFAULT")
        elements.extend(_CIPHERS[c] for c, on in ciphers.items() if on and c in _CIPHERS)
        elements.extend("!" + _CIPHERS[c] for c, on in ciphers.items() if not on and c in _CIPHERS)
    elements.extend(_KX[k] if on else "!" + _KX[k] for k, on in kx.items())
    elements.extend(_MACS[m] if on else "!" + _MACS[m] for m, on in macs.items())
    if order[0] in ("TLS1.0", "TLS1.1"):
        # OpenSSL 3 needs security level 0 for the SHA-1 handshakes of TLS < 1.2
        elements.append("@SECLEVEL=0")
    settings.ciphers = ":".join(elements)
    return settings


def _apply_priority(ctx: ssl.SSLContext, settings: PrioritySettings) -> None:
    """Put mapped priority settings on a context (OpenSSL may still refuse: SSLError)."""
    with warnings.catch_warnings():
        # TLS 1.0/1.1 are deprecated in Python; here the priority string asked for them
        warnings.simplefilter("ignore", DeprecationWarning)
        if settings.min_version is not None:
            ctx.minimum_version = settings.min_version
        if settings.max_version is not None:
            ctx.maximum_version = settings.max_version
    if settings.ciphers is not None and settings.ciphers != "DEFAULT":
        ctx.set_ciphers(settings.ciphers)
    if settings.no_tickets:
        ctx.options |= ssl.OP_NO_TICKET


# ------------------------------------------------------------ the session
#: GnuTLS's gnutls_strerror texts for the failures OpenSSL shares with it
_PREMATURE = "The TLS connection was non-properly terminated."
_PULL_ERROR = "Error in the pull function."
_PUSH_ERROR = "Error in the push function."
_ALERT = "A TLS fatal alert has been received."
_BAD_VERSION = "A packet with illegal or unsupported version was received."


def _handshake_text(exc: BaseException) -> str:
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError)):
        return _PREMATURE
    if isinstance(exc, ssl.SSLError):
        reason = (getattr(exc, "reason", None) or "").upper()
        if "ALERT" in reason:
            return _ALERT
        if "WRONG_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
            return _BAD_VERSION
        return _ssl_reason(exc)
    if isinstance(exc, OSError):
        return _PULL_ERROR
    return str(exc)


class _Timeout(Exception):
    pass


def _io(
    sock: socket.socket,
    obj: ssl.SSLObject,
    inbio: ssl.MemoryBIO,
    outbio: ssl.MemoryBIO,
    op: Callable[[], Any],
    deadline: float,
) -> Any:
    """Run an SSL operation to completion over a blocking socket, by ``deadline``."""
    while True:
        try:
            result = op()
        except ssl.SSLWantReadError:
            if outbio.pending:
                sock.sendall(outbio.read())
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise _Timeout() from None
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                raise _Timeout() from None
            if data:
                inbio.write(data)
            else:
                inbio.write_eof()
            continue
        if outbio.pending:
            sock.sendall(outbio.read())
        return result


_VERIFY_REASONS = {
    2: _x509.CERT_INVALID | _x509.CERT_SIGNER_NOT_FOUND,  # unable to get issuer certificate
    18: _x509.CERT_INVALID | _x509.CERT_SIGNER_NOT_FOUND,  # self-signed leaf
    19: _x509.CERT_INVALID | _x509.CERT_SIGNER_NOT_FOUND,  # self-signed in chain
    20: _x509.CERT_INVALID | _x509.CERT_SIGNER_NOT_FOUND,  # unable to get local issuer
    21: _x509.CERT_INVALID | _x509.CERT_SIGNER_NOT_FOUND,  # unable to verify the first certificate
    23: _x509.CERT_INVALID | _x509.CERT_REVOKED,
    7: _x509.CERT_INVALID | _x509.CERT_SIGNATURE_FAILURE,
}


def peer_problems(
    ctx: ClientContext, cert: _x509.Cert, hostname: str, now: float, chain_checked: bool
) -> tuple[Optional[str], list[str]]:
    """virNetTLSContextValidCertificate's checks of the server certificate.

    Returns the failure libvirt would log (None: none) and the warnings
    (non-critical key usage/purpose).  ``chain_checked`` says OpenSSL
    already verified the chain; otherwise (``no_verify``) the issuer
    signature is checked here, for the log.
    """
    failure: Optional[str] = None
    warnings: list[str] = []
    try:
        # gnutls_certificate_verify_peers2's part: chain, validity, CRL
        status = 0
        if not chain_checked:
            status |= _x509.issuer_status(cert, ctx.cas)
            if cert.not_after < now or cert.not_before > now:
                status |= _x509.CERT_INVALID  # GNUTLS_CERT_EXPIRED / NOT_ACTIVATED
        if ctx.crls and _x509.revoked(cert, ctx.crls, ctx.cas):
            status |= _x509.CERT_INVALID | _x509.CERT_REVOKED
        if status:
            raise CertProblem(f"Certificate failed validation: {status_reason(status)}")
        _check_times(cert, "[session]", True, False, now)
        if not _x509.check_hostname(cert, hostname):
            raise CertProblem(f"Certificate [session] owner does not match the hostname {hostname}")
        _check_basic_constraints(cert, "[session]", True, False)
        _check_key_usage(cert, "[session]", False, warnings)
        _check_key_purpose(cert, "[session]", True, warnings)
    except CertProblem as problem:
        failure = problem.message
    except _x509.X509Error as exc:
        failure = f"Unable to load certificate: {exc}"
    return failure, warnings


def start_session(ctx: ClientContext, sock: socket.socket, hostname: str, timeout: Optional[float]) -> TlsChannel:
    """virNetClientSetTLSSession (see the module docstring)."""
    if ctx.priority_error is not None:
        raise ctx.priority_error
    settings = ctx.settings
    inbio = ssl.MemoryBIO()
    outbio = ssl.MemoryBIO()
    obj = ctx.ssl_context.wrap_bio(inbio, outbio, server_side=False, server_hostname=None)
    deadline = monotonic() + (SETUP_TIMEOUT if timeout is None else timeout)
    try:
        _io(sock, obj, inbio, outbio, obj.do_handshake, deadline)
    except ssl.SSLCertVerificationError as exc:
        code = getattr(exc, "verify_code", 0)
        reason = status_reason(_VERIFY_REASONS.get(code, _x509.CERT_INVALID))
        _warn(
            f"Certificate check failed Certificate failed validation: {reason} "
            f"(OpenSSL: {getattr(exc, 'verify_message', '') or _ssl_reason(exc)})"
        )
        raise _rpc_error(C.VIR_ERR_AUTH_FAILED, "Failed to verify peer's certificate") from None
    except _Timeout:
        raise _rpc_error(
            C.VIR_ERR_AUTH_FAILED, f"TLS handshake failed (no answer from the server within {_secs(timeout)})"
        ) from None
    except (ssl.SSLError, OSError, EOFError) as exc:
        raise _rpc_error(C.VIR_ERR_AUTH_FAILED, f"TLS handshake failed {_handshake_text(exc)}") from None
    cipher = obj.cipher()
    key_bits = int(cipher[2]) if cipher else 0
    if settings is not None and settings.min_key_bits and key_bits < settings.min_key_bits:
        raise _priority_error(ctx.priority, f"the server chose {cipher[0] if cipher else '?'}")
    _check_peer(ctx, obj, hostname)
    _confirm(sock, obj, inbio, outbio, deadline, timeout)
    sock.settimeout(None)
    channel = TlsChannel(sock, obj, inbio, outbio)
    channel.tls_key_bits = key_bits
    channel.tls_version = obj.version() or ""
    channel.tls_cipher = cipher[0] if cipher else ""
    return channel


def _secs(timeout: Optional[float]) -> str:
    return f"{SETUP_TIMEOUT if timeout is None else timeout:g} s"


def _check_peer(ctx: ClientContext, obj: ssl.SSLObject, hostname: str) -> None:
    der = obj.getpeercert(binary_form=True)
    failure: Optional[str]
    warnings: list[str] = []
    if not der:
        failure = "The certificate has no peers"
    else:
        try:
            cert = _x509.cert_from_der(der)
        except _x509.X509Error as exc:
            failure = f"Unable to load certificate: {exc}"
        else:
            failure, warnings = peer_problems(ctx, cert, hostname, time.time(), ctx.verify)
    for w in warnings:
        _warn(w)
    if not failure:
        return
    _warn(f"Certificate check failed {failure}")
    if ctx.verify:
        raise _rpc_error(C.VIR_ERR_AUTH_FAILED, "Failed to verify peer's certificate")
    _debug("Ignoring bad certificate at user request")


def _confirm(
    sock: socket.socket,
    obj: ssl.SSLObject,
    inbio: ssl.MemoryBIO,
    outbio: ssl.MemoryBIO,
    deadline: float,
    timeout: Optional[float],
) -> None:
    """Read the server's '\\1' (it checked our certificate and address)."""
    try:
        data = _io(sock, obj, inbio, outbio, lambda: obj.read(1), deadline)
    except _Timeout:
        raise system_error(C.VIR_FROM_RPC, _errno.ETIMEDOUT, "Unable to read TLS confirmation") from None
    except ssl.SSLZeroReturnError:
        data = b""  # close_notify: a clean "no"
    except (ssl.SSLError, OSError) as exc:
        # GnuTLS maps every record-layer failure (a ragged EOF included) to EIO
        eno = exc.errno if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno else None
        raise system_error(C.VIR_FROM_RPC, eno or _errno.EIO, "Unable to read TLS confirmation") from None
    if data != b"\x01":
        raise _rpc_error(C.VIR_ERR_RPC, "server verification (of our certificate or IP address) failed")


class TlsChannel:
    """A TLS session over a connected socket, as a blocking libvirt channel.

    ``sendall``/``recv`` carry plaintext.  ``recv`` reads the socket once and
    returns every record that completed (so no decrypted data is left behind
    where a poll on the socket would not see it: :meth:`pending` is true only
    when data arrived together with the confirmation byte), b"" after a
    close_notify, and raises ``OSError(EIO)`` for a corrupt record or a
    socket closed without close_notify (as GnuTLS does), once the plaintext
    decrypted before it has been returned.  The SSL state changes under one
    lock, socket reads and writes happen outside it, so one thread may send
    while another receives.
    Records the receive path produces (a TLS 1.3 KeyUpdate answer) go out
    with the next send, which keeps records in order.
    """

    is_secure = True
    is_encrypted = True
    transport = "tls"

    __slots__ = (
        "sock",
        "_obj",
        "_ssl",
        "_in",
        "_out",
        "_lock",
        "_pending",
        "_parts",
        "_eof",
        "_error",
        "tls_key_bits",
        "tls_version",
        "tls_cipher",
    )

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, inbio: ssl.MemoryBIO, outbio: ssl.MemoryBIO) -> None:
        self.sock = sock
        self._obj = obj
        # The C-level session behind ssl.SSLObject (its read/write/pending are
        # one-line wrappers around it): calling it directly takes a Python
        # frame per call off the per-call path, ~2 us of client CPU and
        # ~3 us of latency per call measured over the lab's TLS.  Python's own
        # SSLObject, should a later version drop the attribute.
        self._ssl: Any = getattr(obj, "_sslobj", obj)
        self._in = inbio
        self._out = outbio
        self._lock = allocate_lock()
        #: TLS records to send before the next application data
        self._pending = b""
        #: decrypted plaintext not yet returned
        self._parts: list[bytes] = []
        self._eof = False
        self._error: Optional[OSError] = None
        #: the cipher's key size in bits (libvirt's SASL external SSF)
        self.tls_key_bits = 0
        self.tls_version = ""
        self.tls_cipher = ""
        # records that came with the confirmation byte, and the rest of its
        # own record should the server have put more in it (the confirmation
        # read took one byte of it)
        if inbio.pending or self._ssl.pending():
            self._drain_to_parts()

    def __repr__(self) -> str:
        return f"<TlsChannel fd={self.fileno()} {self.tls_version} {self.tls_cipher}>"

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, t: Optional[float]) -> None:
        self.sock.settimeout(t)

    def gettimeout(self) -> Optional[float]:
        return self.sock.gettimeout()

    def close(self) -> None:
        # like libvirt: no close_notify, the socket just goes away
        self.sock.close()

    def pending(self) -> bool:
        """Is there something :meth:`recv` returns without reading the socket?"""
        return bool(self._parts) or self._eof or self._error is not None

    def sendall(self, data: bytes) -> None:
        with self._lock:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                raise OSError(_errno.EIO, f"TLS write failed: {_ssl_reason(exc)}") from None
            out = self._out.read()
            if self._pending:
                out = self._pending + out
                self._pending = b""
        self.sock.sendall(out)

    def _drain(self) -> Optional[bytes]:
        """Decrypt every complete record now in the incoming BIO (lock held).

        The common case, one record and nothing else to do, returns its
        plaintext (no list, no :meth:`_take`); otherwise the plaintext goes
        to ``_parts`` and the result is None.
        """
        sslobj = self._ssl
        inbio = self._in
        parts = self._parts
        while True:
            try:
                data: bytes = sslobj.read(RECORD_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                self._eof = True
                break
            except ssl.SSLError as exc:
                # a corrupt record, or the socket closed without close_notify
                # (SSLEOFError on Pythons that map OpenSSL's unexpected EOF to
                # it, a plain SSLError on 3.11): EIO for both, as GnuTLS gives
                self._error = OSError(_errno.EIO, f"TLS read failed: {_ssl_reason(exc)}")
                break
            if not data:
                self._eof = True
                break
            # nothing left to decrypt: stop without provoking SSLWantReadError
            if not inbio.pending and not sslobj.pending() and not inbio.eof:
                if not parts and not self._out.pending:
                    return data
                parts.append(data)
                break
            parts.append(data)
        if self._out.pending:
            self._pending += self._out.read()
        return None

    def _drain_to_parts(self) -> None:
        """:meth:`_drain`, all of the plaintext going to ``_parts`` (lock held, or no reader)."""
        data = self._drain()
        if data is not None:
            self._parts.append(data)

    def _take(self) -> Optional[bytes]:
        parts = self._parts
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            return data
        if self._error is not None:
            raise self._error
        if self._eof:
            return b""
        return None

    def recv(self, n: int) -> bytes:
        lock = self._lock
        # Only the reader (one thread at a time) adds to or takes from
        # _parts and sets _eof/_error, so it may look without the lock.
        if self._parts or self._eof or self._error is not None:
            with lock:
                data = self._take()
            if data is not None:
                return data
        recv = self.sock.recv
        inbio = self._in
        while True:
            raw = recv(RECV_SIZE)
            with lock:
                if raw:
                    inbio.write(raw)
                else:
                    inbio.write_eof()
                data = self._drain()
                if data is None:
                    data = self._take()
            if data is not None:
                return data

    # ------------------------------------------------------------- asyncio
    async def asyncio_adopt(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], Any]) -> None:
        """Hand this session to ``loop``: ``protocol_factory()``'s protocol sees plaintext."""
        inner = protocol_factory()
        bridge = _AsyncBridge(self, inner)
        self.sock.setblocking(False)
        # the bridge has the asyncio.Protocol methods without importing asyncio here
        await loop.create_connection(lambda: bridge, sock=self.sock)  # type: ignore[type-var]


class _AsyncTransport:
    """The plaintext transport an asyncio protocol gets on top of a TLS session."""

    def __init__(self, bridge: _AsyncBridge) -> None:
        self._bridge = bridge

    def write(self, data: bytes) -> None:
        self._bridge.write(data)

    def close(self) -> None:
        self._bridge.close()

    def abort(self) -> None:
        self._bridge.close()

    def is_closing(self) -> bool:
        t = self._bridge.transport
        return t is None or bool(t.is_closing())

    def pause_reading(self) -> None:
        t = self._bridge.transport
        if t is not None:
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self._bridge.transport
        if t is not None:
            t.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._bridge.channel._obj
        t = self._bridge.transport
        return default if t is None else t.get_extra_info(name, default)


class _AsyncBridge:
    """asyncio protocol on the raw socket: decrypts for ``inner``, encrypts for it."""

    def __init__(self, channel: TlsChannel, inner: Any) -> None:
        self.channel = channel
        self.inner = inner
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.inner.connection_made(_AsyncTransport(self))
        self._deliver()  # plaintext that arrived with the confirmation byte

    def data_received(self, data: bytes) -> None:
        ch = self.channel
        ch._in.write(data)
        ch._drain_to_parts()
        self._deliver()

    def _deliver(self) -> None:
        ch = self.channel
        if ch._pending and self.transport is not None:
            self.transport.write(ch._pending)
            ch._pending = b""
        try:
            data = ch._take()
        except OSError as exc:
            if self.transport is not None:
                self.transport.close()
            self.inner.connection_lost(exc)
            return
        if data:
            self.inner.data_received(data)

    def write(self, data: bytes) -> None:
        ch = self.channel
        ch._ssl.write(data)
        out = ch._out.read()
        if ch._pending:
            out = ch._pending + out
            ch._pending = b""
        if self.transport is not None:
            self.transport.write(out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> Optional[bool]:
        return bool(self.inner.eof_received())

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass
