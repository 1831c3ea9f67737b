"""Side by side with the C binding: every call of the Connections chapter over unix.

Each test runs the same operations with pyvirtrpc (in this process) and with
python3-libvirt (the ``peer`` fixture: /usr/bin/python3 in a subprocess)
against the same real libvirtd, and compares results, including the error
code, domain and every other field of the negative cases.
"""

from __future__ import annotations

from typing import Any

import pytest

import pyvirtrpc as libvirt

# registerErrorHandler is global; tests that look at stderr restore it.
libvirt.registerErrorHandler(lambda ctx, err: None, None)

HOST_CALLS = r"""
c = libvirt.open(args["uri"])
info = c.getInfo()
result = {
    "hostname": c.getHostname(),
    "maxvcpus": c.getMaxVcpus(None),
    "freemem": c.getFreeMemory(),
    "info": info,
    "cells": c.getCellsFreeMemory(0, info[4]),
    "type": c.getType(),
    "version": c.getVersion(),
    "libversion": c.getLibVersion(),
    "uri": c.getURI(),
    "encrypted": c.isEncrypted(),
    "secure": c.isSecure(),
    "alive": c.isAlive(),
    "caps": c.getCapabilities(),
    "secmodel": c.getSecurityModel(),
    "modversion": libvirt.getVersion(),
}
try:
    result["sysinfo"] = c.getSysinfo(0)
except libvirt.libvirtError as e:
    result["sysinfo_error"] = list(e.err)
result["closed"] = c.close()
"""


def ours_host_calls(uri: str) -> dict[str, Any]:
    c = libvirt.open(uri)
    info = c.getInfo()
    result: dict[str, Any] = {
        "hostname": c.getHostname(),
        "maxvcpus": c.getMaxVcpus(None),
        "freemem": c.getFreeMemory(),
        "info": info,
        "cells": c.getCellsFreeMemory(0, info[4]),
        "type": c.getType(),
        "version": c.getVersion(),
        "libversion": c.getLibVersion(),
        "uri": c.getURI(),
        "encrypted": c.isEncrypted(),
        "secure": c.isSecure(),
        "alive": c.isAlive(),
        "caps": c.getCapabilities(),
        "secmodel": c.getSecurityModel(),
        "modversion": libvirt.getVersion(),
    }
    try:
        result["sysinfo"] = c.getSysinfo(0)
    except libvirt.libvirtError as e:
        assert e.err is not None
        result["sysinfo_error"] = list(e.err)
    result["closed"] = c.close()
    return result


def test_host_information_matches_c_binding(lab: Any, peer: Any) -> None:
    uri = lab.info["uris"]["unix"]
    theirs = peer(HOST_CALLS, uri=uri)
    ours = ours_host_calls(uri)
    assert ours == theirs
    # and the values are the test driver's, not just equal by accident
    assert ours["info"] == ["i686", 3072, 16, 1400, 2, 2, 2, 2]
    assert ours["type"] == "TEST" and ours["secure"] == 1 and ours["encrypted"] == 0
    assert ours["caps"].startswith("<capabilities>")


def test_read_only_socket_matches_c_binding(lab: Any, peer: Any) -> None:
    uri = lab.info["uris"]["unix_ro"]
    theirs = peer(
        "c = libvirt.openReadOnly(args['uri']); result = [c.getHostname(), c.getInfo(), c.getURI(), c.isSecure()]",
        uri=uri,
    )
    c = libvirt.openReadOnly(uri)
    assert [c.getHostname(), c.getInfo(), c.getURI(), c.isSecure()] == theirs
    c.close()


DOMAIN_CALLS = r"""
c = libvirt.open(args["uri"])
out = {}
doms = c.listAllDomains(0)
out["all"] = sorted([d.name(), d.ID(), d.UUIDString()] for d in doms)
d = c.lookupByName(args["name"])
out["byname"] = [d.name(), d.ID(), d.UUIDString(), d.info()[:4], d.state(0), d.isActive(), d.isPersistent()]
out["byid"] = c.lookupByID(d.ID()).name()
out["byuuid"] = c.lookupByUUIDString(d.UUIDString()).name()
out["byuuid_nodash"] = c.lookupByUUIDString(d.UUIDString().replace("-", "")).name()
out["xml"] = d.XMLDesc(0)
steps = []
for op in ("suspend", "resume", "destroy", "create", "suspend", "destroy"):
    steps.append([op, getattr(d, op)(), d.state(0), d.ID() > 0])
out["steps"] = steps
out["nums"] = [c.numOfDomains(), sorted(c.listDomainsID()), c.numOfDefinedDomains(), sorted(c.listDefinedDomains())]
result = out
"""


def ours_domain_calls(uri: str, name: str) -> dict[str, Any]:
    c = libvirt.open(uri)
    out: dict[str, Any] = {}
    doms = c.listAllDomains(0)
    out["all"] = sorted([d.name(), d.ID(), d.UUIDString()] for d in doms)
    d = c.lookupByName(name)
    out["byname"] = [d.name(), d.ID(), d.UUIDString(), d.info()[:4], d.state(0), d.isActive(), d.isPersistent()]
    out["byid"] = c.lookupByID(d.ID()).name()
    out["byuuid"] = c.lookupByUUIDString(d.UUIDString()).name()
    out["byuuid_nodash"] = c.lookupByUUIDString(d.UUIDString().replace("-", "")).name()
    out["xml"] = d.XMLDesc(0)
    steps = []
    for op in ("suspend", "resume", "destroy", "create", "suspend", "destroy"):
        steps.append([op, getattr(d, op)(), d.state(0), d.ID() > 0])
    out["steps"] = steps
    out["nums"] = [c.numOfDomains(), sorted(c.listDomainsID()), c.numOfDefinedDomains(), sorted(c.listDefinedDomains())]
    return out


def test_domain_calls_match_c_binding(lab: Any, peer: Any, node_xml: Any) -> None:
    # A private test-driver instance per connection: the node file is reloaded
    # for every open, so both sides start from the same state.
    node = node_xml(domains=5, prefix="conf", state=["running", "paused", "shutoff"])
    uri = node.uri(lab)
    theirs = peer(DOMAIN_CALLS, uri=uri, name=node.names[0])
    ours = ours_domain_calls(uri, node.names[0])
    assert ours == theirs
    assert len(ours["all"]) == 5
    assert [s[0] for s in ours["steps"]] == ["suspend", "resume", "destroy", "create", "suspend", "destroy"]
    assert ours["steps"][0][2] == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]


NEGATIVE = r"""
out = {}
def attempt(key, fn):
    try:
        fn()
        out[key] = None
    except libvirt.libvirtError as e:
        out[key] = list(e.err)
attempt("missing_socket", lambda: libvirt.open(args["missing"]))
c = libvirt.openReadOnly(args["ro"])
attempt("readonly_write", lambda: c.lookupByName(args["name"]).suspend())
attempt("unknown_domain", lambda: c.lookupByName("no-such-domain"))
attempt("unknown_id", lambda: c.lookupByID(987654))
attempt("unknown_uuid", lambda: c.lookupByUUIDString("00000000-0000-0000-0000-000000000001"))
attempt("too_many_cells", lambda: c.getCellsFreeMemory(0, 5000))
c.close()
attempt("after_close", lambda: c.getHostname())
attempt("close_twice", lambda: c.close())
out["last"] = list(libvirt.virGetLastError() or [])
out["last_code"] = [libvirt.virGetLastErrorCode(), libvirt.virGetLastErrorDomain(), libvirt.virGetLastErrorMessage()]
libvirt.virResetLastError()
out["reset"] = [libvirt.virGetLastError(), libvirt.virGetLastErrorCode(), libvirt.virGetLastErrorMessage()]
result = out
"""


def ours_negative(missing: str, ro: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def attempt(key: str, fn: Any) -> None:
        try:
            fn()
            out[key] = None
        except libvirt.libvirtError as e:
            assert e.err is not None
            out[key] = list(e.err)

    attempt("missing_socket", lambda: libvirt.open(missing))
    c = libvirt.openReadOnly(ro)
    attempt("readonly_write", lambda: c.lookupByName(name).suspend())
    attempt("unknown_domain", lambda: c.lookupByName("no-such-domain"))
    attempt("unknown_id", lambda: c.lookupByID(987654))
    attempt("unknown_uuid", lambda: c.lookupByUUIDString("00000000-0000-0000-0000-000000000001"))
    attempt("too_many_cells", lambda: c.getCellsFreeMemory(0, 5000))
    c.close()
    attempt("after_close", lambda: c.getHostname())
    attempt("close_twice", lambda: c.close())
    out["last"] = list(libvirt.virGetLastError() or [])
    out["last_code"] = [
        libvirt.virGetLastErrorCode(),
        libvirt.virGetLastErrorDomain(),
        libvirt.virGetLastErrorMessage(),
    ]
    libvirt.virResetLastError()
    out["reset"] = [libvirt.virGetLastError(), libvirt.virGetLastErrorCode(), libvirt.virGetLastErrorMessage()]
    return out


def test_errors_match_c_binding(lab: Any, peer: Any, tmp_path: Any) -> None:
    missing = f"test+unix:///default?socket={tmp_path}/no-such-socket"
    ro = lab.info["uris"]["unix_ro"]
    theirs = peer(NEGATIVE, missing=missing, ro=ro, name="test")
    ours = ours_negative(missing, ro, "test")
    assert ours == theirs
    # the codes the issue names, spelled out
    assert ours["missing_socket"][:2] == [libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC]
    assert ours["missing_socket"][7] == 2  # errno ENOENT in int1
    assert ours["readonly_write"][0] == libvirt.VIR_ERR_OPERATION_DENIED
    assert ours["unknown_domain"][:2] == [libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_TEST]
    assert ours["after_close"][0] == libvirt.VIR_ERR_INVALID_CONN


def test_error_handler_and_default_printing(lab: Any, peer: Any, capfd: Any) -> None:
    """With no handler, failures are printed as libvirt's virDefaultErrorFunc prints them."""
    uri = lab.info["uris"]["unix"]
    code = (
        "libvirt.registerErrorHandler(None, None)\n"
        "c = libvirt.open(args['uri'])\n"
        "try:\n    c.lookupByName('no-such-domain')\nexcept libvirt.libvirtError:\n    pass\n"
        "seen = []\n"
        "libvirt.registerErrorHandler(lambda ctx, err: seen.append([ctx, list(err)]), 'ctx')\n"
        "try:\n    c.lookupByName('no-such-domain')\nexcept libvirt.libvirtError:\n    pass\n"
        "result = seen\n"
    )
    result, _stdout = peer.run(code, uri=uri)
    try:
        libvirt.registerErrorHandler(None, None)
        c = libvirt.open(uri)
        with pytest.raises(libvirt.libvirtError):
            c.lookupByName("no-such-domain")
        err = capfd.readouterr().err
        assert err == "libvirt: Test Driver error : Domain not found\n"
        seen: list[Any] = []
        assert libvirt.registerErrorHandler(lambda ctx, e: seen.append([ctx, list(e)]), "ctx") == 1
        with pytest.raises(libvirt.libvirtError):
            c.lookupByName("no-such-domain")
        assert capfd.readouterr().err == ""
        assert seen == result
        c.close()
    finally:
        libvirt.registerErrorHandler(lambda ctx, e: None, None)


def test_libvirterror_accessors_and_subclassing() -> None:
    # libvirtError(defmsg) picks up the thread's last error, as libvirt-python's does
    libvirt.virResetLastError()
    e = libvirt.libvirtError("plain")
    assert str(e) == "plain" and e.err is None and e.get_error_code() is None

    class AppError(libvirt.libvirtError):
        pass

    with pytest.raises(libvirt.libvirtError):
        libvirt.open("test+unix:///default?socket=/nonexistent/sock")
    last = libvirt.virGetLastError()
    assert last is not None
    e2 = AppError("fallback")
    assert e2.err == last and str(e2) == last[2]
    assert (e2.get_error_code(), e2.get_error_domain(), e2.get_int1()) == (
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_RPC,
        2,
    )
    assert e2.get_str1() == "%s" and e2.get_str2() == last[2] and e2.get_str3() is None
    assert e2.get_error_level() == libvirt.VIR_ERR_ERROR and e2.get_int2() == -1


def test_references_example_3_5(lab: Any) -> None:
    """The chapter's ex5.c: open, ref, close (1 left), close (0 left, then unusable)."""
    conn = libvirt.open(lab.info["uris"]["unix"])
    assert conn.ref() == 0
    assert conn.close() == 1
    assert conn.getHostname()  # still usable: one reference left
    assert conn.close() == 0
    with pytest.raises(libvirt.libvirtError) as info:
        conn.getHostname()
    assert info.value.get_error_code() == libvirt.VIR_ERR_INVALID_CONN


def test_context_manager_and_domain_references(lab: Any, peer: Any) -> None:
    uri = lab.info["uris"]["unix"]
    theirs = peer(
        "c = libvirt.open(args['uri']); d = c.lookupByName('test'); n = c.close(); result = [n, d.name(), d.info()[0]]",
        uri=uri,
    )
    c = libvirt.open(uri)
    d = c.lookupByName("test")
    n = c.close()
    assert [n, d.name(), d.info()[0]] == theirs  # the domain keeps the connection alive
    with libvirt.open(uri) as c2:
        assert c2.getHostname() == "vm"
    assert c2._o is None


def test_listing_leaves_the_cyclic_collector_as_it_found_it(lab: Any) -> None:
    """listAllDomains pauses gc while it builds the domains; on, off, and after a failure it is restored."""
    import gc

    conn = libvirt.open(lab.info["uris"]["unix"])
    was = gc.isenabled()
    try:
        gc.enable()
        assert [d.name() for d in conn.listAllDomains()] == ["test"]
        assert gc.isenabled()
        gc.disable()
        assert [d.name() for d in conn.listAllDomains()] == ["test"]
        assert not gc.isenabled()
        gc.enable()
        conn.close()
        with pytest.raises(libvirt.libvirtError) as info:
            conn.listAllDomains()
        assert info.value.get_error_code() == libvirt.VIR_ERR_INVALID_CONN
        assert gc.isenabled()
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()
