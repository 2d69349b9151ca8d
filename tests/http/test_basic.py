"""The first path through the server: builtins, keep-alive, pipelining, routing, pooled proxying."""

from __future__ import annotations

from tests.http.conftest import (
    Conn,
    proxy_fixture,
    upstream_fixture,
)
from tests.http.upstream import pattern

upstream = upstream_fixture("up1")


proxy = proxy_fixture(
    lambda upstream: (
        f"""
[[servers.px.routes]]
path = "/"
upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]

[[servers.px.routes]]
path = "/echo/{{*rest}}"
upstreams = [{{ endpoint = {{ type = "builtin", value = "echo" }} }}]

[[servers.px.routes]]
path_prefix = "/up"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{upstream.url}" }} }}]

[[servers.px.routes]]
path = "/fixed"
upstreams = [{{ endpoint = {{ type = "uri", value = "{upstream.url}/target/path?a=1" }} }}]
"""
    )
)


def test_hello_names_monolake_slot_and_pid(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/")
    assert r.status == 200
    assert b"monolake" in r.body
    assert f"pid={proxy.proc.pid}".encode() in r.body
    assert b"worker=0" in r.body
    assert proxy.runtime in ("asyncio", "io_uring")


def test_echo_returns_method_path_headers_body(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("PUT", "/echo/a/b?x=1", {"X-Test": "yes"}, body=b"payload")
    doc = r.json()
    assert r.status == 200
    assert doc["method"] == "PUT" and doc["path"] == "/echo/a/b" and doc["query"] == "x=1"
    assert ["x-test", "yes"] in doc["headers"]
    assert doc["body"] == "payload"


def test_keepalive_and_pipelining_answer_in_order(proxy):
    with Conn(proxy.port()) as c:
        c.send(
            b"GET /echo/1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /echo/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /up/3 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /echo/4 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first = c.read_response()
        second = c.read_response()
        third = c.read_response()
        fourth = c.read_response()
        assert first.json()["path"] == "/echo/1"
        assert second.json()["body"] == "abc"
        assert third.body.endswith(b"/up/3")
        assert fourth.json()["path"] == "/echo/4"
        # still open
        assert c.request("GET", "/").status == 200


def test_bodies_that_arrive_with_their_head_go_through_intact(proxy):
    """Whole responses read with their head (on io_uring + native: written from the receive
    buffer without a copy) arrive byte for byte, pipelined, while this client reads slowly
    enough that most of each response waits in the proxy's send queue."""
    sizes = [1, 1000, 4096, 40_000, 65_000, 65_536, 3, 60_000]
    with Conn(proxy.port(), rcvbuf=4096) as c:  # a window of a few KiB: most of it waits
        c.send(b"".join(b"GET /up/bytes?n=%d&onewrite=1 HTTP/1.1\r\nHost: a\r\n\r\n" % n for n in sizes))
        for n in sizes:
            r = c.read_response()
            assert r.status == 200 and r.body == pattern(n), n
        assert c.request("GET", "/").status == 200


def test_no_route_is_404(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/nothing/here")
        assert r.status == 404
        assert r.header("content-type").startswith("text/plain")
        assert c.request("GET", "/").status == 200  # the connection survives a 404


def test_proxy_reuses_upstream_connections(proxy, upstream):
    before = upstream.connections
    with Conn(proxy.port()) as c:
        for i in range(20):
            r = c.request("GET", f"/up/n{i}")
            assert r.status == 200 and r.body == f"up1 /up/n{i}".encode()
    assert upstream.connections - before <= 1


def test_monolake_rewrite_replaces_path_and_keeps_query(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("GET", "/fixed?b=2")
    assert r.body == b"up1 /target/path?a=1&b=2"


def test_http10_without_keepalive_closes(proxy):
    with Conn(proxy.port()) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.header("connection") == "close"
        assert c.closed_by_peer()


def test_http10_keepalive(proxy):
    with Conn(proxy.port()) as c:
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.header("connection") == "keep-alive"
        c.send(b"GET /echo/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.read_response().json()["path"] == "/echo/x"


def test_head_has_length_but_no_body(proxy):
    with Conn(proxy.port()) as c:
        r = c.request("HEAD", "/")
        assert r.status == 200 and int(r.header("content-length")) > 0 and r.body == b""
        r = c.request("HEAD", "/up/bytes?n=5000")
        assert r.status == 200 and r.header("content-length") == "5000"
        # the connection is in sync afterwards
        assert c.request("GET", "/up/after").body == b"up1 /up/after"
