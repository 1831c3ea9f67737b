"""libvirt's client configuration files: ``libvirt.conf`` and ``auth.conf``.

Contract:

* :func:`parse_conf` / :func:`read_conf` parse libvirt's "virconf" format
  (``src/util/virconf.c``, the subset of Python syntax libvirt.conf uses):
  ``name = value`` statements separated by newlines or ``;``, values being
  strings (``"..."``, ``'...'``, ``\"\"\"...\"\"\"``), integers (optional sign)
  or lists ``[ v, v, ]`` that may span lines; ``#`` comments.  Syntax
  errors raise ``VIR_ERR_CONF_SYNTAX`` (domain CONF) with libvirt's
  ``"<file>:<line>: <what>"`` detail, including libvirt's quirks (a file
  holding only blank lines is an error: "expecting a name").  Lookups
  (:meth:`Conf.get_string`, :meth:`Conf.get_string_list`) use the first
  entry of a name and report type mismatches with libvirt's codes.
* :func:`load_libvirt_conf` finds and reads libvirt.conf as
  ``virConfLoadConfig`` does: ``/etc/libvirt/libvirt.conf`` for euid 0,
  else ``$XDG_CONFIG_HOME/libvirt/libvirt.conf`` (``~/.config`` when unset
  or empty); a missing file is no configuration (``None``).
* :func:`find_auth_file` is ``virAuthGetConfigFilePathURI``:
  ``$LIBVIRT_AUTH_FILE`` (when set, even empty), then the first URI
  parameter named exactly ``authfile`` (case-sensitive, unlike the remote
  driver's stripping), then ``<user config dir>/auth.conf`` and
  ``/etc/libvirt/auth.conf`` if readable; else ``None``.
* :func:`lookup_credential` is ``virAuthConfigLookup`` over a GKeyFile
  (INI) file: group ``auth-<service>-<host>`` (host ``localhost`` when
  None), else ``auth-<service>-default``; its ``credentials=NAME`` names
  group ``credentials-NAME`` whose key ``credname`` (``username``,
  ``authname``, ``password``, ``realm``) is returned, ``None`` when any of
  that is absent.  A group without ``credentials`` or naming a missing
  credentials group raises ``VIR_ERR_CONF_SYNTAX`` (domain NONE) with
  libvirt's message.  A file GKeyFile cannot load raises
  ``VIR_ERR_CONF_SYNTAX`` too (libvirt fails there without a message).
* Values read from auth.conf (passwords) never appear in exception text or
  logs; error messages name only files, groups and keys.

Environment-dependent functions take ``env`` (default ``os.environ``) and
``euid`` (default ``os.geteuid()``) so callers and tests can ask "what would
this user see".  No ``typing`` import at run time: this is on the
connection path.
"""

from __future__ import annotations

import os

from ._cache import file_sig, remember
from ._gen import constants as C
from .errors import make_error, system_error

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing costs start-up time
    from typing import Mapping, Optional, Sequence, Union

    ConfValue = Union[str, int, "list[ConfValue]"]

__all__ = [
    "Conf",
    "AuthConfig",
    "parse_conf",
    "read_conf",
    "load_libvirt_conf",
    "libvirt_conf_path",
    "user_config_dir",
    "home_dir",
    "find_auth_file",
    "lookup_credential",
    "SYSCONFDIR",
]

#: libvirt's SYSCONFDIR on Debian/Fedora builds.
SYSCONFDIR = "/etc"

#: virconf.c: MAX_CONFIG_FILE_SIZE
_MAX_CONFIG_FILE_SIZE = 1024 * 1024 * 10


# ----------------------------------------------------------- directories
def home_dir(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    """GLib's g_get_home_dir(): ``$HOME`` when set (even empty), else the passwd entry."""
    if env is None:
        env = os.environ
    home = env.get("HOME")
    if home is not None:
        return home
    import pwd

    try:
        return pwd.getpwuid(os.geteuid() if euid is None else euid).pw_dir
    except KeyError:
        return "/"


def build_filename(first: str, *rest: str) -> str:
    """GLib's g_build_filename() for the simple cases libvirt uses (one separator at joins)."""
    out = first
    for part in rest:
        if out == "":
            out = part
            continue
        head = out.rstrip("/") or "/"
        tail = part.lstrip("/")
        out = head + tail if head.endswith("/") else head + "/" + tail
    return out


def _xdg_dir(env: Mapping[str, str], var: str, fallback: str, euid: Optional[int]) -> str:
    value = env.get(var)
    if value:
        return value
    return build_filename(home_dir(env, euid), fallback)


def user_config_dir(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    """virGetUserConfigDirectory(): ``$XDG_CONFIG_HOME/libvirt`` (``~/.config/libvirt``)."""
    if env is None:
        env = os.environ
    return build_filename(_xdg_dir(env, "XDG_CONFIG_HOME", ".config", euid), "libvirt")


def user_runtime_dir(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    """virGetUserRuntimeDirectory(): ``$XDG_RUNTIME_DIR/libvirt``, else the user cache dir.

    GLib's g_get_user_runtime_dir() falls back to g_get_user_cache_dir()
    (``$XDG_CACHE_HOME``, else ``~/.cache``) when XDG_RUNTIME_DIR is unset
    or empty; relative values are used as they are.
    """
    if env is None:
        env = os.environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        runtime = _xdg_dir(env, "XDG_CACHE_HOME", ".cache", euid)
    return build_filename(runtime, "libvirt")


def libvirt_conf_path(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    """virConfLoadConfigPath("libvirt.conf")."""
    if (os.geteuid() if euid is None else euid) == 0:
        return SYSCONFDIR + "/libvirt/libvirt.conf"
    return user_config_dir(env, euid) + "/libvirt.conf"


# -------------------------------------------------------------- virconf
def _conf_error(filename: Optional[str], line: int, info: str) -> Exception:
    detail = f"{filename}:{line}: {info}" if filename is not None else info
    return make_error(C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_CONF, detail)


class Conf:
    """A parsed virconf file: ordered ``(name, value)`` entries.

    Values are ``str`` (bytes that are not UTF-8 are kept as surrogate
    escapes), ``int`` or ``list`` of values.
    """

    __slots__ = ("filename", "entries")

    def __init__(self, filename: Optional[str], entries: list[tuple[str, ConfValue]]) -> None:
        self.filename = filename
        self.entries = entries

    def get(self, name: str) -> Optional[ConfValue]:
        """virConfGetValue: the first entry named exactly ``name``."""
        for key, value in self.entries:
            if key == name:
                return value
        return None

    def get_string(self, name: str) -> Optional[str]:
        """virConfGetValueString: None when absent; a non-string is VIR_ERR_INTERNAL_ERROR."""
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise make_error(
                C.VIR_ERR_INTERNAL_ERROR,
                C.VIR_FROM_CONF,
                f"{self.filename}: expected a string for '{name}' parameter",
            )
        return value

    def get_string_list(self, name: str, compat_string: bool = False) -> Optional[list[str]]:
        """virConfGetValueStringList, with libvirt's error codes for each mismatch."""
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, list):
            out: list[str] = []
            for item in value:
                if not isinstance(item, str):
                    raise make_error(
                        C.VIR_ERR_CONF_SYNTAX,
                        C.VIR_FROM_CONF,
                        f"{self.filename}: expected a string list for '{name}' parameter",
                    )
                out.append(item)
            return out
        if isinstance(value, str) and compat_string:
            return [value]
        what = "a string or string list" if compat_string else "a string list"
        raise make_error(
            C.VIR_ERR_INTERNAL_ERROR,
            C.VIR_FROM_CONF,
            f"{self.filename}: expected {what} for '{name}' parameter",
        )


_BLANK = b" \t"
_EOL = b"\r\n"


class _ConfParser:
    """A transcription of virconf.c's recursive-descent parser (same quirks)."""

    def __init__(self, data: bytes, filename: Optional[str]) -> None:
        self.data = data
        self.end = len(data)
        self.cur = 0
        self.line = 1
        self.filename = filename
        self.entries: list[tuple[str, ConfValue]] = []

    def ch(self) -> int:
        # C reads the NUL terminator at end; 0 never matches a class below.
        return self.data[self.cur] if self.cur < self.end else 0

    def next(self) -> None:
        if self.cur < self.end:
            self.cur += 1

    def err(self, info: str) -> Exception:
        return _conf_error(self.filename, self.line, info)

    def skip_blanks(self) -> None:
        while self.cur < self.end and self.data[self.cur] in _BLANK:
            self.cur += 1

    def skip_blanks_and_eol(self) -> None:
        while self.cur < self.end and self.data[self.cur] in b" \t\r\n":
            if self.data[self.cur] == 0x0A:
                self.line += 1
            self.cur += 1

    def parse(self) -> Conf:
        while self.cur < self.end:
            self.statement()
            self.separator()
        return Conf(self.filename, self.entries)

    def statement(self) -> None:
        self.skip_blanks_and_eol()
        if self.ch() == 0x23:  # '#'
            while self.cur < self.end and self.data[self.cur] not in _EOL:
                self.next()
            return
        name = self.name()
        self.skip_blanks()
        if self.ch() != 0x3D:  # '='
            raise self.err("expecting an assignment")
        self.next()
        self.skip_blanks()
        value = self.value()
        self.skip_blanks()
        if self.ch() == 0x23:  # trailing comment
            while self.cur < self.end and self.data[self.cur] not in _EOL:
                self.next()
        self.entries.append((name, value))

    def separator(self) -> None:
        self.skip_blanks()
        if self.cur >= self.end:
            return
        c = self.ch()
        if c in _EOL:
            self.skip_blanks_and_eol()
        elif c == 0x3B:  # ';'
            self.next()
            self.skip_blanks_and_eol()
        else:
            raise self.err("expecting a separator")

    def name(self) -> str:
        self.skip_blanks()
        base = self.cur
        c = self.ch()
        if not (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A):
            raise self.err("expecting a name")
        while self.cur < self.end:
            c = self.data[self.cur]
            if 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A or c == 0x5F:
                self.cur += 1
            else:
                break
        return self.data[base : self.cur].decode("ascii")

    def _text(self, base: int) -> str:
        return self.data[base : self.cur].decode("utf-8", "surrogateescape")

    def string(self) -> str:
        c = self.ch()
        if c == 0x27 or (c == 0x22 and not (self.cur + 6 < self.end and self.data.startswith(b'"""', self.cur))):
            self.next()
            base = self.cur
            while self.cur < self.end and self.data[self.cur] != c and self.data[self.cur] not in _EOL:
                self.next()
            if self.ch() != c:
                raise self.err("unterminated string")
            text = self._text(base)
            self.next()
            return text
        # python-style triple quotes
        self.cur += 3
        base = self.cur
        while self.cur + 2 < self.end and not self.data.startswith(b'"""', self.cur):
            if self.data[self.cur] == 0x0A:
                self.line += 1
            self.next()
        if not self.data.startswith(b'"""', self.cur):
            raise self.err("unterminated string")
        text = self._text(base)
        self.cur += 3
        return text

    def number(self) -> int:
        neg = False
        c = self.ch()
        if c == 0x2D:
            neg = True
            self.next()
        elif c == 0x2B:
            self.next()
        if self.cur >= self.end or not 0x30 <= self.ch() <= 0x39:
            raise self.err("unterminated number")
        n = 0
        while self.cur < self.end and 0x30 <= self.data[self.cur] <= 0x39:
            n = n * 10 + self.data[self.cur] - 0x30
            self.next()
        return -n if neg else n

    def value(self) -> ConfValue:
        self.skip_blanks()
        if self.cur >= self.end:
            raise self.err("expecting a value")
        c = self.ch()
        if c in (0x22, 0x27):
            return self.string()
        if c == 0x5B:  # '['
            self.next()
            self.skip_blanks_and_eol()
            items: list[ConfValue] = []
            if self.cur < self.end and self.ch() != 0x5D:
                items.append(self.value())
                self.skip_blanks_and_eol()
            while self.cur < self.end and self.ch() != 0x5D:
                if self.ch() != 0x2C:
                    raise self.err("expecting a separator in list")
                self.next()
                self.skip_blanks_and_eol()
                if self.ch() == 0x5D:
                    break
                items.append(self.value())
                self.skip_blanks_and_eol()
            if self.ch() != 0x5D:
                raise self.err("list is not closed with ]")
            self.next()
            return items
        if 0x30 <= c <= 0x39 or c in (0x2B, 0x2D):
            return self.number()
        raise self.err("expecting a value")


def parse_conf(content: Union[str, bytes], filename: Optional[str] = "memory conf") -> Conf:
    """Parse virconf text; ``filename`` is what error messages name."""
    data = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
    return _ConfParser(data, filename).parse()


def read_conf(path: str) -> Conf:
    """virConfReadFile: read errors are VIR_ERR_SYSTEM_ERROR as virFileReadAll reports them."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CONFIG_FILE_SIZE + 1)
    except IsADirectoryError as e:
        raise system_error(C.VIR_FROM_NONE, e.errno or 0, f"Failed to read file '{path}'") from None
    except OSError as e:
        raise system_error(C.VIR_FROM_NONE, e.errno or 0, f"Failed to open file '{path}'") from None
    if len(data) > _MAX_CONFIG_FILE_SIZE:
        raise make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_NONE, f"File '{path}' is too large")
    return parse_conf(data, path)


#: parsed libvirt.conf files by path and file signature: an open reads
#: libvirt.conf every time, as libvirt does, but parses it only when it
#: changed (parsing cost ~0.2 ms, a sixth of an open+close on a unix socket)
_conf_cache: dict[tuple[str, tuple[int, int, int, int]], Conf] = {}


def load_libvirt_conf(env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> Optional[Conf]:
    """virConfLoadConfig(&conf, "libvirt.conf"): None when the file does not exist.

    The result is shared between calls while the file is unchanged: treat it
    as read-only.
    """
    path = libvirt_conf_path(env, euid)
    sig = file_sig(path)
    if sig is None:
        return None
    key = (path, sig)
    conf = _conf_cache.get(key)
    if conf is None:
        conf = read_conf(path)
        remember(_conf_cache, key, conf, 8)
    return conf


# ------------------------------------------------------------ auth.conf
def find_auth_file(
    uri_params: Optional[Sequence[tuple[str, str]]] = None,
    env: Optional[Mapping[str, str]] = None,
    euid: Optional[int] = None,
) -> Optional[str]:
    """virAuthGetConfigFilePathURI: which auth.conf an open would read, if any."""
    if env is None:
        env = os.environ
    authenv = env.get("LIBVIRT_AUTH_FILE")
    if authenv is not None:
        return authenv
    for name, value in uri_params or ():
        if name == "authfile":
            return value
    for path in (user_config_dir(env, euid) + "/auth.conf", SYSCONFDIR + "/libvirt/auth.conf"):
        if os.access(path, os.R_OK):
            return path
    return None


class _KeyFileError(Exception):
    """GKeyFile refused the file; the text names no values."""


def _is_group_name(name: str) -> bool:
    return bool(name) and not any(c in "[]" or ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def _is_key_name(key: str) -> bool:
    if not key:
        return False
    base, bracket, rest = key.partition("[")
    if not base or "=" in base or "]" in base:
        return False
    if base[0] == " " or base[-1] == " ":
        return False
    if bracket:
        locale, close, tail = rest.partition("]")
        if not close or tail:
            return False
        if not all(c.isalnum() or c in "-_.@" for c in locale):
            return False
    return True


def _unescape_string(raw: str) -> Optional[str]:
    """g_key_file_get_string's value: escapes decoded; None for a value that is not UTF-8.

    GLib reports bad escapes but still returns the string: an unknown
    escape keeps its backslash, a backslash at the end is dropped.
    """
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return None  # g_utf8_validate failed
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == "\\":
            i += 1
            if i >= n:
                break
            e = raw[i]
            mapped = _KEYFILE_ESCAPES.get(e)
            out.append("\\" + e if mapped is None else mapped)
        else:
            out.append(c)
        i += 1
    return "".join(out)


_KEYFILE_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class AuthConfig:
    """An auth.conf loaded the way GKeyFile loads it (virAuthConfigNew)."""

    __slots__ = ("path", "groups")

    def __init__(self, path: str, groups: dict[str, dict[str, str]]) -> None:
        self.path = path
        self.groups = groups

    @classmethod
    def parse(cls, path: str, data: bytes) -> AuthConfig:
        groups: dict[str, dict[str, str]] = {}
        current: Optional[dict[str, str]] = None
        rawlines = data.split(b"\n")
        for index, rawline in enumerate(rawlines):
            if rawline.endswith(b"\r") and index < len(rawlines) - 1:
                rawline = rawline[:-1]  # GLib drops the CR of a CRLF only
            line = rawline.decode("utf-8", "surrogateescape")  # GLib validates values when read
            stripped = line.lstrip(" \t\n\r\f\v")
            if stripped == "" or stripped.startswith("#"):
                continue
            if stripped.startswith("["):
                close = stripped.find("]")
                if close < 0 or stripped[close + 1 :].strip(" \t"):
                    raise _KeyFileError("line is not a key-value pair, group, or comment")
                name = stripped[1:close]
                if not _is_group_name(name):
                    raise _KeyFileError("invalid group name")
                current = groups.setdefault(name, {})
                continue
            if "=" not in stripped:
                raise _KeyFileError("line is not a key-value pair, group, or comment")
            if current is None:
                raise _KeyFileError("key file does not start with a group")
            key, _, value = stripped.partition("=")
            key = key.rstrip(" \t\n\r\f\v")
            if not _is_key_name(key):
                raise _KeyFileError("invalid key name")
            if "[" in key:
                continue  # a translation: never the plain key libvirt asks for
            current[key] = value.lstrip(" \t\n\r\f\v")
        return cls(path, groups)

    @classmethod
    def load(cls, path: str) -> AuthConfig:
        try:
            with open(path, "rb") as f:
                data = f.read()
            return cls.parse(path, data)
        except (OSError, _KeyFileError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise make_error(
                C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_NONE, f"Unable to load authentication file '{path}': {why}"
            ) from None

    def get_string(self, group: str, key: str) -> Optional[str]:
        raw = self.groups.get(group, {}).get(key)
        return None if raw is None else _unescape_string(raw)

    def lookup(self, service: str, hostname: Optional[str], credname: str) -> Optional[str]:
        """virAuthConfigLookup."""
        if hostname is None:
            hostname = "localhost"
        authgroup = f"auth-{service}-{hostname}"
        if authgroup not in self.groups:
            authgroup = f"auth-{service}-default"
        if authgroup not in self.groups:
            return None
        authcred = self.get_string(authgroup, "credentials")
        if authcred is None:
            raise make_error(
                C.VIR_ERR_CONF_SYNTAX,
                C.VIR_FROM_NONE,
                f"Missing item 'credentials' in group '{authgroup}' in '{self.path}'",
            )
        credgroup = f"credentials-{authcred}"
        if credgroup not in self.groups:
            raise make_error(
                C.VIR_ERR_CONF_SYNTAX,
                C.VIR_FROM_NONE,
                f"Missing group 'credentials-{authcred}' referenced from group '{authgroup}' in '{self.path}'",
            )
        return self.get_string(credgroup, credname)


def lookup_credential(path: Optional[str], service: str, hostname: Optional[str], credname: str) -> Optional[str]:
    """virAuthGetCredential: ``None`` without a file or without that credential."""
    if path is None:
        return None
    return AuthConfig.load(path).lookup(service, hostname, credname)
