"""The request line at the edges (issue 16 §3), compared with nginx and HAProxy:

- HTTP/0.9 (``GET /x`` and a line end, no version) gets 400 at once and the connection closes,
  instead of waiting for a head end that never comes (the header timeout, 60 s by default);
- ``HTTP/1.2`` (any later 1.x minor version) is served as HTTP/1.1 (RFC 9110 §2.5), 2.0 and
  later get 505;
- an absolute-form target's authority wins over Host and replaces it (RFC 9112 §3.2.2): the
  route is chosen by it and the upstream sees it.
"""

from __future__ import annotations

import socket
import time

import pytest

from monolake.worker.http.parser import ParseError, check_request_line
from tests.http.conftest import VARIANT_IDS, VARIANTS, Conn, run_worker, variant
from tests.http.upstream import UpstreamServer
from tests.support import free_port


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def proxy(request, tmp_path_factory):
    parser, loop = variant(request.param)
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        config = f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
http_parser = "{parser}"
preserve_host = true
[[servers.px.routes]]
path_prefix = "/"
host = "b.example"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{b.url}" }} }}]
[[servers.px.routes]]
path_prefix = "/"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{a.url}" }} }}]
"""
        with run_worker(tmp_path_factory.mktemp("line"), config, loop) as w:
            yield w, parser


def _answer_and_close(port: int, raw: bytes | list[bytes], timeout: float = 3.0) -> tuple[bytes, float]:
    """Everything the proxy sends until it closes, and how long that took (``raw`` in
    pieces: separate reads, so the parser sees each incomplete head)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    start = time.monotonic()
    try:
        for i, piece in enumerate([raw] if isinstance(raw, bytes) else raw):
            if i:
                time.sleep(0.05)
            s.sendall(piece)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got, time.monotonic() - start
            got += chunk
    finally:
        s.close()


@pytest.mark.parametrize("pieces", [[b"GET /x\r\n"], [b"GET /x", b"\r\n"], [b"\r\nGET /x\r", b"\n"]])
def test_http09_gets_400_at_once(proxy, pieces):
    w, _parser = proxy
    got, took = _answer_and_close(w.port(), pieces)
    assert got.startswith(b"HTTP/1.1 400 "), got
    assert took < 2.0


def test_a_request_line_arriving_in_pieces_is_not_mistaken_for_http09(proxy):
    w, _parser = proxy
    with Conn(w.port()) as c:
        for piece in (b"GET /info HTT", b"P/1.1\r\n", b"Host: t\r\n", b"\r\n"):
            c.send(piece)
            time.sleep(0.05)  # separate reads, so the parser sees each incomplete head
        r = c.read_response()
    assert r.status == 200 and r.json()["target"] == "/info"


@pytest.mark.parametrize("version,status", [("1.2", 200), ("1.9", 200), ("2.0", 505), ("3.1", 505)])
def test_later_minor_versions_are_served_as_11(proxy, version, status):
    w, _parser = proxy
    with Conn(w.port()) as c:
        c.send(f"GET /info HTTP/{version}\r\nHost: t\r\n\r\n".encode())
        r = c.read_response()
    assert r.status == status
    if status == 200:
        assert r.version == "HTTP/1.1" and r.json()["version"] == "HTTP/1.1"


def test_absolute_form_authority_wins_over_host(proxy):
    w, _parser = proxy
    with Conn(w.port()) as c:
        c.send(b"GET http://b.example/info?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
        r = c.read_response()
    doc = r.json()
    assert doc["name"] == "b" and doc["target"] == "/info?q=1"
    assert [v for k, v in doc["headers"] if k == "host"] == ["b.example"]


@pytest.mark.parametrize("target", ["http:///info", "http://user@b.example/info"])
def test_absolute_form_without_a_plain_authority_is_refused(proxy, target):
    w, _parser = proxy
    got, _took = _answer_and_close(w.port(), f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert got.startswith(b"HTTP/1.1 400 "), got


@pytest.mark.parametrize(
    "buf,ok",
    [
        (b"GET /x", True),
        (b"GET /x HTTP/1.1\r\nHo", True),
        (b"\r\nGET / HTTP/1.0\r\n", True),
        (b"GET /x\r\n", False),
        (b"GET /x HTTP/1.1\n", False),
        (b"GET /x HTTP/11\r\n", False),
    ],
)
def test_the_python_twin_of_the_request_line_check(buf, ok):
    if ok:
        check_request_line(buf)
    else:
        with pytest.raises(ParseError):
            check_request_line(buf)
