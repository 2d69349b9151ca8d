"""Upstream failures and choices: 502/503/504, retry, ejection, balancers, unix sockets, headers."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections import Counter

import pytest

from monolake.conf import parse_config
from monolake.worker.env import WorkerEnv
from monolake.worker.http.client import UpstreamError, UpstreamTimeout
from monolake.worker.http.pool import ConnectHold
from monolake.worker.http.proxy import RouterService
from monolake.worker.http.server import build
from tests.http.conftest import NATIVE, PARSER_VARIANT_IDS, PARSER_VARIANTS, Conn, run_worker, variant
from tests.http.upstream import UpstreamServer
from tests.support import free_port, until, wait_for


def _route(path: str, urls: list[str], extra: str = "", lb: str = "random") -> str:
    ups = ", ".join(
        f'{{ endpoint = {{ type = "{"unix" if u.startswith("/") else "uri"}", value = "{u}" }}, weight = {w} }}'
        for u, w in ((u.split("#")[0], int(u.split("#")[1]) if "#" in u else 1) for u in urls)
    )
    return f"""
[[servers.px.routes]]
path_prefix = "{path}"
preserve_path = true
load_balancer = "{lb}"
upstreams = [{ups}]
{extra}
"""


@pytest.fixture(scope="module")
def ups(tmp_path_factory):
    sock_path = str(tmp_path_factory.mktemp("unix") / "up.sock")
    with UpstreamServer("a") as a, UpstreamServer("b") as b, UpstreamServer("u", unix_path=sock_path) as u:
        yield a, b, u


@pytest.fixture(scope="module")
def blackhole():
    """A listening socket whose accept queue is full: connects to it hang (connect timeout)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(s.getsockname())
        except BlockingIOError:
            pass
        fillers.append(c)

    def queue_full() -> bool:
        """A filler's handshake completed: it sits in the accept queue (one slot at backlog 0),
        so later connects get no answer."""
        _, writable, _ = select.select([], fillers, [], 0)
        return any(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for c in writable)

    wait_for(queue_full, 5, interval=0.005, what="the blackhole's accept queue full")
    yield s.getsockname()[1]
    for c in fillers:
        c.close()
    s.close()


@pytest.fixture(scope="module", params=PARSER_VARIANTS, ids=PARSER_VARIANT_IDS)
def proxy(request, ups, blackhole, tmp_path_factory):
    """One worker for the module; on the native engine without ``via`` (a server with Via is
    the Python engine's as a whole), so test_forwarding_headers checks Via passed through."""
    parser, loop = variant(request.param)
    a, b, u = ups
    dead = f"http://127.0.0.1:{free_port()}"
    config = (
        f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
http_parser = "{parser}"
via = {"false" if loop == NATIVE else "true"}
[servers.px.timeout]
upstream_connect_timeout_sec = 0.5
upstream_read_timeout_sec = 1
"""
        + _route("/a", [a.url])
        + _route("/rr", [a.url, b.url], lb="round_robin")
        + _route("/first", [dead, a.url], lb="first")
        + _route("/weighted", [a.url + "#1", b.url + "#9"], lb="weighted_random")
        + _route("/least", [a.url, b.url], lb="least_conn")
        + _route("/dead", [dead])
        + _route(
            "/eject",
            [dead, f"http://127.0.0.1:{free_port()}"],
            "eject_after_failures = 1\neject_duration_sec = 30",
        )
        + _route("/hole", [f"http://127.0.0.1:{blackhole}"])
        + _route("/unix", [u.unix_path])
        + f"""
[[servers.px.routes]]
path_prefix = "/host"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{a.url}" }} }}]
"""
    )
    with run_worker(tmp_path_factory.mktemp("w"), config, loop) as w:
        yield w


def test_refused_upstream_is_502(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/dead/x")
        assert r.status == 502 and r.header("content-type").startswith("text/plain")
        assert c.request("GET", "/a/after").status == 200  # the client connection survives


def test_reset_upstream_is_502(proxy):
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/a/reset").status == 502


def test_garbage_upstream_is_502(proxy):
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/a/garbage").status == 502


def test_slow_upstream_is_504(proxy):
    t0 = time.monotonic()
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/a/slow?delay=5")
    assert r.status == 504
    assert time.monotonic() - t0 < 4


def test_connect_timeout_is_504(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/hole/x")
    assert r.status == 504


def test_idempotent_request_retried_on_another_upstream(proxy, ups):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/first/retry")
        assert r.status == 200 and r.body == b"a /first/retry"


def test_non_idempotent_request_not_retried(proxy):
    with Conn(proxy.port()) as c:
        # the ejection from the GET above may make the dead one skipped; use a fresh path
        r = c.request("POST", "/first/post", body=b"x")
        assert r.status in (200, 502)
        if r.status == 200:  # the dead upstream was already ejected: nothing to retry
            assert r.body == b"a /first/post"


def test_all_ejected_is_503(proxy):
    with Conn(proxy.port()) as c:
        first = c.request("GET", "/eject/1")
        assert first.status == 502
        statuses = [c.request("GET", f"/eject/{i}").status for i in range(3)]
    assert statuses[-1] == 503


def test_round_robin_alternates(proxy):
    with Conn(proxy.port()) as c:
        names = [c.request("GET", f"/rr/{i}").header("x-upstream") for i in range(6)]
    assert names in (["a", "b"] * 3, ["b", "a"] * 3)


def test_weighted_random_follows_weights(proxy):
    with Conn(proxy.port()) as c:
        counts = Counter(c.request("GET", f"/weighted/{i}").header("x-upstream") for i in range(200))
    assert counts["b"] > counts["a"] * 3


def test_least_conn_spreads_concurrent_requests(proxy):
    conns = [Conn(proxy.port()) for _ in range(2)]
    try:
        for c in conns:
            c.send(b"GET /least/slow?delay=0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        names = {c.read_response().header("x-upstream") for c in conns}
    finally:
        for c in conns:
            c.close()
    assert names == {"a", "b"}


def test_unix_upstream(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/unix/path?q=1")
    assert r.status == 200 and r.body == b"u /unix/path?q=1"


def test_forwarding_headers(proxy):
    with Conn(proxy.port()) as c:
        r = c.request(
            "GET",
            "/host/info",
            {
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "1",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Connection": "keep-alive",
                "X-Forwarded-For": "10.0.0.1",
                "Via": "1.0 edge",
                "X-Keep": "yes",
            },
            host="client.example:8443",
        )
    doc = r.json()
    h = dict(doc["headers"])
    for gone in ("x-secret", "keep-alive", "te", "proxy-connection", "connection"):
        assert gone not in h, gone
    assert h["x-keep"] == "yes"
    assert h["host"].startswith("127.0.0.1:")
    assert h["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "client.example:8443"
    assert h["forwarded"] == 'for=127.0.0.1;proto=http;host="client.example:8443"'
    if proxy.engine == "native":  # via = false
        assert h["via"] == "1.0 edge" and r.header("via") is None
    else:
        assert h["via"] == "1.0 edge, 1.1 monolake"
        assert r.header("via") == "1.1 monolake"


def test_stale_pooled_connection_is_retried(proxy, ups):
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/a/silentclose").status == 200
        # the upstream closed that connection; the next request must not fail
        for i in range(3):
            r = c.request("GET", f"/a/next{i}")
            assert r.status == 200, r


# -- least_conn counts, in-process: ``Upstream.active`` through every way a request can go --


def _least_conn_handle(urls: list[str], connect_timeout: float = 5.0):
    ups = ", ".join(f'{{ endpoint = {{ type = "uri", value = "{u}" }} }}' for u in urls)
    cfg = parse_config(f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:1" }}
[servers.px.timeout]
upstream_connect_timeout_sec = {connect_timeout}
[[servers.px.routes]]
path_prefix = "/"
preserve_path = true
load_balancer = "least_conn"
upstreams = [{ups}]
""").servers["px"]
    handle = build(
        "px", cfg, WorkerEnv(slot=0, cpu=None, generation=1, pid=os.getpid(), runtime="asyncio"), None
    )
    router = handle.stack.services["router"]
    assert isinstance(router, RouterService)
    return handle, router.routes[0].balancer.upstreams


def test_least_conn_counts_connects_in_flight_and_every_outcome(ups, blackhole):
    a = ups[0]

    async def scenario() -> None:
        handle, (up,) = _least_conn_handle([a.url])
        pool = handle.pool
        # success: counted while connecting, handed over to the exchange, zero after it
        task = asyncio.ensure_future(pool.acquire(up))
        await asyncio.sleep(0)  # the task runs up to its first wait: the connect
        assert up.active == 1, "a connect in flight counts"
        conn = await task
        assert up.active == 0
        fut = conn.request("GET", b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: t\r\n\r\n", None, False, False, 5.0)
        assert up.active == 1
        resp = await fut
        assert resp.status == 200
        await until(lambda: up.active == 0, "exchange over")
        # refused, timed out, cancelled mid-connect: back to zero, never below
        for url, timeout, outcome in (
            (f"http://127.0.0.1:{free_port()}", 5.0, UpstreamError),
            (f"http://127.0.0.1:{blackhole}", 0.2, UpstreamTimeout),
            (f"http://127.0.0.1:{blackhole}", 30.0, asyncio.CancelledError),
        ):
            h, (u,) = _least_conn_handle([url], connect_timeout=timeout)
            task = asyncio.ensure_future(h.pool.acquire(u))
            await asyncio.sleep(0)
            assert u.active == 1, "a connect in flight counts"
            if outcome is asyncio.CancelledError:
                task.cancel()
            with pytest.raises(outcome):
                await task
            assert u.active == 0, outcome
            await h.aclose()
        # a request whose task is cancelled before it ever runs gives its count back
        hold = ConnectHold(up)
        never = asyncio.ensure_future(pool.acquire(up, hold))
        never.add_done_callback(hold.release)
        never.cancel()
        with pytest.raises(asyncio.CancelledError):
            await never
        assert up.active == 0
        await handle.aclose()

    asyncio.run(scenario())


def test_least_conn_spreads_requests_parsed_in_one_loop_turn(ups, monkeypatch):
    """Two requests read in the same loop turn, neither with a pooled connection: the first
    one's connect already counts when the second is balanced."""
    import monolake.worker.http.upstream as upstream_module

    a, b, _ = ups
    # ties go to the first upstream, so only the count can send the second request elsewhere
    monkeypatch.setattr(upstream_module.random, "choice", lambda seq: seq[0])

    async def scenario() -> set[str]:
        handle, upstreams = _least_conn_handle([a.url, b.url])
        server = await asyncio.get_running_loop().create_server(handle.protocol_factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await until(lambda: handle.open_connections() == 2, "both accepted")
        for _, w in clients:  # one turn: both arrive before the proxy runs again
            w.write(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: sum(u.active for u in upstreams) == 2, "both in flight")
        assert [u.active for u in upstreams] == [1, 1]
        names: set[str] = set()
        for r, w in clients:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            names.update(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-upstream:")
            )
            w.close()
        await until(lambda: sum(u.active for u in upstreams) == 0, "all done")
        server.close()
        await handle.aclose()
        return names

    assert asyncio.run(scenario()) == {"a", "b"}
