"""The tcp transport against the real libvirtd, side by side with the C binding.

Connection set-up (name resolution, every address in turn, IPv4 and IPv6),
libvirt's errors when that fails, and isSecure/isEncrypted as libvirt
computes them for plain TCP (secure only once SASL gives SSF >= 56).
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from typing import Any, Callable

import pytest

import pyvirtrpc
import pyvirtrpc.aio
from pyvirtrpc._gen import constants as C
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.transport import tcp
from pyvirtrpc.transport.sasl import SaslChannel
from pyvirtrpc.transport.tcp import TcpChannel
from tests.creds import AUTH, PEER_OPEN, callback
from tests.harness.lab import Lab
from tests.harness.peer import Peer

LabFactory = Callable[..., Lab]
TIMEOUT = 20.0

def ours(uri: str) -> tuple[Any, ...]:
    try:
        conn = pyvirtrpc.openAuth(uri, [AUTH, callback, None], 0, timeout=TIMEOUT)
    except libvirtError as e:
        assert e.err is not None
        return ("err", e.err[0], e.err[1], e.err[2], e.err[7])
    try:
        return ("ok", conn.getHostname(), conn.isSecure(), conn.isEncrypted())
    finally:
        conn.close()


def theirs(peer: Peer, uri: str) -> tuple[Any, ...]:
    r = peer(PEER_OPEN, uri=uri, user="alice", password="wonderland")
    if "ok" in r:
        return ("ok", *r["ok"])
    e = r["err"]
    return ("err", e["code"], e["domain"], e["message"], e["int1"])


def same(peer: Peer, uri: str) -> tuple[Any, ...]:
    mine, c = ours(uri), theirs(peer, uri)
    assert mine == c, f"pyvirtrpc {mine} != C {c} for {uri}"
    return mine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ positive
def test_tcp_with_sasl(lab: Lab, peer: Peer) -> None:
    assert same(peer, lab.uris["tcp"]) == ("ok", "vm", 1, 1)
    conn = pyvirtrpc.openAuth(lab.uris["tcp"], [AUTH, callback, None], 0, timeout=TIMEOUT)
    try:
        channel = conn._o.client.channel
        assert isinstance(channel, SaslChannel) and isinstance(channel.inner, TcpChannel)
        assert not channel.inner.is_secure  # plain TCP ...
        assert channel.is_secure and channel.ssf == 128  # ... made secure by SASL (rc4)
        assert channel.transport == "tcp"
        assert channel.inner.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        conn.close()


def test_tcp_without_auth_is_neither_secure_nor_encrypted(make_lab: LabFactory, peer: Peer) -> None:
    lab = make_lab(auth_tcp="none", tls=False)
    assert same(peer, lab.uris["tcp"]) == ("ok", "vm", 0, 0)


def test_ipv6(make_lab: LabFactory, peer: Peer) -> None:
    lab = make_lab(listen_addr="::1")
    assert lab.uris["tcp"].startswith("test+tcp://[::1]:")
    assert same(peer, lab.uris["tcp"]) == ("ok", "vm", 1, 1)
    assert same(peer, lab.uris["tls"]) == ("ok", "vm", 1, 1)  # the certificate's IP SAN ::1
    conn = pyvirtrpc.openAuth(lab.uris["tcp"], [AUTH, callback, None], 0, timeout=TIMEOUT)
    try:
        assert conn._o.client.channel.inner.family == socket.AF_INET6
    finally:
        conn.close()


def test_every_address_is_tried_in_turn(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # This host has no name with both a v6 and a v4 address (and /etc/hosts is
    # not ours to edit), so the resolver answers for "dual.test": first ::1,
    # where nothing listens on the lab's port, then 127.0.0.1 where the daemon is.
    asked: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def fake(host: str, port: Any, *args: Any) -> list[Any]:
        asked.append((host, port, *args))
        if host != "dual.test":
            return real(host, port, *args)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port), 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port))),
        ]

    monkeypatch.setattr(tcp, "getaddrinfo", fake)
    sock = tcp.connect_tcp("dual.test", lab.tcp_port, 5)
    try:
        assert sock.getpeername()[:2] == ("127.0.0.1", lab.tcp_port)
    finally:
        sock.close()
    assert asked[0] == ("dual.test", str(lab.tcp_port), socket.AF_UNSPEC, socket.SOCK_STREAM, 0, tcp.AI_FLAGS)
    # a whole open through that name works (SASL and auth.conf use the name)
    conn = pyvirtrpc.openAuth(f"test+tcp://dual.test:{lab.tcp_port}/default", [AUTH, callback, None], 0)
    try:
        assert conn.getHostname() == "vm"
    finally:
        conn.close()
    # when no address answers, the last error is reported with the name
    port = free_port()
    with pytest.raises(libvirtError) as ei:
        tcp.connect_tcp("dual.test", port, 5)
    assert ei.value.err == (
        C.VIR_ERR_SYSTEM_ERROR,
        C.VIR_FROM_RPC,
        f"unable to connect to server at 'dual.test:{port}': Connection refused",
        2,
        "%s",
        f"unable to connect to server at 'dual.test:{port}': Connection refused",
        None,
        errno.ECONNREFUSED,
        -1,
    )


# ------------------------------------------------------------------ negative
def test_connection_refused(peer: Peer) -> None:
    port = free_port()
    assert same(peer, f"test+tcp://127.0.0.1:{port}/default") == (
        "err",
        C.VIR_ERR_SYSTEM_ERROR,
        C.VIR_FROM_RPC,
        f"unable to connect to server at '127.0.0.1:{port}': Connection refused",
        errno.ECONNREFUSED,
    )
    got = same(peer, f"test+tcp://[::1]:{port}/default")
    assert got[3] == f"unable to connect to server at '::1:{port}': Connection refused"


def test_unresolvable_host(peer: Peer) -> None:
    got = same(peer, "test+tcp://no-such-host.invalid/default")
    assert got[:3] == ("err", C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)
    assert got[3].startswith("Unable to resolve address 'no-such-host.invalid' service '16509': ")


def test_tcp_to_the_tls_port(lab: Lab, peer: Peer) -> None:
    # libvirtd's TLS listener drops a client that sends no ClientHello
    got = same(peer, f"test+tcp://127.0.0.1:{lab.tls_port}/default")
    assert got[:3] == ("err", C.VIR_ERR_SYSTEM_ERROR, C.VIR_FROM_RPC)


# ----------------------------------------------------------------- asyncio
def test_asyncio_over_tcp_with_sasl(lab: Lab) -> None:
    import asyncio

    async def main() -> list[Any]:
        conn = await pyvirtrpc.aio.openAuth(lab.uris["tcp"], [AUTH, callback, None], 0, timeout=TIMEOUT)
        try:
            names = await asyncio.gather(*(conn.getHostname() for _ in range(16)))
            return [set(names), await conn.isEncrypted(), len(await conn.getCapabilities()) > 1000]
        finally:
            await conn.close()

    assert asyncio.run(main()) == [{"vm"}, 1, True]


# ------------------------------------------------------------- lazy imports
def test_no_ssl_import_for_unix_or_tcp(lab: Lab) -> None:
    code = (
        "import os, sys, pyvirtrpc\n"
        f"c = pyvirtrpc.open({lab.uris['unix']!r}); c.getHostname(); c.close()\n"
        "print('ssl' in sys.modules)\n"
        f"os.environ['LIBVIRT_AUTH_FILE'] = {lab.authfile!r}\n"
        f"c = pyvirtrpc.openAuth({lab.uris['tcp']!r}, [[2, 5], lambda c, o: -1, None]); c.getHostname(); c.close()\n"
        "print('ssl' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "False"], r.stderr
