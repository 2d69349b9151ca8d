"""Accepting on io_uring: shared listening sockets (reload hand-over) and the multishot mode."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.uring.conftest import run
from tests.uring.test_conformance import Echo, echo_roundtrips, until_refused

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
        except BaseException as exc:  # reported by the test
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
            time.sleep(self.block_then_close)  # noqa: ASYNC251 - blocking the loop is the point
            server.close()
        await self.stop_fut
        server.close()

    def stop(self) -> None:
        fut = self.stop_fut
        if self.loop is not None and fut is not None:

            def wake() -> None:
                if not fut.done():
                    fut.set_result(None)

            self.loop.call_soon_threadsafe(wake)
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
        await until_refused(port)

    run(factory, main())


def test_bad_accept_mode_rejected(uring_factory: Factory) -> None:
    from monolake.uring import new_event_loop

    with pytest.raises(ValueError):
        new_event_loop(accept_mode="sometimes")


EMFILE_CHILD = r"""
import asyncio, os, resource, sys
sys.path.insert(0, {root!r})
from tests.uring.conftest import FACTORIES
from tests.uring.test_conformance import Echo

async def main():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(ctx) or print("HANDLER", ctx["message"], flush=True))
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=64)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    top = max(int(x) for x in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fillers = []
    try:
        while True:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for fd in fillers[:2]:  # exactly two descriptors left for accepted connections
        os.close(fd)
    await asyncio.sleep(30)

with asyncio.Runner(loop_factory=FACTORIES[{name!r}]) as r:
    r.run(main())
"""


def test_accept_out_of_fds_recovers(loop_factory: Factory) -> None:
    """EMFILE on accept: reported once per pause, no busy loop, accepting resumes after."""
    import os
    import subprocess
    import sys

    from tests.support import spawned
    from tests.uring.test_conformance import ROOT

    name = "io_uring" if "uring" in getattr(loop_factory, "__name__", "") else "asyncio"
    with spawned(
        [sys.executable, "-c", EMFILE_CHILD.format(root=ROOT, name=name)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(6)]
        for i, c in enumerate(clients):
            c.sendall(b"c%d" % i)
        # only a few fit under the limit; the child reports the resource error
        line = proc.stdout.readline()
        assert "out of system resource" in line, line
        # the two free descriptors go to the first two connections (the queue is FIFO)
        for c in clients[:2]:
            c.settimeout(10)
            assert c.recv(10).startswith(b"c")
        for c in clients[2:]:
            c.settimeout(0.2)
            with pytest.raises(TimeoutError):
                c.recv(10)
        # free descriptors in the child: accepting resumes (after asyncio's 1 s retry delay)
        for c in clients[:2]:
            c.close()
        waiting = clients[2:]
        t0 = time.monotonic()
        for c in waiting:
            c.settimeout(10)
            assert c.recv(10).startswith(b"c")
            c.close()
        assert time.monotonic() - t0 < 10
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # the child did not spin while it could not accept (a busy loop burns ~1 s per second)
        assert (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") < 3.0, fields[11:13]
