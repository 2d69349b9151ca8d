"""Upstream failures and choices: 502/503/504, retry, ejection, balancers, unix sockets, headers."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest

from tests.http.conftest import PARSERS, Conn, run_worker
from tests.http.upstream import UpstreamServer
from tests.support import free_port


def _route(path: str, urls: list[str], extra: str = "", lb: str = "random") -> str:
    ups = ", ".join(
        f'{{ endpoint = {{ type = "{"unix" if u.startswith("/") else "uri"}", value = "{u}" }}, weight = {w} }}'
        for u, w in ((u.split("#")[0], int(u.split("#")[1]) if "#" in u else 1) for u in urls))
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
    time.sleep(0.2)
    yield s.getsockname()[1]
    for c in fillers:
        c.close()
    s.close()


@pytest.fixture(scope="module", params=PARSERS)
def proxy(request, ups, blackhole, tmp_path_factory):
    a, b, u = ups
    dead = f"http://127.0.0.1:{free_port()}"
    config = f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
http_parser = "{request.param}"
via = true
[servers.px.timeout]
upstream_connect_timeout_sec = 0.5
upstream_read_timeout_sec = 1
""" + _route("/a", [a.url]) + _route("/rr", [a.url, b.url], lb="round_robin") \
        + _route("/first", [dead, a.url], lb="first") \
        + _route("/weighted", [a.url + "#1", b.url + "#9"], lb="weighted_random") \
        + _route("/least", [a.url, b.url], lb="least_conn") \
        + _route("/dead", [dead]) \
        + _route("/eject", [dead, f"http://127.0.0.1:{free_port()}"], "eject_after_failures = 1\neject_duration_sec = 30") \
        + _route("/hole", [f"http://127.0.0.1:{blackhole}"]) \
        + _route("/unix", [u.unix_path]) \
        + f"""
[[servers.px.routes]]
path_prefix = "/host"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{a.url}" }} }}]
"""
    with run_worker(tmp_path_factory.mktemp("w"), config) as w:
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
    a, _, _ = ups
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
        time.sleep(0.2)
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
        r = c.request("GET", "/host/info", {
            "Connection": "keep-alive, X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5",
            "TE": "trailers", "Proxy-Connection": "keep-alive", "X-Forwarded-For": "10.0.0.1",
            "Via": "1.0 edge", "X-Keep": "yes"}, host="client.example:8443")
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
    assert h["via"] == "1.0 edge, 1.1 monolake"
    assert r.header("via") == "1.1 monolake"


def test_stale_pooled_connection_is_retried(proxy, ups):
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/a/silentclose").status == 200
        # the upstream closed that connection; the next request must not fail
        for i in range(3):
            r = c.request("GET", f"/a/next{i}")
            assert r.status == 200, r
