"""Benchmark of the XDR codec (run by hand, not a test): ``python bench/bench_codec.py``.

Decodes and encodes, in one run, three replies that stress different parts
of the codec, and prints structs/s and MB/s for

* ``generated``: pyvirtrpc's generated codec (``pyvirtrpc._xdr.decode`` /
  ``encode`` over ``pyvirtrpc._gen.remote``), strict, building the generated
  classes;
* ``hand``: a hand-written decoder and encoder over plain ``struct`` for the
  same bytes, giving tuples and lists: the practical ceiling in pure Python
  (it checks nothing beyond what ``struct`` does);
* ``xdrlib3``: the same shapes written with xdrlib3's ``Packer`` /
  ``Unpacker``, the primitive codec the design card named (skipped when the
  package is not installed).

The cases: (a) a ``CONNECT_LIST_ALL_DOMAINS`` reply with 10,000 domains;
(b) a 1 MiB XML string (``CONNECT_GET_CAPABILITIES`` reply); (c) a
``CONNECT_GET_ALL_DOMAIN_STATS`` reply with 1,000 domains of 20 typed
parameters each, of every type.  ``ratio`` is generated time / hand time
(the target is at most 1.5 for decoding).

Each figure is the best of up to 25 rounds (the implementations take turns), with the cyclic garbage collector
off while timing, as ``timeit`` does (``--gc`` leaves it on).  Options:
``--quick`` (fewer repetitions), ``--json`` (machine-readable), ``--gc``.
Run it under each interpreter you care about, e.g.
``PYTHONPATH=. /usr/bin/python3 bench/bench_codec.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from struct import Struct
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyvirtrpc._gen import remote as R  # noqa: E402
from pyvirtrpc._xdr import XdrStruct, XdrUnion, decode, encode  # noqa: E402

try:
    import xdrlib3
except ImportError:  # optional: the comparison is skipped
    xdrlib3 = None

# ----------------------------------------------------------------- the data


def make_domains(n: int = 10_000) -> Any:
    doms = [
        R.remote_nonnull_domain(f"guest-{i:05d}-{'x' * (i % 7)}", (i * 2654435761 % 2**128).to_bytes(16, "big"), i)
        for i in range(n)
    ]
    return R.remote_connect_list_all_domains_ret(doms, n)


def make_capabilities(size: int = 1 << 20) -> Any:
    chunk = (
        "<capabilities><host><uuid>0f2f8e1c-0000-4000-8000-000000000000</uuid>"
        "<cpu><arch>x86_64</arch></cpu></host>\n"
    )
    text = (chunk * (size // len(chunk) + 1))[:size]
    return R.remote_connect_get_capabilities_ret(text)


def make_stats(ndoms: int = 1000, nparams: int = 20) -> Any:
    V = R.remote_typed_param_value
    records = []
    for i in range(ndoms):
        params = []
        for j in range(nparams):
            kind = j % 7 + 1
            value: Any = {
                1: -j, 2: j * 1000, 3: -(2**40) - j, 4: 2**50 + i, 5: i / 7.0 + j, 6: j & 1, 7: f"vda{j}",
            }[kind]
            params.append(R.remote_typed_param(f"block.{j}.rd.bytes", V(kind, value)))
        dom = R.remote_nonnull_domain(f"guest-{i:04d}", i.to_bytes(16, "big"), i)
        records.append(R.remote_domain_stats_record(dom, params))
    return R.remote_connect_get_all_domain_stats_ret(records)


# ------------------------------------------------- hand-written struct codecs

_U32 = Struct(">I")
_I32 = Struct(">i")
_I64 = Struct(">q")
_U64 = Struct(">Q")
_F64 = Struct(">d")
_UUID_ID = Struct(">16si")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def hand_dec_string(b: bytes, o: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(b, o)
    o += 4
    return b[o:o + n].decode(), o + ((n + 3) & ~3)


def hand_dec_domains(b: bytes) -> Any:
    u32 = _U32.unpack_from
    uid = _UUID_ID.unpack_from
    (count,) = u32(b, 0)
    o = 4
    out = []
    append = out.append
    for _ in range(count):
        (n,) = u32(b, o)
        o += 4
        name = b[o:o + n].decode()
        o += (n + 3) & ~3
        uuid, id_ = uid(b, o)
        o += 20
        append((name, uuid, id_))
    (ret,) = u32(b, o)
    return (out, ret)


def hand_enc_domains(v: Any) -> bytes:
    doms, ret = v
    w = bytearray(_U32.pack(len(doms)))
    pack_u32 = _U32.pack
    pack_uid = _UUID_ID.pack
    for name, uuid, id_ in doms:
        s = name.encode()
        w += pack_u32(len(s))
        w += s
        w += _PAD[len(s) & 3]
        w += pack_uid(uuid, id_)
    w += pack_u32(ret)
    return bytes(w)


def hand_dec_caps(b: bytes) -> Any:
    return (hand_dec_string(b, 0)[0],)


def hand_enc_caps(v: Any) -> bytes:
    s = v[0].encode()
    return _U32.pack(len(s)) + s + _PAD[len(s) & 3]


_VALUE_FMT = {1: _I32, 2: _U32, 3: _I64, 4: _U64, 5: _F64, 6: _I32}


def hand_dec_stats(b: bytes) -> Any:
    u32 = _U32.unpack_from
    uid = _UUID_ID.unpack_from
    (count,) = u32(b, 0)
    o = 4
    records = []
    for _ in range(count):
        (n,) = u32(b, o)
        o += 4
        name = b[o:o + n].decode()
        o += (n + 3) & ~3
        uuid, id_ = uid(b, o)
        o += 20
        (np,) = u32(b, o)
        o += 4
        params = []
        append = params.append
        for _ in range(np):
            (n,) = u32(b, o)
            o += 4
            field = b[o:o + n].decode()
            o += (n + 3) & ~3
            (kind,) = _I32.unpack_from(b, o)
            o += 4
            if kind == 7:
                (n,) = u32(b, o)
                o += 4
                value: Any = b[o:o + n].decode()
                o += (n + 3) & ~3
            else:
                s = _VALUE_FMT[kind]
                (value,) = s.unpack_from(b, o)
                o += s.size
            append((field, (kind, value)))
        records.append(((name, uuid, id_), params))
    return (records,)


def hand_enc_stats(v: Any) -> bytes:
    pack_u32 = _U32.pack
    (records,) = v
    w = bytearray(pack_u32(len(records)))
    for (name, uuid, id_), params in records:
        s = name.encode()
        w += pack_u32(len(s))
        w += s
        w += _PAD[len(s) & 3]
        w += _UUID_ID.pack(uuid, id_)
        w += pack_u32(len(params))
        for field, (kind, value) in params:
            s = field.encode()
            w += pack_u32(len(s))
            w += s
            w += _PAD[len(s) & 3]
            w += _I32.pack(kind)
            if kind == 7:
                s = value.encode()
                w += pack_u32(len(s))
                w += s
                w += _PAD[len(s) & 3]
            else:
                w += _VALUE_FMT[kind].pack(value)
    return bytes(w)


# ------------------------------------------------------------ xdrlib3 codecs


def x3_dec_domains(b: bytes) -> Any:
    u = xdrlib3.Unpacker(b)

    def dom() -> Any:
        return (u.unpack_string().decode(), u.unpack_fopaque(16), u.unpack_int())

    out = (u.unpack_array(dom), u.unpack_uint())
    u.done()
    return out


def x3_enc_domains(v: Any) -> bytes:
    p = xdrlib3.Packer()

    def dom(d: Any) -> None:
        p.pack_string(d[0].encode())
        p.pack_fopaque(16, d[1])
        p.pack_int(d[2])

    p.pack_array(v[0], dom)
    p.pack_uint(v[1])
    return p.get_buffer()


def x3_dec_caps(b: bytes) -> Any:
    u = xdrlib3.Unpacker(b)
    out = (u.unpack_string().decode(),)
    u.done()
    return out


def x3_enc_caps(v: Any) -> bytes:
    p = xdrlib3.Packer()
    p.pack_string(v[0].encode())
    return p.get_buffer()


def x3_dec_stats(b: bytes) -> Any:
    u = xdrlib3.Unpacker(b)
    readers: dict[int, Callable[[], Any]] = {
        1: u.unpack_int, 2: u.unpack_uint, 3: u.unpack_hyper, 4: u.unpack_uhyper,
        5: u.unpack_double, 6: u.unpack_int, 7: lambda: u.unpack_string().decode(),
    }

    def param() -> Any:
        field = u.unpack_string().decode()
        kind = u.unpack_int()
        return (field, (kind, readers[kind]()))

    def record() -> Any:
        dom = (u.unpack_string().decode(), u.unpack_fopaque(16), u.unpack_int())
        return (dom, u.unpack_array(param))

    out = (u.unpack_array(record),)
    u.done()
    return out


def x3_enc_stats(v: Any) -> bytes:
    p = xdrlib3.Packer()
    writers: dict[int, Callable[[Any], None]] = {
        1: p.pack_int, 2: p.pack_uint, 3: p.pack_hyper, 4: p.pack_uhyper,
        5: p.pack_double, 6: p.pack_int, 7: lambda s: p.pack_string(s.encode()),
    }

    def param(tp: Any) -> None:
        p.pack_string(tp[0].encode())
        p.pack_int(tp[1][0])
        writers[tp[1][0]](tp[1][1])

    def record(r: Any) -> None:
        p.pack_string(r[0][0].encode())
        p.pack_fopaque(16, r[0][1])
        p.pack_int(r[0][2])
        p.pack_array(r[1], param)

    p.pack_array(v[0], record)
    return p.get_buffer()


# ---------------------------------------------------------------- harness


def as_tuples(v: Any) -> Any:
    """The generated value in the hand-written codecs' shape (tuples and lists)."""
    if isinstance(v, XdrStruct):
        return tuple(as_tuples(getattr(v, f)) for f in v._fields)
    if isinstance(v, XdrUnion):
        return (int(getattr(v, v._disc)), as_tuples(v.value))  # type: ignore[attr-defined]
    if isinstance(v, list):
        return [as_tuples(x) for x in v]
    return v


def count_structs(v: Any) -> int:
    if isinstance(v, XdrStruct):
        return 1 + sum(count_structs(getattr(v, f)) for f in v._fields)
    if isinstance(v, XdrUnion):
        return 1 + count_structs(v.value)  # type: ignore[attr-defined]
    if isinstance(v, list):
        return sum(count_structs(x) for x in v)
    return 0


def best(fns: dict[str, Callable[[], Any]], repeat: int, budget: float, with_gc: bool) -> dict[str, float]:
    """Best wall time of each function over ``repeat`` rounds (fewer if over ``budget`` seconds).

    The functions take turns within each round, so that a burst of load on
    the machine hits them alike.  Like ``timeit``, the cyclic garbage
    collector is off while timing unless ``with_gc``: its passes are
    triggered by allocations anywhere in the process, so they add noise that
    belongs to no codec.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    enabled = gc.isenabled()
    if not with_gc:
        gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            if time.perf_counter() - start > budget:
                break
    finally:
        if enabled:
            gc.enable()
    return {name: min(t) for name, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--gc", action="store_true", help="leave the cyclic garbage collector on while timing")
    args = ap.parse_args()
    repeat, budget = (3, 2.0) if args.quick else (25, 12.0)

    cases = [
        ("list_all_domains 10k", R._c_remote_connect_list_all_domains_ret, make_domains(),
         hand_dec_domains, hand_enc_domains, x3_dec_domains, x3_enc_domains),
        ("capabilities 1 MiB", R._c_remote_connect_get_capabilities_ret, make_capabilities(),
         hand_dec_caps, hand_enc_caps, x3_dec_caps, x3_enc_caps),
        ("all_domain_stats 1k x 20", R._c_remote_connect_get_all_domain_stats_ret, make_stats(),
         hand_dec_stats, hand_enc_stats, x3_dec_stats, x3_enc_stats),
    ]
    rows = []
    for name, codec, value, hdec, henc, xdec, xenc in cases:
        data = encode(codec, value)
        # The three codecs must agree on bytes and values before they are timed.
        shaped = as_tuples(value)
        assert as_tuples(decode(codec, data)) == shaped, name
        assert hdec(data) == shaped and henc(shaped) == data, name
        if xdrlib3 is not None:
            assert xdec(data) == shaped and xenc(shaped) == data, name
        nstructs = count_structs(value)
        mb = len(data) / 1e6
        impls: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            ("generated", lambda c=codec, d=data: decode(c, d), lambda c=codec, v=value: encode(c, v)),
            ("hand", lambda f=hdec, d=data: f(d), lambda f=henc, v=shaped: f(v)),
        ]
        if xdrlib3 is not None:
            impls.append(("xdrlib3", lambda f=xdec, d=data: f(d), lambda f=xenc, v=shaped: f(v)))
        decs = best({impl: dec for impl, dec, _ in impls}, repeat, budget, args.gc)
        encs = best({impl: enc for impl, _, enc in impls}, repeat, budget, args.gc)
        timings = {impl: (decs[impl], encs[impl]) for impl, _, _ in impls}
        hand_dec, hand_enc = timings["hand"]
        for impl, (td, te) in timings.items():
            rows.append({
                "case": name, "impl": impl, "bytes": len(data), "structs": nstructs,
                "decode_s": td, "encode_s": te,
                "decode_structs_per_s": nstructs / td, "encode_structs_per_s": nstructs / te,
                "decode_MB_per_s": mb / td, "encode_MB_per_s": mb / te,
                "decode_ratio": td / hand_dec, "encode_ratio": te / hand_enc,
            })

    if args.json:
        print(json.dumps({"python": sys.version, "executable": sys.executable, "gc": args.gc, "rows": rows}, indent=1))
        return 0
    gc_note = "gc on" if args.gc else "gc off while timing"
    print(f"{platform.python_implementation()} {platform.python_version()} ({sys.executable}), {gc_note}")
    head = (f"{'case':26} {'impl':10} {'dec ms':>8} {'structs/s':>11} {'MB/s':>8} {'x hand':>7}"
            f"  {'enc ms':>8} {'structs/s':>11} {'MB/s':>8} {'x hand':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['case']:26} {r['impl']:10} {r['decode_s'] * 1e3:8.2f} {r['decode_structs_per_s']:11,.0f} "
            f"{r['decode_MB_per_s']:8.1f} {r['decode_ratio']:7.2f}  {r['encode_s'] * 1e3:8.2f} "
            f"{r['encode_structs_per_s']:11,.0f} {r['encode_MB_per_s']:8.1f} {r['encode_ratio']:7.2f}"
        )
    if xdrlib3 is None:
        print("(xdrlib3 is not installed: `pip install xdrlib3` to compare with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
