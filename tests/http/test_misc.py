"""Access log lines, and a service that fails never takes the worker down."""

from __future__ import annotations

import json

import pytest

from tests.http.conftest import ENGINES, Conn, run_worker
from tests.support import free_port, wait_for


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    log = d / "access.log"
    config = f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
access_log = "{log}"
[[servers.px.layers]]
factory = "tests.http.faulty_layer:FaultyFactory"
[[servers.px.routes]]
path_prefix = "/"
upstreams = [{{ endpoint = {{ type = "builtin", value = "echo" }} }}]

[servers.quiet]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
access_log = true
[[servers.quiet.routes]]
path = "/"
upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
"""
    with run_worker(d, config) as w:
        w.access_path = log
        yield w


def test_access_log_file_lines(proxy):
    with Conn(proxy.port()) as c:
        c.request("POST", "/logged?x=1", body=b"12345")
    lines = wait_for(
        lambda: [json.loads(ln) for ln in proxy.access_path.read_text().splitlines() if "/logged" in ln],
        what="an access log line",
    )
    rec = lines[-1]
    assert rec["method"] == "POST" and rec["path"] == "/logged" and rec["query"] == "x=1"
    assert rec["status"] == 200 and rec["bytes_in"] == 5 and rec["bytes_out"] > 0
    assert rec["server"] == "px" and rec["worker"] == 0 and rec["request_id"]
    assert rec["client"].startswith("127.0.0.1:") and rec["duration_ms"] >= 0


def test_access_log_to_the_log_stream(proxy):
    with Conn(proxy.port("quiet")) as c:
        c.request("GET", "/")
    wait_for(
        lambda: '"access"' in proxy.log() and '"server": "quiet"' in proxy.log(),
        what="an access event in the worker log",
    )


@pytest.mark.parametrize("path", ["/raise", "/none"])
def test_failing_service_is_500_and_worker_lives(proxy, path):
    with Conn(proxy.port()) as c:
        r = c.request("GET", path)
        assert r.status == 500 and r.header("connection") == "close"
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/fine").status == 200
    assert proxy.proc.poll() is None


@pytest.fixture(scope="module", params=ENGINES)
def routed(request, tmp_path_factory):
    from tests.http.upstream import UpstreamServer

    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        config = f"""
[servers.r]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
preserve_host = true
[servers.r.timeout]
server_keepalive_timeout_sec = 30
[[servers.r.routes]]
path_prefix = "/"
host = "b.example"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{b.url}" }} }}]
[[servers.r.routes]]
path_prefix = "/"
preserve_path = true
max_idle_per_upstream = 1
idle_timeout_sec = 0.5
upstreams = [{{ endpoint = {{ type = "uri", value = "{a.url}" }} }}]
"""
        with run_worker(tmp_path_factory.mktemp("w"), config, request.param) as w:
            yield w, a, b


def test_host_routing_and_preserve_host(routed):
    w, _, _ = routed
    with Conn(w.port("r")) as c:
        rb = c.request("GET", "/info", host="B.Example:8080")
        ra = c.request("GET", "/info", host="other.example")
    assert rb.header("x-upstream") == "b" and ra.header("x-upstream") == "a"
    assert dict(map(tuple, rb.json()["headers"]))["host"] == "B.Example:8080"


def test_pool_keeps_at_most_max_idle_and_expires_them(routed):
    import time as _t

    w, a, _b = routed
    conns = [Conn(w.port("r")) for _ in range(3)]
    try:
        for c in conns:  # three concurrent requests: three upstream connections
            c.send(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in conns:
            assert c.read_response().status == 200
        before = a.connections
        # only one was kept idle: two sequential requests reuse it, a third concurrent one
        # needs a new connection
        for c in conns[:2]:
            c.send(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in conns[:2]:
            assert c.read_response().status == 200
        assert a.connections == before + 1
        _t.sleep(1.5)  # idle_timeout_sec = 0.5: the idle ones are closed
        before = a.connections
        assert conns[0].request("GET", "/x", host="x").status == 200
        assert a.connections == before + 1
    finally:
        for c in conns:
            c.close()
