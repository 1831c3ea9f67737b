"""The XDR generator: fixture snapshots, the committed output, errors with positions, counts, constants."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from typing import Any, Union

import fixtures_x
import pytest

from pyvirtrpc._xdr import decode, encode
from tools.xdrgen import __main__ as cli
from tools.xdrgen.cheaders import read_header
from tools.xdrgen.model import GenError
from tools.xdrgen.resolve import MAX_DEPTH, Universe
from tools.xdrgen.xparser import parse

ROOT = Path(__file__).resolve().parents[1]
PROGRAM_MODULES = ("remote", "qemu", "lxc", "admin", "keepalive")


# =================================================================== fixtures


def test_fixture_snapshot() -> None:
    """The generator's output for tests/fixtures_x is what is committed under expected/."""
    files = fixtures_x.generate()
    if os.environ.get("XDRGEN_UPDATE_SNAPSHOTS"):
        for name, text in files.items():
            (fixtures_x.EXPECTED / name).write_text(text)
    committed = {p.name: p.read_text() for p in fixtures_x.EXPECTED.glob("*.py")}
    assert sorted(committed) == sorted(files)
    for name, text in files.items():
        assert committed[name] == text, f"{name} differs: run XDRGEN_UPDATE_SNAPSHOTS=1 pytest {__file__}"


def test_generation_is_deterministic() -> None:
    assert fixtures_x.generate() == fixtures_x.generate()


def test_fixture_header_constants() -> None:
    ns: dict[str, Any] = {}
    exec((fixtures_x.EXPECTED / "fixture_constants.py").read_text(), ns)
    consts = {k: v for k, v in ns.items() if k.startswith("VIR_")}
    assert consts == {
        "VIR_FX_NAME_MAX": 8, "VIR_FX_LIST_MAX": 16, "VIR_FX_UUID_BUFLEN": 16, "VIR_FX_GREETING": "hello, xdr",
        "VIR_FX_COLOR_RED": 0, "VIR_FX_COLOR_GREEN": 1, "VIR_FX_COLOR_BLUE": 5, "VIR_FX_COLOR_CYAN": 6,
        "VIR_FX_COLOR_ALL": 16, "VIR_FX_NEG": -1, "VIR_FX_HEX": 16, "VIR_FX_SHIFTED": 2**31,
    }  # no VIR_FX_COLOR_LAST (sentinel), no function-like or attribute macros


def test_fixture_module_shape() -> None:
    fx = fixtures_x.load()
    assert (fx.PROGRAM, fx.VERSION, fx.NAME) == (0x20001234, 1, "FX")
    assert (fx.FX_STRING_MAX, fx.FX_LIST_MAX, fx.FX_SMALL) == (64, 16, 3)
    assert fx.FX_PROC_PING == 1 and fx.FX_BLUE == 5 and isinstance(fx.FX_BLUE, fx.fx_color)
    ping, event, nothing = (fx.PROCEDURES[i] for i in (1, 2, 3))
    assert (ping.name, ping.args, ping.ret, ping.msg) == ("FX_PROC_PING", fx._c_fx_ping_args, fx._c_fx_ping_ret, None)
    assert (event.args, event.ret, event.msg) == (None, None, fx._c_fx_event_msg)
    assert (nothing.args, nothing.ret, nothing.msg) == (None, None, None)
    assert ping.annotations == (("generate", "both"), ("acl", "none"))
    assert event.annotation("acl") == ["domain:read", "domain:write"]
    assert event.annotation("priority") == ["high"]
    assert nothing.annotations == (("generate", "both"),)
    assert fx.PROC_BY_NAME["FX_PROC_EVENT"] is event
    assert fx.fx_optional.__slots__ == ("maybe", "name", "from_")
    assert set(fx.codecs()) == set(fx._NAMES) and "fx_unused_args" in fx._NAMES


def fixture_values(fx: Any) -> dict[str, Any]:
    pt = fx.fx_point
    named = fx.fx_named("n", b"u" * 16, -7)
    return {
        "fx_ping_args": fx.fx_ping_args(
            fx.fx_scalars(-1, 2**32 - 1, 7, -(2**63), 2**64 - 1, True, 0.5, -2.25, 255, 65535, -32768, -128),
            fx.fx_bytes(
                "s" * 64, "\udcff\u00e9", b"abc", b"v" * 16, b"", b"\xc3\xa9\x00\xff", b"code", b"\x80\x7f\x00"
            ),
            fx.fx_arrays([pt(1, 2), pt(3, 4)], [pt(i, -i) for i in range(16)], [1, -1], [2**62, -1], [named],
                         [fx.FX_RED, fx.fx_color(9)]),
            fx.fx_optional(pt(5, 6), None, named),
        ),
        "fx_ping_ret": fx.fx_ping_ret(
            fx.fx_value(fx.FX_GREEN, "green"), fx.fx_flagged(99, None), fx.fx_fallback(7, pt(8, 9)),
            fx.fx_switch(True, pt(0, 0)),
        ),
        "fx_event_msg": fx.fx_event_msg(named, [fx.fx_value(fx.FX_RED, -5), fx.fx_value(fx.FX_BLUE, "")]),
    }


def test_fixture_codecs_round_trip() -> None:
    fx = fixtures_x.load()
    for name, value in fixture_values(fx).items():
        codec = getattr(fx, "_c_" + name)
        data = encode(codec, value)
        assert decode(codec, data) == value
        assert encode(codec, decode(codec, data)) == data


def test_fixture_wire_layout() -> None:
    fx = fixtures_x.load()
    b = encode(fx._c_fx_bytes, fx.fx_bytes("ab", "", b"xyz", b"q", b"", b"\xc3", b"\x01\x02\x03\x04", b""))
    assert b.hex() == (
        "00000002" "61620000"          # string<64> "ab" + 2 bytes of zero padding
        "00000000"                     # string<> ""
        "78797a00"                     # opaque[3], padded to 4
        "00000001" "71000000"          # opaque<16>
        "00000000"                     # opaque<>
        "00000001" "ffffffc3"          # char<8>: one 4-byte int per char, signed as x86 libvirt sends it
        "00000001" "00000002" "00000003" "00000004"  # char[4]
        "00000000"                     # unsigned char<3>
    )
    # unsigned char arrays from an ARM daemon come as 0x000000c3: accepted too
    alt = b[:0x24] + bytes.fromhex("000000c3") + b[0x28:]
    assert decode(fx._c_fx_bytes, alt).label == b"\xc3"
    s = encode(fx._c_fx_scalars, fixture_values(fx)["fx_ping_args"].scalars)
    assert len(s) == 4 * 3 + 8 * 2 + 4 + 8 + 4 + 4 * 4  # hyper and double are 8 bytes, the rest 4
    assert s[28:32] == b"\0\0\0\1"  # bool TRUE
    sw = encode(fx._c_fx_switch, fx.fx_switch(False, None))
    assert sw == b"\0\0\0\0" and decode(fx._c_fx_switch, sw).on is False


def test_fixture_errors_name_the_field() -> None:
    from pyvirtrpc.errors import DecodeError, EncodeError

    fx = fixtures_x.load()
    with pytest.raises(DecodeError, match=r"fx_bytes\.fixed: padding must be zero bytes, got 01"):
        decode(fx._c_fx_bytes, bytes.fromhex("00000000" "00000000" "78797a01") + bytes(20))
    with pytest.raises(DecodeError, match=r"fx_switch\.on: bool value 2 is out of range 0\.\.1"):
        decode(fx._c_fx_switch, b"\0\0\0\2")
    with pytest.raises(DecodeError, match=r"fx_value\.kind: expected a case of union fx_value \(0, 1, 5\), got 3"):
        decode(fx._c_fx_value, b"\0\0\0\3")
    assert decode(fx._c_fx_flagged, b"\0\0\0\3") == fx.fx_flagged(3, None)  # default: void
    with pytest.raises(EncodeError, match=r"fx_arrays\.list: expected at most 16 elements, got 17"):
        encode(fx._c_fx_arrays, fx.fx_arrays([fx.fx_point(0, 0)] * 2, [fx.fx_point(0, 0)] * 17, [], [0, 0], [], []))
    with pytest.raises(EncodeError, match=r"fx_flagged: a void arm takes no value, got int"):
        encode(fx._c_fx_flagged, fx.fx_flagged(1, 5))


# ============================================================ committed output


def test_committed_output_matches_generator() -> None:
    files = cli.generate()
    for rel, text in sorted(files.items()):
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `python -m tools.xdrgen`"
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / cli.OUT).glob("*.py")}
    assert on_disk == set(files)


def test_check_command() -> None:
    r = subprocess.run([sys.executable, "-m", "tools.xdrgen", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_check_command_reports_stale_files(tmp_path: Path) -> None:
    # a copy of the tree with one generated file altered
    for part in ("protocol", "tools", "pyvirtrpc/_gen"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    stale = tmp_path / "pyvirtrpc/_gen/lxc.py"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    r = subprocess.run([sys.executable, "-m", "tools.xdrgen", "--check"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1
    assert "xdrgen: pyvirtrpc/_gen/lxc.py is out of date" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.xdrgen"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "1 rewritten" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tools.xdrgen", "--check"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# =================================================================== errors

ERRORS = [
    ("struct a { foo x; };", "1:12: unknown type 'foo'"),
    ("struct a { b *x; };", "1:12: unknown type 'b'"),
    ("struct a {\n  int x;\n  int x;\n};", "3:7: duplicate field x"),
    ("struct a { int x };", "1:18: expected ';', found '}'"),
    ("struct a { int x; }", "1:19: expected ';', found end of file"),
    ("struct a { int x; };\nstruct a { int y; };", "2:8: type a already defined at fx.x:1:8"),
    ("struct a { b *next; };\nstruct b { a x; };",
     r"1:8: recursive type \(a -> b -> a\): nesting depth must be bounded"),
    ("struct a { a *next; };", r"1:8: recursive type \(a -> a\)"),
    ("typedef b a;\ntypedef a b;", r"1:11: recursive type \(a -> b -> a\)"),
    ("struct a { int x; };\n/* never closed\n", "2:1: unterminated comment"),
    ("struct a { int x; } $", "1:21: unexpected character '\\$'"),
    ("enum e { A = 1, A = 2 };", "1:17: duplicate enumerator A"),
    ("union u switch (int d) { case 1: int a; case 1: int b; };", "1:46: duplicate case value 1"),
    ("union u switch (int d) { default: void; default: void; };", "1:41: a union has one default arm at most"),
    ("union u switch (string s<>) { case 1: void; };", "1:24: a union discriminant must be"),
    ("struct p { int x; };\nunion u switch (p d) { case 1: void; };", "2:19: a union discriminant must be"),
    ("struct a { int x[FOO]; };", "1:18: unknown constant 'FOO'"),
    ("struct a { opaque x[-1]; };", "1:20: size -1 is not an unsigned 32-bit value"),
    ("struct a { void; };", "1:12: void is not allowed as a struct field"),
    ("struct a { };", "1:10: a struct needs at least one field"),
    ("struct a { quadruple q; };", "1:12: quadruple is not supported"),
    ("#include <x>\n", "1:1: preprocessor lines are not part of XDR"),
    ("const A = 1/0;", "1:12: division by zero"),
    ("const A = 1;\nconst A = 2;", "2:7: constant A redefined as 2"),
    ("struct a { string s[3]; };", "1:20: string needs '<N>' or '<>'"),
    ("struct a { opaque o; };", "1:20: opaque needs a size: '\\[N\\]' or '<N>'"),
    ("struct a { struct { int x; } y; };", "1:19: inline struct definitions are not supported"),
    ("typedef void v;", "1:14: expected ';', found 'v'"),
    ("program P { version V { void F(void) = 1; } = 1; } = 1;", "1:1: expected a definition"),
    ("struct a { int int; };", "1:16: expected a field name, found 'int'"),
    ("const A = (1 + ;", "1:16: unexpected ';' in a constant expression|1:1[0-9]:"),
]


@pytest.mark.parametrize(("source", "message"), ERRORS)
def test_errors_have_file_line_col(source: str, message: str) -> None:
    with pytest.raises(GenError) as info:
        Universe([("m", parse("fx.x", source, {}))])
    text = str(info.value)
    assert re.fullmatch(r"fx\.x:\d+:\d+: .+", text, re.S), text
    assert re.match(rf"fx\.x:(?:{message})", text), text


def test_nesting_depth_is_bounded() -> None:
    chain = ["struct s0 { int x; };"] + [f"struct s{i} {{ s{i - 1} x; }};" for i in range(1, MAX_DEPTH + 1)]
    Universe([("m", parse("deep.x", "\n".join(chain[:-1]), {}))])  # MAX_DEPTH levels: fine
    with pytest.raises(GenError, match=rf"deep\.x:{MAX_DEPTH + 1}:8: type s{MAX_DEPTH} nests {MAX_DEPTH + 1} levels"):
        Universe([("m", parse("deep.x", "\n".join(chain), {}))])


def test_header_errors_have_file_line_col() -> None:
    with pytest.raises(GenError, match=r"^h\.h:2:1: VIR_A redefined as 2 \(was 1\)$"):
        read_header("h.h", "#define VIR_A 1\n#  define VIR_A 2\n", {})
    with pytest.raises(GenError, match=r"^h\.h:1:1: unterminated #if block$"):
        read_header("h.h", "#ifdef X\nenum { VIR_B = 1 };\n", {})
    with pytest.raises(GenError, match=r"^h\.h:1:16: unknown constant 'VIR_NOPE'$"):
        read_header("h.h", "enum { VIR_C = VIR_NOPE };", {})


def test_cli_reports_errors_with_exit_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing() -> dict[str, str]:
        Universe([("m", parse("protocol/bad.x", "struct a {\n  nope c;\n};", {}))])
        return {}

    monkeypatch.setattr(cli, "generate", failing)
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "xdrgen: protocol/bad.x:2:3: unknown type 'nope'\n"


def test_error_in_a_vendored_file_points_into_it(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "protocol", tmp_path / "protocol")
    path = tmp_path / "protocol/qemu_protocol.x"
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("struct qemu_domain_monitor_command_args"))
    lines.insert(at + 2, "    no_such_type oops;\n")
    path.write_text("".join(lines))
    with pytest.raises(GenError) as info:
        cli.generate(root=tmp_path)
    assert str(info.value) == f"protocol/qemu_protocol.x:{at + 3}:5: unknown type 'no_such_type'"


# =================================================================== counts


def test_procedure_counts() -> None:
    counts = {m: len(import_module(f"pyvirtrpc._gen.{m}").PROCEDURES) for m in PROGRAM_MODULES}
    assert counts == {"remote": 453, "qemu": 7, "lxc": 1, "admin": 19, "keepalive": 2}
    for m in PROGRAM_MODULES:
        mod = import_module(f"pyvirtrpc._gen.{m}")
        assert all(p.number == n for n, p in mod.PROCEDURES.items())
        assert {p.name: p for p in mod.PROCEDURES.values()} == mod.PROC_BY_NAME
        for p in mod.PROCEDURES.values():
            assert getattr(mod, p.name) == p.number


def test_type_counts() -> None:
    from pyvirtrpc import _gen

    counts = {m: len(import_module(f"pyvirtrpc._gen.{m}_schema").TYPES) for m in _gen.MODULES}
    assert counts == {"virnet": 12, "keepalive": 1, "remote": 716, "qemu": 13, "lxc": 2, "admin": 34}
    assert _gen.PROGRAMS == {
        0x6B656570: ("keepalive", "KEEPALIVE"), 0x20008086: ("remote", "REMOTE"), 0x20008087: ("qemu", "QEMU"),
        0x00068000: ("lxc", "LXC"), 0x06900690: ("admin", "ADMIN"),
    }


@pytest.mark.parametrize("module", PROGRAM_MODULES)
def test_every_message_struct_belongs_to_a_procedure(module: str) -> None:
    mod = import_module(f"pyvirtrpc._gen.{module}")
    schema = import_module(f"pyvirtrpc._gen.{module}_schema")
    used = {n for p in mod.PROCEDURES.values() for n in p._names if n}
    structs = {n for n, s in schema.TYPES.items() if n.endswith(("_args", "_ret", "_msg"))}
    assert structs == used
    for p in mod.PROCEDURES.values():
        for codec, name in zip((p.args, p.ret, p.msg), p._names):
            assert (codec is None) == (name is None)
            if codec is not None:
                assert codec.name == name


def test_known_procedure_signatures() -> None:
    from pyvirtrpc._gen import admin, keepalive, qemu, remote

    p = remote.PROCEDURES[remote.REMOTE_PROC_AUTH_SASL_START]
    assert (p.args.name, p.ret.name, p.msg) == ("remote_auth_sasl_start_args", "remote_auth_sasl_start_ret", None)
    p = remote.PROC_BY_NAME["REMOTE_PROC_CONNECT_GET_HOSTNAME"]
    assert (p.number, p.args, p.ret.name) == (59, None, "remote_connect_get_hostname_ret")
    assert remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE].msg.name == "remote_domain_event_lifecycle_msg"
    assert qemu.PROCEDURES[1].name == "QEMU_PROC_DOMAIN_MONITOR_COMMAND"
    assert [p.name for p in keepalive.PROCEDURES.values()] == ["KEEPALIVE_PROC_PING", "KEEPALIVE_PROC_PONG"]
    assert admin.PROCEDURES[1].name == "ADMIN_PROC_CONNECT_OPEN"
    assert "@generate" not in repr(p.annotations) and p.annotation("generate")


def test_deepest_real_nesting() -> None:
    """Nesting is bounded statically; libvirt's deepest type is 4 composite levels."""
    known: dict[str, Union[int, str]] = {}
    for _, _, headers in cli.HEADERS:
        for h in headers:
            read_header(f"protocol/include/{h}", (ROOT / "protocol/include" / h).read_text(), known)
    specs = [
        (module, parse(f"protocol/{f}", (ROOT / "protocol" / f).read_text(), known)) for f, module, _ in cli.PROGRAMS
    ]
    u = Universe(specs)
    depths = {name: u.depth(name, ()) for name in u.defs}
    deepest = max(depths.values())
    assert deepest == 4 <= MAX_DEPTH
    assert [n for n, d in depths.items() if d == deepest] == ["remote_connect_get_all_domain_stats_ret"]


# ============================================================== constants


C_BINDING = r"""
import json, sys
try:
    import libvirt, libvirt_qemu, libvirt_lxc
except ImportError as exc:
    print(json.dumps({"missing": str(exc)}))
    sys.exit(0)
out = {"version": libvirt.getVersion()}
for m in (libvirt, libvirt_qemu, libvirt_lxc):
    out[m.__name__] = {k: getattr(m, k) for k in dir(m) if k.startswith("VIR_")}
print(json.dumps(out))
"""


@pytest.mark.peer
def test_constants_match_the_c_binding() -> None:
    """Every VIR_* of libvirt-python (python3-libvirt under /usr/bin/python3) exists in ours, same value."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 (Debian's Python with python3-libvirt)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run(["/usr/bin/python3", "-c", C_BINDING], capture_output=True, text=True, env=env, check=True)
    peer = json.loads(r.stdout)
    if "missing" in peer:
        pytest.skip(f"python3-libvirt is not installed for /usr/bin/python3: {peer['missing']}")
    from pyvirtrpc._gen import constants, constants_lxc, constants_qemu

    for name, ours in (("libvirt", constants), ("libvirt_qemu", constants_qemu), ("libvirt_lxc", constants_lxc)):
        theirs = peer[name]
        assert all(isinstance(v, (int, str)) for v in theirs.values())
        missing = sorted(k for k in theirs if not hasattr(ours, k))
        assert not missing, f"{name}: {len(missing)} missing, e.g. {missing[:10]}"
        differ = {k: (v, getattr(ours, k)) for k, v in theirs.items() if getattr(ours, k) != v}
        assert not differ, f"{name}: values differ: {differ}"
        assert all(type(getattr(ours, k)) is type(v) for k, v in theirs.items())
    assert len(peer["libvirt"]) > 1000
