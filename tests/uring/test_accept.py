"""Accepting on io_uring: shared listening sockets (reload hand-over) and the multishot mode."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.uring.conftest import run
from tests.uring.test_conformance import Echo, echo_roundtrips

Factory = Callable[[], asyncio.AbstractEventLoop]


class ServingThread(threading.Thread):
    """A loop in its own thread serving Echo on `sock` until stopped."""

    def __init__(self, factory: Factory, sock: socket.socket, block_then_close: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.factory, self.sock, self.block_then_close = factory, sock, block_then_close
        self.ready = threading.Event()
        self.blocked = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_fut: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self.factory) as runner:
                runner.run(self.main())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_fut = self.loop.create_future()
        server = await self.loop.create_server(Echo, sock=self.sock)
        await asyncio.sleep(0.02)  # the accept/poll is submitted on the next iteration
        self.ready.set()
        if self.block_then_close:
            await asyncio.sleep(0.05)
            # the loop does not enter the kernel while blocked: a connection arriving now is
            # queued on the listening socket; then this server stops accepting
            self.blocked.set()
            time.sleep(self.block_then_close)
            server.close()
        await self.stop_fut
        server.close()

    def stop(self) -> None:
        if self.loop is not None and self.stop_fut is not None:
            self.loop.call_soon_threadsafe(lambda: self.stop_fut.done() or self.stop_fut.set_result(None))
        self.join(10)


def test_shared_socket_handover_loses_no_connection(uring_factory: Factory) -> None:
    """Two loops accept on one listening socket; one stops while a connection waits.

    The other must take that connection at once (with EPOLLEXCLUSIVE multishot accept, the
    stopping ring could swallow the wake-up and strand it until the next connection)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    dup = lsock.dup()
    leaving = ServingThread(uring_factory, lsock, block_then_close=0.6)
    staying = ServingThread(uring_factory, dup)
    leaving.start()
    assert leaving.ready.wait(10)
    staying.start()
    assert staying.ready.wait(10)
    try:
        assert leaving.blocked.wait(10)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"handover")
            assert c.recv(100) == b"handover"
        assert time.monotonic() - started < 3.0
    finally:
        leaving.stop()
        staying.stop()
    assert leaving.error is None and staying.error is None, (leaving.error, staying.error)


def test_multishot_accept_mode(uring_factory: Factory) -> None:
    from monolake.uring import new_event_loop

    def factory() -> asyncio.AbstractEventLoop:
        return new_event_loop(entries=256, accept_mode="multishot")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(200)))
        await asyncio.gather(*(echo_roundtrips(r, w, 2) for r, w in conns))
        for _r, w in conns:
            w.close()
        server.close()
        await server.wait_closed()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return
            except ConnectionResetError:
                continue
            w.close()
            await asyncio.sleep(0.01)
        raise AssertionError("still accepting after server.close()")

    run(factory, main())


def test_bad_accept_mode_rejected(uring_factory: Factory) -> None:
    from monolake.uring import new_event_loop

    with pytest.raises(ValueError):
        new_event_loop(accept_mode="sometimes")
