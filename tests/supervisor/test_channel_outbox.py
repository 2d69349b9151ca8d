"""The master never blocks on a worker's control channel (issue 17): ``channel.Outbox``
writes what the socket takes, queues the rest with its fds, and reports a peer that does not
drain within its deadline; a SIGSTOPped worker is then killed and replaced, and the master
answers ``status`` all along."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from monolake.supervisor import channel
from monolake.supervisor.control import request
from tests.harness import base_config, http_get
from tests.support import free_port, pid_alive, wait_for


def _memfd(tag: str) -> int:
    fd = os.memfd_create(f"outbox-{tag}")
    os.write(fd, tag.encode())
    return fd


def _drain(
    sock: socket.socket, reader: channel.FrameReader, want: int, timeout: float = 10
) -> list[tuple[dict, list[int]]]:
    got: list[tuple[dict, list[int]]] = []
    while len(got) < want:
        message = channel.recv_message(sock, reader, timeout=timeout)
        assert message is not None, "the sender closed early"
        got.append(message)
    return got


def test_outbox_queues_without_blocking_and_keeps_fds_with_their_bytes():
    """A peer that reads nothing: sends return at once, bytes and fds queue in order (fds of
    queued frames are the outbox's own duplicates, so the caller closes its copies), and once
    the peer reads, every message arrives whole with its own fds (one above SCM_MAX_FD too)."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    stuck: list[str] = []

    async def scenario() -> tuple[int, channel.Outbox]:
        box = channel.Outbox(ours, deadline=30, on_stuck=stuck.append)
        sent = 0
        while box.queued == 0 or sent < 3000:  # well past the socket buffer
            fds = [_memfd(f"m{sent}-{k}") for k in range(300 if sent == 2000 else sent % 3)]
            assert box.send({"type": "msg", "n": sent, "pad": "x" * 200}, fds)
            channel.close_fds(fds)  # ours to close at once: queued frames hold duplicates
            sent += 1
        assert box.queued > 0 and not stuck
        await asyncio.sleep(0)
        return sent, box

    async def run() -> int:
        sent, box = await scenario()
        reader = channel.FrameReader()
        loop = asyncio.get_running_loop()
        peer.setblocking(False)
        received: list[tuple[dict, list[int]]] = []

        def readable() -> None:
            try:
                channel.recv_into(peer, reader)
            except BlockingIOError:
                return
            while (got := reader.next_message()) is not None:
                received.append(got)

        loop.add_reader(peer.fileno(), readable)
        deadline = loop.time() + 30
        while len(received) < sent:
            assert loop.time() < deadline, f"{len(received)} of {sent} arrived"
            await asyncio.sleep(0.01)
        loop.remove_reader(peer.fileno())
        assert box.queued == 0
        for n, (message, fds) in enumerate(received):
            assert message["n"] == n
            count = 300 if n == 2000 else n % 3
            assert len(fds) == count, (n, len(fds))
            assert [os.pread(fd, 32, 0).decode() for fd in fds] == [f"m{n}-{k}" for k in range(count)]
            channel.close_fds(fds)
        box.close()
        return sent

    # nobody read while they were sent: a send that waited for the peer would never return
    sent = asyncio.run(run())
    assert sent >= 3000, sent
    assert not stuck
    ours.close()
    peer.close()


def test_outbox_reports_a_peer_that_does_not_drain_and_drops_its_queue():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    baseline = len(os.listdir("/proc/self/fd"))

    async def run() -> tuple[list[str], bool, float]:
        stuck: list[str] = []
        loop = asyncio.get_running_loop()
        box = channel.Outbox(ours, deadline=0.3, on_stuck=stuck.append)
        started = loop.time()
        while box.queued == 0:
            fd = _memfd("x")
            box.send({"type": "msg", "pad": "x" * 1000}, [fd])
            os.close(fd)
        while not stuck and loop.time() - started < 30:  # a bound, not a measurement
            await asyncio.sleep(0.02)
        after = box.send({"type": "late"})
        return stuck, after, loop.time() - started

    stuck, late_accepted, took = asyncio.run(run())
    assert len(stuck) == 1 and "took nothing" in stuck[0], stuck
    assert took >= 0.3, "the deadline fired early"
    assert not late_accepted, "a stuck peer's outbox refuses further sends"
    # the queued duplicates were closed; only what the peer's socket buffer holds remains
    assert len(os.listdir("/proc/self/fd")) <= baseline + 0
    ours.close()
    peer.close()


def test_outbox_queue_limit_is_a_stuck_peer():
    ours, peer = socket.socketpair()
    ours.setblocking(False)

    async def run() -> list[str]:
        stuck: list[str] = []
        box = channel.Outbox(ours, deadline=60, on_stuck=stuck.append, limit=1 << 20)
        for _ in range(200):
            if not box.send({"type": "msg", "pad": "x" * 65536}):
                break
        return stuck

    stuck = asyncio.run(run())
    assert len(stuck) == 1 and "queued" in stuck[0], stuck
    ours.close()
    peer.close()


def test_master_never_waits_on_a_stopped_worker_and_replaces_it(master_factory, tmp_path):
    """SIGSTOP a worker, then make the master send it far more than its socket buffer holds
    (thousands of log-level changes): every control request is answered (a master blocked on
    the worker answers none: each request times out), and the worker that does not drain is
    dumped, killed and replaced on its slot, long before the heartbeat watchdog (60 s here)."""
    port = free_port()
    cfg = base_config(tmp_path, port).replace("heartbeat_timeout = 5", "heartbeat_timeout = 60")
    assert "heartbeat_timeout = 60" in cfg
    m = master_factory(cfg, args=["--workers", "2"])
    victim = m.wait_ready(2)["workers"][0]
    sock = str(tmp_path / "control.sock")
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        for i in range(4000):
            reply = request(sock, {"type": "log_level", "level": "info" if i % 2 else "debug"}, timeout=10)
            assert reply["type"] == "ok", reply
            if not pid_alive(victim["pid"]) or m.log().count("does not drain"):
                break
        assert request(sock, {"type": "status"}, timeout=10)["type"] == "status"

        def replaced():
            rows = [w for w in m.status()["workers"] if w["slot"] == victim["slot"]]
            return (
                len(rows) == 1 and rows[0]["pid"] not in (None, victim["pid"]) and rows[0]["state"] == "ready"
            )

        wait_for(replaced, 30, interval=0.1, what="the stopped worker replaced on its slot")
    finally:
        try:
            os.kill(victim["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert not pid_alive(victim["pid"])
    stuck = [
        e
        for e in m.log_events()
        if e.get("event", "").startswith("worker does not drain its control channel")
    ]
    assert [e["pid"] for e in stuck] == [victim["pid"]], stuck
    assert "heartbeat missed" not in m.log()
    assert http_get(port)[0] == 200
