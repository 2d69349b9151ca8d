"""The C layer on its own: prep calls, one run() per batch, and memory/fd hygiene."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from monolake.uring import probe

if not probe().available:
    pytest.skip(f"io_uring unavailable: {probe().reason}", allow_module_level=True)

from monolake.uring._uring import ffi, lib
from monolake.uring.ring import (
    F_MORE,
    K_DRAIN,
    K_QUIESCED,
    K_RECV,
    K_SENDERR,
    Ring,
)


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring(64)
    yield r
    assert r.close() == 0, "operations still in flight at teardown"


def events(r: Ring, until: int = 1, timeout: float = 5.0) -> list[tuple[int, int, int, int]]:
    """Run the ring until at least `until` events arrived (bounded)."""
    got: list[tuple[int, int, int, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < until and time.monotonic() < deadline:
        flat = r.run(0.05)
        it = iter(flat)
        got.extend(zip(it, it, it, it, strict=True))  # flat quadruples
    return got


def test_nop_and_batch(ring: Ring) -> None:
    for i in range(100):
        assert lib.mu_nop(ring.ptr, (i << 8) | 19) == 0
    got = events(ring, 100)
    assert sorted(ud >> 8 for ud, *_ in got) == list(range(100))
    assert all(res == 0 for _, res, _, _ in got)


def test_timeout_fires_and_cancel(ring: Ring) -> None:
    start = time.monotonic()
    assert lib.mu_timeout(ring.ptr, 20_000_000, (1 << 8) | 18) == 0
    assert lib.mu_timeout(ring.ptr, 10_000_000_000, (2 << 8) | 18) == 0
    ((ud, res, _, _),) = events(ring, 1)
    assert ud == (1 << 8) | 18 and res == -errno.ETIME
    assert time.monotonic() - start >= 0.015
    assert lib.mu_cancel(ring.ptr, (2 << 8) | 18) == 0
    ((ud, res, _, _),) = events(ring, 1)
    assert ud == (2 << 8) | 18 and res == -errno.ECANCELED


def test_wait_honours_timeout(ring: Ring) -> None:
    start = time.monotonic()
    assert ring.run(0.05) == []
    assert 0.04 <= time.monotonic() - start < 2


def test_eventfd_wakes_a_blocked_run(ring: Ring) -> None:
    import threading

    threading.Timer(0.05, os.eventfd_write, (ring.efd, 1)).start()
    start = time.monotonic()
    assert ring.run(None) == []  # the wake-up completion is swallowed in C
    assert time.monotonic() - start < 2


def test_poll_close_and_shutdown_ops(ring: Ring) -> None:
    a, b = socket.socketpair()
    assert lib.mu_poll_add(ring.ptr, a.fileno(), lib.POLLIN, (1 << 8) | 16) == 0
    assert events(ring, 1, timeout=0.1) == []
    b.send(b"x")
    ((ud, res, _, _),) = events(ring, 1)
    assert ud == (1 << 8) | 16 and res & lib.POLLIN
    # shutdown(SHUT_WR) through the ring: the peer reads EOF
    assert lib.mu_shutdown_fd(ring.ptr, a.fileno(), socket.SHUT_WR, (2 << 8) | 20) == 0
    ((ud, res, _, _),) = events(ring, 1)
    assert (ud, res) == ((2 << 8) | 20, 0)
    assert b.recv(10) == b""
    # close through the ring
    fd = a.detach()
    assert lib.mu_close_fd(ring.ptr, fd, (3 << 8) | 21) == 0
    ((ud, res, _, _),) = events(ring, 1)
    assert (ud, res) == ((3 << 8) | 21, 0)
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()


def test_cancel_by_fd(ring: Ring) -> None:
    a, b = socket.socketpair()
    lib.mu_poll_add(ring.ptr, a.fileno(), lib.POLLIN, (1 << 8) | 16)
    lib.mu_poll_add(ring.ptr, a.fileno(), lib.POLLIN, (2 << 8) | 16)
    events(ring, 1, timeout=0.05)
    assert lib.mu_cancel_fd(ring.ptr, a.fileno()) == 0
    got = events(ring, 2)
    assert sorted(ud >> 8 for ud, *_ in got) == [1, 2]
    assert all(res == -errno.ECANCELED for _, res, _, _ in got)
    a.close()
    b.close()


def conn_pair(ring: Ring, token: int) -> tuple[socket.socket, socket.socket, Any]:  # c: a cffi mu_conn *
    a, b = socket.socketpair()
    c = lib.mu_conn_new(ring.ptr, a.fileno(), token << 8)
    assert c != ffi.NULL
    return a, b, c


def test_conn_recv_send_and_orderly_close(ring: Ring) -> None:
    a, b, c = conn_pair(ring, 7)
    assert lib.mu_conn_recv_start(c) == 0
    b.sendall(b"hello")
    ((ud, res, flags, off),) = events(ring, 1)
    assert ud == (7 << 8) | K_RECV and flags & F_MORE
    assert ring.arena[off : off + res].tobytes() == b"hello"
    # C-owned send: the successful completion is swallowed
    assert lib.mu_conn_send(c, b"world", 5) == 5
    assert events(ring, 1, timeout=0.2) == []
    assert b.recv(10) == b"world" and c.pending == 0
    # close with the multishot recv armed: QUIESCED comes only after the recv is gone
    assert lib.mu_conn_close(c, 0) == 0
    got = events(ring, 1)
    assert got[-1][0] == (7 << 8) | K_QUIESCED
    a.close()  # now the fd can go: the peer sees EOF
    assert b.recv(10) == b""
    b.close()


def test_conn_drain_notification_and_send_error(ring: Ring) -> None:
    a, b, c = conn_pair(ring, 9)
    b.setblocking(False)
    big = b"z" * (16 << 20)
    pending = lib.mu_conn_send(c, big, len(big))
    # a large write on an idle conn is tried with send() first: the socket takes part of it
    assert 1 << 20 < pending < len(big) and c.pending == pending
    c.notify_below = 1024
    got: list[int] = []
    deadline = time.monotonic() + 10
    while K_DRAIN not in got and time.monotonic() < deadline:
        try:
            while b.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        got += [ud & 255 for ud, *_ in events(ring, 1, timeout=0.01)]
    assert K_DRAIN in got and c.pending <= 1024
    # the peer goes away: the next send reports an error event
    b.close()
    for _ in range(3):
        lib.mu_conn_send(c, b"x" * 65536, 65536)
    kinds = [ud & 255 for ud, *_ in events(ring, 1)]
    assert K_SENDERR in kinds and c.error in (errno.EPIPE, errno.ECONNRESET)
    assert lib.mu_conn_send(c, b"y", 1) < 0
    lib.mu_conn_close(c, 1)
    assert [ud & 255 for ud, *_ in events(ring, 1)] == [K_QUIESCED]
    a.close()


def test_abort_with_send_in_flight_frees_and_quiesces(ring: Ring) -> None:
    a, b, c = conn_pair(ring, 11)
    lib.mu_conn_recv_start(c)
    big = b"q" * (8 << 20)  # far more than the socket buffers: a send stays in flight
    lib.mu_conn_send(c, big, len(big))
    events(ring, 1, timeout=0.05)
    lib.mu_conn_close(c, 1)
    assert [ud & 255 for ud, *_ in events(ring, 1)] == [K_QUIESCED]
    assert lib.mu_ring_inflight(ring.ptr) == 1  # only the eventfd's multishot poll
    a.close()
    b.close()


def test_slots_are_reused_with_a_new_generation(ring: Ring) -> None:
    """Conn slots are recycled; a late cancel aimed at the old conn must not hit the new one."""
    for token in range(1, 200):
        a, b, c = conn_pair(ring, token)
        lib.mu_conn_recv_start(c)
        lib.mu_conn_recv_stop(c)  # a cancel in flight for this slot's recv...
        lib.mu_conn_close(c, 0)
        got = events(ring, 1)
        assert got[-1][0] == (token << 8) | K_QUIESCED
        a.close()
        b.close()
    # ...and a fresh conn in a recycled slot keeps receiving
    a, b, c = conn_pair(ring, 500)
    lib.mu_conn_recv_start(c)
    b.sendall(b"still here")
    ((ud, res, _, off),) = events(ring, 1)
    assert ud == (500 << 8) | K_RECV and ring.arena[off : off + res].tobytes() == b"still here"
    lib.mu_conn_close(c, 1)
    events(ring, 1)
    a.close()
    b.close()


def test_ring_teardown_with_operations_in_flight_leaves_no_fd() -> None:
    before = set(os.listdir("/proc/self/fd"))
    r = Ring(64)
    socks = [socket.socketpair() for _ in range(8)]
    for i, (a, _b) in enumerate(socks):
        c = lib.mu_conn_new(r.ptr, a.fileno(), (i + 1) << 8)
        lib.mu_conn_recv_start(c)
        lib.mu_conn_send(c, b"w" * (4 << 20), 4 << 20)
        lib.mu_poll_add(r.ptr, a.fileno(), lib.POLLRDHUP, ((100 + i) << 8) | 16)  # never fires
    r.run(0)
    assert r.close() == 0
    for a, b in socks:
        a.close()
        b.close()
    assert set(os.listdir("/proc/self/fd")) == before


def test_ring_is_per_process_flags_reported() -> None:
    r = Ring(32)
    try:
        assert r.setup_flags == probe().setup_flags
        assert r.pid == os.getpid()
    finally:
        r.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads alive
def test_forked_child_never_touches_the_parents_ring() -> None:
    """A child that inherits the ring (fork) must not cancel or tear down the parent's work."""
    r = Ring(32)
    a, b = socket.socketpair()
    c = lib.mu_conn_new(r.ptr, a.fileno(), 5 << 8)
    lib.mu_conn_recv_start(c)
    r.run(0)
    pid = os.fork()
    if pid == 0:  # child: closing its copy of the loop's ring must be a no-op
        try:
            left = r.close()
            os._exit(0 if left == 0 and r.closed else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    b.sendall(b"parent still receives")
    ((ud, res, _, off),) = events(r, 1)
    assert ud == (5 << 8) | K_RECV and r.arena[off : off + res].tobytes() == b"parent still receives"
    lib.mu_conn_close(c, 1)
    events(r, 1)
    assert r.close() == 0
    a.close()
    b.close()


def received(ring: Ring, peer: socket.socket, n: int) -> bytes:
    """What ``peer`` reads, running the ring between reads, until ``n`` bytes or 10 s."""
    got = bytearray()
    peer.settimeout(5)
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        events(ring, 1, timeout=0.01)
        try:
            got += peer.recv(1 << 20)
        except TimeoutError:
            pass
    return bytes(got)


def test_large_send_goes_direct_and_keeps_order(ring: Ring) -> None:
    """A big write on an idle conn is sent at once (nothing queued); writes behind queued data
    are queued, so the peer sees everything in order."""
    a, b, c = conn_pair(ring, 13)
    big = bytes(range(256)) * 256  # 64 KiB
    assert lib.mu_conn_send(c, big, len(big)) == 0 and c.pending == 0
    assert lib.mu_conn_send(c, b"small", 5) == 5  # queued for the next run
    assert lib.mu_conn_send(c, big, len(big)) == 5 + len(big)  # behind it: queued, not direct
    want = big + b"small" + big
    assert received(ring, b, len(want)) == want and c.pending == 0
    lib.mu_conn_close(c, 0)
    assert [ud & 255 for ud, *_ in events(ring, 1)] == [K_QUIESCED]
    a.close()
    b.close()


@pytest.mark.parametrize("buf_inc", [True, False], ids=["incremental", "whole-buffer"])
def test_lent_buffers_stay_valid_for_the_batch_and_are_reused(buf_inc: bool) -> None:
    """Payloads are read in place from the provided buffers until the next run; with less
    buffer space than the senders' data the kernel runs out (ENOBUFS), C re-arms, and every
    byte still arrives once and in order per connection (both buffer-ring modes)."""
    r = Ring(64, nbufs=2, buf_size=512, buf_inc=buf_inc)
    try:
        pairs = [conn_pair(r, 100 + i) for i in range(6)]
        for _, _, c in pairs:
            assert lib.mu_conn_recv_start(c) == 0
        want = {100 + i: (b"%d:" % i) * 700 for i in range(6)}
        for i, (_, b, _) in enumerate(pairs):
            b.sendall(want[100 + i][:300])  # small reads first: several share a buffer
        flat = r.run(0.05)
        it = iter(flat)
        got: dict[int, bytearray] = {tok: bytearray() for tok in want}
        for ud, res, _, off in zip(it, it, it, it, strict=True):
            if ud & 255 == K_RECV and res > 0:
                got[ud >> 8] += r.arena[off : off + res]
        for i, (_, b, _) in enumerate(pairs):
            b.sendall(want[100 + i][300:])
        deadline = time.monotonic() + 10
        while any(len(got[t]) < len(want[t]) for t in want) and time.monotonic() < deadline:
            flat = r.run(0.05)
            it = iter(flat)
            for ud, res, _, off in zip(it, it, it, it, strict=True):
                if ud & 255 == K_RECV and res > 0:
                    assert off >= 0 and off + res <= len(r.arena) and res <= 512
                    got[ud >> 8] += r.arena[off : off + res]
        assert {t: bytes(v) for t, v in got.items()} == want
        for _, _, c in pairs:
            lib.mu_conn_close(c, 0)
        quiesced = [ud for ud, *_ in events(r, len(pairs)) if ud & 255 == K_QUIESCED]
        assert len(quiesced) == len(pairs)
        for a, b, _ in pairs:
            a.close()
            b.close()
    finally:
        assert r.close() == 0


def test_send2_pair_goes_out_in_order_direct_or_queued(ring: Ring) -> None:
    """mu_conn_send2 (a head and a body): one sendmsg on an idle conn, queued behind pending
    data otherwise; the peer sees both pairs whole and in order."""
    a, b, c = conn_pair(ring, 15)
    head, body = b"HEAD\r\n\r\n", bytes(range(256)) * 256
    assert lib.mu_conn_send2(c, head, len(head), body, len(body)) == 0  # idle: sent at once
    assert lib.mu_conn_send(c, b"x", 1) == 1
    n = lib.mu_conn_send2(c, head, len(head), body, len(body))
    assert n == 1 + len(head) + len(body)  # behind queued data: queued
    want = head + body + b"x" + head + body
    assert received(ring, b, len(want)) == want and c.pending == 0
    b.close()
    for _ in range(3):
        lib.mu_conn_send2(c, head, len(head), body, len(body))
    events(ring, 1)
    assert lib.mu_conn_send2(c, head, len(head), body, len(body)) < 0
    lib.mu_conn_close(c, 1)
    assert K_QUIESCED in [ud & 255 for ud, *_ in events(ring, 1)]
    a.close()


@pytest.mark.parametrize("reg", [1, 0], ids=["registered-ring-fd", "plain-ring-fd"])
def test_ring_options_direct_min_and_ring_fd(reg: int) -> None:
    """direct_min=0 sends even a small write on an idle conn with send() at once (nothing
    queued); the ring works the same with its fd registered (default) or not."""
    r = Ring(64, direct_min=0, reg_ring_fd=reg)
    try:
        a, b, c = conn_pair(r, 21)
        assert lib.mu_conn_recv_start(c) == 0
        assert lib.mu_conn_send(c, b"tiny", 4) == 0 and c.pending == 0  # went out directly
        b.settimeout(5)
        assert b.recv(10) == b"tiny"
        b.sendall(b"ping")
        ((ud, res, _, off),) = events(r, 1)
        assert ud == (21 << 8) | K_RECV and r.arena[off : off + res].tobytes() == b"ping"
        start = time.monotonic()
        assert r.run(0.05) == []  # a timed wait still times out
        assert time.monotonic() - start >= 0.04
        lib.mu_conn_close(c, 0)
        assert [ud & 255 for ud, *_ in events(r, 1)] == [K_QUIESCED]
        a.close()
        b.close()
    finally:
        assert r.close() == 0


def test_unknown_or_bad_ring_option_is_an_error() -> None:
    with pytest.raises(TypeError, match="unknown ring option"):
        Ring(64, no_such_option=1)
    with pytest.raises(OSError):
        Ring(64, direct_min=-1)
