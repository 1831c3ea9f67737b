"""Domain listings decoded flat (pyvirtrpc/_domref.py).

The flat decoder must accept exactly what the generated decoder accepts and
give the same values; where it fails, the general path explains the failure
(or, for a name that is not UTF-8, falls back to the generated struct).  The
wrappers it feeds must carry the same identity into later calls.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyvirtrpc as libvirt
from pyvirtrpc import _domref, _xdr, aio
from pyvirtrpc._gen import remote as R
from tests.fakedaemon import Call, FakeDaemon, Peer

libvirt.registerErrorHandler(lambda ctx, err: None, None)

GENERATED = R.PROCEDURES[R.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS].ret
FLAT = _domref.LIST_ALL_DOMAINS.ret
assert GENERATED is not None and FLAT is not None

names = st.text(min_size=0, max_size=300)  # past _CACHED: both the cached and the per-element formats
domains = st.lists(
    st.builds(R.remote_nonnull_domain, names, st.binary(min_size=16, max_size=16), st.integers(-(2**31), 2**31 - 1)),
    max_size=40,
)


def body(doms: list[Any], ret: int | None = None) -> bytes:
    return _xdr.encode(GENERATED, R.remote_connect_list_all_domains_ret(doms, len(doms) if ret is None else ret))


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
try:
    from xdrfuzz import listing_outcome as outcome  # the fuzz harness's comparison, shared
finally:
    sys.path.pop(0)


@settings(max_examples=300)
@given(domains)
def test_flat_decoder_gives_the_generated_values(doms: list[Any]) -> None:
    data = body(doms)
    flat = _xdr.decode(FLAT, data)
    assert type(flat) is list  # the fast path took it
    assert flat == [x for d in doms for x in (d.name, d.uuid, d.id)]
    assert outcome(FLAT, data) == outcome(GENERATED, data)


@settings(max_examples=500)
@given(domains, st.data())
def test_damaged_listings_fail_alike(doms: list[Any], data: st.DataObject) -> None:
    raw = bytearray(body(doms))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "length"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif how == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=8))
    else:  # a length word anywhere set to a hostile value
        i = data.draw(st.integers(0, max(len(raw) // 4 - 1, 0))) * 4
        raw[i : i + 4] = data.draw(st.sampled_from([2**32 - 1, 2**31, 16385, 4194305, 300, 3])).to_bytes(4, "big")
    assert outcome(FLAT, bytes(raw)) == outcome(GENERATED, bytes(raw))


def test_hostile_lengths_build_nothing() -> None:
    one = body([R.remote_nonnull_domain("a", bytes(16), 1)])
    too_many = (R.REMOTE_DOMAIN_LIST_MAX + 1).to_bytes(4, "big") + one[4:]
    assert outcome(FLAT, too_many) == outcome(GENERATED, too_many)
    assert outcome(FLAT, too_many)[0] == "error"
    huge_name = one[:4] + (2**32 - 1).to_bytes(4, "big") + one[8:]
    assert outcome(FLAT, huge_name) == outcome(GENERATED, huge_name)
    assert outcome(FLAT, huge_name)[0] == "error"


@pytest.mark.parametrize("k", [R.REMOTE_STRING_MAX, R.REMOTE_STRING_MAX + 1])
def test_a_name_longer_than_remote_string_max_is_refused_even_when_the_bytes_are_there(k: int) -> None:
    raw = (1).to_bytes(4, "big") + k.to_bytes(4, "big") + b"a" * k + bytes(-k & 3) + bytes(16) + (5).to_bytes(4, "big")
    raw += (1).to_bytes(4, "big")
    assert outcome(FLAT, raw) == outcome(GENERATED, raw)
    assert outcome(FLAT, raw)[0] == ("ok" if k == R.REMOTE_STRING_MAX else "error")


def test_a_name_that_is_not_utf8_comes_back_as_the_generated_decoder_gives_it() -> None:
    data = body([R.remote_nonnull_domain("ok", bytes(16), 1), R.remote_nonnull_domain("bad\udcff", bytes(16), 2)])
    assert b"bad\xff" in data
    assert _domref.flat(_xdr.decode(FLAT, data)) == ["ok", bytes(16), 1, "bad\udcff", bytes(16), 2]


# -- through the clients, against the fake daemon (it can serve names libvirt would not make)

ODD = [
    R.remote_nonnull_domain("", bytes(range(16)), -1),
    R.remote_nonnull_domain("é" * 150 + "xyz", bytes(range(1, 17)), 7),  # 303 bytes
    R.remote_nonnull_domain("not-utf8-\udcfe", bytes(range(2, 18)), 8),
    R.remote_nonnull_domain("abcd", bytes(range(3, 19)), 2**31 - 1),
]


def serve_odd_names(fake: FakeDaemon) -> list[Any]:
    """The fake lists ODD and records the domain each GET_INFO names."""
    seen: list[Any] = []
    fake.handlers["CONNECT_LIST_ALL_DOMAINS"] = lambda p, call: R.remote_connect_list_all_domains_ret(ODD, len(ODD))

    def info(peer: Peer, call: Call) -> Any:
        seen.append(call.args.dom)
        return R.remote_domain_get_info_ret(1, 2048, 1024, 1, 5)

    fake.handlers["DOMAIN_GET_INFO"] = info
    return seen


def test_sync_listing_carries_each_identity_into_calls(fake: FakeDaemon) -> None:
    seen = serve_odd_names(fake)
    conn = libvirt.open(fake.uri)
    try:
        doms = conn.listAllDomains()
        assert [[d.name(), d.UUID(), d.ID()] for d in doms] == [[d.name, d.uuid, d.id] for d in ODD]
        assert doms[1].UUIDString() == str(uuid.UUID(bytes=ODD[1].uuid))
        for d in doms:
            assert d.info() == [1, 2048, 1024, 1, 5]
            assert d.connect() is conn
        assert seen == ODD  # the same bytes went back, the undecodable name included
        assert doms[0] == conn.listAllDomains()[0] and hash(doms[0]) == hash(conn.listAllDomains()[0])
    finally:
        conn.close()


def test_asyncio_listing_carries_each_identity_into_calls(fake: FakeDaemon) -> None:
    seen = serve_odd_names(fake)

    async def main() -> list[Any]:
        conn = await aio.open(fake.uri)
        try:
            doms = await conn.listAllDomains()
            for d in doms:
                assert await d.info() == [1, 2048, 1024, 1, 5]
            return [[d.name(), d.UUID(), d.ID()] for d in doms]
        finally:
            await conn.close()

    assert asyncio.run(main()) == [[d.name, d.uuid, d.id] for d in ODD]
    assert seen == ODD


# -- against the real daemon, side by side with the C binding

LISTING = r"""
c = libvirt.open(args["uri"])
doms = c.listAllDomains(0)
result = sorted([d.name(), d.ID(), d.UUIDString(), d.info()[0]] for d in doms)
d = c.lookupByName(args["name"])
d.destroy()
result.append([d.ID(), d.state(0)])
d.create()
result.append([d.ID() > 0, d.state(0), c.lookupByID(d.ID()).name() == d.name()])
"""


@pytest.mark.parametrize("extra", [0, 1, 2, 3])
def test_listing_names_of_every_padding_and_length_match_c_binding(
    lab: Any, peer: Any, node_xml: Any, extra: int
) -> None:
    # names of 0-3 bytes' padding, multi-byte UTF-8, and longer than the cached formats
    prefix = "ü" * 140 + "n" * extra
    node = node_xml(domains=4, prefix=prefix, state=["running", "paused", "shutoff"])
    assert len(node.names[0].encode()) > _domref._CACHED
    uri = node.uri(lab)
    theirs = peer(LISTING, uri=uri, name=node.names[0])
    c = libvirt.open(uri)
    try:
        doms = c.listAllDomains(0)
        ours: list[Any] = sorted([d.name(), d.ID(), d.UUIDString(), d.info()[0]] for d in doms)
        d = c.lookupByName(node.names[0])
        d.destroy()
        ours.append([d.ID(), d.state(0)])
        d.create()
        ours.append([d.ID() > 0, d.state(0), c.lookupByID(d.ID()).name() == d.name()])
    finally:
        c.close()
    assert ours == theirs
    assert [x[0] for x in ours[:4]] == sorted(node.names)
