"""In-place reload rollback (issue 17): a reload whose new config fails to build in the
worker, or that the master rolls back, leaves the live stacks serving exactly as they were
(their pools owned, their settings, their idle upstream connections) and leaks no staged
stack or timer. And what arrives on the control channel together with ``hello`` is handled."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess

from monolake.conf import Config, parse_config
from monolake.supervisor import channel, messages
from monolake.worker.env import WorkerEnv
from monolake.worker.http.server import ServerRuntime
from monolake.worker.main import Worker
from tests.config_text import http_server
from tests.supervisor.worker_child import start_worker
from tests.upstreams import Upstream

ENV = WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="asyncio")


def _config(url: str, read_timeout: float, broken: str = "") -> Config:
    servers = ""
    for port, name in enumerate(("px", "py"), start=1):
        layer = (
            f"""
[[servers.{name}.layers]]
factory = "monolake.worker.http.layers:rate_limit"
options = {{ rate = 1, bogus = 2 }}
"""
            if name == broken
            else ""
        )
        servers += f"""
[servers.{name}]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
[servers.{name}.timeout]
upstream_read_timeout_sec = {read_timeout}
{layer}
[[servers.{name}.routes]]
path = "/{{*rest}}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{url}" }} }}]
"""
    return parse_config(servers)


def _live_sweeps(loop: asyncio.AbstractEventLoop) -> int:
    scheduled = loop._scheduled  # type: ignore[attr-defined]  # asyncio's timer heap
    return sum(
        1
        for h in scheduled
        if not h.cancelled() and getattr(h._callback, "__func__", None) is ServerRuntime._sweep
    )


async def _get_id(port: int) -> str:
    """GET /id through the proxy: the upstream names the proxy's connection (its port)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(b"GET /id HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


async def _until(cond, what: str, limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not cond():
        assert loop.time() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.005)


def test_failed_or_rolled_back_in_place_reload_leaves_the_live_stacks_intact():
    up = Upstream("a")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        live_config = _config(up.url, read_timeout=7)
        listeners = {n: socket.create_server(("127.0.0.1", 0)) for n in ("px", "py")}
        ports = {n: s.getsockname()[1] for n, s in listeners.items()}
        worker = Worker(ENV, live_config, {n: [s] for n, s in listeners.items()}, control=None)
        worker.build()
        await worker.start_accepting()
        handles = {n: slot.handle for n, slot in worker.slots.items()}
        pools = {n: h.pool for n, h in handles.items()}
        first = {n: await _get_id(ports[n]) for n in ports}  # one pooled upstream conn each
        assert _live_sweeps(loop) == 2

        # 1. px builds (sharing its live pool, with new settings), then py fails to build
        await worker._handle(
            messages.Reconfigure(config=Config.to_dict(_config(up.url, 99, broken="py"))), []
        )
        assert worker._staged is None
        # 2. both build, then the master rolls back (another worker failed)
        await worker._handle(messages.Reconfigure(config=Config.to_dict(_config(up.url, 99))), [])
        assert worker._staged is not None
        await worker._handle(messages.Rollback(), [])
        await _until(lambda: not getattr(worker, "_closing", ()), "discarded stacks closed")

        assert {n: slot.handle for n, slot in worker.slots.items()} == handles
        assert _live_sweeps(loop) == 2, "a staged stack's sweep timer was left running"
        for name, pool in pools.items():
            assert pool.read_timeout == 7, f"{name}: the live pool kept the rolled-back settings"
            assert not pool.closed
            # the live pool still serves from its idle connection (same upstream conn)
            assert await _get_id(ports[name]) == first[name]

        # the live handles still own their pools: closing them (drain) closes the pools
        await worker.drain(1.0)
        for name, pool in pools.items():
            assert pool.closed, f"{name}: its pool was left handed over to a discarded stack"
        assert _live_sweeps(loop) == 0
        for s in listeners.values():
            s.close()

    try:
        asyncio.run(scenario())
    finally:
        up.close()


def test_a_message_sent_with_hello_is_handled(tmp_path):
    """The master may send more right behind ``hello`` (``stop`` while a worker starts):
    the reader that read ``hello`` read it too, and the worker acts on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    config = parse_config(
        '[supervisor]\nlog_format = "json"\nheartbeat_interval = 0.2\n' + http_server(listen="127.0.0.1:1")
    )
    ours, theirs = socket.socketpair()
    hello = messages.encode(
        messages.Hello(
            slot=0, cpu=None, generation=1, config=Config.to_dict(config), listeners={"web": [0]}, accept=True
        )
    )
    # hello and stop in one write, before the worker reads anything
    frames = channel.frames_of(hello, [listener.fileno()])
    ours.sendmsg(
        [frames[0][0] + channel.encode(messages.encode(messages.Stop(timeout=1)))],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, __import__("array").array("i", [listener.fileno()]))],
    )
    proc = start_worker(theirs, tmp_path / "worker.log")
    listener.close()
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the stop sent with hello was lost: the worker kept running") from None
    reader = channel.FrameReader()
    kinds = []
    ours.settimeout(5)
    while (got := channel.recv_message(ours, reader, timeout=5)) is not None:
        kinds.append(got[0]["type"])
    ours.close()
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert kinds[0] == "ready" and kinds[-1] == "heartbeat", kinds
