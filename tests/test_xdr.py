"""Codec strictness: maxima, lengths before allocation, trailing bytes, padding, flags, enums, unions, chars, errors."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import pytest

from pyvirtrpc import _xdrcheck as X
from pyvirtrpc._gen import constants as C
from pyvirtrpc._gen import remote as R
from pyvirtrpc._gen import virnet as V
from pyvirtrpc._xdr import OpenEnum, decode, encode, encode_into
from pyvirtrpc.errors import DecodeError, EncodeError, RPCError

TYPES = X.types()
NAMES = sorted(TYPES)  # the real protocol's types (the generator tests register fixture types later)

# ------------------------------------------------------------------ helpers


def minimal(spec: tuple[Any, ...]) -> Any:
    """The smallest value of a schema spec: zeros, empty, absent, first union arm."""
    kind = spec[0]
    if kind in ("int", "uint", "hyper", "uhyper", "char", "uchar", "short", "ushort"):
        return 0
    if kind == "bool":
        return False
    if kind in ("float", "double"):
        return 0.0
    if kind == "ref":
        return minimal_named(spec[1])
    if kind == "string":
        return ""
    if kind in ("opaque", "chars"):
        return bytes(spec[1])
    if kind in ("vopaque", "vchars"):
        return b""
    if kind == "array":
        return [minimal(spec[1]) for _ in range(spec[2])]
    if kind == "varray":
        return []
    if kind == "optional":
        return None
    raise AssertionError(spec)


def minimal_named(name: str) -> Any:
    spec = TYPES[name]
    if spec[0] == "typedef":
        return minimal(spec[1])
    if spec[0] == "enum":
        return 0 if name.endswith("_procedure") else X.pyclass(name)(min(X.enums()[name]))
    if spec[0] == "struct":
        return X.pyclass(name)(*[minimal(f) for _, f in spec[1]])
    values, _, aspec = spec[2][0]
    return X.pyclass(name)(values[0], None if aspec is None else minimal(aspec))


def resolve(spec: tuple[Any, ...]) -> tuple[Any, ...]:
    while spec[0] == "ref" and TYPES[spec[1]][0] == "typedef":
        spec = TYPES[spec[1]][1]
    return spec


def one(spec: tuple[Any, ...]) -> Any:
    """A value with exactly one element/byte, for a bounded variable-length spec."""
    kind = spec[0]
    if kind == "string":
        return "Z"
    if kind in ("vopaque", "vchars"):
        return b"Z"
    return [minimal(spec[1])]


def too_long(spec: tuple[Any, ...]) -> Any:
    kind, limit = spec[0], spec[-1]
    if kind == "string":
        return "x" * (limit + 1)
    if kind in ("vopaque", "vchars"):
        return b"x" * (limit + 1)
    return [minimal(spec[1])] * (limit + 1)


def bounded_fields() -> list[tuple[str, str, tuple[Any, ...]]]:
    """(struct, field, resolved spec) for every struct field that has a <max>."""
    out = []
    for name, spec in TYPES.items():
        if spec[0] != "struct":
            continue
        for field, fspec in spec[1]:
            r = resolve(fspec)
            if r[0] in ("string", "vopaque", "vchars", "varray") and r[-1] is not None:
                out.append((name, field, r))
    return out


BOUNDED = bounded_fields()


def with_field(name: str, field: str, value: Any) -> Any:
    v = minimal_named(name)
    setattr(v, field, value)
    return v


def assert_rpc(exc: BaseException) -> None:
    assert isinstance(exc, RPCError)
    assert exc.get_error_code() == C.VIR_ERR_RPC
    assert exc.get_error_domain() == C.VIR_FROM_RPC


# =================================================================== maxima


def test_bounded_fields_cover_every_kind() -> None:
    kinds = {spec[0] for _, _, spec in BOUNDED}
    assert kinds == {"string", "vopaque", "vchars", "varray"}
    assert len(BOUNDED) > 300


@pytest.mark.parametrize(("name", "field", "spec"), BOUNDED, ids=[f"{n}.{f}" for n, f, _ in BOUNDED])
def test_max_enforced_on_encode_and_decode(name: str, field: str, spec: tuple[Any, ...]) -> None:
    codec = X.codec(name)
    limit = spec[-1]
    # encode: one over the maximum is refused, naming the field
    with pytest.raises(EncodeError, match=rf"^{name}\.{field}: expected (a string of )?at most {limit} ") as info:
        encode(codec, with_field(name, field, too_long(spec)))
    assert_rpc(info.value)
    # decode: a length word of max + 1 is refused before anything else
    empty = encode(codec, with_field(name, field, minimal(spec)))
    single = encode(codec, with_field(name, field, one(spec)))
    at = next(i for i in range(len(empty)) if empty[i] != single[i]) - 3
    assert empty[at:at + 4] == b"\0\0\0\0"
    bad = empty[:at] + struct.pack(">I", limit + 1) + empty[at + 4:]
    refused = rf"^{name}\.{field}: .* has length {limit + 1}, more than its maximum {limit}"
    with pytest.raises(DecodeError, match=refused):
        decode(codec, bad)
    # exactly one element is fine
    assert decode(codec, single) == with_field(name, field, one(spec))


def test_max_boundary_is_inclusive() -> None:
    v = R.remote_auth_list_ret([R.REMOTE_AUTH_NONE] * 20)
    assert decode(R._c_remote_auth_list_ret, encode(R._c_remote_auth_list_ret, v)) == v
    with pytest.raises(EncodeError, match=r"remote_auth_list_ret\.types: expected at most 20 elements, got 21"):
        encode(R._c_remote_auth_list_ret, R.remote_auth_list_ret([R.REMOTE_AUTH_NONE] * 21))
    big = "x" * C.VIR_TYPED_PARAM_FIELD_LENGTH
    assert len(R.REMOTE_STRING_MAX * "x") == 4194304 == R.REMOTE_STRING_MAX
    assert decode(R._c_remote_typed_param, encode(R._c_remote_typed_param, R.remote_typed_param(
        big, R.remote_typed_param_value(1, 0)))).field == big


# ================================================ lengths before allocation

HUGE = 0xFFFFFFF0

ALLOC_CASES = [
    ("remote_connect_get_hostname_ret", struct.pack(">I", 1000), "length 1000 needs 1000 bytes, only 0 remain"),
    ("remote_connect_get_hostname_ret", struct.pack(">I", HUGE), "more than its maximum"),
    ("remote_auth_sasl_start_ret", struct.pack(">iiI", 0, 0, 60000), "60000 elements need at least 240000 bytes"),
    ("remote_connect_list_all_domains_ret", struct.pack(">I", 16000), "16000 elements need at least"),
    ("remote_connect_get_all_domain_stats_ret", struct.pack(">I", 16384), "elements need at least"),
    ("remote_node_get_cells_free_memory_ret", struct.pack(">I", 1024), "1024 elements need at least 8192 bytes"),
    ("remote_domain_get_xml_desc_args", b"", "expected 4 bytes"),
    ("remote_secret_get_value_ret", struct.pack(">I", 60000), "length 60000 needs 60000 bytes, only 0 remain"),
]


@pytest.mark.parametrize(("name", "data", "message"), ALLOC_CASES)
def test_lengths_checked_against_remaining_bytes_before_allocation(name: str, data: bytes, message: str) -> None:
    codec = X.codec(name)
    with pytest.raises(DecodeError):  # warm up: imports and caches are not what is measured
        decode(codec, data)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=message):
            decode(codec, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024, peak


def test_unbounded_lengths_fail_fast() -> None:
    # libvirt has no unbounded string<>/opaque<>/T<>; the fixture has, and they are still checked against the input
    import fixtures_x

    fx = fixtures_x.load()
    data = struct.pack(">II", 0, HUGE)
    with pytest.raises(DecodeError):
        decode(fx._c_fx_bytes, data)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=r"^fx_bytes\.any: the string: length 4294967280 needs 4294967280 bytes"):
            decode(fx._c_fx_bytes, data)
        with pytest.raises(DecodeError, match=r"^fx_arrays\.ints: the array: 4294967280 elements need at least"):
            decode(fx._c_fx_arrays, bytes(20) + struct.pack(">I", HUGE))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024, peak


# ======================================================= trailing, padding


def test_trailing_bytes_rejected() -> None:
    data = encode(R._c_remote_connect_get_hostname_ret, R.remote_connect_get_hostname_ret("vm"))
    for extra in (b"\0", b"\0" * 4, b"junk"):
        with pytest.raises(DecodeError, match=rf"{len(extra)} unexpected trailing byte\(s\) after the value") as info:
            decode(R._c_remote_connect_get_hostname_ret, data + extra)
        assert_rpc(info.value)


def test_value_overrunning_end_is_truncation_not_trailing() -> None:
    data = bytes.fromhex("00000002766d0000ffff")
    with pytest.raises(DecodeError, match="hostname: expected 2 bytes for padding, only 0 remain"):
        decode(R._c_remote_connect_get_hostname_ret, data, 0, 6)
    assert decode(R._c_remote_connect_get_hostname_ret, b"xx" + data, 2, 10).hostname == "vm"
    with pytest.raises(ValueError):
        decode(R._c_remote_connect_get_hostname_ret, data, 4, 100)


@pytest.mark.parametrize("pad", ["0100", "0001", "ffff"])
def test_nonzero_padding_rejected(pad: str) -> None:
    with pytest.raises(DecodeError, match=rf"hostname: padding must be zero bytes, got {pad} \(at byte 6 of 8\)"):
        decode(R._c_remote_connect_get_hostname_ret, bytes.fromhex("00000002766d" + pad))
    refused = rf"remote_secret_get_value_ret\.value: padding must be zero bytes, got {pad} "
    with pytest.raises(DecodeError, match=refused):
        decode(R._c_remote_secret_get_value_ret, bytes.fromhex("00000002abcd" + pad))


# ============================================================ optional data


@pytest.mark.parametrize("flag", [2, 0x100, 0xFFFFFFFF])
def test_optional_flag_must_be_0_or_1(flag: int) -> None:
    data = struct.pack(">II", flag, 0)
    refused = rf"remote_connect_open_args\.name: optional-data flag must be 0 or 1, got {flag}"
    with pytest.raises(DecodeError, match=refused):
        decode(R._c_remote_connect_open_args, data)
    assert decode(R._c_remote_connect_open_args, struct.pack(">II", 0, 5)) == R.remote_connect_open_args(None, 5)


# =================================================================== enums


def test_unknown_enum_value_decodes_to_open_member() -> None:
    before = dict(R.remote_auth_type._value2member_map_)
    v = decode(R._c_remote_auth_list_ret, struct.pack(">II", 1, 7))
    (t,) = v.types
    assert isinstance(t, R.remote_auth_type) and isinstance(t, OpenEnum)
    assert t == 7 and int(t) == 7
    assert t.name == "REMOTE_AUTH_TYPE_UNKNOWN_7"
    assert t not in list(R.remote_auth_type)
    assert R.remote_auth_type._value2member_map_ == before  # not cached: a peer cannot grow memory
    again = decode(R._c_remote_auth_list_ret, struct.pack(">II", 1, 7)).types[0]
    assert again == t and again is not t
    assert encode(R._c_remote_auth_list_ret, v) == struct.pack(">II", 1, 7)
    assert R.remote_auth_type(-5).name == "REMOTE_AUTH_TYPE_UNKNOWN_-5"
    with pytest.raises(ValueError):
        R.remote_auth_type(2**31)


def test_known_enum_values_are_the_members() -> None:
    v = decode(R._c_remote_auth_list_ret, struct.pack(">IIII", 3, 0, 1, 2))
    assert v.types == [R.REMOTE_AUTH_NONE, R.REMOTE_AUTH_SASL, R.REMOTE_AUTH_POLKIT]
    assert all(a is b for a, b in zip(v.types, R.remote_auth_type))


# =================================================================== unions


def test_union_unknown_discriminant_without_default_rejected() -> None:
    refused = (r"remote_typed_param_value\.type: expected a case of union "
               r"remote_typed_param_value \(1, 2, 3, 4, 5, 6, 7\), got 9 \(at byte 0 of 8\)")
    with pytest.raises(DecodeError, match=refused):
        decode(R._c_remote_typed_param_value, struct.pack(">ii", 9, 1))
    with pytest.raises(EncodeError, match=r"remote_typed_param_value\.type: expected a case of union .*, got 0"):
        encode(R._c_remote_typed_param_value, R.remote_typed_param_value(0, 1))


def test_union_arms() -> None:
    cases = [(1, -1, ">ii"), (2, 2**32 - 1, ">iI"), (3, -(2**63), ">iq"), (4, 2**64 - 1, ">iQ"), (5, 1.5, ">id"),
             (6, 1, ">ii")]
    for t, value, fmt in cases:
        data = struct.pack(fmt, t, value)
        v = decode(R._c_remote_typed_param_value, data)
        assert (v.type, v.value, v.arm) == (t, value, ["i", "ui", "l", "ul", "d", "b"][t - 1])
        assert encode(R._c_remote_typed_param_value, v) == data
    v = R.remote_typed_param_value(7, "é")
    data = encode(R._c_remote_typed_param_value, v)
    assert data == bytes.fromhex("00000007" "00000002" "c3a90000")
    assert repr(decode(R._c_remote_typed_param_value, data)) == "remote_typed_param_value(type=7, s='é')"


# ==================================================================== chars


def test_char_arrays_are_4_byte_ints() -> None:
    model = b"Intel\xc3\xa9" + bytes(25)
    info = R.remote_node_get_info_ret(model, 1 << 30, 4, 2400, 1, 1, 2, 2)
    data = encode(R._c_remote_node_get_info_ret, info)
    assert len(data) == 128 + 8 + 6 * 4
    assert data[:8] == b"\0\0\0I\0\0\0n"
    assert data[20:28] == bytes.fromhex("ffffffc3ffffffa9")  # signed, as x86 libvirt sends it
    assert decode(R._c_remote_node_get_info_ret, data) == info
    unsigned = data[:20] + bytes.fromhex("000000c3000000a9") + data[28:]  # ARM: char is unsigned
    assert decode(R._c_remote_node_get_info_ret, unsigned) == info
    for bad in (256, -129, 0x7FFFFFFF):
        refused = rf"remote_node_get_info_ret\.model\[5\]: char value {bad} is out of range"
        with pytest.raises(DecodeError, match=refused):
            decode(R._c_remote_node_get_info_ret, data[:20] + struct.pack(">i", bad) + data[24:])
    with pytest.raises(EncodeError, match=r"remote_node_get_info_ret\.model: expected exactly 32 bytes, got 31"):
        encode(R._c_remote_node_get_info_ret, R.remote_node_get_info_ret(model[:31], 0, 0, 0, 0, 0, 0, 0))


def test_variable_char_array() -> None:
    v = R.remote_auth_sasl_step_args(0, b"\x00\x7f\x80\xff")
    data = encode(R._c_remote_auth_sasl_step_args, v)
    assert data == bytes.fromhex("00000000" "00000004" "00000000" "0000007f" "ffffff80" "ffffffff")
    assert decode(R._c_remote_auth_sasl_step_args, data) == v
    with pytest.raises(DecodeError, match=r"remote_auth_sasl_step_args\.data: the char array: 4 elements need at "
                                          r"least 16 bytes, only 6 remain \(at byte 4 of 14\)"):
        decode(R._c_remote_auth_sasl_step_args, data[:14])


# ================================================================ strings


@pytest.mark.parametrize("raw", [b"\xff", b"caf\xe9", b"\xed\xa0\x80", b"ok\xc3", b"\x80\x80\x80\x80\x80"])
def test_non_utf8_strings_round_trip_with_surrogateescape(raw: bytes) -> None:
    data = struct.pack(">I", len(raw)) + raw + bytes(-len(raw) & 3)
    v = decode(R._c_remote_connect_get_hostname_ret, data)
    assert v.hostname == raw.decode("utf-8", "surrogateescape")
    assert encode(R._c_remote_connect_get_hostname_ret, v) == data
    assert X.decode_value("remote_connect_get_hostname_ret", data) == v


def test_strings_are_utf8() -> None:
    v = R.remote_connect_get_hostname_ret("hôte-☃")
    data = encode(R._c_remote_connect_get_hostname_ret, v)
    assert data[:4] == struct.pack(">I", len("hôte-☃".encode()))
    assert decode(R._c_remote_connect_get_hostname_ret, data) == v


# ========================================================== encode errors


ENCODE_ERRORS: list[tuple[str, Any, str]] = [
    ("remote_connect_get_hostname_ret", R.remote_connect_get_hostname_ret(b"vm"),
     r"remote_connect_get_hostname_ret\.hostname: expected a str, got bytes"),
    ("remote_connect_get_hostname_ret", R.remote_connect_get_hostname_ret("\ud800"),
     r"remote_connect_get_hostname_ret\.hostname: expected a str encodable as UTF-8, got a lone surrogate"),
    ("remote_connect_open_args", R.remote_connect_open_args("x", -1),
     r"remote_connect_open_args\.flags: expected uint in 0\.\.4294967295, got -1"),
    ("remote_connect_open_args", R.remote_connect_open_args("x", 1.0),
     r"remote_connect_open_args\.flags: expected an int for uint, got float"),
    ("remote_node_get_info_ret", 5,
     r"remote_node_get_info_ret: expected a remote_node_get_info_ret with field 'model'"),
    ("remote_domain_get_info_ret", R.remote_domain_get_info_ret(256, 0, 0, 0, 0),
     r"remote_domain_get_info_ret\.state: expected uchar in 0\.\.255, got 256"),
    ("remote_domain_get_info_ret", R.remote_domain_get_info_ret(1, 2**64, 0, 0, 0),
     r"remote_domain_get_info_ret\.maxMem: expected uhyper in 0\.\.18446744073709551615, got 18446744073709551616"),
    ("remote_domain_get_info_ret", R.remote_domain_get_info_ret(1, 0, 0, 65536, 0),
     r"remote_domain_get_info_ret\.nrVirtCpu: expected ushort in 0\.\.65535, got 65536"),
    ("remote_auth_list_ret", R.remote_auth_list_ret(R.REMOTE_AUTH_NONE),
     r"remote_auth_list_ret\.types: expected a list, got remote_auth_type"),
    ("remote_auth_list_ret", R.remote_auth_list_ret(["x"]),
     r"remote_auth_list_ret\.types\[0\]: expected an int for int"),
    ("remote_domain_lookup_by_uuid_args", R.remote_domain_lookup_by_uuid_args(b"\0" * 15),
     r"remote_domain_lookup_by_uuid_args\.uuid: expected exactly 16 bytes, got 15"),
    ("remote_connect_list_all_domains_ret", R.remote_connect_list_all_domains_ret(
        [R.remote_nonnull_domain("a", b"\0" * 16, 1), R.remote_nonnull_domain("b", "not bytes", 2)], 2),
     r"remote_connect_list_all_domains_ret\.domains\[1\]\.uuid: expected bytes, got str"),
    ("remote_typed_param", R.remote_typed_param("f", R.remote_typed_param_value(7, 5)),
     r"remote_typed_param\.value\.s: expected a str, got int"),
    ("virNetMessageError", V.virNetMessageError(1, 2, None, 3, R.remote_nonnull_domain("d", b"", 0),
                                                None, None, None, 0, 0, None),
     r"virNetMessageError\.dom\.uuid: expected exactly 16 bytes, got 0"),
]


@pytest.mark.parametrize(("name", "value", "message"), ENCODE_ERRORS)
def test_encode_errors_name_the_field(name: str, value: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message) as info:
        encode(X.codec(name), value)
    assert_rpc(info.value)
    w = bytearray(b"keep")
    with pytest.raises(EncodeError):
        encode_into(X.codec(name), value, w)
    assert w == b"keep"


# ========================================================== decode errors

DECODE_ERRORS: list[tuple[str, bytes, str]] = [
    ("remote_connect_get_hostname_ret", b"\0\0", r"^remote_connect_get_hostname_ret\.hostname: expected 4 bytes for "
                                                r"the length of the string, only 2 remain \(at byte 0 of 2\)$"),
    ("remote_node_get_info_ret", bytes(128), r"^remote_node_get_info_ret\.memory: expected 8 bytes for uhyper, "
                                             r"only 0 remain \(at byte 128 of 128\)$"),
    ("remote_domain_get_info_ret", struct.pack(">I", 300) + bytes(28),
     r"^remote_domain_get_info_ret\.state: uchar value 300 is out of range 0\.\.255 \(at byte 0 of 32\)$"),
    ("remote_connect_list_all_domains_ret", struct.pack(">II", 1, 1) + b"a\0\0\0" + bytes(16),
     r"^remote_connect_list_all_domains_ret\.domains\[0\]\.id: expected 4 bytes for int, only 0 remain "
     r"\(at byte 28 of 28\)$"),
    ("remote_connect_list_all_domains_ret", struct.pack(">II", 1, 1) + b"a\0\0\0" + bytes(12),
     r"^remote_connect_list_all_domains_ret\.domains: the array: 1 elements need at least 24 bytes, only 20 remain"),
    ("virNetMessageError", struct.pack(">iiI", 1, 2, 1) + struct.pack(">I", 3) + b"ab",
     r"^virNetMessageError\.message: the string: length 3 needs 3 bytes, only 2 remain"),
]


@pytest.mark.parametrize(("name", "data", "message"), DECODE_ERRORS)
def test_decode_errors_say_where_what_was_expected_and_what_came(name: str, data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        decode(X.codec(name), data)
    assert_rpc(info.value)
    assert str(info.value.get_error_message()).endswith(str(info.value).split(": ", 1)[1])
    with pytest.raises(DecodeError, match=message):
        X.decode_value(name, data)


# ============================================================ api details


def test_bytes_like_input_gives_bytes() -> None:
    data = encode(R._c_remote_secret_get_value_ret, R.remote_secret_get_value_ret(b"s3cret"))
    for form in (bytearray(data), memoryview(data)):
        v = decode(R._c_remote_secret_get_value_ret, form)  # type: ignore[arg-type]
        assert type(v.value) is bytes and v.value == b"s3cret"


def test_encode_into_appends() -> None:
    w = bytearray(b"head")
    encode_into(R._c_remote_connect_get_hostname_ret, R.remote_connect_get_hostname_ret("vm"), w)
    assert w == b"head" + bytes.fromhex("00000002766d0000")


def test_struct_value_semantics() -> None:
    a = R.remote_nonnull_domain("a", b"\0" * 16, 1)
    b = R.remote_nonnull_domain("a", b"\0" * 16, 1)
    assert a == b and a != R.remote_nonnull_domain("a", b"\0" * 16, 2)
    assert repr(a) == "remote_nonnull_domain(name='a', uuid=b'" + "\\x00" * 16 + "', id=1)"
    assert a._asdict() == {"name": "a", "uuid": b"\0" * 16, "id": 1}
    with pytest.raises(TypeError):
        hash(a)
    assert (a == 5) is False


def test_procedure_codecs_are_lazy() -> None:
    p = R.PROCEDURES[R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS]
    assert p.ret is R._c_remote_connect_list_all_domains_ret
    assert p.args is R._c_remote_connect_list_all_domains_args
    assert p.msg is None
    assert p.annotation("generate") == ["both"]
    assert repr(p) == f"<Procedure {R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS} REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS>"


def test_every_type_has_a_codec_and_a_minimal_value() -> None:
    assert len(NAMES) == 778
    for name in NAMES:
        codec = X.codec(name)
        assert codec.name == name
        value = minimal_named(name)
        data = encode(codec, value)
        assert decode(codec, data) == value
        assert X.decode_value(name, data) == value
        X.validate(name, value)
