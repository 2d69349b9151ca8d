"""Loop conformance: the same asyncio programs on io_uring and on asyncio's own loop.

Servers run in-process (the loop is the unit under test) over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.http.certs import self_signed
from tests.support import keep, settle
from tests.uring.conftest import raise_nofile, run

Factory = Callable[[], asyncio.AbstractEventLoop]
SOAK = os.environ.get("MONOLAKE_SOAK") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Echo(asyncio.Protocol):
    """Echo with flow control: stop reading while our own writes are paused."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[attr-defined]


async def echo_roundtrips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int = 20) -> None:
    for i in range(n):
        msg = b"ping %d " % i * (i + 1)
        writer.write(msg)
        await writer.drain()
        assert await reader.readexactly(len(msg)) == msg


async def until_refused(port: int) -> None:
    """Return once a connect to ``port`` is refused (a closed server stopped accepting);
    AssertionError if it still accepts after 5 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            continue  # queued in the backlog just before the close: reset, then refused
        w.close()
        await asyncio.sleep(0.01)
    raise AssertionError("still accepting after server.close()")


def test_echo_tcp(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await echo_roundtrips(reader, writer)
        peer = writer.get_extra_info("peername")
        assert peer[1] == port and writer.get_extra_info("sockname")[0] == "127.0.0.1"
        assert isinstance(writer.get_extra_info("socket").fileno(), int)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_echo_tcp_ipv6(loop_factory: Factory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 unusable: {exc}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("::1", port)
        await echo_roundtrips(reader, writer, 5)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_echo_unix(loop_factory: Factory, tmp_path: Any) -> None:
    path = str(tmp_path / "echo.sock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(Echo, path)
        reader, writer = await asyncio.open_unix_connection(path)
        await echo_roundtrips(reader, writer)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_many_concurrent_connections(loop_factory: Factory) -> None:
    many_connections(loop_factory, 1000)


@pytest.mark.slow
def test_many_concurrent_connections_soak(loop_factory: Factory) -> None:
    """10 000 connections open at once with MONOLAKE_SOAK=1 (2000 by default)."""
    many_connections(loop_factory, 10_000 if SOAK else 2000)


def many_connections(loop_factory: Factory, n: int) -> None:
    limit = raise_nofile(2 * n + 200)
    if limit < 2 * n + 100:
        n = (limit - 100) // 2

    async def client(port: int, i: int, gate: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        msg = b"client %d\n" % i
        writer.write(msg)
        assert await reader.readexactly(len(msg)) == msg
        await gate.wait()  # keep every connection open at once
        writer.close()
        await writer.wait_closed()

    open_now = 0

    class Counting(Echo):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal open_now
            open_now += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal open_now
            open_now -= 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Counting, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        gate = asyncio.Event()
        tasks = [asyncio.create_task(client(port, i, gate)) for i in range(n)]
        # all connected and echoed before any closes
        deadline = loop.time() + 60
        while open_now < n and not any(t.done() for t in tasks) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert open_now == n
        gate.set()
        await asyncio.gather(*tasks)
        server.close()
        await server.wait_closed()

    run(loop_factory, main(), timeout=110)


class Sink(asyncio.Protocol):
    """Receives a stream, reading slowly (pauses itself) and hashing it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.got = 0
        self.digest = hashlib.sha256()
        self.done = asyncio.get_running_loop().create_future()
        self.pauses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        self.digest.update(data)
        if self.got >= self.total and not self.done.done():
            self.done.set_result(self.digest.hexdigest())
        elif self.got // (1 << 20) != (self.got - len(data)) // (1 << 20):
            # every MiB: pause reading for a moment, so the sender's buffers fill up
            self.pauses += 1
            self.transport.pause_reading()  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_later(0.005, self.transport.resume_reading)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"lost after {self.got} bytes: {exc}"))


class Source(asyncio.Protocol):
    """Writes `total` bytes as fast as flow control allows; tracks the write buffer peak."""

    def __init__(self, total: int, chunk: int = 256 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0
        self.paused = False
        self.pause_count = 0
        self.peak_buffer = 0
        self.digest = hashlib.sha256()
        self.sent_all = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=256 * 1024)  # type: ignore[attr-defined]
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.sent < self.total:
            n = min(self.chunk, self.total - self.sent)
            data = (b"%016d" % self.sent) * (n // 16) + b"x" * (n % 16)
            self.digest.update(data)
            self.transport.write(data)  # type: ignore[attr-defined]
            self.sent += n
            self.peak_buffer = max(self.peak_buffer, self.transport.get_write_buffer_size())  # type: ignore[attr-defined]
        if self.sent >= self.total and not self.sent_all.done():
            self.sent_all.set_result(self.digest.hexdigest())

    def pause_writing(self) -> None:
        self.paused = True
        self.pause_count += 1

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self.pump)


def test_large_transfer_with_backpressure_both_ways(loop_factory: Factory) -> None:
    total = 24 << 20

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # server -> client: the server is the Source, the client a slow Sink
        sources: list[Source] = []
        server = await loop.create_server(lambda: keep(sources, Source(total)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, sink = await loop.create_connection(lambda: Sink(total), "127.0.0.1", port)
        got = await sink.done
        src = sources[0]
        assert got == await src.sent_all
        assert src.pause_count >= 1, "the server's writes were never paused"
        assert src.peak_buffer <= (1 << 20) + src.chunk, src.peak_buffer
        assert sink.pauses >= 1
        tr.close()
        server.close()
        await server.wait_closed()

        # client -> server: the client is the Source, the server a slow Sink
        sinks: list[Sink] = []
        server = await loop.create_server(lambda: keep(sinks, Sink(total)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, src = await loop.create_connection(lambda: Source(total), "127.0.0.1", port)
        digest = await src.sent_all
        while not sinks:
            await asyncio.sleep(0.001)
        assert await sinks[0].done == digest
        assert src.pause_count >= 1, "the client's writes were never paused"
        assert src.peak_buffer <= (1 << 20) + src.chunk, src.peak_buffer
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop_factory, main(), timeout=90)


def test_echo_large_with_flow_control(loop_factory: Factory) -> None:
    """An echo server relaying 8 MiB back to a client that reads slowly."""
    total = 8 << 20

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 * 1024)
        payload = os.urandom(total)

        async def send() -> None:
            view = memoryview(payload)
            for i in range(0, total, 100_000):
                writer.write(view[i : i + 100_000])
                await writer.drain()

        sender = asyncio.create_task(send())
        received = bytearray()
        while len(received) < total:
            received += await reader.read(65536)
        await sender
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main(), timeout=90)


def test_half_close(loop_factory: Factory) -> None:
    class Upper(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data

        def eof_received(self) -> bool:
            # reading is over, writing is not: answer after the peer's EOF
            self.transport.write(self.buf.upper())  # type: ignore[attr-defined]
            self.transport.write_eof()  # type: ignore[attr-defined]
            self.transport.close()  # flushes first; the server side is done
            return True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello ")
        writer.write(b"world")
        assert writer.can_write_eof()
        writer.write_eof()
        assert await reader.read() == b"HELLO WORLD"  # read() returns at the server's EOF
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_peer_sees_eof_when_transport_closes_while_reading(loop_factory: Factory) -> None:
    """Closing a transport with a read armed must really close the socket (io_uring pitfall)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.Transport] = []

        class Holder(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transports.append(transport)  # type: ignore[arg-type]

        server = await loop.create_server(Holder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not transports:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)  # reading armed
        transports[0].close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_cancelling_pending_operations(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # a read that will never complete, cancelled
        task = asyncio.create_task(reader.read(10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readexactly(5), 0.05)
        # the connection still works after the cancellations
        await echo_roundtrips(reader, writer, 3)

        # sock_recv / sock_accept cancelled on raw sockets (the selector path)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        t = asyncio.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await loop.sock_sendall(b, b"after cancel")
        assert await loop.sock_recv(a, 100) == b"after cancel"
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        accept = asyncio.create_task(loop.sock_accept(lsock))
        await asyncio.sleep(0.01)
        accept.cancel()
        with pytest.raises(asyncio.CancelledError):
            await accept
        for s in (a, b, lsock):
            s.close()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_timer_ordering(loop_factory: Factory) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        order: list[Any] = []
        done = loop.create_future()
        now = loop.time()
        for delay in (0.05, 0.01, 0.03, 0.02, 0.04):
            loop.call_later(delay, order.append, delay)
        loop.call_at(now + 0.025, order.append, "at")
        # equal deadlines all run at that point (asyncio's heap does not promise FIFO among them)
        for i in range(3):
            loop.call_at(now + 0.035, order.append, f"same{i}")
        cancelled = loop.call_later(0.015, order.append, "cancelled")
        cancelled.cancel()
        loop.call_soon(order.append, "soon1")
        loop.call_soon(order.append, "soon2")
        loop.call_later(0.06, done.set_result, None)
        await done
        assert loop.time() - now >= 0.06 - 0.002
        return order

    order = run(loop_factory, main())
    assert order[:6] == ["soon1", "soon2", 0.01, 0.02, "at", 0.03]
    assert sorted(order[6:9]) == ["same0", "same1", "same2"]
    assert order[9:] == [0.04, 0.05]


def test_call_soon_threadsafe_wakes_the_loop(loop_factory: Factory) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        started = time.monotonic()

        def other_thread() -> None:
            time.sleep(0.1)
            loop.call_soon_threadsafe(fut.set_result, time.monotonic())

        th = threading.Thread(target=other_thread)
        th.start()
        # nothing else is scheduled: the loop blocks in its wait until the thread wakes it
        woken_at = await fut
        th.join()
        assert time.monotonic() - woken_at < 2.0
        return time.monotonic() - started

    elapsed = run(loop_factory, main())
    assert 0.09 <= elapsed < 5


def test_run_in_executor(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(None, pow, 2, i) for i in range(20)))
        assert results == [2**i for i in range(20)]

    run(loop_factory, main())


def test_signals(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, lambda: settle(got, lambda: "usr1"))
        # from another thread while the loop is blocked waiting
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert await got == "usr1"
        assert loop.remove_signal_handler(signal.SIGUSR1)

    run(loop_factory, main())


def _make_cert(tmp_path: Any) -> tuple[str, str]:
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("the openssl CLI is not installed: no test certificate")
    made = self_signed(tmp_path, "localhost", ["localhost", "127.0.0.1"])
    return str(made.chain), str(made.key)


def test_start_tls_and_ssl_server(loop_factory: Factory, tmp_path: Any) -> None:
    cert, key = _make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        # 1. plain TCP, then both sides upgrade with start_tls (STARTTLS style)
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"GO\n")
            await writer.drain()
            await writer.start_tls(server_ctx)
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 20)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        big = b"y" * 300_000 + b"\n"
        for line in (b"secret one\n", b"secret two\n", big):
            writer.write(line)
            await writer.drain()
            assert await reader.readline() == line.upper()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

        # 2. a TLS server (create_server(ssl=...)) and a TLS client
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        await echo_roundtrips(reader, writer, 5)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main(), timeout=60)


def test_inherited_listening_socket(loop_factory: Factory) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    port = lsock.getsockname()[1]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, sock=lsock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await echo_roundtrips(reader, writer, 3)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        # closing the server really stops accepting (the ring let go of the socket)
        await until_refused(port)

    run(loop_factory, main())
    assert lsock.fileno() == -1


def test_inherited_socket_in_child_process(loop_factory: Factory) -> None:
    """A listening fd passed to a fresh interpreter (the master/worker model)."""
    import subprocess

    from tests.support import spawned

    name = "io_uring" if "uring" in getattr(loop_factory, "__name__", "") else "asyncio"
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    code = f"""
import asyncio, socket, sys
sys.path.insert(0, {ROOT!r})
from tests.uring.conftest import FACTORIES
from tests.uring.test_conformance import Echo
async def main():
    sock = socket.socket(fileno={lsock.fileno()})
    server = await asyncio.get_running_loop().create_server(Echo, sock=sock)
    print("READY", flush=True)
    await asyncio.sleep(30)
with asyncio.Runner(loop_factory=FACTORIES[{name!r}]) as r:
    r.run(main())
"""
    with spawned([sys.executable, "-c", code], pass_fds=[lsock.fileno()], stdout=subprocess.PIPE) as proc:
        lsock.close()  # only the child holds it now
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"READY"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"through the child")
            assert c.recv(100) == b"through the child"


def _open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def test_no_fd_left_behind_after_closing_with_operations_in_flight(loop_factory: Factory) -> None:
    before = _open_fds()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.Transport] = []

        lost = 0

        class Stuck(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transports.append(transport)  # type: ignore[arg-type]

            def connection_lost(self, exc: Exception | None) -> None:
                nonlocal lost
                lost += 1

        server = await loop.create_server(Stuck, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(20):
            clients.append(await asyncio.open_connection("127.0.0.1", port))
        while len(transports) < 20:
            await asyncio.sleep(0.001)
        # writes the peers never read (sends in flight / queued), reads armed, some paused
        for i, t in enumerate(transports):
            t.write(b"z" * (4 << 20))
            if i % 3 == 0:
                t.pause_reading()
        await asyncio.sleep(0.05)
        for i, t in enumerate(transports):
            (t.abort if i % 2 else t.close)()
        # graceful closes wait for the flush: abort whatever is left after a moment
        for _r, w in clients:
            w.transport.abort()
        for t in transports:
            t.abort()
        for _r, w in clients:
            await w.wait_closed()
        server.close()
        await server.wait_closed()
        # pending operations on raw sockets too
        a, b = socket.socketpair()
        a.setblocking(False)
        recv = asyncio.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        recv.cancel()
        a.close()
        b.close()
        for _ in range(200):
            if lost == len(transports):
                break
            await asyncio.sleep(0.01)
        assert lost == len(transports)

    run(loop_factory, main())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _open_fds() - before:
        time.sleep(0.02)
    leaked = _open_fds() - before
    assert not leaked, {
        fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")
    }


def test_add_reader_writer_and_sock_coroutines(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        readable = loop.create_future()
        loop.add_reader(a.fileno(), lambda: settle(readable, lambda: a.recv(100)))
        writable = loop.create_future()
        loop.add_writer(b.fileno(), lambda: settle(writable, lambda: True))
        assert await writable
        assert loop.remove_writer(b.fileno())
        b.send(b"ready")
        assert await readable == b"ready"
        # level-triggered: unread data keeps the fd ready
        hits = 0
        again = loop.create_future()

        def on_read() -> None:
            nonlocal hits
            hits += 1
            if hits == 3:
                again.set_result(a.recv(100))

        loop.remove_reader(a.fileno())
        loop.add_reader(a.fileno(), on_read)
        b.send(b"unread")
        assert await again == b"unread"
        assert loop.remove_reader(a.fileno())
        a.close()
        b.close()

        # sock_* coroutines against an in-loop server
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        csock = socket.socket()
        csock.setblocking(False)
        accept = asyncio.create_task(loop.sock_accept(lsock))
        await loop.sock_connect(csock, lsock.getsockname())
        ssock, _ = await accept
        await loop.sock_sendall(csock, b"x" * 100_000)
        got = b""
        while len(got) < 100_000:
            got += await loop.sock_recv(ssock, 65536)
        buf = bytearray(10)
        await loop.sock_sendall(ssock, b"into")
        n = await loop.sock_recv_into(csock, buf)
        assert buf[:n] == b"into"
        for s in (lsock, csock, ssock):
            s.close()

    run(loop_factory, main())


def test_subprocess_and_pipes(loop_factory: Factory) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"through a pipe")
        assert out == b"THROUGH A PIPE"
        assert proc.returncode == 0

    run(loop_factory, main())


def test_datagram_endpoint(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Server(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.transport.sendto(data[::-1], addr)  # type: ignore[attr-defined]

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.set_result(data)

        st, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
        ct, _ = await loop.create_datagram_endpoint(Client, remote_addr=st.get_extra_info("sockname"))
        ct.sendto(b"olleh")
        assert await got == b"hello"
        ct.close()
        st.close()

    run(loop_factory, main())


def test_protocol_errors_are_reported_and_close_the_transport(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

        class Broken(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                raise ValueError("boom")

        server = await loop.create_server(Broken, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"trigger")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server side closed
        assert any(isinstance(e.get("exception"), ValueError) for e in errors)
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_connection_refused_and_reset(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

        lost = loop.create_future()

        class Watch(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        server = await loop.create_server(Watch, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        # RST: linger 0 then close
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await asyncio.sleep(0.05)
        c.close()
        exc = await asyncio.wait_for(lost, 5)
        assert exc is None or isinstance(exc, ConnectionResetError)
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_buffered_protocol_writelines_and_sendfile(loop_factory: Factory, tmp_path: Any) -> None:
    payload = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(payload)

    class Collect(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(4096)
            self.data = bytearray()
            self.eof = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.data += self.buf[:nbytes]

        def eof_received(self) -> None:
            self.eof.set_result(bytes(self.data))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        collectors: list[Collect] = []
        server = await loop.create_server(lambda: keep(collectors, Collect()), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        tr.writelines([b"head:", bytearray(b"array:"), memoryview(b"--view--")[2:6]])
        with open(path, "rb") as f:
            sent = await loop.sendfile(tr, f)
        assert sent == len(payload)
        tr.write_eof()
        while not collectors:
            await asyncio.sleep(0.001)
        got = await collectors[0].eof
        assert got.startswith(b"head:array:view")
        assert got[15:] == payload
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop_factory, main(), timeout=60)


def test_write_after_close_is_ignored_and_abort_escalates(loop_factory: Factory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class Watch(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        peers: list[socket.socket] = []
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        accept = asyncio.create_task(loop.sock_accept(lsock))
        tr, _ = await loop.create_connection(Watch, *lsock.getsockname())
        peer, _ = await accept
        peers.append(peer)
        tr.write(b"q" * (8 << 20))  # more than the peer will ever read
        assert tr.get_write_buffer_size() > 0
        tr.close()  # graceful: waits for a flush that cannot happen
        assert tr.is_closing()
        tr.write(b"ignored")
        await asyncio.sleep(0.05)
        assert not lost.done()
        tr.abort()  # escalate: drop the queue, cancel the send in flight
        assert await asyncio.wait_for(lost, 5) is None
        assert tr.get_write_buffer_size() == 0
        peer.close()
        lsock.close()

    run(loop_factory, main())


def test_cached_write_method_after_close_is_harmless(loop_factory: Factory) -> None:
    """A protocol may keep `transport.write` around; calling it after the connection is gone
    must be ignored (on io_uring the C conn behind the fast writer has been freed by then)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class Keep(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.write = transport.write  # type: ignore[attr-defined]

            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(None)

        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(Keep, "127.0.0.1", port)
        proto.write(b"before")
        tr.close()
        await asyncio.wait_for(lost, 5)
        for _ in range(10):
            proto.write(b"after close")
        server.close()
        await server.wait_closed()

    run(loop_factory, main())


def test_fast_path_is_used_on_cpython(uring_factory: Factory) -> None:
    import platform

    from monolake.uring.ring import FAST

    if platform.python_implementation() != "CPython" or os.environ.get("MONOLAKE_URING_NO_FAST"):
        pytest.skip("the C fast path is CPython-only")
    assert FAST is not None


def test_debug_mode(loop_factory: Factory) -> None:
    """asyncio's debug mode (slow-callback checks, thread checks) on the same echo."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert loop.get_debug()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await echo_roundtrips(reader, writer, 5)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory, debug=True) as runner:
        runner.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("dispatch", ["c", "python"])
def test_lent_views_reach_a_protocol_that_asks_for_them(uring_factory: Factory, dispatch: str) -> None:
    """A protocol with ``reads_lent_views`` gets memoryviews of the receive buffer, valid for
    the call only: the bytes are right, and a view kept past the call is released (using it
    raises) instead of showing whatever the buffer holds next."""
    from monolake.uring.ring import FAST

    if dispatch == "c" and FAST is None:
        pytest.skip("the C fast path is CPython-only")
    payload = bytes(random.Random(7).randrange(256) for _ in range(300_000))

    class Lender(asyncio.Protocol):
        reads_lent_views = True

        def __init__(self) -> None:
            self.got = bytearray()
            self.kept: list[memoryview] = []
            self.types: set[type] = set()
            self.done = asyncio.get_running_loop().create_future()

        def data_received(self, data: Any) -> None:
            self.types.add(type(data))
            if isinstance(data, memoryview):
                assert data.readonly
                self.kept.append(data)
            self.got += data
            if len(self.got) >= len(payload):
                self.done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if dispatch == "python":
            loop._selector._run = None  # type: ignore[attr-defined]
        proto: list[Lender] = []

        def factory() -> Lender:
            proto.append(Lender())
            return proto[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        await asyncio.wait_for(proto[0].done, 10)
        assert bytes(proto[0].got) == payload
        assert proto[0].types == {memoryview}
        assert proto[0].kept
        for view in proto[0].kept:
            with pytest.raises(ValueError):
                bytes(view)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(uring_factory, main())


def test_writelines_copies_a_lent_view_it_cannot_send_at_once(uring_factory: Factory) -> None:
    """writelines((head, view)) while the peer is not reading: what the socket does not take is
    copied, so overwriting the view's memory right after changes nothing on the wire."""
    size = 16 << 20  # more than the socket buffers take at once

    async def main() -> None:
        queued: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            transport = writer.transport
            buf = bytearray(b"b" * size)
            with memoryview(buf) as view:
                assert transport.writelines_copies  # type: ignore[attr-defined]
                transport.writelines((b"head", view))
            queued.append(transport.get_write_buffer_size())
            buf[:] = b"x" * size  # the memory is reused: what is queued must be a copy
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read()
        assert queued and queued[0] > 0  # part of it really waited in the queue
        assert len(data) == 4 + size and data == b"head" + b"b" * size
        writer.close()
        server.close()
        await server.wait_closed()

    run(uring_factory, main())
