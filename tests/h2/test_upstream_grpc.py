"""gRPC through the proxy to a real grpcio server (h2c upstream), from an HTTP/1.1 client
that sends ``TE: trailers``: status, message and trailing metadata arrive as chunked trailers;
a trailers-only error arrives in the head."""

from __future__ import annotations

import ssl
import struct
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.h2.test_upstream_h2 import proxy_config, read_chunked
from tests.http.certs import make_ca, make_cert
from tests.http.conftest import Conn, run_worker
from tests.http.upstream import UpstreamServer
from tests.support import PYTHON, free_port, kill_pids, listening_on, wait_for

grpc = pytest.importorskip("grpc")


def start_grpc(*args: str) -> Generator[int, None, None]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "tests.h2.grpc_peer", "--port", str(port), *args])
    try:
        wait_for(
            lambda: listening_on(port) or proc.poll() is not None, timeout=20, what="grpc server listening"
        )
        assert proc.poll() is None, f"grpc server exited with {proc.returncode}"
        yield port
    finally:
        kill_pids([proc.pid])


@pytest.fixture
def grpc_port() -> Iterator[int]:
    yield from start_grpc()


def frame(msg: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\0" + struct.pack(">I", len(msg)) + msg


def messages(body: bytes) -> list[bytes]:
    out = []
    while body:
        assert body[0] == 0
        (n,) = struct.unpack(">I", body[1:5])
        out.append(body[5 : 5 + n])
        body = body[5 + n :]
    return out


def call(c: Conn, method: str, msg: bytes) -> None:
    body = frame(msg)
    c.send(
        f"POST /test.Echo/{method} HTTP/1.1\r\nHost: grpc\r\n"
        f"Content-Type: application/grpc\r\nTE: trailers\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_grpc_status_and_trailing_metadata_reach_http11_client(tmp_path: Path, grpc_port: int) -> None:
    with run_worker(tmp_path, proxy_config(grpc_port)) as w, Conn(w.port(), timeout=20) as c:
        call(c, "Unary", b"hello grpc")
        status, _r, _v, headers = c.read_head()
        assert status == 200 and ("content-type", "application/grpc") in headers, headers
        body, trailers = read_chunked(c)
        assert messages(body) == [b"cprg olleh"]
        t = dict(trailers)
        assert t[b"grpc-status"] == b"0" and t[b"x-echo-len"] == b"10", trailers

        # an error before any message: grpcio answers trailers-only, so the status is in the head
        call(c, "Unary", b"fail")
        status, _r, _v, headers = c.read_head()
        h = dict(headers)
        assert status == 200 and h["grpc-status"] == "7", headers
        assert h["grpc-message"] == "no entry" and h["x-detail"] == "custom"
        assert h.get("content-length") == "0"

        # a 3 MiB message each way, then server streaming on the same client connection
        big = bytes(range(256)) * (3 * 4096)
        call(c, "Unary", big)
        assert c.read_head()[0] == 200
        body, trailers = read_chunked(c)
        assert messages(body) == [big[::-1]] and dict(trailers)[b"grpc-status"] == b"0"

        call(c, "Stream", b"\x05abc")
        assert c.read_head()[0] == 200
        body, trailers = read_chunked(c)
        assert messages(body) == [b"\x05abc"] * 5
        t = dict(trailers)
        assert t[b"grpc-status"] == b"0" and t[b"x-sent"] == b"5", trailers


def test_grpc_over_tls_upstream_with_alpn_h2(tmp_path: Path) -> None:
    """``https://`` + "http2": TLS to the upstream, h2 chosen by ALPN (grpcio offers only h2)."""
    ca = make_ca(tmp_path)
    cert = make_cert(tmp_path, ca, "grpc-upstream", ["127.0.0.1"])
    ports = start_grpc("--cert", str(cert.chain), "--key", str(cert.key))
    port = next(ports)
    try:
        cfg = proxy_config(port, scheme="https", route_extra=f'tls_ca = "{ca.chain}"')
        with run_worker(tmp_path, cfg) as w, Conn(w.port(), timeout=20) as c:
            call(c, "Unary", b"over tls")
            status, _r, _v, headers = c.read_head()
            assert status == 200, (headers, c.buf[:300])
            body, trailers = read_chunked(c)
            assert messages(body) == [b"slt revo"] and dict(trailers)[b"grpc-status"] == b"0"
        # an upstream that is not trusted fails the connect: 502, never plaintext h2
        with run_worker(tmp_path, proxy_config(port, scheme="https")) as w, Conn(w.port(), timeout=20) as c:
            call(c, "Unary", b"x")
            assert c.read_response().status == 502
    finally:
        ports.close()


def test_auto_picks_h2_or_http11_by_alpn(tmp_path: Path) -> None:
    """ "auto" on https: ALPN decides. grpcio offers only h2 (gRPC trailers arrive, so h2 was
    spoken); an HTTP/1.1 TLS upstream that selects http/1.1 is served on the HTTP/1.1 path,
    every time, once ALPN has said so."""
    ca = make_ca(tmp_path)
    cert = make_cert(tmp_path, ca, "upstream", ["127.0.0.1"])
    ports = start_grpc("--cert", str(cert.chain), "--key", str(cert.key))
    port = next(ports)
    h1_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    h1_ctx.load_cert_chain(cert.chain, cert.key)
    h1_ctx.set_alpn_protocols(["http/1.1"])
    try:
        cfg = proxy_config(port, "auto", None, scheme="https", route_extra=f'tls_ca = "{ca.chain}"')
        with run_worker(tmp_path, cfg) as w, Conn(w.port(), timeout=20) as c:
            call(c, "Unary", b"auto")
            assert c.read_head()[0] == 200
            body, trailers = read_chunked(c)
            assert messages(body) == [b"otua"] and dict(trailers)[b"grpc-status"] == b"0"
        with UpstreamServer("h1tls", ssl=h1_ctx) as h1:
            cfg = proxy_config(h1.port, "auto", None, scheme="https", route_extra=f'tls_ca = "{ca.chain}"')
            with run_worker(tmp_path, cfg) as w, Conn(w.port(), timeout=20) as c:
                for _ in range(3):
                    c.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
                    assert c.read_response().status == 200
            assert h1.requests == 3
            assert h1.connections == 2  # the ALPN probe (closed), then one HTTP/1.1 connection
    finally:
        ports.close()
