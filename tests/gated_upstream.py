"""A keep-alive upstream that holds requests until the test opens a gate (loopback only).

It exists to build large upstream pools deterministically: requests to ``/hold`` wait until
``release_at`` of them are waiting at once (so the proxy had to open that many connections),
or until ``release()``; every other path answers at once. It counts connections accepted
and still open, so a test can tell whether the proxy kept, reused or dropped them.
"""

from __future__ import annotations

import asyncio
import threading

from tests.loop_thread import LoopThread


class GatedUpstream(LoopThread):
    def __init__(self, name: str = "gated", backlog: int = 4096) -> None:
        super().__init__(name)
        self.name = name
        self.backlog = backlog
        self.accepted = 0
        self.open = 0
        self.held = 0
        self.release_at: int | None = None
        self.port = 0
        self._gate: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, release_at: int) -> None:
        """Close the gate; it opens when ``release_at`` requests wait on it."""

        def arm() -> None:
            assert self._gate is not None
            self.held, self.release_at = 0, release_at
            self._gate.clear()

        self._call(arm)

    def release(self) -> None:
        def release() -> None:
            assert self._gate is not None
            self._gate.set()

        self._call(release)

    def _call(self, fn) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("upstream loop did not answer")

    def _stop(self) -> None:
        assert self._loop is not None  # called on it
        self._loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        """Abort every connection and let its handler finish before the loop stops."""
        if self._server is not None:
            self._server.close()
        assert self._gate is not None and self._loop is not None
        self._gate.set()
        for w in list(self._writers):
            w.transport.abort()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.stop()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=self.backlog)
        )
        self.port = self._server.sockets[0].getsockname()[1]

    # -- protocol ----------------------------------------------------------------------------
    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.add(w)
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                target = head.split(b" ", 2)[1].decode()
                if "/hold" in target:
                    assert self._gate is not None
                    self.held += 1
                    if self.release_at is not None and self.held >= self.release_at:
                        self._gate.set()
                    await self._gate.wait()
                body = f"{self.name} {target}".encode()
                w.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await w.drain()
        except ConnectionError:
            return
        finally:
            self.open -= 1
            self._writers.discard(w)
            w.close()
