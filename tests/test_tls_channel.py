"""TlsChannel's record handling, against an OpenSSL server whose bytes the test controls.

The real daemon (tests/test_tls.py) always writes one whole record per
reply; the cases here are the ones it cannot be made to produce: records
that arrive together with the confirmation byte, several records in one
read, a message of many records trickling in a few bytes at a time, a
corrupted record, and the two ways a session ends (close_notify, or the
socket just closing).  The server is a real TLS 1.3 session on memory BIOs
(the lab's server certificate) over a real loopback socket.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyvirtrpc import uri as uri_mod
from pyvirtrpc.transport import tls
from pyvirtrpc.transport.tcp import connect_tcp
from pyvirtrpc.transport.tls import TlsChannel
from tests.harness.lab import Lab

TIMEOUT = 20.0


class Server:
    """One TLS session, server side: ``send(plaintext)`` gives the records' bytes, written as the test likes."""

    def __init__(self, pki: Path, conn: socket.socket) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki / "server" / "servercert.pem"), str(pki / "server" / "serverkey.pem"))
        ctx.num_tickets = 0  # as libvirtd: no session tickets after the handshake
        self.sock = conn
        self.inbio, self.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inbio, self.outbio, server_side=True)
        conn.settimeout(TIMEOUT)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                data = conn.recv(65536)
                assert data, "client went away during the handshake"
                self.inbio.write(data)
        self.flush()

    def flush(self) -> None:
        if self.outbio.pending:
            self.sock.sendall(self.outbio.read())

    def records(self, *plaintexts: bytes) -> bytes:
        """The ciphertext of one record per plaintext (longer ones split into 16 KiB records)."""
        for p in plaintexts:
            self.obj.write(p)
        return self.outbio.read()

    def recv_plain(self, n: int) -> bytes:
        got = b""
        while len(got) < n:
            try:
                got += self.obj.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                assert data
                self.inbio.write(data)
        return got


@pytest.fixture
def session(lab: Lab) -> Iterator[Callable[[], tuple[TlsChannel, Server]]]:
    """Connect pyvirtrpc's client to a fresh in-process server; both ends come back."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pki = Path(lab.info["pki"]["root"])
    opened: list[Any] = [listener]

    def make(confirm: bytes = b"\x01") -> tuple[TlsChannel, Server]:
        box: dict[str, Any] = {}

        def serve() -> None:
            conn, _ = listener.accept()
            server = Server(pki, conn)
            # the confirmation byte, plus whatever else the test wants in the same flight
            conn.sendall(server.records(confirm))
            box["server"] = server

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        uri = f"test+tls://127.0.0.1:{port}/x?pkipath={lab.pki('client')}"
        ctx = tls.client_context(uri_mod.plan(uri, 0))
        channel = tls.start_session(ctx, connect_tcp("127.0.0.1", port, 5), "127.0.0.1", 5)
        t.join(TIMEOUT)
        server = box["server"]
        opened.extend([channel, server.sock])
        return channel, server

    yield make
    for o in opened:
        o.close()


def read_all(channel: TlsChannel, n: int) -> list[bytes]:
    """recv() until ``n`` bytes came; every recv must return something."""
    chunks: list[bytes] = []
    while sum(map(len, chunks)) < n:
        data = channel.recv(65536)
        assert data, f"EOF after {sum(map(len, chunks))} of {n} bytes"
        chunks.append(data)
    return chunks


@pytest.mark.parametrize("through", ["_sslobj", "SSLObject"])
def test_one_record_per_read(session: Callable[..., tuple[TlsChannel, Server]], through: str) -> None:
    channel, server = session()
    if through == "SSLObject":
        # the fallback for a Python whose SSLObject has no _sslobj: the same calls, one frame up
        channel._ssl = channel._obj
    else:
        assert channel._ssl is not channel._obj  # Debian's 3.11 has it: the direct path is the one used
    assert not channel.pending()
    for i in range(50):
        body = b"reply %d " % i * (i + 1)
        server.sock.sendall(server.records(body))
        assert channel.recv(65536) == body
        channel.sendall(body)
        assert server.recv_plain(len(body)) == body
    assert not channel.pending()


def test_records_that_came_with_the_confirmation(session: Callable[..., tuple[TlsChannel, Server]]) -> None:
    channel, server = session(confirm=b"\x01first, second")
    # decrypted at once: a poll() on the socket would not show it
    assert channel.pending()
    assert channel.recv(65536) == b"first, second"
    assert not channel.pending()
    server.sock.sendall(server.records(b"next"))
    assert channel.recv(65536) == b"next"


def test_several_records_in_one_read(session: Callable[..., tuple[TlsChannel, Server]]) -> None:
    channel, server = session()
    bodies = [b"a" * 28, b"b" * 100, b"c" * 5000, b"d"]
    wire = b"".join(server.records(b) for b in bodies)
    server.sock.sendall(wire)
    time.sleep(0.05)  # all of it in the socket, so that one recv() sees it all
    assert channel.recv(65536) == b"".join(bodies)
    assert not channel.pending()


def test_a_large_message_trickling_in(session: Callable[..., tuple[TlsChannel, Server]]) -> None:
    channel, server = session()
    body = bytes(range(256)) * 400  # 102,400 bytes: seven records
    wire = server.records(body)
    got: list[bytes] = []

    def reader() -> None:
        got.extend(read_all(channel, len(body)))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    # a few bytes at a time, so that records are split across reads anywhere
    for i in range(0, len(wire), 997):
        server.sock.sendall(wire[i : i + 997])
        if i % 9970 == 0:
            time.sleep(0.001)
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert b"".join(got) == body


def test_sendall_round_trip(session: Callable[..., tuple[TlsChannel, Server]]) -> None:
    channel, server = session()
    for body in (b"x" * 28, b"y" * 70000):
        channel.sendall(body)
        assert server.recv_plain(len(body)) == body


def test_a_corrupted_record_is_an_eio(session: Callable[..., tuple[TlsChannel, Server]]) -> None:
    channel, server = session()
    server.sock.sendall(server.records(b"intact"))
    assert channel.recv(65536) == b"intact"
    wire = bytearray(server.records(b"this record is tampered with"))
    wire[10] ^= 0x04  # a ciphertext bit: the AEAD tag no longer matches
    server.sock.sendall(bytes(wire))
    with pytest.raises(OSError) as info:
        channel.recv(65536)
    assert info.value.errno == errno.EIO
    assert str(info.value).startswith("[Errno 5] TLS read failed: ")
    # and it stays failed: nothing after the bad record is believed
    with pytest.raises(OSError):
        channel.recv(65536)


def test_data_then_a_corrupted_record_in_one_read(session: Callable[..., tuple[TlsChannel, Server]]) -> None:
    channel, server = session()
    good = server.records(b"good")
    bad = bytearray(server.records(b"bad"))
    bad[-1] ^= 0x80
    server.sock.sendall(good + bytes(bad))
    time.sleep(0.05)
    # what decrypted before the bad record is handed over first, then the error
    assert channel.recv(65536) == b"good"
    with pytest.raises(OSError) as info:
        channel.recv(65536)
    assert info.value.errno == errno.EIO


@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "plain-close"])
def test_end_of_session(session: Callable[..., tuple[TlsChannel, Server]], notify: bool) -> None:
    channel, server = session()
    wire = server.records(b"last words")
    if notify:
        try:
            server.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is out; the client's is not awaited
        wire += server.outbio.read()
    server.sock.sendall(wire)
    server.sock.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    assert channel.recv(65536) == b"last words"  # what came before the end, first
    for _ in range(2):  # and the end is sticky
        if notify:
            assert channel.recv(65536) == b""
        else:
            # GnuTLS, so libvirt, reports EIO for a TCP close without close_notify
            with pytest.raises(OSError) as info:
                channel.recv(65536)
            assert info.value.errno == errno.EIO
            assert "UNEXPECTED_EOF" in str(info.value)
