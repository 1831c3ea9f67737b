"""libvirt connection URIs: parsing, the name sent to the daemon, and what an open would do.

Contract:

* :func:`parse` parses a URI exactly as libvirt 9.0 does (``virURIParse``:
  libxml2's RFC 3986 parser, percent-decoding of user, host, path and
  fragment, IPv6 brackets stripped, the query split into parameters by
  ``virURIParseParams``) and validates it as ``virConnectOpen`` would before
  touching the network or reading any configuration.  It raises the same
  :class:`~pyvirtrpc.errors.libvirtError` (code, domain, message) as the C
  library, in the same order: malformed URI (``INTERNAL_ERROR``/URI
  "Unable to parse URI"), no scheme (``NO_CONNECT``), ``qemu://system``
  (``INTERNAL_ERROR`` "maybe you want"), ``/embed`` URIs, client-side-only
  drivers (``CONFIG_UNSUPPORTED`` "libvirt was built without the '%s'
  driver", as a libvirt built without esx/hyperv/vz reports), unknown
  transport or unix with a host, bad boolean parameters, bad ``mode=`` or
  ``proxy=`` values, ``ext`` without ``command=`` (all ``INVALID_ARG``/REMOTE).
  ``parse(text, validate=False)`` is bare ``virURIParse`` (only a malformed
  URI raises), as libvirt parses the URI a daemon returns from GET_URI.
* :class:`ParsedURI` is immutable.  ``open_name`` is the name sent in
  ``REMOTE_PROC_CONNECT_OPEN`` (``remoteConnectFormatURI``): ``name=`` if
  given, ``""`` for ``remote``/``remote+*`` schemes, else the scheme up to
  ``+``, the path, the parameters the client does not consume (re-encoded
  as GLib's ``g_string_append_uri_escaped``) and the fragment, formatted by
  libxml2's ``xmlSaveUri`` (which gives ``qemu:x`` the name ``qemu://x``).
  :meth:`ParsedURI.format` is ``virURIFormat``: what ``virsh uri`` prints.
* :func:`plan` says what ``virConnectOpenAuth(uri, flags)`` would do,
  without connecting: it reads what an open reads (euid, environment,
  ``libvirt.conf``: ``uri_default``, ``uri_aliases``, ``remote_mode``,
  ``remote_proxy``, ``tls_priority``; which sockets exist) and raises what
  an open raises before connecting.  :class:`Plan` carries everything the
  transports need: socket paths chosen as ``remote_sockets.c`` does, the
  ssh/ext command line as ``virNetSocketNewConnectSSH`` /
  ``virNetClientSSHHelperCommand`` build it, the flags for CONNECT_OPEN.
* :func:`check_autostart` is for the unix
  transport at connect time: a session socket that libvirt would autostart
  a daemon for, but which does not exist, is a clear ``SYSTEM_ERROR``
  (ENOENT) saying pyvirtrpc does not autostart daemons.

Where pyvirtrpc differs from libvirt 9.0 (and why):

* No driver runs in-process.  ``test:///default`` (the C library's
  in-process test driver) and the other local-only drivers of libvirt.so
  (openvz, vmware*) are sent to the daemon socket like any daemon driver;
  libvirtd links the same drivers, so they still work there.  esx, gsx,
  vpx, hyperv and parallels URIs without a transport get the error a
  libvirt built without those drivers gives (``CONFIG_UNSUPPORTED``); the
  C library's esx driver would handle esx/gsx/vpx itself.  ``/embed`` URIs
  get ``NO_CONNECT`` after libvirt's own checks (no embeddable driver).
* Without a URI, the C client asks in-process drivers to probe first
  (openvz checks ``/proc/vz``); pyvirtrpc goes straight to the daemon.
* Autostart of session daemons is not done (:func:`check_autostart`).
  The CONNECT_OPEN flags still carry libvirt's USER/AUTOSTART bits, which
  the daemon ignores.
* ``mode=auto`` falls back to the legacy socket when neither socket exists,
  as libvirt's default build (meson ``remote_default_mode=legacy``, also
  Debian's) does; builds with ``remote_default_mode=direct`` (Fedora) fall
  back to the modular daemon and probe sockets without a URI.  That build
  is :data:`DEFAULT_MODE_DIRECT` here.
* virt-ssh-helper receives the open name, as libvirt 9.0 sends it (newer
  libvirt also keeps ``mode=`` and ``socket=`` in that URI).
* ``libssh`` and ``libssh2`` transports are mapped onto the system ``ssh``
  binary, keeping libvirt's semantics where ssh can express them: user
  ``root`` when none is given, ``known_hosts`` defaulting to
  ``<config dir>/libvirt/known_hosts`` (``-o UserKnownHostsFile``),
  ``known_hosts_verify`` normal/auto/ignore as ``StrictHostKeyChecking``
  ask/accept-new/no (ignore also drops the known-hosts file),
  ``sshauth`` as ``PreferredAuthentications`` (agent and privkey both mean
  ``publickey``; without ``agent`` the agent is disabled with
  ``IdentityAgent=none``), ``keyfile`` (or the first of ``~/.ssh/identity``,
  ``id_dsa``, ``id_ecdsa``, ``id_ed25519``, ``id_rsa``) as ``-i``.
  Differences: host keys are asked for by ssh on the terminal, not through
  the application's auth callback; passwords likewise; ssh's own
  configuration (``~/.ssh/config``) applies; ``command=`` is ignored for
  these transports, as libvirt ignores it.
* auth.conf that GKeyFile cannot load is an explicit ``CONF_SYNTAX`` error
  (libvirt fails there without a message).

This module is on the cold-start path of every open: it imports no
``typing``, ``dataclasses`` or ``re`` at run time.
"""

from __future__ import annotations

import os

from ._cache import remember
from ._gen import constants as C
from .errors import from_fields, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing costs start-up time
    from typing import Any, Mapping, Optional, Sequence

    from .config import Conf

__all__ = [
    "ParsedURI",
    "Plan",
    "parse",
    "plan",
    "check_autostart",
    "format_params",
    "CONSUMED_PARAMS",
    "TRANSPORTS",
    "TCP_PORT",
    "TLS_PORT",
    "DEFAULT_MODE_DIRECT",
    "REMOTE_OPEN_RO",
    "REMOTE_OPEN_USER",
    "REMOTE_OPEN_AUTOSTART",
]

#: LIBVIRTD_TCP_PORT / LIBVIRTD_TLS_PORT (remote_driver.h)
TCP_PORT = 16509
TLS_PORT = 16514

#: remoteDriverTransport, in libvirt's enum order
TRANSPORTS = ("tls", "unix", "ssh", "libssh2", "ext", "tcp", "libssh")

#: remote driver open flags (remote_driver.h), sent as CONNECT_OPEN flags
REMOTE_OPEN_RO = 1 << 0
REMOTE_OPEN_USER = 1 << 1
REMOTE_OPEN_AUTOSTART = 1 << 2

#: parameters the remote driver consumes (matched case-insensitively), in
#: doRemoteOpenExtractURIArgs order; every other one goes to the daemon.
CONSUMED_PARAMS = (
    "name",
    "command",
    "socket",
    "auth",
    "sshauth",
    "netcat",
    "keyfile",
    "pkipath",
    "known_hosts",
    "known_hosts_verify",
    "tls_priority",
    "mode",
    "proxy",
    "no_sanity",
    "no_verify",
    "no_tty",
    "authfile",
)
_BOOL_PARAMS = ("no_sanity", "no_verify", "no_tty")

#: meson ``remote_default_mode``: False is libvirt's default ("legacy"), as
#: Debian 12's libvirt 9.0 is built; True mirrors ``-Dremote_default_mode=direct``.
DEFAULT_MODE_DIRECT = False

#: LOCALSTATEDIR "/run" (sockets named for possibly-remote hosts) and RUNSTATEDIR
_LOCALSTATE_RUN = "/var/run/libvirt"
_RUNSTATE_RUN = "/run/libvirt"
_SBINDIR = "/usr/sbin"

_MODES = ("auto", "legacy", "direct")
_PROXIES = ("auto", "netcat", "native")

#: virConnectOpenInternal: client-side-only drivers a pure client lacks
_CLIENT_ONLY_SCHEMES = ("vpx", "esx", "gsx", "hyperv", "parallels")

#: environment virNetSocketNewConnectSSH / ...External pass to the command
_ENV_PASS_COMMON = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "HOME", "USER", "LOGNAME", "TMPDIR")
_ENV_PASS_SSH = _ENV_PASS_COMMON + (
    "XDG_RUNTIME_DIR",
    "KRB5CCNAME",
    "SSH_AUTH_SOCK",
    "SSH_ASKPASS",
    "TERM",
    "OPENSSL_CONF",
    "DISPLAY",
    "XAUTHORITY",
)

# ------------------------------------------------------------------ errors


def _remote_error(code: int, detail: str) -> Exception:
    return make_error(code, C.VIR_FROM_REMOTE, detail)


def _unparsable(text: str) -> Exception:
    return make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_URI, f"Unable to parse URI {text}")


# --------------------------------------------------- libxml2 RFC 3986 parser
_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGIT = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_HEX_BYTES = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = _ALPHA | _DIGIT | frozenset("-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_SCHEME_CHARS = _ALPHA | _DIGIT | frozenset("+-.")


class _Scan:
    """Index-based transcription of libxml2's xmlParse3986* functions (2.9.14)."""

    __slots__ = ("s", "n")

    def __init__(self, s: str) -> None:
        self.s = s
        self.n = len(s)

    def at(self, i: int) -> str:
        return self.s[i] if i < self.n else "\0"

    def pct(self, i: int) -> bool:
        return self.at(i) == "%" and self.at(i + 1) in _HEX and self.at(i + 2) in _HEX

    def pchar(self, i: int) -> bool:
        c = self.at(i)
        return c in _UNRESERVED or c in _SUB_DELIMS or c == ":" or c == "@" or self.pct(i)

    def step(self, i: int) -> int:
        return i + 3 if self.s[i] == "%" else i + 1

    def segment(self, i: int, forbid: str, empty: bool) -> Optional[int]:
        if not self.pchar(i) or self.at(i) == forbid:
            return i if empty else None
        i = self.step(i)
        while self.pchar(i) and self.at(i) != forbid:
            i = self.step(i)
        return i

    def path_abempty(self, i: int) -> int:
        while self.at(i) == "/":
            j = self.segment(i + 1, "", True)
            assert j is not None
            i = j
        return i

    def path_after_first(self, i: int) -> int:
        while self.at(i) == "/":
            j = self.segment(i + 1, "", True)
            assert j is not None
            i = j
        return i

    def authority(self, i: int, parts: dict[str, Any]) -> Optional[int]:
        # userinfo, only if followed by '@'
        j = i
        while self.at(j) in _UNRESERVED or self.at(j) in _SUB_DELIMS or self.at(j) == ":" or self.pct(j):
            j = self.step(j)
        if self.at(j) == "@":
            # xmlURIUnescapeString(p, 0) means "to the end of the string":
            # an empty userinfo yields the whole rest of the URI (libxml2 quirk).
            parts["user"] = self.s[i:j] if j > i else self.s[i:]
            i = j + 1
        host = i
        if self.at(i) == "[":
            i += 1
            while i < self.n and self.s[i] != "]":
                i += 1
            if i >= self.n:
                return None
            i += 1
        else:
            # libxml2 2.9's IPv4 branch never succeeds; everything is a reg-name
            while self.at(i) in _UNRESERVED or self.at(i) in _SUB_DELIMS or self.pct(i):
                i = self.step(i)
        parts["server"] = self.s[host:i] if i != host else None
        if self.at(i) == ":":
            i += 1
            if self.at(i) not in _DIGIT:
                return None
            port = 0
            while self.at(i) in _DIGIT:
                port = port * 10 + ord(self.s[i]) - 48
                if port > 0x7FFFFFFF:
                    return None
                i += 1
            parts["port"] = port
        return i

    def tail(self, i: int, parts: dict[str, Any]) -> bool:
        if self.at(i) == "?":
            j = i + 1
            while self.pchar(j) or self.at(j) in "/?":
                j = self.step(j)
            parts["query"] = self.s[i + 1 : j]
            i = j
        if self.at(i) == "#":
            j = i + 1
            while self.pchar(j) or self.at(j) in "/?[]":
                j = self.step(j)
            parts["fragment"] = self.s[i + 1 : j]
            i = j
        return i == self.n

    def absolute(self) -> Optional[dict[str, Any]]:
        """scheme ":" hier-part [ "?" query ] [ "#" fragment ]"""
        if self.at(0) not in _ALPHA:
            return None
        i = 1
        while self.at(i) in _SCHEME_CHARS:
            i += 1
        if self.at(i) != ":":
            return None
        parts: dict[str, Any] = {"scheme": self.s[:i]}
        i += 1
        if self.s.startswith("//", i):
            j = self.authority(i + 2, parts)
            if j is None:
                return None
            i = j
            start = i
            i = self.path_abempty(i)
            parts["path"] = self.s[start:i] if i != start else None
        elif self.at(i) == "/":
            start = i
            j = self.segment(i + 1, "", False)
            i = i + 1 if j is None else self.path_after_first(j)
            parts["path"] = self.s[start:i]
        elif self.pchar(i):
            start = i
            j = self.segment(i, "", False)
            assert j is not None
            i = self.path_after_first(j)
            parts["path"] = self.s[start:i]
        return parts if self.tail(i, parts) else None

    def relative(self) -> Optional[dict[str, Any]]:
        """relative-ref = relative-part [ "?" query ] [ "#" fragment ]"""
        parts: dict[str, Any] = {}
        i = 0
        if self.s.startswith("//"):
            j = self.authority(2, parts)
            if j is None:
                return None
            start = i = j
            i = self.path_abempty(i)
            parts["path"] = self.s[start:i] if i != start else None
        elif self.at(0) == "/":
            j = self.segment(1, "", False)
            i = 1 if j is None else self.path_after_first(j)
            parts["path"] = self.s[:i]
        elif self.pchar(0):
            j = self.segment(0, ":", False)
            if j is None:
                return None
            i = self.path_after_first(j)
            parts["path"] = self.s[:i]
        return parts if self.tail(i, parts) else None


def _unescape(raw: str) -> str:
    """xmlURIUnescapeString, then C's NUL termination; bytes that are not UTF-8 become surrogate escapes."""
    if "%" not in raw and "\0" not in raw:
        return raw
    data = _to_bytes(raw)
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        if data[i] == 0x25 and n - i > 2 and data[i + 1] in _HEX_BYTES and data[i + 2] in _HEX_BYTES:
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    nul = out.find(0)
    if nul >= 0:
        del out[nul:]
    return out.decode("utf-8", "surrogateescape")


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# xmlSaveUri's RFC 2396 character classes
_UNRESERVED_2396 = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()".encode("ascii")
)
_RESERVED_2396 = frozenset(b";/?:@&=+$,[]")
_PATH_OK = _UNRESERVED_2396 | frozenset(b"/;@&=+$,")
_USER_OK = _UNRESERVED_2396 | frozenset(b";:&=+$,")
_FRAGMENT_OK = _UNRESERVED_2396 | _RESERVED_2396
#: GLib g_string_append_uri_escaped(reserved=NULL): RFC 3986 unreserved only
_GLIB_OK = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _escape(text: str, ok: frozenset[int]) -> str:
    return "".join(chr(b) if b in ok else f"%{b:02X}" for b in _to_bytes(text))


def format_params(params: Sequence[tuple[str, str]]) -> Optional[str]:
    """virURIFormatParams: ``name=value&...``, names raw, values URI-escaped; None when empty."""
    if not params:
        return None
    return "&".join(name + "=" + _escape(value, _GLIB_OK) for name, value in params)


def _format_uri(
    scheme: Optional[str],
    user: Optional[str],
    server: Optional[str],
    port: int,
    path: Optional[str],
    query: Optional[str],
    fragment: Optional[str],
) -> str:
    """virURIFormat + xmlSaveUri (libxml2 2.9)."""
    if server is not None and ":" in server:
        server = "[" + server + "]"
    if server is None and not port:
        port = -1  # "helps libxml2 deal with uri:/path vs uri:///path"
    out: list[str] = []
    if scheme is not None:
        out.append(scheme + ":")
    if server is not None or port == -1:
        out.append("//")
        if user is not None:
            out.append(_escape(user, _USER_OK) + "@")
        if server is not None:
            out.append(server)
        if port > 0:
            out.append(f":{port}")
    if path:
        if (
            scheme == "file"
            and len(path) >= 3
            and path[0] == "/"
            and path[1] in _ALPHA
            and path[2] == ":"
        ):
            # "the colon in file:///d: should not be escaped"
            out.append(path[:3])
            path = path[3:]
        out.append(_escape(path, _PATH_OK))
    if query is not None:
        out.append("?" + query)
    if fragment is not None:
        out.append("#" + _escape(fragment, _FRAGMENT_OK))
    return "".join(out)


def _parse_params(query: Optional[str]) -> tuple[tuple[str, str], ...]:
    """virURIParseParams: split on '&' (or ';' when no '&' is left), unescape, skip "=value"."""
    if not query:
        return ()
    out: list[tuple[str, str]] = []
    i = 0
    n = len(query)
    while i < n:
        end = query.find("&", i)
        if end < 0:
            end = query.find(";", i)
        if end < 0:
            end = n
        eq = query.find("=", i)
        if eq >= end:
            eq = -1
        if end == i:
            pass  # empty section ("&&")
        elif eq < 0:
            out.append((_unescape(query[i:end]), ""))
        elif eq + 1 == end:
            out.append((_unescape(query[i:eq]), ""))
        elif eq == i:
            pass  # "=value" is ignored, as CGI.pm does
        else:
            out.append((_unescape(query[i:eq]), _unescape(query[eq + 1 : end])))
        i = end + 1 if end < n else end
    return tuple(out)


# --------------------------------------------------------- value objects
class _Frozen:
    """Immutable record with value equality; fields are the slots."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, _Frozen) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({inner})"


class ParsedURI(_Frozen):
    """A libvirt URI as ``virURIParse`` + ``remoteSplitURIScheme`` see it.

    ``scheme`` as written; ``driver`` the part before ``+``; ``transport``
    the part after it, lowercased (None when the URI names none); ``host``
    without IPv6 brackets (None when absent); ``port`` None when absent or
    0; ``path`` ``""`` when absent (as virConnectOpen normalises it);
    ``query`` the raw query (None when there is no ``?``); ``params`` the
    ``(name, value)`` pairs in order, unescaped; ``fragment`` None when
    there is no ``#``; ``open_name`` the CONNECT_OPEN name.
    """

    __slots__ = (
        "text",
        "scheme",
        "driver",
        "transport",
        "user",
        "host",
        "port",
        "path",
        "query",
        "params",
        "fragment",
        "open_name",
    )

    text: str
    scheme: Optional[str]
    driver: Optional[str]
    transport: Optional[str]
    user: Optional[str]
    host: Optional[str]
    port: Optional[int]
    path: str
    query: Optional[str]
    params: tuple[tuple[str, str], ...]
    fragment: Optional[str]
    open_name: str

    def __init__(
        self,
        text: str,
        scheme: Optional[str],
        driver: Optional[str],
        transport: Optional[str],
        user: Optional[str],
        host: Optional[str],
        port: Optional[int],
        path: str,
        query: Optional[str],
        params: tuple[tuple[str, str], ...],
        fragment: Optional[str],
        open_name: str,
    ) -> None:
        self._set(
            text=text,
            scheme=scheme,
            driver=driver,
            transport=transport,
            user=user,
            host=host,
            port=port,
            path=path,
            query=query,
            params=params,
            fragment=fragment,
            open_name=open_name,
        )

    def format(self, reencode_params: bool = False) -> str:
        """virURIFormat of the whole URI: the canonical form ``virsh uri`` prints.

        With ``reencode_params`` the query is rebuilt from ``params`` by
        virURIFormatParams first (as libvirt's viruritest checks).
        """
        query = format_params(self.params) if reencode_params else self.query
        return _format_uri(self.scheme, self.user, self.host, self.port or 0, self.path, query, self.fragment)

    def param(self, name: str) -> Optional[str]:
        """The last value of a parameter, its name matched case-insensitively (as the remote driver does)."""
        found: Optional[str] = None
        low = name.lower()
        for key, value in self.params:
            if key.lower() == low:
                found = value
        return found

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__}
        d["params"] = [list(p) for p in self.params]
        return d


_syntax_cache: dict[str, _Syntax] = {}


def _syntax(text: str) -> _Syntax:
    """``_Syntax(text)``, remembered: an application opens the same few URIs
    again and again, and the character-level parse is a tenth of an open."""
    syn = _syntax_cache.get(text)
    if syn is None:
        syn = _Syntax(text)
        remember(_syntax_cache, text, syn, 64)
    return syn


class _Syntax:
    """What virURIParse gives, before any validation (never modified once built)."""

    __slots__ = ("scheme", "user", "server", "port", "path", "query", "fragment", "params")

    def __init__(self, text: str) -> None:
        if "\0" in text:  # a C string ends there; libvirt-python refuses it
            raise _unparsable(text)
        scan = _Scan(text)
        parts = scan.absolute()
        if parts is None:
            parts = scan.relative()
        if parts is None:
            raise _unparsable(text)
        self.scheme: Optional[str] = parts.get("scheme")
        raw_server = parts.get("server")
        server = None if raw_server is None else _unescape(raw_server)
        if server is not None and len(server) >= 2 and server[0] == "[" and server[-1] == "]" and ":" in server:
            server = server[1:-1]  # virStringStripIPv6Brackets
        self.server: Optional[str] = server
        self.port: int = parts.get("port", 0) if server else 0
        raw_user = parts.get("user")
        self.user: Optional[str] = None if raw_user is None else _unescape(raw_user)
        raw_path = parts.get("path")
        self.path: str = "" if raw_path is None else _unescape(raw_path)
        self.query: Optional[str] = parts.get("query")
        raw_fragment = parts.get("fragment")
        self.fragment: Optional[str] = None if raw_fragment is None else _unescape(raw_fragment)
        self.params = _parse_params(self.query)


class _Options:
    """doRemoteOpenExtractURIArgs: the consumed parameters (last one wins)."""

    __slots__ = (
        "name",
        "command",
        "socket",
        "auth",
        "sshauth",
        "netcat",
        "keyfile",
        "pkipath",
        "known_hosts",
        "known_hosts_verify",
        "tls_priority",
        "mode",
        "proxy",
        "no_sanity",
        "no_verify",
        "no_tty",
        "consumed",
        "passthrough",
    )

    name: Optional[str]
    command: Optional[str]
    socket: Optional[str]
    auth: Optional[str]
    sshauth: Optional[str]
    netcat: Optional[str]
    keyfile: Optional[str]
    pkipath: Optional[str]
    known_hosts: Optional[str]
    known_hosts_verify: Optional[str]
    tls_priority: Optional[str]
    mode: Optional[str]
    proxy: Optional[str]
    no_sanity: bool
    no_verify: bool
    no_tty: bool
    consumed: tuple[tuple[str, str], ...]
    passthrough: tuple[tuple[str, str], ...]

    def __init__(self, params: Sequence[tuple[str, str]]) -> None:
        for key in self.__slots__[:13]:
            setattr(self, key, None)
        self.no_sanity = self.no_verify = self.no_tty = False
        consumed: list[tuple[str, str]] = []
        passthrough: list[tuple[str, str]] = []
        for name, value in params:
            low = name.lower()
            if low not in CONSUMED_PARAMS:
                passthrough.append((name, value))
                continue
            consumed.append((name, value))
            if low in _BOOL_PARAMS:
                setattr(self, low, _parse_int(value, name) != 0)
            elif low != "authfile":
                setattr(self, low, value)
        self.consumed = tuple(consumed)
        self.passthrough = tuple(passthrough)


_SPACE = " \t\n\v\f\r"


def _parse_int(value: str, name: str) -> int:
    """virStrToLong_i: strtol base 10 (leading blanks, sign), whole string, int range."""
    s = value.lstrip(_SPACE)
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or not body.isascii() or not body.isdigit():
        raise _remote_error(C.VIR_ERR_INVALID_ARG, f"Failed to parse value of URI component {name}")
    n = int(s)
    if not -0x80000000 <= n <= 0x7FFFFFFF:
        raise _remote_error(C.VIR_ERR_INVALID_ARG, f"Failed to parse value of URI component {name}")
    return n


def _open_name(syn: _Syntax, driver: str, opts: _Options) -> str:
    """remoteConnectFormatURI, or the name= override / "" for remote schemes."""
    if opts.name is not None:
        return str(opts.name)
    scheme = syn.scheme or ""
    if scheme == "remote" or scheme.startswith("remote+"):
        return ""
    return _format_uri(driver, None, None, 0, syn.path, format_params(opts.passthrough), syn.fragment)


def _check_pre_remote(text: str, name_for_error: Optional[str], syn: _Syntax) -> str:
    """virConnectOpenInternal's checks before the remote driver; returns the scheme."""
    if syn.scheme is None:
        shown = "(null)" if name_for_error is None else name_for_error
        raise make_error(C.VIR_ERR_NO_CONNECT, C.VIR_FROM_NONE, f"URI '{shown}' does not include a driver name")
    scheme = syn.scheme
    if syn.server is not None and scheme in ("qemu", "vbox", "vz") and syn.server in ("session", "system"):
        raise make_error(
            C.VIR_ERR_INTERNAL_ERROR,
            C.VIR_FROM_NONE,
            f"invalid URI {text} (maybe you want {scheme}:///{syn.server})",
        )
    if syn.path == "/embed":
        if scheme.strip("abcdefghijklmnopqrstuvwxyz"):
            raise make_error(
                C.VIR_ERR_NO_CONNECT, C.VIR_FROM_NONE, f"URI scheme '{scheme}' for embedded driver is not valid"
            )
        root = None
        for key, value in syn.params:
            if key.lower() == "root":
                root = value
                break
        if root is None:
            raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_URI, "Missing URI parameter 'root'")
        if not root.startswith("/"):
            raise make_error(C.VIR_ERR_CONFIG_UNSUPPORTED, C.VIR_FROM_NONE, "root path must be absolute")
        # No embeddable driver exists in a pure client; the remote driver
        # skips embed URIs, so libvirt ends with "no driver".
        raise make_error(C.VIR_ERR_NO_CONNECT, C.VIR_FROM_NONE, "<null>" if name_for_error is None else name_for_error)
    if scheme.lower() in _CLIENT_ONLY_SCHEMES:
        raise make_error(
            C.VIR_ERR_CONFIG_UNSUPPORTED, C.VIR_FROM_NONE, f"libvirt was built without the '{scheme}' driver"
        )
    return scheme


def _split_scheme(scheme: str, server: Optional[str]) -> tuple[str, Optional[str], str]:
    """remoteSplitURIScheme: (driver, named transport, effective transport)."""
    driver, plus, named = scheme.partition("+")
    if not plus:
        return driver, None, ("tls" if server is not None else "unix")
    low = named.lower()
    if low not in TRANSPORTS:
        raise _remote_error(
            C.VIR_ERR_INVALID_ARG,
            "remote_open: transport in URL not recognised (should be tls|unix|ssh|ext|tcp|libssh2|libssh)",
        )
    if low == "unix" and server is not None:
        raise _remote_error(
            C.VIR_ERR_INVALID_ARG, f"using unix socket and remote server '{server}' is not supported."
        )
    return driver, low, low


def _mode_proxy(opts: Optional[_Options], conf: Optional[Conf]) -> tuple[Optional[str], Optional[str]]:
    """doRemoteOpen: mode= else remote_mode, checked; then proxy= else remote_proxy, checked."""
    mode = opts.mode if opts is not None else None
    if mode is None and conf is not None:
        mode = conf.get_string("remote_mode")
    if mode is not None and mode not in _MODES:
        raise _remote_error(C.VIR_ERR_INVALID_ARG, f"Unknown remote mode '{mode}'")
    proxy = opts.proxy if opts is not None else None
    if proxy is None and conf is not None:
        proxy = conf.get_string("remote_proxy")
    if proxy is not None and proxy not in _PROXIES:
        # sic: libvirt's message has this typo
        raise _remote_error(C.VIR_ERR_INVALID_ARG, f"Unnkown proxy type '{proxy}'")
    return mode, proxy


def _check_ext(transport: str, opts: _Options) -> None:
    if transport == "ext" and opts.command is None:
        raise _remote_error(C.VIR_ERR_INVALID_ARG, "remote_open: for 'ext' transport, command is required")


def _analyse(
    text: str, name_for_error: Optional[str], conf: Optional[Conf]
) -> tuple[ParsedURI, _Syntax, _Options, str, Optional[str], Optional[str]]:
    """Everything virConnectOpenInternal + remoteConnectOpen + doRemoteOpen check before sockets.

    Returns the ParsedURI, syntax, options, effective transport, and the
    mode and proxy strings (URI first, then libvirt.conf).
    """
    syn = _syntax(text)
    scheme = _check_pre_remote(text, name_for_error, syn)
    driver, named, transport = _split_scheme(scheme, syn.server)
    opts = _Options(syn.params)
    open_name = _open_name(syn, driver, opts)
    mode, proxy = _mode_proxy(opts, conf)
    _check_ext(transport, opts)
    parsed = ParsedURI(
        text=text,
        scheme=scheme,
        driver=driver,
        transport=named,
        user=syn.user,
        host=syn.server,
        port=syn.port or None,
        path=syn.path,
        query=syn.query,
        params=syn.params,
        fragment=syn.fragment,
        open_name=open_name,
    )
    return parsed, syn, opts, transport, mode, proxy


def parse(text: str, validate: bool = True) -> ParsedURI:
    """Parse a URI as virConnectOpen would, reading no configuration.

    With ``validate`` (the default) every check libvirt makes before it
    reads libvirt.conf-dependent settings or touches the network is made,
    raising libvirt's error.  ``validate=False`` is plain ``virURIParse``
    (only a malformed URI raises), as libvirt parses the URI a daemon
    returns from CONNECT_GET_URI; ``scheme``/``driver`` may then be None.
    """
    if validate:
        return _analyse(text, text, None)[0]
    syn = _syntax(text)
    driver: Optional[str] = None
    named: Optional[str] = None
    if syn.scheme is not None:
        driver, plus, rest = syn.scheme.partition("+")
        named = rest.lower() if plus else None
    keep = tuple((k, v) for k, v in syn.params if k.lower() not in CONSUMED_PARAMS)
    name = None
    for k, v in syn.params:
        if k.lower() == "name":
            name = v
    scheme = syn.scheme or ""
    if name is None:
        if scheme == "remote" or scheme.startswith("remote+"):
            name = ""
        else:
            name = _format_uri(driver, None, None, 0, syn.path, format_params(keep), syn.fragment)
    return ParsedURI(
        text=text,
        scheme=syn.scheme,
        driver=driver,
        transport=named,
        user=syn.user,
        host=syn.server,
        port=syn.port or None,
        path=syn.path,
        query=syn.query,
        params=syn.params,
        fragment=syn.fragment,
        open_name=name,
    )


# ------------------------------------------------------------------- plan
class Plan(_Frozen):
    """What opening a URI would do (see :func:`plan`); immutable.

    Fields: ``uri`` (as given), ``effective_uri`` (after the default URI
    and aliases; None when probing), ``parsed`` (:class:`ParsedURI` or
    None), ``driver``, ``transport``, ``open_name``, ``open_flags``
    (CONNECT_OPEN flags: RO=1, USER=2, AUTOSTART=4), ``get_uri`` (ask
    CONNECT_GET_URI after opening: no URI was given), ``readonly``,
    ``session`` (per-user daemon), ``autostart`` (libvirt would spawn the
    daemon if the socket is missing; see :func:`check_autostart`),
    ``consumed_params``/``passthrough_params`` (names as written),
    ``host`` (the server, "localhost" by default; used for TLS checks,
    SASL and auth.conf), ``user``, ``port`` (tcp/tls default 16509/16514;
    None for the ssh family means ssh's default), ``socket_path`` (unix),
    ``remote_socket_path`` (ssh family: the socket netcat opens on the
    far side), ``mode`` ("legacy"/"direct" when a socket was chosen),
    ``daemon`` (the daemon that socket belongs to), ``proxy``
    (ssh family: "auto"/"netcat"/"native"), ``command``, ``netcat``,
    ``keyfile``, ``known_hosts``, ``known_hosts_verify``, ``sshauth``,
    ``helper_command`` (the remote ``sh -c`` string), ``argv`` (ssh or ext
    command line), ``env_set``/``env_pass`` (the command's environment:
    set these, pass only these through), ``auth`` (forced ``auth=``),
    ``pkipath``, ``tls_priority`` (URI, else libvirt.conf), ``no_verify``,
    ``no_sanity``, ``no_tty``, ``authfile`` (URI ``authfile=`` as virauth
    reads it), ``is_secure`` (libvirt's transport-security flag).
    """

    __slots__ = (
        "uri",
        "effective_uri",
        "parsed",
        "driver",
        "transport",
        "open_name",
        "open_flags",
        "get_uri",
        "readonly",
        "session",
        "autostart",
        "consumed_params",
        "passthrough_params",
        "host",
        "user",
        "port",
        "socket_path",
        "remote_socket_path",
        "mode",
        "daemon",
        "proxy",
        "command",
        "netcat",
        "keyfile",
        "known_hosts",
        "known_hosts_verify",
        "sshauth",
        "helper_command",
        "argv",
        "env_set",
        "env_pass",
        "auth",
        "pkipath",
        "tls_priority",
        "no_verify",
        "no_sanity",
        "no_tty",
        "authfile",
        "is_secure",
    )

    uri: Optional[str]
    effective_uri: Optional[str]
    parsed: Optional[ParsedURI]
    driver: Optional[str]
    transport: str
    open_name: str
    open_flags: int
    get_uri: bool
    readonly: bool
    session: bool
    autostart: bool
    consumed_params: tuple[str, ...]
    passthrough_params: tuple[str, ...]
    host: str
    user: Optional[str]
    port: Optional[int]
    socket_path: Optional[str]
    remote_socket_path: Optional[str]
    mode: Optional[str]
    daemon: Optional[str]
    proxy: Optional[str]
    command: Optional[str]
    netcat: Optional[str]
    keyfile: Optional[str]
    known_hosts: Optional[str]
    known_hosts_verify: Optional[str]
    sshauth: Optional[str]
    helper_command: Optional[str]
    argv: Optional[tuple[str, ...]]
    env_set: tuple[tuple[str, str], ...]
    env_pass: tuple[str, ...]
    auth: Optional[str]
    pkipath: Optional[str]
    tls_priority: Optional[str]
    no_verify: bool
    no_sanity: bool
    no_tty: bool
    authfile: Optional[str]
    is_secure: bool

    def __init__(self, **fields: Any) -> None:
        missing = set(self.__slots__) - set(fields)
        extra = set(fields) - set(self.__slots__)
        if missing or extra:
            raise TypeError(f"Plan fields: missing {sorted(missing)}, unexpected {sorted(extra)}")
        self._set(**fields)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, ``parsed`` a dict."""
        d: dict[str, Any] = {}
        for key in self.__slots__:
            value = getattr(self, key)
            if isinstance(value, ParsedURI):
                value = value.as_dict()
            elif key == "env_set":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            d[key] = value
        return d


def _escape_shell(text: str) -> str:
    """virBufferEscapeShell."""
    if not text:
        return "''"
    if not any(c in "\r\t\n !\"#$&'()*;<>?[\\]^`{|}~" for c in text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _double_escape_shell(text: str) -> str:
    """virNetClientDoubleEscapeShell: ssh's shell and our sh -c each unquote once."""
    return _escape_shell(_escape_shell(text))


def _helper_command(proxy: str, netcat: Optional[str], socket: str, driver_uri: str, readonly: bool) -> str:
    """virNetClientSSHHelperCommand (libvirt 9.0)."""
    nc = _double_escape_shell(netcat if netcat is not None else "nc")
    uri = _double_escape_shell(driver_uri)
    if proxy == "auto" and netcat is not None:
        proxy = "netcat"
    nccmd = (
        f"if '{nc}' -q 2>&1 | grep \"requires an argument\" >/dev/null 2>&1; then "
        f"ARG=-q0;else ARG=;fi;'{nc}' $ARG -U {socket}"
    )
    helper = f"virt-ssh-helper{' -r ' if readonly else ' '}'{uri}'"
    if proxy == "auto":
        return (
            "sh -c 'which virt-ssh-helper 1>/dev/null 2>&1; if test $? = 0; then "
            f"    {helper}; else    {nccmd}; fi'"
        )
    if proxy == "netcat":
        return f"sh -c '{nccmd}'"
    if netcat is not None:
        raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_RPC, "netcat path not valid with native proxy mode")
    return f"sh -c '{helper}'"


def _daemon_info(
    parsed: Optional[ParsedURI], transport: str, euid: int, env: Mapping[str, str]
) -> int:
    """remoteGetURIDaemonInfo: REMOTE_OPEN_USER / REMOTE_OPEN_AUTOSTART bits."""
    autostart_env = env.get("LIBVIRT_AUTOSTART")
    autostart_ok = autostart_env is None or autostart_env != "0"
    flags = 0
    if parsed is not None:
        scheme = parsed.scheme or ""
        if (parsed.path == "/session" or scheme.startswith("test+")) and euid > 0:
            flags |= REMOTE_OPEN_USER
            if parsed.host is None and transport == "unix" and autostart_ok:
                flags |= REMOTE_OPEN_AUTOSTART
    elif euid > 0:
        flags |= REMOTE_OPEN_USER
        if autostart_ok:
            flags |= REMOTE_OPEN_AUTOSTART
    return flags


def _socket_helper(prefix: str, flags: int, env: Mapping[str, str], euid: int) -> str:
    """remoteGetUNIXSocketHelper."""
    if flags & REMOTE_OPEN_USER:
        from .config import user_runtime_dir

        return f"{user_runtime_dir(env, euid)}/{prefix}-sock"
    return f"{_LOCALSTATE_RUN}/{prefix}-{'sock-ro' if flags & REMOTE_OPEN_RO else 'sock'}"


def _probe_driver(flags: int, env: Mapping[str, str], euid: int) -> Optional[str]:
    """remoteProbe{System,Session}DriverFrom{Socket,Binary} (direct-mode builds only)."""
    ro = "sock-ro" if flags & REMOTE_OPEN_RO else "sock"
    if euid != 0:
        from .config import user_runtime_dir

        userdir = user_runtime_dir(env, euid)
        for drv in ("qemu", "vbox"):
            if os.path.exists(f"{userdir}/virt{drv}d-{ro}"):
                return drv
        for drv in ("qemu", "vbox"):
            if os.path.exists(f"{_SBINDIR}/virt{drv}d"):
                return drv
        return None
    for drv in ("xen", "qemu", "lxc", "vbox", "bhyve", "vz"):
        if os.path.exists(f"{_RUNSTATE_RUN}/virt{drv}d-{ro}"):
            return drv
    return None


def _choose_socket(
    transport: str, mode: str, driver: Optional[str], flags: int, env: Mapping[str, str], euid: int
) -> tuple[str, str, str]:
    """remoteGetUNIXSocket: (socket path, resolved mode, daemon name)."""
    if DEFAULT_MODE_DIRECT and driver is None and mode != "legacy":
        driver = _probe_driver(flags, env, euid)
    direct_daemon = direct_sock = None
    if driver is not None:
        direct_daemon = f"virt{driver}d"
        direct_sock = _socket_helper(direct_daemon, flags, env, euid)
    legacy_sock = _socket_helper("libvirt", flags, env, euid)
    if mode == "auto":
        if transport == "unix":
            if direct_sock is not None and os.path.exists(direct_sock):
                mode = "direct"
            elif os.path.exists(legacy_sock):
                mode = "legacy"
            else:
                mode = "direct" if DEFAULT_MODE_DIRECT else "legacy"
        else:
            mode = "legacy"
    if mode == "legacy":
        return legacy_sock, mode, "libvirtd"
    if transport != "unix":
        raise _remote_error(
            C.VIR_ERR_OPERATION_UNSUPPORTED, f"Cannot use direct socket mode for {transport} transport"
        )
    if direct_sock is None or direct_daemon is None:
        raise _remote_error(C.VIR_ERR_OPERATION_UNSUPPORTED, "Cannot use direct socket mode if no URI is set")
    return direct_sock, mode, direct_daemon


def _default_ssh_key(env: Mapping[str, str], euid: int) -> Optional[str]:
    """virNetClientFindDefaultSshKey."""
    from .config import home_dir

    home = home_dir(env, euid)
    for name in ("identity", "id_dsa", "id_ecdsa", "id_ed25519", "id_rsa"):
        path = f"{home}/.ssh/{name}"
        if os.path.exists(path):
            return path
    return None


def _libssh_argv(
    host: str,
    port: Optional[int],
    user: Optional[str],
    keyfile: Optional[str],
    known_hosts: str,
    verify: str,
    sshauth: str,
    helper: str,
) -> tuple[str, ...]:
    """libssh/libssh2 semantics expressed as a system ssh command line (see the module docstring)."""
    methods: list[str] = []
    for method in sshauth.split(",") if sshauth else []:
        low = method.lower()
        if low not in ("agent", "privkey", "password", "keyboard-interactive"):
            raise make_error(C.VIR_ERR_INVALID_ARG, C.VIR_FROM_RPC, f"Invalid authentication method: '{method}'")
        methods.append(low)
    argv = ["ssh"]
    if port is not None:
        argv += ["-p", str(port)]
    argv += ["-l", user if user is not None else "root"]
    if keyfile is not None:
        argv += ["-i", keyfile]
    argv += ["-T", "-e", "none"]
    if verify == "ignore":
        argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    else:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
        argv += ["-o", "StrictHostKeyChecking=" + ("accept-new" if verify == "auto" else "ask")]
    preferred: list[str] = []
    for low in methods:
        ssh_name = "publickey" if low in ("agent", "privkey") else low
        if ssh_name not in preferred:
            preferred.append(ssh_name)
    if preferred:
        argv += ["-o", "PreferredAuthentications=" + ",".join(preferred)]
    if "agent" not in methods:
        argv += ["-o", "IdentityAgent=none"]
    argv += ["--", host, helper]
    return tuple(argv)


def _resolve_name(
    uri: Optional[str], flags: int, conf: Optional[Conf], env: Mapping[str, str]
) -> tuple[Optional[str], Optional[str]]:
    """virConnectOpenInternal up to virURIParse: (name for errors, URI string to parse)."""
    name = uri or None
    if name is not None and name.lower() == "xen":
        name = "xen:///system"
    if name == "xen://":
        name = "xen:///system"
    uristr = name
    if uristr is None:
        default = env.get("LIBVIRT_DEFAULT_URI")
        if default:
            uristr = default
        elif conf is not None:
            uristr = conf.get_string("uri_default")
    if uristr is not None and not flags & C.VIR_CONNECT_NO_ALIASES and conf is not None:
        aliases = conf.get_string_list("uri_aliases")
        if aliases:
            uristr = _resolve_alias(aliases, uristr)
    return name, uristr


_ALIAS_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _resolve_alias(aliases: Sequence[str], alias: str) -> str:
    """virURIFindAliasMatch: entries checked in order until one matches."""
    for entry in aliases:
        eq = entry.find("=")
        if eq < 0:
            raise make_error(
                C.VIR_ERR_CONF_SYNTAX,
                C.VIR_FROM_URI,
                f"Malformed 'uri_aliases' config entry '{entry}', expected 'alias=uri://host/path'",
            )
        if not all(c in _ALIAS_CHARS for c in entry[:eq]):
            raise make_error(
                C.VIR_ERR_CONF_SYNTAX,
                C.VIR_FROM_URI,
                f"Malformed 'uri_aliases' config entry '{entry}', aliases may only contain 'a-Z, 0-9, _, -'",
            )
        if entry[:eq] == alias:
            return entry[eq + 1 :]
    return alias


def plan(
    uri: Optional[str] = None,
    flags: int = 0,
    *,
    env: Optional[Mapping[str, str]] = None,
    euid: Optional[int] = None,
) -> Plan:
    """What ``virConnectOpenAuth(uri, auth, flags)`` would do, without connecting.

    ``flags``: ``VIR_CONNECT_RO`` (1) and ``VIR_CONNECT_NO_ALIASES`` (2)
    matter.  ``env`` (default ``os.environ``) and ``euid`` (default
    ``os.geteuid()``) let callers ask what another user would get; files
    (libvirt.conf, sockets, ssh keys) are looked up for real.  Raises the
    libvirtError an open raises before connecting.
    """
    from . import config

    if env is None:
        env = os.environ
    if euid is None:
        euid = os.geteuid()
    conf = config.load_libvirt_conf(env, euid)
    name, uristr = _resolve_name(uri, flags, conf, env)

    parsed: Optional[ParsedURI] = None
    opts: Optional[_Options] = None
    mode_str: Optional[str]
    proxy_str: Optional[str]
    if uristr is not None:
        parsed, _syn, opts, transport, mode_str, proxy_str = _analyse(uristr, name, conf)
        driver: Optional[str] = parsed.driver
        open_name = parsed.open_name
    else:
        transport, driver, open_name = "unix", None, ""
        mode_str, proxy_str = _mode_proxy(None, conf)

    rflags = _daemon_info(parsed, transport, euid, env)
    readonly = bool(flags & C.VIR_CONNECT_RO)
    if readonly:
        rflags |= REMOTE_OPEN_RO

    host = parsed.host if parsed is not None and parsed.host is not None else "localhost"
    port: Optional[int] = parsed.port if parsed is not None else None
    if port is None and transport == "tls":
        port = TLS_PORT
    elif port is None and transport == "tcp":
        port = TCP_PORT
    elif transport in ("unix", "ext"):
        port = None

    sockname = opts.socket if opts is not None else None
    proxy: Optional[str] = None
    if proxy_str is not None:
        proxy = proxy_str
    elif sockname is not None:
        proxy = "netcat"
    elif rflags & REMOTE_OPEN_USER:
        proxy = "native"
    else:
        proxy = "auto"

    mode: Optional[str] = None
    daemon: Optional[str] = None
    socket_path: Optional[str] = None
    remote_socket_path: Optional[str] = None
    if transport in ("unix", "ssh", "libssh", "libssh2"):
        if sockname is None:
            sockname, mode, daemon = _choose_socket(transport, mode_str or "auto", driver, rflags, env, euid)
        if transport == "unix":
            socket_path = sockname
        else:
            remote_socket_path = sockname

    no_tty = bool(opts and opts.no_tty)
    no_verify = bool(opts and opts.no_verify)
    command = opts.command if opts is not None else None
    netcat = opts.netcat if opts is not None else None
    keyfile = opts.keyfile if opts is not None else None
    known_hosts = opts.known_hosts if opts is not None else None
    known_hosts_verify = opts.known_hosts_verify if opts is not None else None
    sshauth = opts.sshauth if opts is not None else None
    user = parsed.user if parsed is not None else None
    helper: Optional[str] = None
    argv: Optional[tuple[str, ...]] = None
    env_pass: tuple[str, ...] = ()
    env_set: tuple[tuple[str, str], ...] = ()

    if transport in ("ssh", "libssh", "libssh2"):
        assert remote_socket_path is not None
        if transport != "ssh":
            # virNetClientNewLibssh{,2}: defaults filled before the helper command
            if known_hosts is None:
                known_hosts = config.user_config_dir(env, euid) + "/known_hosts"
            if keyfile is None:
                keyfile = _default_ssh_key(env, euid)
            if sshauth is None:
                sshauth = (
                    "agent,privkey,password,keyboard-interactive"
                    if keyfile is not None
                    else "agent,password,keyboard-interactive"
                )
            if known_hosts_verify is None:
                known_hosts_verify = "normal"
        helper = _helper_command(proxy, netcat, remote_socket_path, open_name, readonly)
        env_set, env_pass = (("LC_ALL", "C"),), _ENV_PASS_SSH
        if transport == "ssh":
            command = command if command is not None else "ssh"
            argv = (command,)
            if port is not None:
                argv += ("-p", str(port))
            if user is not None:
                argv += ("-l", user)
            if keyfile is not None:
                argv += ("-i", keyfile)
            argv += ("-T", "-e", "none")
            if no_tty:
                argv += ("-o", "BatchMode=yes")
            if no_verify:
                argv += ("-o", "StrictHostKeyChecking=no")
            argv += ("--", host, helper)
        else:
            assert known_hosts is not None and known_hosts_verify is not None and sshauth is not None
            verify = known_hosts_verify.lower()
            if verify not in ("auto", "ignore", "normal"):
                raise make_error(
                    C.VIR_ERR_INVALID_ARG,
                    C.VIR_FROM_RPC,
                    f"Invalid host key verification method: '{known_hosts_verify}'",
                )
            argv = _libssh_argv(host, port, user, keyfile, known_hosts, verify, sshauth, helper)
            command = argv[0]
    elif transport == "ext":
        assert command is not None
        argv = (command,)
        env_set, env_pass = (("LC_ALL", "C"),), _ENV_PASS_COMMON

    tls_priority = opts.tls_priority if opts is not None else None
    if transport == "tls" and tls_priority is None and conf is not None:
        tls_priority = conf.get_string("tls_priority")

    authfile = None
    if parsed is not None:
        for key, value in parsed.params:
            if key == "authfile":
                authfile = value
                break

    autostart = bool(rflags & REMOTE_OPEN_AUTOSTART) and transport == "unix" and daemon is not None
    return Plan(
        uri=uri,
        effective_uri=uristr,
        parsed=parsed,
        driver=driver,
        transport=transport,
        open_name=open_name,
        open_flags=rflags,
        get_uri=uristr is None,
        readonly=readonly,
        session=bool(rflags & REMOTE_OPEN_USER),
        autostart=autostart,
        consumed_params=tuple(k for k, _ in opts.consumed) if opts is not None else (),
        passthrough_params=tuple(k for k, _ in opts.passthrough) if opts is not None else (),
        host=host,
        user=user,
        port=port,
        socket_path=socket_path,
        remote_socket_path=remote_socket_path,
        mode=mode,
        daemon=daemon,
        proxy=(("netcat" if proxy == "auto" and netcat is not None else proxy)
               if transport in ("ssh", "libssh", "libssh2") else None),
        command=command,
        netcat=netcat,
        keyfile=keyfile,
        known_hosts=known_hosts,
        known_hosts_verify=known_hosts_verify,
        sshauth=sshauth,
        helper_command=helper,
        argv=argv,
        env_set=env_set,
        env_pass=env_pass,
        auth=opts.auth if opts is not None else None,
        pkipath=opts.pkipath if opts is not None else None,
        tls_priority=tls_priority,
        no_verify=no_verify,
        no_sanity=bool(opts and opts.no_sanity),
        no_tty=no_tty,
        authfile=authfile,
        is_secure=transport not in ("tcp", "ext"),
    )


def check_autostart(p: Plan) -> None:
    """For the unix transport before connecting: refuse clearly where libvirt would autostart a daemon.

    When the plan says libvirt would spawn a session daemon (a per-user
    URI, no ``socket=``, ``LIBVIRT_AUTOSTART`` not ``0``) and its socket
    does not exist, raise ``VIR_ERR_SYSTEM_ERROR`` (domain RPC, errno
    ENOENT, as the failed connect would) whose message names the socket
    and says pyvirtrpc does not autostart daemons.  Otherwise return.
    """
    if not p.autostart or p.socket_path is None or os.path.exists(p.socket_path):
        return
    import errno as _errno

    detail = (
        f"Failed to connect socket to '{p.socket_path}': {os.strerror(_errno.ENOENT)}; "
        f"pyvirtrpc does not autostart session daemons: start '{p.daemon} --timeout=120' "
        "first, or set LIBVIRT_AUTOSTART=0 to silence this hint"
    )
    raise from_fields(
        (C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC, detail, C.VIR_ERR_ERROR, "%s", detail, None, _errno.ENOENT, -1)
    )

