"""The legacy runtime on uvloop (what ``runtime_type = "legacy"`` or an io_uring fallback picks
when uvloop is installed): the HTTP and Thrift proxies serve through pooled upstream
connections on it.

uvloop's transports implement asyncio's Transport API without subclassing asyncio.Transport: an
``isinstance`` check in the Thrift pool's ``connection_made`` once failed every upstream
connection there, so every call timed out. The HTTP suite hides uvloop (tests/http/conftest.py)
to test asyncio's own loop, so this file is where uvloop is seen."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.thrift.thrift_support import backend, client, endpoint, free_port, listener, proxy

pytest.importorskip("uvloop")


def test_http_and_thrift_proxies_serve_on_uvloop(tmp_path: Path) -> None:
    origin, front, tp = free_port(), free_port(), free_port()
    with backend("framed", name="uv") as (addr, _):
        servers = (
            f'[servers.origin]\nproxy_type = "http"\nlistener = {listener(f"127.0.0.1:{origin}")}\n'
            '[[servers.origin.routes]]\npath = "/"\n'
            'upstreams = [{ endpoint = { type = "builtin", value = "hello" } }]\n\n'
            f'[servers.front]\nproxy_type = "http"\nlistener = {listener(f"127.0.0.1:{front}")}\n'
            '[[servers.front.routes]]\npath = "/"\n'
            f'upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{origin}" }} }}]\n\n'
            f'[servers.tp]\nproxy_type = "thrift"\nlistener = {listener(f"127.0.0.1:{tp}")}\n'
            f"timeout = {{ upstream_read_timeout_sec = 5 }}\n"
            f"route = {{ upstreams = [{{ endpoint = {endpoint(addr)} }}] }}\n"
        )
        with proxy(tmp_path, servers, runtime='runtime_type = "legacy"') as px:
            assert "uvloop" in px.log(), px.log()[-2000:]
            c = client(px.addr("tp"), timeout=5)
            try:
                for i in range(50):
                    assert c.echo(str(i)) == str(i)
            finally:
                c.close()
            conn = http.client.HTTPConnection("127.0.0.1", front, timeout=5)
            try:
                for _ in range(20):  # keep-alive both sides: one pooled upstream connection
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    body = resp.read()
                    assert resp.status == 200 and body, (resp.status, body)
            finally:
                conn.close()
