"""pyvirtrpc.config: libvirt.conf (virconf) and auth.conf (GKeyFile) readers.

``C_CONF_CASES`` was recorded from libvirt 9.0 (python3-libvirt run as an
unprivileged user with the file as its libvirt.conf) and is re-checked
against it by the ``peer`` tests; auth.conf lookups are checked against
libvirt over the lab daemon's SASL listener and against GLib's own
GKeyFile through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from pyvirtrpc import config as K
from pyvirtrpc import uri as U
from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from tests.harness.lab import Lab
from tests.harness.pytest_ci import unavailable

PYTHON3_LIBVIRT = "/usr/bin/python3"
F = "{file}"

#: (libvirt.conf content, None if libvirt accepts it, else the error detail after "<file>:")
C_CONF_CASES: list[tuple[str, Optional[str]]] = [
    ("", None),
    ("\n", "2: expecting a name"),
    ("  \n", "2: expecting a name"),
    ("# c\n", None),
    ("# c", None),
    ('uri_default = "test:///default"\nx = 1', None),
    ("x = 1\n\n\n", None),
    ("x=1;y=2\n", None),
    ("x=1 y=2\n", "1: expecting a separator"),
    ('x = [ "a" , ]\n', None),
    ("x = [ ]\n", None),
    ('x = [\n"a"\n,\n"b" ]\n', None),
    ("x = 'a\"b'\n", None),
    ('x = """a\nb"""\n', None),
    ('x = """ab"""\n', None),
    ('x = "a" # tail\n', None),
    ("x = -\n", "1: unterminated number"),
    ("x = +5\n", None),
    ("1x = 2\n", "1: expecting a name"),
    ("x_y9 = 1\n", None),
    ('x\t=\t"a"\n', None),
    ('x = "a"\r\ny = "b"\r\n', None),
    ('x = [ "a" "b" ]\n', "1: expecting a separator in list"),
    ('x = [ "a", 1 ]\n', None),
    ('x = ["a"\n', "2: list is not closed with ]"),
    ('x = "a" ; y = "b"\n', None),
    ('x = """abc\n', "1: unterminated string"),
    ('x = ""\n', None),
    ("x.y = 1\n", "1: expecting an assignment"),
    ("x = \n", "1: expecting a value"),
    ('\n\nx = "abc\n', "3: unterminated string"),
    ("# a\n\n  # b\nx = [\n  'a', # no comments in lists\n]\n", "5: expecting a value"),
    ("x = 'abc\ny = 1\n", "1: unterminated string"),
    ('x = """a\n\nb\n', "3: unterminated string"),
    ("x = [ [ 'a' ], 'b' ]\n", None),
    ("x = 12345678901234567890\n", None),
]

#: (libvirt.conf content, uri opened, (code, domain, detail with {file})) for type errors and alias errors
C_CONF_LOOKUP_ERRORS: list[tuple[str, Optional[str], tuple[int, int, str]]] = [
    ('uri_aliases = "a=b"\n', "hail",
     (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_CONF, F + ": expected a string list for 'uri_aliases' parameter")),
    ("uri_aliases = [ 1 ]\n", "hail",
     (C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_CONF, F + ": expected a string list for 'uri_aliases' parameter")),
    ("uri_default = 1\n", None,
     (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_CONF, F + ": expected a string for 'uri_default' parameter")),
    ("remote_mode = 1\n", "qemu:///session",
     (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_CONF, F + ": expected a string for 'remote_mode' parameter")),
    ('remote_mode = "bogus"\n', "qemu+tcp://127.0.0.1:1/system",
     (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_REMOTE, "Unknown remote mode 'bogus'")),
    ("remote_proxy = [ ]\nremote_mode = \"bogus\"\n", "qemu:///session",
     (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_REMOTE, "Unknown remote mode 'bogus'")),
    ("remote_proxy = [ ]\n", "qemu:///session",
     (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_CONF, F + ": expected a string for 'remote_proxy' parameter")),
    ('remote_proxy = "x"\n', "qemu+ext:///system",
     (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_REMOTE, "Unnkown proxy type 'x'")),
    ('uri_aliases = [ "a=test:///default", "bad.x=y" ]\n', "hail",
     (C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_URI,
      "Malformed 'uri_aliases' config entry 'bad.x=y', aliases may only contain 'a-Z, 0-9, _, -'")),
    ('uri_aliases = [ "a" ]\n', "hail",
     (C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_URI, "Malformed 'uri_aliases' config entry 'a', expected "
                                             "'alias=uri://host/path'")),
    ('uri_default = "foo"\n', None,
     (C.VIR_ERR_NO_CONNECT, C.VIR_FROM_NONE, "URI '(null)' does not include a driver name")),
]


@pytest.fixture
def world() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pyvirtrpc-conf-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _conf_dir(d: Path) -> Path:
    cfg = d / "cfg" / "libvirt"
    cfg.mkdir(parents=True, exist_ok=True)
    (d / "cfg").chmod(0o755)
    cfg.chmod(0o755)
    return cfg


def _env(d: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(d / "h"), "XDG_RUNTIME_DIR": str(d / "rt"),
            "XDG_CONFIG_HOME": str(d / "cfg"), "LIBVIRT_AUTOSTART": "0"}


# -------------------------------------------------------------- virconf
@pytest.mark.parametrize("content,error", C_CONF_CASES)
def test_conf_syntax(content: str, error: Optional[str]) -> None:
    if error is None:
        K.parse_conf(content, "/f.conf")
        return
    with pytest.raises(libvirtError) as info:
        K.parse_conf(content, "/f.conf")
    assert info.value.err is not None
    assert info.value.err[:3] == (C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_CONF,
                                  f"configuration file syntax error: /f.conf:{error}")


def test_conf_values() -> None:
    conf = K.parse_conf(
        "a = 'x'\nb = \"\"\"l1\nl2\"\"\"\nc = [ 'p', \"q\",\n  ]; d = -12 # tail\ne = [ ]\na = 'second'\n"
        "f = [ [ 'n' ], 3 ]\ng = \"\xe9\"\n".encode("latin-1"), "mem")
    assert conf.get("a") == "x" and conf.get_string("a") == "x"  # the first entry wins
    assert conf.get("b") == "l1\nl2" and conf.get("d") == -12 and conf.get("e") == []
    assert conf.get_string_list("c") == ["p", "q"]
    assert conf.get("f") == [["n"], 3] and conf.get("missing") is None
    assert conf.get_string("g") == "\udce9"
    assert conf.get_string_list("a", compat_string=True) == ["x"]
    with pytest.raises(libvirtError) as info:
        conf.get_string_list("a")
    assert info.value.err is not None and info.value.err[:2] == (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_CONF)
    with pytest.raises(libvirtError) as info:
        conf.get_string_list("d", compat_string=True)
    assert info.value.err is not None and "expected a string or string list for 'd'" in str(info.value)
    with pytest.raises(libvirtError) as info:
        conf.get_string_list("f")
    assert info.value.err is not None and info.value.err[:2] == (C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_CONF)
    with pytest.raises(libvirtError):
        conf.get_string("d")


def test_conf_paths(world: Path) -> None:
    env = _env(world)
    assert K.libvirt_conf_path(env, 0) == "/etc/libvirt/libvirt.conf"
    assert K.libvirt_conf_path(env, 1000) == f"{world}/cfg/libvirt/libvirt.conf"
    assert K.libvirt_conf_path({"HOME": "/home/u"}, 1000) == "/home/u/.config/libvirt/libvirt.conf"
    assert K.libvirt_conf_path({"HOME": "/home/u/", "XDG_CONFIG_HOME": ""}, 1000) == (
        "/home/u/.config/libvirt/libvirt.conf")
    assert K.user_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7/"}, 7) == "/run/user/7/libvirt"
    assert K.user_runtime_dir({"HOME": ""}, 7) == ".cache/libvirt"
    assert K.load_libvirt_conf(env, 1000) is None
    (_conf_dir(world) / "libvirt.conf").write_text('uri_default = "qemu:///session"\n')
    conf = K.load_libvirt_conf(env, 1000)
    assert conf is not None and conf.filename == f"{world}/cfg/libvirt/libvirt.conf"
    assert conf.get_string("uri_default") == "qemu:///session"


def test_conf_read_errors(world: Path) -> None:
    d = world / "dir.conf"
    d.mkdir()
    with pytest.raises(libvirtError) as info:
        K.read_conf(str(d))
    assert info.value.err is not None and info.value.err[0] == C.VIR_ERR_SYSTEM_ERROR
    assert f"Failed to read file '{d}'" in str(info.value)
    with pytest.raises(libvirtError) as info:
        K.read_conf(str(world / "missing.conf"))
    assert "Failed to open file" in str(info.value)


@pytest.fixture(scope="module")
def c_library() -> None:
    """python3-libvirt to compare with, and setpriv to run it unprivileged (fails under CI when missing)."""
    if not Path(PYTHON3_LIBVIRT).exists():
        unavailable("python3-libvirt (the C library) not installed")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        unavailable("setpriv (util-linux) is needed to run the C library as an unprivileged user")


peer = pytest.mark.usefixtures("c_library")
USER_PREFIX = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
USER_UID = 65534 if os.geteuid() == 0 else os.geteuid()

_C_OPEN = r"""
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
out = []
for uri in json.loads(sys.argv[1]):
    try:
        libvirt.open(uri).close(); out.append(None)
    except libvirt.libvirtError as e:
        out.append(list(e.err))
print(json.dumps(out))
"""


def _c_open_with_conf(world: Path, content: str, uri: Optional[str]) -> Optional[list[object]]:
    conf = _conf_dir(world) / "libvirt.conf"
    conf.write_text(content)
    conf.chmod(0o644)
    r = subprocess.run(USER_PREFIX + [PYTHON3_LIBVIRT, "-c", _C_OPEN, json.dumps([uri])], env=_env(world),
                       capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]  # type: ignore[no-any-return]


def _our_open_error(world: Path, uri: Optional[str]) -> Optional[list[object]]:
    try:
        U.plan(uri, env=_env(world), euid=USER_UID)
    except libvirtError as e:
        return list(e.err or ())
    return None


@pytest.mark.peer
@peer
@pytest.mark.parametrize("content,error", C_CONF_CASES)
def test_conf_syntax_matches_c(world: Path, content: str, error: Optional[str]) -> None:
    # "hail" is no URI: a readable file gets as far as the URI check, a broken one fails first
    c_err = _c_open_with_conf(world, content, "hail")
    ours = _our_open_error(world, "hail")
    assert c_err == ours
    assert c_err is not None
    if error is None:
        assert c_err[0] == C.VIR_ERR_NO_CONNECT
    else:
        assert c_err[5] == f"{world}/cfg/libvirt/libvirt.conf:{error}"


@pytest.mark.parametrize("content,uri,expected", C_CONF_LOOKUP_ERRORS)
def test_conf_lookup_errors(world: Path, content: str, uri: Optional[str], expected: tuple[int, int, str]) -> None:
    (_conf_dir(world) / "libvirt.conf").write_text(content)
    err = _our_open_error(world, uri)
    assert err is not None
    code, domain, detail = expected
    assert (err[0], err[1], err[5]) == (code, domain, detail.replace(F, f"{world}/cfg/libvirt/libvirt.conf"))


@pytest.mark.peer
@peer
@pytest.mark.parametrize("content,uri,expected", C_CONF_LOOKUP_ERRORS)
def test_conf_lookup_errors_match_c(world: Path, content: str, uri: Optional[str],
                                    expected: tuple[int, int, str]) -> None:
    assert _c_open_with_conf(world, content, uri) == _our_open_error(world, uri)


# ------------------------------------------------------------ auth.conf
AUTH = """# comment
[credentials-lab]
authname=alice
password = wonder land\\s
realm=EXAMPLE
escaped=a\\tb\\\\c
broken=a\\qb

[auth-libvirt-h1]
credentials=lab

[auth-libvirt-default]
credentials = lab

[auth-libvirt-nocred]
other=1

[auth-libvirt-dangling]
credentials=missing

[auth-esx-h1]
credentials=lab
"""


def test_lookup_credential(world: Path) -> None:
    path = world / "auth.conf"
    path.write_text(AUTH)
    p = str(path)
    assert K.lookup_credential(p, "libvirt", "h1", "authname") == "alice"
    assert K.lookup_credential(p, "libvirt", "h1", "password") == "wonder land "
    assert K.lookup_credential(p, "libvirt", "other", "realm") == "EXAMPLE"  # auth-libvirt-default
    assert K.lookup_credential(p, "libvirt", None, "realm") == "EXAMPLE"  # hostname defaults to localhost
    assert K.lookup_credential(p, "libvirt", "h1", "username") is None
    assert K.lookup_credential(p, "libvirt", "h1", "escaped") == "a\tb\\c"
    assert K.lookup_credential(p, "libvirt", "h1", "broken") == "a\\qb"  # GLib keeps an unknown escape
    assert K.lookup_credential(p, "ssh", "h1", "authname") is None
    assert K.lookup_credential(None, "libvirt", "h1", "authname") is None
    with pytest.raises(libvirtError) as info:
        K.lookup_credential(p, "libvirt", "nocred", "authname")
    assert info.value.err is not None and info.value.err[:3] == (
        C.VIR_ERR_CONF_SYNTAX, C.VIR_FROM_NONE,
        f"configuration file syntax error: Missing item 'credentials' in group 'auth-libvirt-nocred' in '{p}'")
    with pytest.raises(libvirtError) as info:
        K.lookup_credential(p, "libvirt", "dangling", "authname")
    assert info.value.err is not None and info.value.err[2] == (
        "configuration file syntax error: Missing group 'credentials-missing' referenced from group "
        f"'auth-libvirt-dangling' in '{p}'")


def test_auth_file_errors_never_show_values(world: Path) -> None:
    path = world / "bad.conf"
    path.write_text("[credentials-x]\npassword=s3cret\nnot a pair\n")
    with pytest.raises(libvirtError) as info:
        K.lookup_credential(str(path), "libvirt", "h", "password")
    assert info.value.err is not None and info.value.err[0] == C.VIR_ERR_CONF_SYNTAX
    assert "s3cret" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(libvirtError):
        K.lookup_credential(str(world / "missing.conf"), "libvirt", "h", "password")


def test_find_auth_file(world: Path) -> None:
    env = _env(world)
    assert K.find_auth_file(None, env, 1000) in (None, "/etc/libvirt/auth.conf")
    assert K.find_auth_file([("authfile", "/u.conf")], env, 1000) == "/u.conf"
    # the lookup is case-sensitive and takes the first, unlike the remote driver's stripping
    assert K.find_auth_file([("AUTHFILE", "/x"), ("authfile", "/a"), ("authfile", "/b")], env, 1000) == "/a"
    assert K.find_auth_file([("authfile", "/u.conf")], {**env, "LIBVIRT_AUTH_FILE": "/e.conf"}, 1000) == "/e.conf"
    assert K.find_auth_file(None, {**env, "LIBVIRT_AUTH_FILE": ""}, 1000) == ""
    user = _conf_dir(world) / "auth.conf"
    user.write_text("[x]\n")
    assert K.find_auth_file([("foo", "bar")], env, 1000) == str(user)
    assert K.find_auth_file(None, env, 0) == str(user)  # root uses its own config dir too


def test_lab_auth_file(lab: Lab) -> None:
    """The harness lab's auth.conf gives the SASL account the daemon accepts."""
    sasl = lab.info["sasl"]
    assert K.lookup_credential(lab.authfile, "libvirt", lab.host, "authname") == sasl["user"]
    assert K.lookup_credential(lab.authfile, "libvirt", lab.host, "password") == sasl["password"]


#: auth.conf files whose lookup errors were compared with libvirt's (SASL over the lab's TCP listener)
C_AUTH_ERROR_FILES: list[tuple[str, str]] = [
    ("[auth-libvirt-127.0.0.1]\ncredentials=nope\n",
     "Missing group 'credentials-nope' referenced from group 'auth-libvirt-127.0.0.1' in '{path}'"),
    ("[auth-libvirt-default]\nfoo=1\n", "Missing item 'credentials' in group 'auth-libvirt-default' in '{path}'"),
    ("[credentials-x]\nauthname=a\n[auth-libvirt-127.0.0.1]\ncredentials = x \n",
     "Missing group 'credentials-x ' referenced from group 'auth-libvirt-127.0.0.1' in '{path}'"),
]


@pytest.mark.peer
@peer
@pytest.mark.parametrize("content,detail", C_AUTH_ERROR_FILES)
def test_auth_errors_match_c(world: Path, content: str, detail: str, lab: Lab) -> None:
    path = world / "auth.conf"
    path.write_text(content.replace("127.0.0.1", lab.host))
    detail = detail.replace("127.0.0.1", lab.host)
    code = (
        "import json, libvirt\n"
        "libvirt.registerErrorHandler(lambda *a: None, None)\n"
        "try:\n"
        f"    libvirt.openAuth({lab.uris['tcp']!r}, [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE],"
        " lambda c, d: -1, None], 0)\n"
        "    print('null')\n"
        "except libvirt.libvirtError as e:\n"
        "    print(json.dumps(list(e.err)))\n"
    )
    r = subprocess.run([PYTHON3_LIBVIRT, "-c", code], env={"PATH": "/usr/bin:/bin", "LIBVIRT_AUTH_FILE": str(path)},
                       capture_output=True, text=True, timeout=60)
    c_err = json.loads(r.stdout)
    with pytest.raises(libvirtError) as info:
        K.lookup_credential(K.find_auth_file(None, {"LIBVIRT_AUTH_FILE": str(path)}), "libvirt", lab.host,
                            "authname")
    assert info.value.err is not None
    assert c_err == list(info.value.err)
    assert c_err[5] == detail.format(path=path)


class _GKeyFile:
    """GLib's GKeyFile through ctypes: the parser libvirt's virAuthConfigNew uses."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("glib-2.0") or "libglib-2.0.so.0"
        self.lib = lib = ctypes.CDLL(name)
        lib.g_key_file_new.restype = ctypes.c_void_p
        lib.g_key_file_free.argtypes = [ctypes.c_void_p]
        lib.g_key_file_load_from_data.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
                                                  ctypes.c_void_p]
        lib.g_key_file_load_from_data.restype = ctypes.c_int
        lib.g_key_file_has_group.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.g_key_file_has_group.restype = ctypes.c_int
        lib.g_key_file_get_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.g_key_file_get_string.restype = ctypes.c_void_p
        lib.g_free.argtypes = [ctypes.c_void_p]

    def read(self, data: bytes, queries: list[tuple[str, str]]) -> Optional[list[object]]:
        kf = self.lib.g_key_file_new()
        try:
            if not self.lib.g_key_file_load_from_data(kf, data, len(data), 0, None):
                return None
            out: list[object] = []
            for group, key in queries:
                out.append(bool(self.lib.g_key_file_has_group(kf, group.encode())))
                ptr = self.lib.g_key_file_get_string(kf, group.encode(), key.encode(), None)
                if ptr:
                    out.append(ctypes.string_at(ptr).decode("utf-8"))
                    self.lib.g_free(ptr)
                else:
                    out.append(None)
            return out
        finally:
            self.lib.g_key_file_free(kf)


def _ours_keyfile(data: bytes, queries: list[tuple[str, str]]) -> Optional[list[object]]:
    try:
        cfg = K.AuthConfig.parse("mem", data)
    except K._KeyFileError:
        return None
    out: list[object] = []
    for group, key in queries:
        out.append(group in cfg.groups)
        out.append(cfg.get_string(group, key))
    return out


KEYFILE_LINES = ["[g]", "[h]", " [g] ", "[g] x", "[]", "[a[b]", "k=v", "k = v ", " k=v", "k =", "=v", "k", "# c",
                 "  # c", "", "   ", "k\\=x=1", "k[fr]=x", "k[=x", "k v=1", " k = a\\sb", "k=a\\nb\\\\",
                 "k=a\\", "k=a\\x", "k=\\t", "\t[g]", "[g]\r", "k=v\r", "kk=2", "[g h]", "[g\x01]", "k=\xc3\xa9",
                 "k=\xff", "[\xc3\xa9]", "k = ; x"]


def test_keyfile_matches_glib() -> None:
    try:
        glib = _GKeyFile()
    except OSError:
        pytest.skip("GLib shared library not installed")
    rng = random.Random(7)
    queries = [("g", "k"), ("h", "k"), ("g", "kk"), ("g h", "k"), (" g", "k"), ("g", "k v"), ("g", "k\\"),
               ("\xe9", "k"), ("g", "k[fr]")]
    mismatches = []
    for _ in range(3000):
        lines = [rng.choice(KEYFILE_LINES) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.7:
            lines.insert(0, "[g]")
        data = "\n".join(lines).encode("latin-1").replace(b"\xc3\xa9", "\xe9".encode()) + (
            b"\n" if rng.random() < 0.5 else b"")
        want, got = glib.read(data, queries), _ours_keyfile(data, queries)
        if want != got:
            mismatches.append((data, want, got))
    assert mismatches[:5] == []
