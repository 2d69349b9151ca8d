"""Downstream HTTP/2: real clients (curl, nghttp, h2load, the ``h2`` library) against a real
worker, to real HTTP/1.1 and h2 upstreams over loopback. h2 shares the port with HTTP/1.1:
prior knowledge by the preface on plain listeners, ALPN on TLS ones."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import hyperframe.frame as hf
import pytest

from tests.h2 import attack
from tests.h2.peer import H2LibClient, Response
from tests.h2.test_upstream_h2 import Peer, curl, start_peer
from tests.http.certs import Cert, make_ca, make_cert
from tests.http.conftest import LOOPS, Conn, Worker, run_worker
from tests.http.upstream import UpstreamServer, pattern
from tests.support import free_port, kill_pids, wait_for


def config(
    up_port: int,
    *,
    scheme: str = "http",
    version: str = "http11",
    tls: Cert | None = None,
    http2: str = "",
    server_extra: str = "",
    route_extra: str = "",
) -> str:
    tls_table = ""
    if tls is not None:
        tls_table = f'[servers.px.tls]\nchain = "{tls.chain}"\nkey = "{tls.key}"\n'
    h2_table = f"[servers.px.http2]\n{http2}\n" if http2 else ""
    return (
        textwrap.dedent(f"""
        [servers.px]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
        access_log = true
        upstream_http_version = "{version}"
        {server_extra}
    """)
        + tls_table
        + h2_table
        + textwrap.dedent(f"""
        [[servers.px.routes]]
        path_prefix = "/"
        preserve_path = true
        {route_extra}
        upstreams = [{{ endpoint = {{ type = "uri", value = "{scheme}://127.0.0.1:{up_port}" }} }}]
    """)
    )


def curl_json(*args: str) -> tuple[str, dict]:
    """(the HTTP version curl spoke, the upstream's /info JSON)."""
    r = curl("-w", "\n%{http_version}", *args)
    assert r.returncode == 0, r.stderr
    body, _, version = r.stdout.rpartition(b"\n")
    return version.decode(), json.loads(body)


def access_lines(w: Worker) -> list[dict]:
    out = []
    for line in w.log().splitlines():
        if '"event": "access"' in line:
            out.append(json.loads(line))
    return out


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer("h1") as up:
        yield up


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Cert, Cert]:
    ca = make_ca(tmp_path)
    return ca, make_cert(tmp_path, ca, "monolake", ["127.0.0.1"])


@pytest.fixture
def h2_peer(tmp_path: Path) -> Iterator[Peer]:
    p = start_peer(tmp_path)
    yield p
    kill_pids([p.proc.pid])


@pytest.mark.parametrize("loop", LOOPS)
def test_prior_knowledge_to_http11_upstream(tmp_path: Path, upstream: UpstreamServer, loop: str) -> None:
    """curl --http2-prior-knowledge and HTTP/1.1 on one port; the h2 request reaches the
    HTTP/1.1 upstream translated: Host from :authority, X-Forwarded-*, no TE, DATA as
    Content-Length or chunked; one access-log line per stream, version 2.0."""
    with run_worker(tmp_path, config(upstream.port), loop=loop) as w:
        url = f"http://127.0.0.1:{w.port()}"
        version, info = curl_json(
            "--http2-prior-knowledge", "-H", "te: trailers", "--data-binary", "hello h2", f"{url}/info?a=1"
        )
        assert version == "2", version
        h = dict(info["headers"])
        assert info["method"] == "POST" and info["target"] == "/info?a=1", info
        assert info["version"] == "HTTP/1.1" or info["version"] == "1.1", info
        assert h["host"] == f"127.0.0.1:{upstream.port}", h
        assert h["x-forwarded-host"] == f"127.0.0.1:{w.port()}"
        assert h["x-forwarded-proto"] == "http" and h["x-forwarded-for"] == "127.0.0.1"
        assert h["content-length"] == "8" and "te" not in h, h
        assert info["sha256"] == hashlib.sha256(b"hello h2").hexdigest()

        # a body without content-length (curl -T - streams stdin): chunked upstream
        data = pattern(300_000)
        r = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "20",
                "--http2-prior-knowledge",
                "-T",
                "-",
                "-X",
                "POST",
                f"{url}/sink",
            ],
            input=data,
            capture_output=True,
            timeout=25,
        )
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert dict(info["headers"]).get("transfer-encoding") == "chunked", info["headers"]
        assert info["length"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()

        # a large chunked response comes back as DATA frames
        r = curl("--http2-prior-knowledge", f"{url}/bytes?n=1000000&chunked=1")
        assert r.returncode == 0 and r.stdout == pattern(1_000_000), r.stderr

        # HTTP/1.1 on the same port still works
        r = curl("--http1.1", "-w", "%{http_version}", "-o", "/dev/null", f"{url}/bytes?n=10")
        assert r.stdout == b"1.1", r
        # the access line is written after the response is out: curl can be faster than it
        wait_for(lambda: len(access_lines(w)) >= 4, 10, what="the fourth access-log line")
        lines = access_lines(w)
        assert [ln["version"] for ln in lines] == ["2.0", "2.0", "2.0", "1.1"], lines
        assert all(ln["status"] == 200 for ln in lines)


@pytest.mark.parametrize("loop", LOOPS)
def test_h2_over_tls_by_alpn(
    tmp_path: Path, upstream: UpstreamServer, tls_cert: tuple[Cert, Cert], loop: str
) -> None:
    """TLS offers h2 and http/1.1 by default; ``alpn = ["http/1.1"]`` keeps h2 off."""
    ca, cert = tls_cert
    with run_worker(tmp_path, config(upstream.port, tls=cert), loop=loop) as w:
        url = f"https://127.0.0.1:{w.port()}/info"
        version, info = curl_json("--http2", "--cacert", str(ca.chain), url)
        assert version == "2", version
        assert dict(info["headers"])["x-forwarded-proto"] == "https"
        version, _ = curl_json("--http1.1", "--cacert", str(ca.chain), url)
        assert version == "1.1"
    cfg = config(upstream.port, tls=cert, http2='alpn = ["http/1.1"]')
    with run_worker(tmp_path, cfg) as w:
        version, _ = curl_json("--http2", "--cacert", str(ca.chain), f"https://127.0.0.1:{w.port()}/info")
        assert version == "1.1"


def test_h2_client_to_h2_upstream(tmp_path: Path, h2_peer: Peer, tls_cert: tuple[Cert, Cert]) -> None:
    """h2 in and h2 out (the H2Pool): curl --http2 over TLS and --http2-prior-knowledge on h2c;
    trailers pass through."""
    ca, cert = tls_cert
    with run_worker(tmp_path, config(h2_peer.port, version="http2", tls=cert)) as w:
        r = curl(
            "--http2",
            "--cacert",
            str(ca.chain),
            "-w",
            "\n%{http_version}",
            f"https://127.0.0.1:{w.port()}/echo-head",
        )
        body, _, version = r.stdout.rpartition(b"\n")
        assert r.returncode == 0 and version == b"2", r
        head = json.loads(body)
        assert "127.0.0.1" in json.dumps(head), head
    with run_worker(tmp_path, config(h2_peer.port, version="http2")) as w:
        r = curl(
            "--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://127.0.0.1:{w.port()}/echo-head"
        )
        body, _, version = r.stdout.rpartition(b"\n")
        assert r.returncode == 0 and version == b"2", r
        assert json.loads(body)[":path"] == "/echo-head", body
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.open("/trailers")
            resp = c.wait(sid)
            assert resp.status == 200, resp.headers
            t = dict(resp.trailers)
            assert t[b"grpc-status"] == b"7" and t[b"grpc-message"] == b"denied by peer", t
            assert t[b"x-meta-bin"] == b"AAEC"
            up = c.request("/upload", b"x" * 200_000)
            assert up.status == 200 and str(200_000).encode() in bytes(up.body), bytes(up.body)
        finally:
            c.close()
    assert h2_peer.stats()["streams"] >= 3


def test_nghttp_sees_configured_settings(tmp_path: Path, upstream: UpstreamServer) -> None:
    cfg = config(upstream.port, http2="max_concurrent_streams = 7\ninitial_window_size = 1048576")
    with run_worker(tmp_path, cfg) as w:
        r = subprocess.run(
            ["nghttp", "-nv", "-t", "15", f"http://127.0.0.1:{w.port()}/info"],
            capture_output=True,
            timeout=20,
        )
        out = r.stdout.decode()
        assert r.returncode == 0, out + r.stderr.decode()
        assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7" in out, out
        assert "SETTINGS_INITIAL_WINDOW_SIZE(0x04):1048576" in out, out
        assert re.search(r":status: 200", out), out


def test_h2load_short_run(tmp_path: Path, upstream: UpstreamServer) -> None:
    """h2load: 2000 requests on 4 connections, 20 streams each: every one succeeds."""
    with run_worker(tmp_path, config(upstream.port)) as w:
        r = subprocess.run(
            ["h2load", "-n", "2000", "-c", "4", "-m", "20", f"http://127.0.0.1:{w.port()}/bytes?n=100"],
            capture_output=True,
            timeout=120,
        )
        out = r.stdout.decode()
        assert r.returncode == 0, out + r.stderr.decode()
        assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed", out), out
        assert re.search(r"status codes: 2000 2xx", out), out
        wait_for(lambda: len(access_lines(w)) >= 2000, 10, what="2000 access-log lines")
        assert len([ln for ln in access_lines(w) if ln["version"] == "2.0"]) == 2000


def test_odd_client_100_continue_and_errors(tmp_path: Path, upstream: UpstreamServer) -> None:
    """The h2 library as a client: ``expect: 100-continue`` gets a 100 HEADERS before the body
    is read; a HEAD keeps content-length and sends no DATA; an unknown route is a 404."""
    cfg = config(upstream.port).replace('path_prefix = "/"', 'path_prefix = "/up"')
    with run_worker(tmp_path, cfg) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, c.headers("/up/sink", "POST", [("expect", "100-continue")]))
            c.responses[sid] = Response()
            c.flush()
            c.pump(
                lambda: any(
                    getattr(e, "stream_id", 0) == sid and type(e).__name__ == "InformationalResponseReceived"
                    for e in c.events
                )
            )
            c.send_body(sid, b"y" * 5000)
            resp = c.wait(sid)
            assert resp.status == 200 and json.loads(bytes(resp.body))["length"] == 5000

            sid = c.open("/up/bytes?n=1234", "HEAD")
            resp = c.wait(sid)
            assert resp.status == 200 and dict(resp.headers)[b"content-length"] == b"1234"
            assert bytes(resp.body) == b""
            assert c.request("/nowhere").status == 404
        finally:
            c.close()


def test_big_bodies_keep_worker_memory_bounded(tmp_path: Path, upstream: UpstreamServer) -> None:
    """24 MiB each way through one h2 stream with a slow side: a client that stops reading
    stalls its upstream (the proxy queues at most its high-water mark, not the body), and an
    upstream that stops reading closes the client's window. The worker's peak RSS grows by a
    few MiB, not by the body size."""
    size = 24 << 20
    with run_worker(tmp_path, config(upstream.port)) as w:
        c = H2LibClient(w.port(), timeout=60)
        try:
            assert c.request("/bytes?n=10").status == 200
            base = w.peak_rss_kib()
            sid = c.open(f"/bytes?n={size}")
            time.sleep(2)  # not reading: one stream window in flight, the rest must wait
            assert w.peak_rss_kib() - base < 8 * 1024, (base, w.peak_rss_kib())
            resp = c.wait(sid)
            assert resp.status == 200 and len(resp.body) == size
            assert bytes(resp.body[-65536:]) == pattern(size)[-65536:]
            resp.body = bytearray()  # the test's own copy is not the worker's memory

            data = pattern(size)
            r = c.request("/sink?pause=2", data)  # the upstream stops reading for 2 s
            info = json.loads(bytes(r.body))
            assert info["length"] == size and info["sha256"] == hashlib.sha256(data).hexdigest()
            assert w.peak_rss_kib() - base < 12 * 1024, (base, w.peak_rss_kib())
        finally:
            c.close()


def test_request_limits_apply_to_streams(tmp_path: Path, upstream: UpstreamServer) -> None:
    """The server's limits hold for h2 streams as for HTTP/1.1 requests: max_uri_size (414),
    max_headers (431), max_body_size (413), each on its stream; the connection goes on."""
    cfg = config(upstream.port, server_extra="max_uri_size = 64\nmax_headers = 10\nmax_body_size = 1000")
    with run_worker(tmp_path, cfg) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            assert c.request("/info?" + "q" * 100).status == 414
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(
                sid, c.headers("/info", "GET", [(f"x-h{i}", "v") for i in range(12)]), end_stream=True
            )
            c.responses[sid] = Response()
            c.flush()
            assert c.wait(sid).status == 431
            assert c.request("/sink", b"z" * 5000).status == 413
            assert c.request("/info", b"small").status == 200
        finally:
            c.close()


def test_preface_split_across_reads_and_http11_lookalikes(tmp_path: Path, upstream: UpstreamServer) -> None:
    """The sniff waits for the whole preface: a preface in three writes is h2; a PUT sent a
    byte at a time (its "P" is the preface's first byte) and a "PRI" that is not the preface
    are HTTP/1.1, parsed from their first byte."""
    with run_worker(tmp_path, config(upstream.port)) as w:
        s = socket.create_connection(("127.0.0.1", w.port()), timeout=10)
        try:
            for part in (attack.PREFACE[:3], attack.PREFACE[3:20], attack.PREFACE[20:]):
                s.sendall(part)
                time.sleep(0.05)
            s.sendall(hf.SettingsFrame(0).serialize())
            head = s.recv(9)
            assert len(head) == 9 and head[3] == 0x4, head  # the server's SETTINGS
        finally:
            s.close()
        with Conn(w.port()) as c:
            for byte in b"PUT /info HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok":
                c.send(bytes([byte]))
            r = c.read_response()
            assert r.status == 200 and json.loads(r.body)["method"] == "PUT"
        with Conn(w.port()) as c:
            c.send(b"PRI /info HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and json.loads(r.body)["method"] == "PRI", r.status


def test_idle_connection_gets_goaway_and_closes(tmp_path: Path, upstream: UpstreamServer) -> None:
    """idle_timeout_sec: a connection without open streams that long gets GOAWAY(NO_ERROR)
    and is closed; one with a stream in flight is not idle."""
    with run_worker(tmp_path, config(upstream.port, http2="idle_timeout_sec = 1")) as w:
        s = socket.create_connection(("127.0.0.1", w.port()), timeout=10)
        try:
            s.sendall(attack.hello())
            start = time.monotonic()
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            took = time.monotonic() - start
        finally:
            s.close()
        goaways = []
        while len(data) >= 9:
            frame, length = hf.Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9 : 9 + length]))
            data = data[9 + length :]
            if isinstance(frame, hf.GoAwayFrame):
                goaways.append(frame.error_code)
        assert goaways == [0] and 0.9 <= took < 4, (goaways, took)
        # a 2 s stream outlives the 1 s idle timeout
        c = H2LibClient(w.port(), timeout=20)
        try:
            r = c.request("/slow?delay=2")
            assert r.status == 200 and bytes(r.body) == b"slow ok"
        finally:
            c.close()


def test_request_body_timeout_per_stream(tmp_path: Path, upstream: UpstreamServer) -> None:
    """server_read_body_timeout_sec holds per stream: a client that stops sending its body
    gets 408 on that stream (the connection and its other streams go on)."""
    cfg = config(upstream.port, server_extra="timeout = { server_read_body_timeout_sec = 1 }")
    with run_worker(tmp_path, cfg) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.open("/sink", "POST", end_stream=False)
            c.send_body(sid, b"part", end_stream=False)
            start = time.monotonic()
            assert c.request("/info").status == 200  # meanwhile, another stream
            resp = c.wait(sid)
            assert resp.status == 408 and 0.9 <= time.monotonic() - start < 4, resp.headers
            assert c.request("/info").status == 200
        finally:
            c.close()
