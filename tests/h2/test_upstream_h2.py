"""Upstream HTTP/2: HTTP/1.1 clients through a real worker to a real h2c upstream (the ``h2``
library peer in upstream_peer.py), over loopback. The peer's stats file says what it saw:
connections, streams, concurrency, bytes it got out."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import struct
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import base_config
from tests.http.conftest import Conn, run_worker
from tests.support import PYTHON, free_port, kill_pids, listening_on, wait_for


@dataclass
class Peer:
    port: int
    stats_path: Path
    proc: subprocess.Popen

    def stats(self) -> dict:
        return json.loads(self.stats_path.read_text())


def start_peer(tmp: Path, *args: str) -> Peer:
    port = free_port()
    stats = tmp / f"peer-{port}.json"
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.h2.upstream_peer", "--port", str(port), "--stats", str(stats), *args]
    )
    try:
        wait_for(lambda: listening_on(port) or proc.poll() is not None, timeout=15, what="h2 peer listening")
    except AssertionError:
        kill_pids([proc.pid])
        raise
    assert proc.poll() is None, f"h2 peer exited with {proc.returncode}"
    return Peer(port, stats, proc)


def proxy_config(
    peer_port: int,
    server_version: str = "http11",
    route_version: str | None = "http2",
    scheme: str = "http",
    route_extra: str = "",
    server_extra: str = "",
) -> str:
    route = f'upstream_http_version = "{route_version}"' if route_version else ""
    route += "\n" + route_extra
    return textwrap.dedent(f"""
        [servers.px]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
        upstream_http_version = "{server_version}"
        {server_extra}

        [[servers.px.routes]]
        path_prefix = "/"
        preserve_path = true
        {route}
        upstreams = [{{ endpoint = {{ type = "uri", value = "{scheme}://127.0.0.1:{peer_port}" }} }}]
    """)


def daemon_config(tmp: Path, port: int, up_port: int, version: str | None = "http2", extra: str = "") -> str:
    """A ``monolaked`` config: server ``web`` on ``port``, one worker, every path (kept) to
    ``http://127.0.0.1:up_port`` (h2c with ``version = "http2"``; None: the server's HTTP/1.1)."""
    line = f'upstream_http_version = "{version}"' if version else ""
    routes = textwrap.dedent(f"""
        [[servers.web.routes]]
        path_prefix = "/"
        preserve_path = true
        {line}
        upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{up_port}" }} }}]
    """)
    return base_config(tmp, port, runtime="workers = 1", routes=routes) + extra


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), *args], capture_output=True, timeout=timeout + 5
    )


@pytest.fixture
def peer_factory(tmp_path: Path) -> Iterator:
    peers: list[Peer] = []

    def make(*args: str) -> Peer:
        p = start_peer(tmp_path, *args)
        peers.append(p)
        return p

    yield make
    kill_pids([p.proc.pid for p in peers])


def get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 20
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def parallel(port: int, paths: list[str]) -> list[tuple[int, bytes, dict[str, str]]]:
    out: list = [None] * len(paths)

    def one(i: int) -> None:
        out[i] = get(port, paths[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(o is not None for o in out), out
    return out


def read_chunked(c: Conn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A chunked body and its trailer fields, read by hand (http.client drops trailers)."""
    body = bytearray()
    while True:
        size = int(c._line().split(b";")[0], 16)
        if size == 0:
            break
        while len(c.buf) < size + 2:
            assert c._fill(), "closed mid-chunk"
        body += c.buf[:size]
        c.buf = c.buf[size + 2 :]
    trailers: list[tuple[bytes, bytes]] = []
    while True:
        line = c._line()
        if not line:
            return bytes(body), trailers
        k, _, v = line.partition(b":")
        trailers.append((k.strip().lower(), v.strip()))


def test_concurrent_requests_share_one_connection(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        replies = parallel(w.port(), [f"/delay/{400 + i}" for i in range(8)])
        assert [r[0] for r in replies] == [200] * 8, replies
        assert {r[2]["x-conn"] for r in replies} == {"1"}
        st = peer.stats()
        assert st["connections"] == 1 and st["streams"] == 8, st
        assert st["max_open"] >= 4, st  # multiplexed, not one after another
        # the request head was translated: pseudo-headers, no connection-specific fields
        status, body, _ = get(
            w.port(),
            "/x?q=1",
            headers={
                "Connection": "keep-alive, x-hop",
                "Keep-Alive": "timeout=5",
                "X-Hop": "1",
                "Proxy-Connection": "keep-alive",
                "TE": "gzip",
                "X-Kept": "yes",
            },
        )
        assert status == 200
        seen = json.loads(body)
        assert seen[":method"] == "GET" and seen[":path"] == "/x?q=1"
        assert seen[":scheme"] == "http" and seen[":authority"] == f"127.0.0.1:{peer.port}"
        assert seen["x-kept"] == "yes" and "x-forwarded-for" in seen
        for gone in ("connection", "keep-alive", "proxy-connection", "x-hop", "te", "host"):
            assert gone not in seen, (gone, seen)
        conn = http.client.HTTPConnection("127.0.0.1", w.port(), timeout=10)
        try:  # HEAD: the upstream's Content-Length is announced, no body follows
            conn.request("HEAD", "/head")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("content-length") == "1234"
            assert resp.read() == b""
            conn.request("GET", "/after-head")  # the same client connection goes on
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        assert peer.stats()["connections"] == 1


def test_max_concurrent_streams_opens_another_connection(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory("--max-streams", "1")
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        replies = parallel(w.port(), ["/delay/500"] * 3)
        assert [r[0] for r in replies] == [200] * 3, replies
        st = peer.stats()
        assert st["max_open"] == 1, st  # the peer's limit was honoured
        assert st["connections"] >= 2 and st["streams"] == 3, st


def test_goaway_retries_unprocessed_stream_on_new_connection(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        slow: list = []
        t = threading.Thread(target=lambda: slow.append(get(w.port(), "/delay/800")))
        t.start()
        wait_for(lambda: peer.stats()["streams"] >= 1, timeout=10, what="first stream open")
        status, body, headers = get(w.port(), "/goaway")
        t.join(20)
        assert status == 200, body  # retried: the peer did not process it on connection 1
        assert headers["x-conn"] == "2"
        assert slow and slow[0][0] == 200 and slow[0][2]["x-conn"] == "1"  # it finished
        st = peer.stats()
        assert st["goaways"] == 1 and st["connections"] == 2, st


def test_upstream_reset_is_502_and_connection_survives(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        status, body, _ = get(w.port(), "/rst")
        assert status == 502 and b"reset" in body, body
        status, _, headers = get(w.port(), "/after")
        assert status == 200 and headers["x-conn"] == "1"
        assert peer.stats()["connections"] == 1


def test_upstream_loss_fails_its_streams_only(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        assert get(w.port(), "/warm")[0] == 200
        got: list = []
        t = threading.Thread(target=lambda: got.append(get(w.port(), "/delay/5000")))
        t.start()
        wait_for(lambda: peer.stats()["streams"] >= 2, timeout=10, what="stream open")
        kill_pids([peer.proc.pid])
        t.join(20)
        assert got and got[0][0] == 502, got
        assert w.proc.poll() is None  # the worker lives on


@pytest.mark.parametrize("chunked", [False, True])
def test_large_bodies_both_ways_with_small_windows(tmp_path: Path, peer_factory, chunked: bool) -> None:
    peer = peer_factory("--window", "16384")  # the upstream opens its window 16 KiB at a time
    data = os.urandom(3 * 1024 * 1024 + 7)
    with run_worker(tmp_path, proxy_config(peer.port)) as w, Conn(w.port(), timeout=30) as c:
        if chunked:
            c.send(
                b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            status, *_ = c.read_head()
            assert status == 100
            for i in range(0, len(data), 100_000):
                part = data[i : i + 100_000]
                c.send(b"%x\r\n%b\r\n" % (len(part), part))
            c.send(b"0\r\n\r\n")
        else:
            c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        reply = c.read_response()
        assert reply.status == 200, reply.body[:200]
        assert reply.json() == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        c.send(b"GET /download/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (2 * 1024 * 1024))
        reply = c.read_response()
        assert reply.status == 200 and reply.body == b"\x5a" * (2 * 1024 * 1024)


def test_slow_client_stalls_the_upstream_stream(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    size = 48 * 1024 * 1024
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", w.port()))
        try:
            sock.sendall(b"GET /download/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
            sent = lambda: sum(peer.stats()["sent"].values())  # noqa: E731
            wait_for(lambda: sent() > 0, timeout=10, what="download started")
            last, still_since = -1, time.monotonic()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # wait for the upstream to stall
                now_sent = sent()
                if now_sent != last:
                    last, still_since = now_sent, time.monotonic()
                elif time.monotonic() - still_since > 1.0:
                    break
                time.sleep(0.1)
            assert 0 < last < 16 * 1024 * 1024, last  # stalled: not the whole 48 MiB buffered
            rss = w.rss_kib()
            got = 0
            while got < size:  # now read it all: the window reopens, everything arrives
                chunk = sock.recv(1 << 20)
                assert chunk, "closed early"
                got += len(chunk)
            assert got >= size
            assert sent() == size
        finally:
            sock.close()
        assert rss < 200_000, rss  # KiB


def test_trailers_reach_a_te_trailers_client(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w, Conn(w.port()) as c:
        c.send(b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        status, _r, _v, headers = c.read_head()
        assert status == 200 and ("transfer-encoding", "chunked") in headers
        body, trailers = read_chunked(c)
        assert body == b"grpc-ish body"
        assert trailers == [
            (b"grpc-status", b"7"),
            (b"grpc-message", b"denied by peer"),
            (b"x-meta-bin", b"AAEC"),
        ]
        # without TE: trailers the body still arrives, the trailer fields do not
        c.send(b"GET /trailers HTTP/1.1\r\nHost: a\r\n\r\n")
        c.read_head()
        body, trailers = read_chunked(c)
        assert body == b"grpc-ish body" and trailers == []


def test_server_level_version_and_route_override(tmp_path: Path, peer_factory) -> None:
    """upstream_http_version on the server applies to its routes; a route may override it."""
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port, "http2", None)) as w:
        status, body, _ = get(w.port(), "/s")
        assert status == 200 and json.loads(body)[":path"] == "/s"
    # http11 on the route wins over the server's http2: the h2c peer cannot parse it
    with run_worker(tmp_path, proxy_config(peer.port, "http2", "http11")) as w:
        status, _, _ = get(w.port(), "/s")
        assert status == 502


def test_curl_through_monolaked(tmp_path: Path, peer_factory, master_factory) -> None:
    peer = peer_factory()
    port = free_port()
    m = master_factory(daemon_config(tmp_path, port, peer.port))
    m.wait_ready()
    out = curl("--http1.1", "-D", "-", "-H", "TE: trailers", f"http://127.0.0.1:{port}/trailers")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode("latin-1").lower()
    assert text.startswith("http/1.1 200") and "grpc-status: 7" in text, text
    data = os.urandom(1024 * 1024 + 3)
    body = tmp_path / "up.bin"
    body.write_bytes(data)
    out = curl("--http1.1", "--data-binary", f"@{body}", f"http://127.0.0.1:{port}/upload")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_client_gone_resets_only_its_stream(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        c = Conn(w.port())
        c.send(b"GET /delay/5000 HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: peer.stats()["streams"] >= 1, timeout=10, what="stream open")
        # an abortive close (RST): a plain FIN is a half-close the proxy still answers
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        wait_for(lambda: peer.stats()["resets"], timeout=10, what="RST_STREAM upstream")
        assert peer.stats()["resets"] == [[1, 1, 8]]  # CANCEL, on connection 1, stream 1
        status, _, headers = get(w.port(), "/next")
        assert status == 200 and headers["x-conn"] == "1"  # the connection went on


def test_read_timeout_is_per_stream_and_idle_connections_close(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory()
    cfg = proxy_config(
        peer.port,
        route_extra="idle_timeout_sec = 1.5",
        server_extra="timeout = { upstream_read_timeout_sec = 1 }",
    )
    with run_worker(tmp_path, cfg) as w:
        started = time.monotonic()
        status, body, _ = get(w.port(), "/delay/4000")
        assert status == 504 and time.monotonic() - started < 3.5, body
        wait_for(lambda: peer.stats()["resets"], timeout=5, what="RST_STREAM upstream")
        assert peer.stats()["resets"] == [[1, 1, 8]]  # CANCEL
        assert get(w.port(), "/fast")[0] == 200
        assert peer.stats()["connections"] == 1
        # no streams for idle_timeout_sec: the proxy closes the connection (no PINGs)
        wait_for(lambda: peer.stats()["closed"] == 1, timeout=6, what="idle close")
        assert get(w.port(), "/again")[2]["x-conn"] == "2"


@pytest.mark.parametrize("kind", ["headers", "data"])
def test_unsolicited_frames_close_the_upstream_connection(tmp_path: Path, peer_factory, kind: str) -> None:
    """Frames nobody asked for never reach a client (issue 16 §1 for h2): each of the next
    clients gets its own answer. A response on a stream the proxy has not opened yet is a
    connection error (nghttp2: PROTOCOL_ERROR), so the next streams run on a new connection.
    DATA after END_STREAM on a stream nghttp2 no longer tracks is discarded (as in curl and
    Envoy, which use the same library); the stream ids keep it from any other exchange."""
    peer = peer_factory()
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        status, body, headers = get(w.port(), f"/unsolicited/{kind}")
        assert status == 200 and body == b"mine" and "x-up" not in headers
        results: dict[str, tuple] = {}

        def client(name: str) -> None:
            results[name] = get(w.port(), f"/{name}")

        threads = [threading.Thread(target=client, args=(f"c{k}",)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        for name, (status, body, headers) in results.items():
            assert status == 200 and b"POISON" not in body, (name, status, body)
            assert json.loads(body)[":path"] == f"/{name}", (name, body)
            if kind == "headers":  # not on the poisoned connection
                assert headers["x-conn"] != "1", (name, headers)
        assert len(results) == 3
        if kind == "headers":
            wait_for(lambda: peer.stats()["closed"] >= 1, timeout=5, what="poisoned conn closed")


def test_read_timeout_fires_near_its_deadline(tmp_path: Path, peer_factory) -> None:
    """An h2 stream's read timeout fires within a tick of the loop, not on the pool's 1 s
    sweep (issue 16 §3: timers that bound a request fire within ms of their deadline)."""
    peer = peer_factory()
    cfg = proxy_config(peer.port, server_extra="timeout = { upstream_read_timeout_sec = 0.4 }")
    with run_worker(tmp_path, cfg) as w:
        assert get(w.port(), "/warm")[0] == 200  # the connection exists: no connect time below
        for _ in range(3):
            started = time.monotonic()
            status, body, _ = get(w.port(), "/delay/4000")
            took = time.monotonic() - started
            assert status == 504, body
            assert 0.4 <= took < 0.55, f"the 0.4 s read timeout fired after {took:.3f} s"


def test_reload_lets_old_worker_h2_streams_finish(tmp_path: Path, peer_factory, master_factory) -> None:
    """A generation reload does not migrate h2 upstream connections: the old worker's stream
    in flight finishes on its connection, the new worker opens its own."""
    peer = peer_factory()
    port = free_port()
    m = master_factory(daemon_config(tmp_path, port, peer.port))
    m.wait_ready(1)
    old_pid = m.worker_pids()[0]
    slow: list = []
    t = threading.Thread(target=lambda: slow.append(get(port, "/delay/2500")))
    t.start()
    wait_for(lambda: peer.stats()["streams"] >= 1, timeout=10, what="stream open")
    result = m.cli("reload", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    def only_new() -> bool:
        pids = [w["pid"] for w in m.ready_workers()]
        return bool(pids) and old_pid not in pids

    wait_for(only_new, timeout=30, what="the new worker alone serving")
    status, _, headers = get(port, "/after-reload")
    assert status == 200 and headers["x-conn"] == "2"  # the new worker's own connection
    t.join(20)
    assert slow and slow[0][0] == 200 and slow[0][2]["x-conn"] == "1", slow
    # the old worker drains and exits: its h2 connection closes with it
    wait_for(lambda: peer.stats()["closed"] >= 1, timeout=30, what="old connection closed")


def test_in_place_reload_keeps_the_h2_upstream_connection(
    tmp_path: Path, peer_factory, master_factory
) -> None:
    """reload_mode = "in_place" rebuilds the service stack in the same worker, which keeps its
    one H2Pool: the upstream connection opened before the reload carries the requests after it
    (a generation reload cannot: test_reload_lets_old_worker_h2_streams_finish)."""
    peer = peer_factory()
    port = free_port()
    text = daemon_config(tmp_path, port, peer.port).replace(
        "[supervisor]\n", '[supervisor]\nreload_mode = "in_place"\n'
    )
    m = master_factory(text)
    m.wait_ready()
    pids = m.worker_pids()
    status, _, headers = get(port, "/before")
    assert status == 200 and headers["x-conn"] == "1", headers
    new_route = '[[servers.web.routes]]\npath = "/new"\nupstreams = [{ endpoint = { type = "builtin", value = "hello" } }]\n\n'
    m.config_path.write_text(text.replace("[[servers.web.routes]]", new_route + "[[servers.web.routes]]", 1))
    result = m.cli("reload", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert m.worker_pids() == pids
    assert get(port, "/new")[1].startswith(b"Hello from monolake")  # the new stack serves
    status, _, headers = get(port, "/after")
    assert status == 200 and headers["x-conn"] == "1", headers  # the same upstream connection
    assert peer.stats()["connections"] == 1, peer.stats()
