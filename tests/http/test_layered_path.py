"""A route behind a config layer takes the same request path as one without: the router's
``serve`` answers a ``CallReply`` instead of the connection's ``Exchange`` (exchange.py).
Pooled keep-alive connections, request and response bodies, an upgrade, a retry after a
stale pooled connection and a client that gives up, all through a layer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct

import pytest

from monolake.conf import parse_config
from monolake.worker.env import WorkerEnv
from monolake.worker.http.proxy import RouterService
from monolake.worker.http.server import build
from tests.http.conftest import LOOPS, Conn, proxy_config, run_worker
from tests.http.upstream import UpstreamServer, pattern
from tests.support import until


@pytest.fixture(scope="module", params=LOOPS)
def layered(request, tmp_path_factory):
    with UpstreamServer("a") as up:
        config = proxy_config(f"""
[servers.px.timeout]
server_keepalive_timeout_sec = 30
[[servers.px.layers]]
factory = "monolake.worker.http.layers:header_rewrite"
options = {{ set_request = {{ "x-layered" = "in" }}, set_response = {{ "x-layer" = "out" }} }}
[[servers.px.routes]]
path_prefix = "/"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
""")
        with run_worker(tmp_path_factory.mktemp("w"), config, loop=request.param) as w:
            yield w, up


def test_keep_alive_reuses_the_pooled_connection_through_the_layer(layered):
    w, up = layered
    start = len(up.served)
    with Conn(w.port()) as c:
        for i in range(5):
            r = c.request("GET", f"/info?i={i}")
            assert r.status == 200 and r.header("x-layer") == "out"
            assert dict(r.json()["headers"]).get("x-layered") == "in"
    conns = [cid for cid, target in up.served[start:]]
    assert len(conns) == 5 and len(set(conns[1:])) == 1  # served by one pooled connection
    assert w.proc.poll() is None


def test_bodies_both_ways_through_the_layer(layered):
    w, _ = layered
    body = pattern(3 << 20)
    with Conn(w.port(), timeout=30) as c:
        r = c.request("POST", "/sink", body=body)
        assert r.status == 200 and r.json()["length"] == len(body)
        assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
        for q in ("n=2000000&chunked=1", "n=2000000", "n=100&onewrite=1"):
            r = c.request("GET", f"/bytes?{q}")
            n = int(q.split("&")[0][2:])
            assert r.status == 200 and r.body == pattern(n) and r.header("x-layer") == "out"


def test_upgrade_through_the_layer(layered):
    w, _ = layered
    with Conn(w.port()) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        status, _, _, headers = c.read_head()
        assert status == 101 and ("x-layer", "out") in headers
        c.send(b"ping through the layer")
        got = c.buf
        while len(got) < len(b"ping through the layer"):
            got += c.sock.recv(65536)
        assert got == b"ping through the layer"


def test_a_stale_pooled_connection_is_retried_through_the_layer(layered):
    w, _ = layered
    with Conn(w.port()) as c:
        assert c.request("GET", "/silentclose").status == 200
        # the upstream closed that pooled connection; the next requests must not fail
        for i in range(3):
            r = c.request("GET", f"/info?next={i}")
            assert r.status == 200 and r.header("x-layer") == "out", r


def test_a_client_that_gives_up_frees_the_upstream_connection_at_once():
    """The layer's coroutine is cancelled while the response head is due: the upstream
    connection is closed then (not when the answer comes, seconds later) and never pooled."""
    with UpstreamServer("a") as a:
        cfg = parse_config(f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:1" }}
[[servers.px.layers]]
factory = "monolake.worker.http.layers:header_rewrite"
options = {{ set_response = {{ "x-layer" = "out" }} }}
[[servers.px.routes]]
path_prefix = "/"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{a.url}" }} }}]
""").servers["px"]

        async def scenario() -> None:
            handle = build(
                "px", cfg, WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="asyncio"), None
            )
            router = handle.stack.services["router"]
            assert isinstance(router, RouterService)
            (up,) = router.routes[0].balancer.upstreams
            server = await asyncio.get_running_loop().create_server(handle.protocol_factory, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")  # one pooled connection
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"x-layer: out" in head
            await until(lambda: handle.pool.idle_count() == 1, "the connection pooled")
            w.write(b"GET /slow?delay=5 HTTP/1.1\r\nHost: t\r\n\r\n")
            await until(lambda: up.active == 1, "the slow request upstream")
            assert handle.pool.idle_count() == 0  # it took the pooled connection
            # a reset, not a FIN (after a FIN the request in flight is still answered)
            w.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            w.transport.abort()
            await until(lambda: up.active == 0, "the upstream connection let go", timeout=2.0)
            assert handle.pool.idle_count() == 0 and not handle.pool.busy
            server.close()
            await handle.aclose()

        asyncio.run(scenario())
