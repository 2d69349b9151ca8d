"""Transports close in asyncio's order (issue 16 §2): each scenario runs on asyncio's own loop
(the reference) and on io_uring, and the observable sequences must be the same.

Over real loopback sockets; clients that must not share the loop under test run in a thread with
blocking sockets and deadlines.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.uring.conftest import run
from tests.uring.test_conformance import _make_cert

Factory = Callable[[], asyncio.AbstractEventLoop]
Scenario = Callable[[], Coroutine[Any, Any, Any]]


def both(uring_factory: Factory, scenario: Scenario, timeout: float = 30.0) -> tuple[Any, Any]:
    """(asyncio's result, io_uring's result) of the same scenario."""
    return (run(asyncio.SelectorEventLoop, scenario(), timeout), run(uring_factory, scenario(), timeout))


class Ticker:
    """Counts loop iterations: a callback that re-schedules itself with call_soon runs exactly
    once per iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.n = 0
        self.stopped = False
        loop.call_soon(self.tick)

    def tick(self) -> None:
        if not self.stopped:
            self.n += 1
            self.loop.call_soon(self.tick)


class Recorder(asyncio.Protocol):
    """Records what the transport tells it, with the iteration it happened in."""

    def __init__(self, ticker: Ticker | None = None) -> None:
        self.ticker = ticker
        self.events: list[tuple[Any, ...]] = []
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.made: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _tick(self) -> int:
        return self.ticker.n if self.ticker else 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.events.append(("connection_made",))
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> None:
        self.events.append(("eof",))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("connection_lost", self._tick(), type(exc).__name__ if exc else None))
        self.lost.set_result(None)


def _socketpair_via_listener() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over loopback (the loop gets one end, the test the other)."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname(), timeout=5)
        b, _ = ls.accept()
    b.settimeout(5)
    return a, b


# ---------------------------------------------------------------- close() / abort() timing


@pytest.mark.parametrize("how", ["close", "abort", "abort_with_buffer"])
def test_connection_lost_one_iteration_after_close(uring_factory: Factory, how: str) -> None:
    """asyncio: close() with an empty buffer, or abort(), calls connection_lost on the next
    iteration (call_soon). io_uring took 3 (cancel the recv, post a NOP, then report)."""

    async def scenario() -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        ours, peer = _socketpair_via_listener()
        ticker = Ticker(loop)
        proto = Recorder(ticker)
        transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
        await asyncio.sleep(0.01)
        if how == "abort_with_buffer":
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            transport.write(b"x" * (8 << 20))  # far more than the socket takes: some stays queued
        at = ticker.n
        proto.events.append(("closing", 0))
        transport.abort() if how.startswith("abort") else transport.close()
        await asyncio.wait_for(proto.lost, 5)
        ticker.stopped = True
        peer.close()
        return [(e[0], e[1] - at, *e[2:]) if e[0] == "connection_lost" else e for e in proto.events]

    ref, got = both(uring_factory, scenario)
    assert ref[-1] == ("connection_lost", 1, None)
    assert got == ref


@pytest.mark.parametrize("how", ["close", "abort"])
def test_nothing_read_after_close_in_data_received(uring_factory: Factory, how: str) -> None:
    """Data and EOF arrive together; data_received closes the transport. asyncio removes its
    reader at once, so eof_received never comes (io_uring delivered the EOF it had already
    reaped in the same batch: an SSL layer then reported EOF instead of its fatal error)."""

    class Closer(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None
            self.transport.close() if how == "close" else self.transport.abort()

    async def scenario() -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        ours, peer = _socketpair_via_listener()
        peer.sendall(b"last words")
        peer.shutdown(socket.SHUT_WR)
        select.select([ours], [], [], 5)
        proto = Closer()
        await loop.connect_accepted_socket(lambda: proto, ours)
        await asyncio.wait_for(proto.lost, 5)
        peer.close()
        return [e[:1] + e[2:] if e[0] == "connection_lost" else e for e in proto.events]

    for _ in range(3):
        ref, got = both(uring_factory, scenario)
        assert ref == [("connection_made",), ("data", b"last words"), ("connection_lost", None)]
        assert got == ref


@pytest.mark.parametrize("how", ["close", "abort"])
def test_dup_of_the_socket_survives_close_and_abort(uring_factory: Factory, how: str) -> None:
    """close() and abort() release this transport's fd only: a dup made before (the pools
    hand idle connections to the next worker that way on reload) still talks to the peer."""

    async def scenario() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        ours, peer = _socketpair_via_listener()
        proto = Recorder()
        transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
        await asyncio.sleep(0.01)
        kept = socket.socket(fileno=os.dup(ours.fileno()))
        transport.close() if how == "close" else transport.abort()
        await asyncio.wait_for(proto.lost, 5)
        for _ in range(3):
            await asyncio.sleep(0)  # the ring lets go of the fd
        with kept, peer:
            kept.setblocking(True)
            kept.settimeout(5)
            peer.sendall(b"ping")
            got = kept.recv(16)
            kept.sendall(b"pong")
            back = peer.recv(16)
        return got, back

    ref, got = both(uring_factory, scenario)
    assert ref == (b"ping", b"pong")
    assert got == ref


def test_close_with_buffer_flushes_then_reports(uring_factory: Factory) -> None:
    """close() with data queued: the peer gets every byte, then EOF; connection_lost(None)."""

    async def scenario() -> tuple[int, list[tuple[Any, ...]]]:
        loop = asyncio.get_running_loop()
        ours, peer = _socketpair_via_listener()
        proto = Recorder()
        transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
        payload = os.urandom(1 << 16) * 64  # 4 MiB
        transport.write(payload)
        queued = transport.get_write_buffer_size() > 0
        transport.close()
        transport.write(b"after close")  # taken while flushing, as asyncio does
        got = bytearray()

        def drain() -> None:
            while chunk := peer.recv(1 << 20):
                got.extend(chunk)

        await loop.run_in_executor(None, drain)
        await asyncio.wait_for(proto.lost, 5)
        peer.close()
        assert bytes(got) == payload + b"after close"
        return int(queued), proto.events

    ref, got = both(uring_factory, scenario)
    assert ref[0] == 1, "the scenario must leave data queued at close()"
    assert got == ref


# ---------------------------------------------------------------- TLS close while paused


def test_tls_close_while_write_paused_sends_close_notify(uring_factory: Factory, tmp_path: Any) -> None:
    """stdlib test_remote_shutdown_receives_trailing_data, our way round: a TLS server has
    4 MiB queued (its SSL layer paused) when the peer's close_notify arrives; the SSL layer
    answers with its own close_notify and closes the TCP transport while still paused. The
    peer must get every byte and then that close_notify, not a bare TCP close."""
    cert, key = _make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    size = 4 << 20

    class Blaster(asyncio.Protocol):
        def __init__(self, written: threading.Event, record: list[str]) -> None:
            self.written, self.record = written, record

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            transport.write(b"z" * size)  # type: ignore[attr-defined]
            ssl_proto = transport._ssl_protocol  # type: ignore[attr-defined]
            self.record.append(f"ssl paused: {ssl_proto._ssl_writing_paused}")
            self.written.set()

        def eof_received(self) -> None:
            self.record.append("eof_received")

        def connection_lost(self, exc: BaseException | None) -> None:
            self.record.append(f"connection_lost {type(exc).__name__ if exc else None}")

    def peer(port: int, written: threading.Event) -> tuple[int, str]:
        """Handshake, send close_notify without reading, then read everything."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with sock:
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    incoming.write(sock.recv(16384))
            if outgoing.pending:
                sock.sendall(outgoing.read())
            assert written.wait(10)
            try:
                obj.unwrap()  # our close_notify; theirs is not here yet
            except ssl.SSLWantReadError:
                pass
            sock.sendall(outgoing.read())
            n = 0
            while True:
                try:
                    n += len(obj.read(1 << 16))
                except ssl.SSLWantReadError:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        return n, "tcp close without close_notify"
                    incoming.write(chunk)
                except ssl.SSLZeroReturnError:
                    return n, "close_notify"

    async def scenario() -> tuple[tuple[int, str], list[str]]:
        loop = asyncio.get_running_loop()
        written = threading.Event()
        record: list[str] = []
        server = await loop.create_server(lambda: Blaster(written, record), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        result = await loop.run_in_executor(None, peer, port, written)
        server.close()
        await server.wait_closed()
        for _ in range(500):
            if record and record[-1].startswith("connection_lost"):
                break
            await asyncio.sleep(0.01)
        return result, record

    ref, got = both(uring_factory, scenario, timeout=30)
    assert ref == ((size, "close_notify"), ["ssl paused: True", "eof_received", "connection_lost None"])
    assert got == ref


# ---------------------------------------------------------------- Server.close()


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_connect_refused_right_after_server_close(uring_factory: Factory, family: str) -> None:
    """asyncio closes the listening socket in Server.close(): a connect made right after (no
    loop iteration in between) is refused. io_uring kept listening until its cancel went in."""

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        if family == "tcp":
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
            addr: Any = server.sockets[0].getsockname()
            fam = socket.AF_INET
        else:
            addr = os.path.join(tempfile.mkdtemp(prefix="mlk-"), "s")
            server = await loop.create_unix_server(asyncio.Protocol, addr)
            fam = socket.AF_UNIX
        await asyncio.sleep(0.01)
        server.close()
        with socket.socket(fam, socket.SOCK_STREAM) as c:
            c.settimeout(2)
            try:
                c.connect(addr)
                outcome = "connected"
            except (ConnectionRefusedError, FileNotFoundError):
                outcome = "refused"
        await server.wait_closed()
        if family == "unix":
            os.unlink(addr)
            os.rmdir(os.path.dirname(addr))
        return outcome

    ref, got = both(uring_factory, scenario)
    assert ref == "refused"
    assert got == ref


# ---------------------------------------------------------------- failed TLS handshake


def test_failed_tls_handshake_closes_socket_at_once(uring_factory: Factory, tmp_path: Any) -> None:
    """A client whose handshake fails (the server's certificate is not trusted): its socket is
    closed at once, so the server sees EOF right away instead of waiting for a timeout."""
    cert, key = _make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    untrusting = ssl.create_default_context()  # system CAs only: our self-signed cert fails

    def server(ls: socket.socket) -> str:
        conn, _ = ls.accept()
        watch = conn.dup()  # wrap_socket takes conn's fd over
        with watch:
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass
            try:  # after the failed handshake: the client's socket must be closed
                r, _, _ = select.select([watch], [], [], 5)
                if not r:
                    return "still open"
                return "closed" if watch.recv(1024) == b"" else "data"
            except ConnectionResetError:
                return "closed"
            except OSError as exc:
                return f"closed ({exc.__class__.__name__})"

    def scenario(factory: Factory) -> tuple[str, str]:
        """As the stdlib tests do: run_until_complete(create_connection()) and then look at
        the peer while the loop is stopped (it must not take more iterations to close)."""
        loop = factory()
        ls = socket.create_server(("127.0.0.1", 0))
        verdict: list[str] = []
        t = threading.Thread(target=lambda: verdict.append(server(ls)), daemon=True)
        t.start()
        try:
            try:
                # no wait_for around it: each extra task layer is one more loop iteration
                # (the handshake deadline bounds it)
                loop.run_until_complete(
                    loop.create_connection(
                        asyncio.Protocol,
                        "127.0.0.1",
                        ls.getsockname()[1],
                        ssl=untrusting,
                        server_hostname="localhost",
                        ssl_handshake_timeout=10,
                    )
                )
                client = "connected"
            except ssl.SSLCertVerificationError:
                client = "verify failed"
            t.join(10)
            return client, verdict[0] if verdict else "no verdict"
        finally:
            ls.close()
            loop.close()

    ref, got = scenario(asyncio.SelectorEventLoop), scenario(uring_factory)
    assert ref == ("verify failed", "closed")
    assert got == ref


# ---------------------------------------------------------------- create_connection order


def test_no_data_before_create_connection_returns(uring_factory: Factory) -> None:
    """Data already waiting on the socket reaches data_received only after connection_made
    and after the awaiting create_connection() has resumed (asyncio's order)."""

    async def scenario() -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        ours, peer = _socketpair_via_listener()
        peer.sendall(b"early")
        select.select([ours], [], [], 5)  # the bytes are in our receive queue now
        ours.setblocking(False)
        proto_box: list[Recorder] = []

        def factory() -> Recorder:
            proto_box.append(Recorder())
            return proto_box[0]

        transport, proto = await loop.create_connection(factory, sock=ours)
        proto.events.append(("create_connection returned",))
        for _ in range(100):
            if ("data", b"early") in proto.events:
                break
            await asyncio.sleep(0.005)
        transport.close()
        await proto.lost
        peer.close()
        return proto.events[:3]

    for _ in range(5):  # the bug was a race (2 of 6); with the bytes waiting it is every time
        ref, got = both(uring_factory, scenario)
        assert ref == [("connection_made",), ("create_connection returned",), ("data", b"early")]
        assert got == ref


# ---------------------------------------------------------------- loop.sendfile()


@pytest.mark.parametrize("offset,count", [(0, None), (1000, 100_000), (5, 1), (300_000, None)])
def test_sendfile_native(uring_factory: Factory, tmp_path: Any, offset: int, count: int | None) -> None:
    """loop.sendfile() on a stream transport: the same bytes, return value and file position
    as asyncio's, through the native path (no read+write fallback), with writes before and
    after it kept in order."""
    blob = os.urandom(1 << 19)
    path = tmp_path / "blob"
    path.write_bytes(blob)

    async def scenario() -> tuple[int, int, bool, bool]:
        loop = asyncio.get_running_loop()
        fallback_used = False
        real_fallback = loop._sendfile_fallback  # type: ignore[attr-defined]

        async def spy(*args: Any, **kwargs: Any) -> Any:
            nonlocal fallback_used
            fallback_used = True
            return await real_fallback(*args, **kwargs)

        loop._sendfile_fallback = spy  # type: ignore[attr-defined]
        ours, peer = _socketpair_via_listener()
        proto = Recorder()
        transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
        got = bytearray()

        def drain() -> None:
            while chunk := peer.recv(1 << 20):
                got.extend(chunk)

        reading = loop.run_in_executor(None, drain)
        with open(path, "rb") as f:
            transport.write(b"HEAD")
            sent = await loop.sendfile(transport, f, offset, count)
            pos = f.tell()
        transport.write(b"TAIL")
        transport.close()
        await asyncio.wait_for(reading, 10)
        peer.close()
        end = len(blob) if count is None else offset + count
        ok = bytes(got) == b"HEAD" + blob[offset:end] + b"TAIL"
        return sent, pos, ok, fallback_used

    ref, got = both(uring_factory, scenario)
    end = len(blob) if count is None else offset + count
    assert ref == (end - offset, end, True, False)
    assert got == ref


def test_write_during_sendfile_raises(uring_factory: Factory, tmp_path: Any) -> None:
    """asyncio refuses transport.write() while loop.sendfile() runs; so must io_uring."""
    path = tmp_path / "blob"
    path.write_bytes(b"q" * (4 << 20))

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        ours, peer = _socketpair_via_listener()
        proto = Recorder()
        transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
        with open(path, "rb") as f:
            task = asyncio.ensure_future(loop.sendfile(transport, f))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            try:
                transport.write(b"x")
                outcome = "written"
            except RuntimeError as exc:
                outcome = str(exc)
            got = 0

            def drain() -> None:
                nonlocal got
                while got < 4 << 20 and (chunk := peer.recv(1 << 20)):
                    got += len(chunk)

            await loop.run_in_executor(None, drain)
            await task
        transport.close()
        await proto.lost
        peer.close()
        return outcome

    ref, got = both(uring_factory, scenario)
    assert ref == "unable to write; sendfile is in progress"
    assert got == ref
