"""The splice relay itself (uring/splice.py over mu_splice.c), over real loopback TCP: bytes
arrive whole and in order after what the transports held, a slow receiver bounds what is read
from the source, an early end and a vanished receiver are reported, pipes are pooled."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

import pytest

from monolake.uring import new_event_loop, probe

pytestmark = pytest.mark.skipif(not probe().available, reason="io_uring unavailable")


class Sink(asyncio.Protocol):
    """Collects what a transport reads."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


def pattern(n: int) -> bytes:
    """Distinct bytes so that a loss or a reordering shows."""
    block = bytes(range(251)) * 64
    return (block * (n // len(block) + 1))[:n]


async def pair(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Any, Sink]:
    """A loopback connection: our plain socket end, and the loop's transport on the other."""
    lsock = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(lsock.getsockname())
    conn, _ = lsock.accept()
    lsock.close()
    conn.setblocking(False)
    proto = Sink()
    tr, _ = await loop.connect_accepted_socket(lambda: proto, conn)
    return peer, tr, proto


async def relay(n: int, prefix: int = 0, slow: bool = False) -> tuple[bytes, int, int]:
    from monolake.uring.splice import SpliceJob, pool_count

    loop = asyncio.get_running_loop()
    src_peer, src_tr, src_proto = await pair(loop)
    dst_peer, dst_tr, _ = await pair(loop)
    body = pattern(prefix + n)
    # the source's first bytes arrive through the transport (as a head would), the rest is
    # spliced: the two parts must join without a gap
    src_peer.sendall(body[:prefix])
    deadline = loop.time() + 10
    while len(src_proto.data) < prefix and loop.time() < deadline:
        await asyncio.sleep(0.005)
    src_tr.pause_reading()
    sender = loop.run_in_executor(None, src_peer.sendall, body[prefix:])
    ready = loop.create_future()
    done = loop.create_future()
    job = SpliceJob(loop, src_tr, dst_tr, ready.set_result, done.set_result)
    await ready
    held = src_tr.take_held()
    got_early = bytes(src_proto.data) + held
    dst_tr.write(got_early)
    job.go(prefix + n - len(got_early))
    dst_peer.setblocking(False)
    received = bytearray()
    peak_ahead = 0
    while len(received) < prefix + n and loop.time() < deadline + 50:
        try:
            chunk = dst_peer.recv(65536 if not slow else 4096)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            break
        received += chunk
        if slow:
            # bytes the relay read from the source but the receiver has not taken yet
            peak_ahead = max(peak_ahead, int(job.moved) - len(received))
            await asyncio.sleep(0.002)
    await done
    await sender
    result = job.result
    assert result == prefix + n - len(got_early), result
    for s in (src_peer, dst_peer):
        s.close()
    src_tr.close()
    dst_tr.close()
    await asyncio.sleep(0)
    assert bytes(received) == body
    return bytes(received), peak_ahead, pool_count()


def run(coro: Any, timeout: float = 60.0) -> Any:
    with asyncio.Runner(loop_factory=lambda: new_event_loop(entries=256)) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("n", [0, 1, 65535, 1 << 20, 64 << 20])
def test_relay_whole_and_ordered(n: int) -> None:
    run(relay(n, prefix=1000))


def test_relay_pipe_is_pooled() -> None:
    _, _, pooled = run(relay(1 << 20))
    assert pooled >= 1


def test_slow_receiver_bounds_the_read_ahead() -> None:
    _, ahead, _ = run(relay(8 << 20, slow=True), timeout=120)
    # the relay never runs further ahead than the pipe plus the two sockets' buffers: far
    # below the body (a copy without backpressure would read the whole 8 MiB ahead)
    assert ahead < 6 << 20, ahead


async def early_end(close_receiver: bool) -> Any:
    from monolake.uring.splice import SpliceJob

    loop = asyncio.get_running_loop()
    src_peer, src_tr, _ = await pair(loop)
    dst_peer, dst_tr, _ = await pair(loop)
    src_tr.pause_reading()
    ready = loop.create_future()
    done = loop.create_future()
    job = SpliceJob(loop, src_tr, dst_tr, ready.set_result, done.set_result)
    await ready
    job.go(1 << 20)
    if close_receiver:
        dst_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        dst_peer.close()
        src_peer.settimeout(5)  # the relay stops reading: the sender must give up, not hang
        sender = loop.run_in_executor(None, lambda: src_peer.sendall(b"x" * (4 << 20)))
    else:
        src_peer.sendall(b"y" * 1000)
        src_peer.close()
        sender = None
    await done
    if sender is not None:
        src_peer.close()
        try:
            await sender
        except OSError:  # the timeout, or the socket closed under it
            pass
    else:
        dst_peer.close()
    src_tr.close()
    dst_tr.close()
    return job.result


def test_source_ends_early() -> None:
    from monolake.uring.splice import SpliceError

    res = run(early_end(False))
    assert isinstance(res, SpliceError) and res.errno == errno.ENODATA and res.moved == 1000


def test_receiver_vanishes() -> None:
    from monolake.uring.splice import SpliceError

    res = run(early_end(True))
    assert isinstance(res, SpliceError) and res.errno in (errno.EPIPE, errno.ECONNRESET), res


def test_no_fd_leak() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        run(relay(1 << 16))
    from monolake.uring._uring import lib  # type: ignore[import-not-found]

    lib.mu_splice_pool_clear()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
