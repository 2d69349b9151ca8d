"""Access log lines, and a service that fails never takes the worker down."""

from __future__ import annotations

import json

import pytest

from tests.http.conftest import Conn, run_worker
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
    lines = wait_for(lambda: [json.loads(l) for l in proxy.access_path.read_text().splitlines()
                              if "/logged" in l], what="an access log line")
    rec = lines[-1]
    assert rec["method"] == "POST" and rec["path"] == "/logged" and rec["query"] == "x=1"
    assert rec["status"] == 200 and rec["bytes_in"] == 5 and rec["bytes_out"] > 0
    assert rec["server"] == "px" and rec["worker"] == 0 and rec["request_id"]
    assert rec["client"].startswith("127.0.0.1:") and rec["duration_ms"] >= 0


def test_access_log_to_the_log_stream(proxy):
    with Conn(proxy.port("quiet")) as c:
        c.request("GET", "/")
    wait_for(lambda: '"access"' in proxy.log() and '"server": "quiet"' in proxy.log(),
             what="an access event in the worker log")


@pytest.mark.parametrize("path", ["/raise", "/none"])
def test_failing_service_is_500_and_worker_lives(proxy, path):
    with Conn(proxy.port()) as c:
        r = c.request("GET", path)
        assert r.status == 500 and r.header("connection") == "close"
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/fine").status == 200
    assert proxy.proc.poll() is None
