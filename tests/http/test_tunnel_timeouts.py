"""Upgrade (WebSocket-style) tunnelled as a byte pipe; client-side timeouts; drain behaviour."""

from __future__ import annotations

import socket
import time

from tests.http.conftest import (
    Conn,
    proxy_fixture,
    upstream_fixture,
)

upstream = upstream_fixture("ws")


proxy = proxy_fixture(
    lambda upstream: (
        f"""[servers.px.timeout]
server_keepalive_timeout_sec = 0.6
server_read_header_timeout_sec = 0.6
server_read_body_timeout_sec = 0.6
[[servers.px.routes]]
path_prefix = "/up"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{upstream.url}" }} }}]
[[servers.px.routes]]
path = "/"
upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
"""
    )
)


UPGRADE = (
    b"GET /up/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_websocket_upgrade_is_tunnelled(proxy):
    with Conn(proxy.port()) as c:
        c.send(UPGRADE)
        status, _r, _v, headers = c.read_head()
        assert status == 101
        h = dict(headers)
        assert h["upgrade"] == "websocket" and h["connection"].lower() == "upgrade"
        # arbitrary bytes (a masked frame, then raw binary) come back unchanged
        for payload in (b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", bytes(range(256)) * 300):
            c.send(payload)
            got = c.buf
            c.buf = b""
            while len(got) < len(payload):
                got += c.sock.recv(1 << 20)
            assert got == payload
        # the tunnel is not subject to the keep-alive timeout
        time.sleep(1.0)
        c.send(b"still here")
        got = b""
        while len(got) < 10:
            got += c.sock.recv(100)
        assert got == b"still here"
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_peer()


def test_upgrade_bytes_sent_with_the_request_reach_upstream(proxy):
    with Conn(proxy.port()) as c:
        c.send(UPGRADE + b"early-bytes")
        status, *_ = c.read_head()
        assert status == 101
        got = c.buf
        while len(got) < len(b"early-bytes"):
            got += c.sock.recv(100)
        assert got == b"early-bytes"


def test_upgrade_refused_by_a_builtin_closes(proxy):
    with Conn(proxy.port()) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.header("connection") == "close"
        assert c.closed_by_peer()


def test_header_timeout_is_408(proxy):
    with Conn(proxy.port()) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        t0 = time.monotonic()
        r = c.read_response()
        assert r.status == 408
        assert time.monotonic() - t0 < 3
        assert c.closed_by_peer()


def test_idle_keepalive_connection_is_closed(proxy):
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/").status == 200
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert c.buf == b""  # closed silently
        assert 0.4 < time.monotonic() - t0 < 3


def test_keepalive_timeout_runs_after_an_answer_given_at_once(proxy):
    """A 404 is answered inside the parser's callback, before the parser has finished the
    message: the connection must still go idle and be closed by the keep-alive timeout."""
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/nowhere").status == 404
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert 0.4 < time.monotonic() - t0 < 3


def test_stalled_body_is_408(proxy):
    with Conn(proxy.port()) as c:
        c.send(b"POST /up/sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-a-part")
        r = c.read_response()
        assert r.status == 408
        assert c.closed_by_peer()


def test_silent_new_connection_is_closed(proxy):
    with Conn(proxy.port()) as c:
        assert c.closed_by_peer(timeout=5)
