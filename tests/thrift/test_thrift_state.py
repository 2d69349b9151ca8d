"""State across reloads, in-process: the proxy's and the gateway's ServerHandles export their
idle upstream connections (as fds) and counters, and the next version adopts them, so a
reload opens no new upstream connection. Also stats keys and drain."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from monolake.conf import parse_config
from monolake.worker.env import WorkerEnv
from monolake.worker.state import Snapshot
from monolake.worker.thrift import gateway, server
from tests.support import until
from tests.thrift.thrift_support import IDL, backend, decode_reply, encode_call, endpoint, free_port

CONTRACT_KEYS = {
    "connections_total",
    "open_connections",
    "active_requests",
    "requests",
    "responses_1xx",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "errors",
    "bytes_in",
    "bytes_out",
    "upstream_connect_failures",
    "upstream_ejections",
    "upstream_unsolicited",
}
ENV = WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="asyncio")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with backend("framed", name="bs") as (addr, _):
        yield addr


def config(proxy_type: str, up: str) -> Any:
    extra = f'idl = "{IDL}"\n' if proxy_type == "http_thrift" else ""
    text = (
        f'[servers.s]\nproxy_type = "{proxy_type}"\n'
        f'listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}\n{extra}'
        f"route = {{ upstreams = [{{ endpoint = {endpoint(up)} }}] }}\n"
    )
    return parse_config(text, source="test.toml").servers["s"]


class Served:
    """A handle serving on a fresh loopback socket inside the running loop."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.srv: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Served:
        loop = asyncio.get_running_loop()
        self.srv = await loop.create_server(self.handle.protocol_factory, sock=self.sock)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.srv is not None
        self.srv.close()


async def thrift_call(port: int, method: str, seqid: int = 1, **kwargs: Any) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        msg = encode_call(method, seqid, **kwargs)
        writer.write(struct.pack("!I", len(msg)) + msg)
        (n,) = struct.unpack("!I", await reader.readexactly(4))
        got_seqid, result = decode_reply(method, await reader.readexactly(n))
        assert got_seqid == seqid
        return result
    finally:
        writer.close()


async def http_post(port: int, path: str, body: dict) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        raw = await reader.read()
        head, _, payload = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)
    finally:
        writer.close()


async def wait_idle(handle: Any) -> None:
    """Until the pooled upstream connection is back in its pool."""
    upstreams = handle.proxy.upstreams if hasattr(handle, "proxy") else handle.gateway.proxy.upstreams
    await until(lambda: any(p.idle for p in upstreams.pools.values()), "an idle upstream connection")


def test_generation_reload_hands_over_pool_fds_and_counters(upstream: str) -> None:
    cfg = config("thrift", upstream)

    async def scenario() -> None:
        h1 = server.build("s", cfg, ENV, None)
        async with Served(h1) as s1:
            for i in range(5):
                assert await thrift_call(s1.port, "echo", i, text=str(i)) == str(i)
            before = await thrift_call(s1.port, "accepted")
        stats = h1.stats()
        assert set(stats) == CONTRACT_KEYS
        assert stats["requests"] == 6 and stats["responses_2xx"] == 6 and stats["connections_total"] == 6
        await wait_idle(h1)
        fds: list[int] = []
        state = pickle.loads(pickle.dumps(h1.export_state(fds)))  # it crosses a process boundary
        assert len(fds) == 1 and state["version"] == 1
        await h1.aclose()
        snap = Snapshot(state, fds)
        h2 = server.build("s", cfg, ENV, snap)
        snap.close_untaken()
        async with Served(h2) as s2:
            assert await thrift_call(s2.port, "accepted") == before  # the adopted connection
            assert await thrift_call(s2.port, "ping") == "pong"
        assert h2.stats()["requests"] == 8  # counters go on from the previous generation
        await h2.aclose()

    asyncio.run(scenario())


def test_in_place_reload_moves_idle_connections(upstream: str) -> None:
    cfg = config("thrift", upstream)

    async def scenario() -> None:
        h1 = server.build("s", cfg, ENV, None)
        async with Served(h1) as s1:
            before = await thrift_call(s1.port, "accepted")
        await wait_idle(h1)
        h2 = server.build("s", cfg, ENV, h1)
        async with Served(h2) as s2:
            assert await thrift_call(s2.port, "accepted") == before
        assert h2.stats()["requests"] == 2  # one counter series across versions
        await h1.aclose()
        await h2.aclose()

    asyncio.run(scenario())


def test_export_skips_busy_connections_and_drain_waits_for_replies(upstream: str) -> None:
    cfg = config("thrift", upstream)

    async def scenario() -> None:
        h = server.build("s", cfg, ENV, None)
        async with Served(h) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            msg = encode_call("slow", 7, seconds=0.3, tag="busy")
            writer.write(struct.pack("!I", len(msg)) + msg)
            await until(lambda: h.stats()["active_requests"], "the slow call in flight")
            assert h.stats()["active_requests"] == 1
            fds: list[int] = []
            h.export_state(fds)
            assert fds == []  # the only upstream connection is busy
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", s.port)
            await until(lambda: h.open_connections() == 2, "the idle client connection accepted")
            h.begin_drain()
            assert await idle_r.read() == b""  # the idle client connection is closed at once
            (n,) = struct.unpack("!I", await reader.readexactly(4))
            assert decode_reply("slow", await reader.readexactly(n)) == (7, "busy")
            assert await reader.read() == b""  # then the busy one, after its reply
            writer.close()
            idle_w.close()
            await until(lambda: h.open_connections() == 0, "every client connection closed")
        await h.aclose()

    asyncio.run(scenario())


def test_gateway_reload_hands_over_pool_and_counters(upstream: str) -> None:
    cfg = config("http_thrift", upstream)

    async def scenario() -> None:
        h1 = gateway.build("s", cfg, ENV, None)
        async with Served(h1) as s1:
            status, body = await http_post(s1.port, "/Echo/accepted", {})
            assert status == 200
            before = body["result"]
        assert set(h1.stats()) >= CONTRACT_KEYS and h1.stats()["responses_2xx"] == 1
        await wait_idle(h1)
        fds: list[int] = []
        state = pickle.loads(pickle.dumps(h1.export_state(fds)))
        assert len(fds) == 1
        await h1.aclose()
        snap = Snapshot(state, fds)
        h2 = gateway.build("s", cfg, ENV, snap)
        snap.close_untaken()
        async with Served(h2) as s2:
            assert await http_post(s2.port, "/Echo/accepted", {}) == (200, {"result": before})
        assert h2.stats()["responses_2xx"] == 2
        await h2.aclose()

    asyncio.run(scenario())
