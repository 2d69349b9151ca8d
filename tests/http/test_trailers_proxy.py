"""Chunked trailer sections through the HTTP/1.1 proxy, with each parser (native, httptools,
h11) on each loop: a client's request trailers reach the upstream, an upstream's response
trailers reach a client that said ``TE: trailers``, the fields that must not be in trailers
(RFC 9110 §6.5.1, §7.6.1) are dropped, oversized or malformed trailer sections get the head's
answers (431 / 400 for a client, 502 for an upstream) and the worker lives. Across protocols:
an HTTP/1.1 upstream's trailers reach an h2 client as trailing HEADERS, an HTTP/1.1 client's
request trailers reach an h2 upstream as trailing HEADERS.

Real worker processes and raw-socket clients over loopback; the upstream is a recording
HTTP/1.1 server with its own parser (tests/h2/recorder.py), answering scripted bytes here.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.h2.recorder import Received, Recorder
from tests.h2.test_upstream_h2 import read_chunked
from tests.http.conftest import VARIANT_IDS, VARIANTS, Conn, proxy_config, run_worker, serve_proxy, variant

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
# name -> the writes of the answer (each its own sendall, a short pause between)
SCRIPTS: dict[str, list[bytes]] = {
    # whole in one write: the proxy sees the end of the body in the read of its head
    "one": [
        HEAD + b"Connection: x-hop\r\n\r\n5\r\nhello\r\n0\r\n"
        b"X-Sum: 42\r\nGrpc-Status: 0\r\nGrpc-Message: fine\r\nX-Hop: gone\r\n"
        b"Content-Type: nope\r\nSet-Cookie: a=1\r\n\r\n"
    ],
    # head and body first, the trailer section in later reads (streamed)
    "split": [HEAD + b"\r\n5\r\nhello\r\n", b"6\r\n world\r\n0\r\nX-Sum: ", b"43\r\nX-Late: yes\r\n\r\n"],
    "none": [HEAD + b"\r\n5\r\nhello\r\n0\r\n\r\n"],
    "bad": [HEAD + b"\r\n5\r\nhello\r\n0\r\nno colon here\r\n\r\n"],
    "folded": [HEAD + b"\r\n5\r\nhello\r\n0\r\nX-A: 1\r\n folded\r\n\r\n"],
    # a trailer line that never ends, after the head went out
    "hugeline": [HEAD + b"\r\n5\r\nhello\r\n", b"0\r\nX-Big: " + b"v" * 300_000],
    # a large chunk (spliced on io_uring with the native parser, at splice_threshold) + trailers
    "bigchunk": [HEAD + b"\r\n30000\r\n" + b"b" * 0x30000 + b"\r\n0\r\nX-Sum: big\r\n\r\n"],
    "many": [HEAD + b"\r\n5\r\nhello\r\n0\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(12)) + b"\r\n"],
}


class ScriptRecorder(Recorder):
    """The recorder, answering ``/r/<name>`` with ``SCRIPTS[name]``."""

    def _answer(self, conn: socket.socket, rec: Received) -> None:
        target = rec.line.split(b" ")[1].decode()
        if target.startswith("/r/"):
            for i, part in enumerate(SCRIPTS[target[3:]]):
                if i:
                    time.sleep(0.05)  # separate reads at the proxy (a pause, not a readiness wait)
                conn.sendall(part)
            return
        super()._answer(conn, rec)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptRecorder]:
    up = ScriptRecorder()
    with up:
        yield up


TABLES = """
max_headers = 10
splice_threshold = 65536

[[servers.px.routes]]
path = "/{{*p}}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{port}" }} }}]
"""


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def proxy(request: pytest.FixtureRequest, upstream: ScriptRecorder, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("trailers")
    for w in serve_proxy(request.param, tmp, TABLES.format(port=upstream.port)):
        w.parser = request.param[0]  # type: ignore[attr-defined]
        yield w


def parser_of(proxy: Any) -> str:
    return str(proxy.parser)


def post_chunked(c: Conn, path: str, trailer: bytes, head: bytes = b"") -> None:
    c.send(
        b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n%s\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n%s\r\n" % (path.encode(), head, trailer)
    )


def last_received(up: Recorder, path: bytes, deadline: float = 10.0) -> Received:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for rec in reversed(up.received):
            if rec.line.split(b" ")[1] == path:
                return rec
        time.sleep(0.02)
    raise AssertionError(f"the upstream got no {path!r}: {up.errors}")


def test_request_trailers_reach_the_upstream(proxy, upstream: ScriptRecorder) -> None:
    """Kept fields in order; Host, Authorization, Cache-Control, TE and the field the head's
    Connection named are dropped (hop-by-hop or not allowed in trailers)."""
    path = f"/req/{time.monotonic_ns()}"
    with Conn(proxy.port()) as c:
        post_chunked(
            c,
            path,
            b"X-Checksum: abc123\r\nHost: evil\r\nAuthorization: x\r\nX-Named: hop\r\n"
            b"Cache-Control: no\r\nTE: trailers\r\nGrpc-Status: 0\r\nX-Empty:\r\n",
            b"Connection: x-named\r\n",
        )
        reply = c.read_response()
        assert reply.status == 200, reply
        doc = reply.json()
    assert doc["length"] == 11 and doc["chunked"], doc
    rec = last_received(upstream, path.encode())
    assert rec.body == b"hello world"
    assert rec.trailers == [(b"x-checksum", b"abc123"), (b"grpc-status", b"0"), (b"x-empty", b"")], (
        rec.trailers
    )
    assert rec.raw_tail == b"0\r\nx-checksum: abc123\r\ngrpc-status: 0\r\nx-empty: \r\n\r\n", rec.raw_tail


def test_a_body_without_trailers_ends_bare(proxy, upstream: ScriptRecorder) -> None:
    path = f"/bare/{time.monotonic_ns()}"
    with Conn(proxy.port()) as c:
        post_chunked(c, path, b"")
        assert c.read_response().status == 200
        # and the next request on that connection is a fresh head, not more trailer fields
        reply = c.request("GET", "/after")
        assert reply.status == 200
    rec = last_received(upstream, path.encode())
    assert rec.body == b"hello world" and rec.trailers == [] and rec.raw_tail == b"0\r\n\r\n"
    after = last_received(upstream, b"/after")
    assert after.header(b"x-checksum") is None


def test_framing_trailer_fields(proxy, upstream: ScriptRecorder) -> None:
    """Content-Length in a trailer section: native and h11 drop the field and relay the
    rest; llhttp (httptools) refuses the message, as it refuses such a head (400)."""
    path = f"/cl/{time.monotonic_ns()}"
    with Conn(proxy.port()) as c:
        post_chunked(c, path, b"Content-Length: 99\r\nX-Ok: 1\r\n")
        reply = c.read_response()
    if parser_of(proxy) == "httptools":
        assert reply.status == 400, reply
        return
    assert reply.status == 200, reply
    assert last_received(upstream, path.encode()).trailers == [(b"x-ok", b"1")]


@pytest.mark.parametrize(
    "trailer",
    [b"no colon here\r\n", b"X-A: 1\r\n folded\r\n", b"Bad Name: 1\r\n", b"X-A: 1\nX-B: 2\r\n"],
    ids=["no-colon", "obs-fold", "space-in-name", "bare-lf"],
)
def test_malformed_request_trailers_are_400(proxy, trailer: bytes) -> None:
    with Conn(proxy.port()) as c:
        post_chunked(c, "/malformed", trailer)
        reply = c.read_response()
        if trailer in (b"X-A: 1\r\n folded\r\n", b"X-A: 1\nX-B: 2\r\n") and parser_of(proxy) == "h11":
            # h11 joins an obs-fold line to the value before (RFC 9112 §5.2 allows it) and
            # takes a bare LF as a line end; the upstream gets the fields re-serialised
            assert reply.status == 200, reply
            assert reply.json()["trailers"] in ([["x-a", "1 folded"]], [["x-a", "1"], ["x-b", "2"]]), reply
        else:
            assert reply.status == 400, reply
    with Conn(proxy.port()) as c:  # the worker lives on
        assert c.request("GET", "/alive").status == 200


def test_too_many_request_trailer_fields_are_431(proxy) -> None:
    """max_headers = 10 bounds a trailer section as it bounds a head."""
    with Conn(proxy.port()) as c:
        post_chunked(c, "/many", b"".join(b"X-%d: v\r\n" % i for i in range(11)))
        reply = c.read_response()
        assert reply.status == 431, reply
    with Conn(proxy.port()) as c:
        post_chunked(c, "/ten", b"".join(b"X-%d: v\r\n" % i for i in range(10)))
        assert c.read_response().status == 200


@pytest.mark.parametrize("script", ["one", "split"])
def test_response_trailers_reach_a_te_trailers_client(proxy, script: str) -> None:
    with Conn(proxy.port()) as c:
        c.send(b"GET /r/%s HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n" % script.encode())
        status, _r, _v, headers = c.read_head()
        assert status == 200 and ("transfer-encoding", "chunked") in headers, headers
        body, trailers = read_chunked(c)
        if script == "one":
            # Content-Type is not allowed in trailers, X-Hop was named by the head's Connection
            assert body == b"hello"
            assert trailers == [
                (b"x-sum", b"42"),
                (b"grpc-status", b"0"),
                (b"grpc-message", b"fine"),
                (b"set-cookie", b"a=1"),
            ], trailers
        else:
            assert body == b"hello world" and trailers == [(b"x-sum", b"43"), (b"x-late", b"yes")], trailers
        # keep-alive: the connection serves the next request
        # (a chunked answer without trailers that came whole goes on with a Content-Length)
        reply = c.request("GET", "/r/none", {"TE": "trailers"})
        assert reply.status == 200 and reply.body == b"hello", reply


def test_response_trailers_without_te_trailers(proxy) -> None:
    """A client that did not say ``TE: trailers`` gets the body and an empty trailer section
    (RFC 9110 §6.5.1: the trailers are the ones it did not ask for)."""
    with Conn(proxy.port()) as c:
        c.send(b"GET /r/one HTTP/1.1\r\nHost: t\r\n\r\n")
        c.read_head()
        assert read_chunked(c) == (b"hello", [])


@pytest.mark.parametrize("script", ["bad", "folded", "many"])
def test_bad_upstream_trailers_are_502(proxy, script: str) -> None:
    """The response is whole in one read, so the head has not gone out yet: 502."""
    with Conn(proxy.port()) as c:
        c.send(b"GET /r/%s HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n" % script.encode())
        status, _r, _v, _h = c.read_head()
        if script == "folded" and parser_of(proxy) == "h11":
            assert status == 200  # h11 joins the obs-fold line (see the request test)
        else:
            assert status == 502, status
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/alive").status == 200


def test_an_unending_request_trailer_line_is_431(proxy) -> None:
    """Bounded as a head is (httptools would join the pieces of the line without end)."""
    with Conn(proxy.port()) as c:
        c.send(
            b"POST /huge HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Big: "
        )
        try:
            for _ in range(40):
                c.send(b"v" * 8192)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: the answer is in the receive buffer
        try:
            reply = c.read_response()
        except ConnectionResetError:
            pytest.fail("the connection was reset before the 431 was read")
        assert reply.status == 431, reply
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/alive").status == 200


def test_an_unending_upstream_trailer_line_cuts_the_response(proxy) -> None:
    """The head and the body went out: the client's response is cut off (no last chunk). (A
    loaded machine may read both writes at once: then the head is still held, and it is 502.)"""
    with Conn(proxy.port()) as c:
        c.send(b"GET /r/hugeline HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n")
        status, _r, _v, _h = c.read_head()
        assert status in (200, 502), status
        if status == 200:
            with pytest.raises((AssertionError, ConnectionError)):
                read_chunked(c)
    with Conn(proxy.port()) as c:
        assert c.request("GET", "/alive").status == 200


def test_large_chunks_and_trailers_both_ways(proxy, upstream: ScriptRecorder) -> None:
    """Chunks over splice_threshold (which io_uring with the native parser may splice): the trailer
    section still goes through the parser, in both directions."""
    path = f"/big/{time.monotonic_ns()}"
    big = b"q" * 200_000
    with Conn(proxy.port()) as c:
        c.send(
            b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n"
            % (path.encode(), len(big))
        )
        c.send(big + b"\r\n0\r\nX-Sum: up\r\n\r\n")
        assert c.read_response().status == 200
        c.send(b"GET /r/bigchunk HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n")
        c.read_head()
        assert read_chunked(c) == (b"b" * 0x30000, [(b"x-sum", b"big")])
    rec = last_received(upstream, path.encode())
    assert rec.body == big and rec.trailers == [(b"x-sum", b"up")]


def test_a_coding_before_chunked_on_another_line_is_400(proxy) -> None:
    """Found by the chunked fuzz target while extending it for trailers: llhttp takes
    ``Transfer-Encoding: gzip`` then ``Transfer-Encoding: chunked`` on two lines, and the
    httptools path relayed the body without its coding; every parser refuses it now."""
    with Conn(proxy.port()) as c:
        c.send(
            b"POST /te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        assert c.read_response().status == 400


# -- across protocols ----------------------------------------------------------------------


@pytest.mark.parametrize("parser", ["native", "httptools", "h11"])
def test_http11_upstream_trailers_reach_an_h2_client(
    tmp_path: Path, upstream: ScriptRecorder, parser: str
) -> None:
    """gRPC-web style status trailers from an HTTP/1.1 upstream: a trailing HEADERS frame."""
    h2peer = pytest.importorskip("tests.h2.peer")
    variant((parser, "asyncio"))
    with run_worker(tmp_path, proxy_config(TABLES.format(port=upstream.port), parser)) as w:
        c = h2peer.H2LibClient(w.port(), timeout=20)
        try:
            for script, body, fields in (
                ("one", b"hello", [(b"x-sum", b"42"), (b"grpc-status", b"0"), (b"grpc-message", b"fine")]),
                ("split", b"hello world", [(b"x-sum", b"43"), (b"x-late", b"yes")]),
            ):
                sid = c.open(f"/r/{script}")
                resp = c.wait(sid)
                assert resp.status == 200 and bytes(resp.body) == body, resp
                got = [(bytes(k), bytes(v)) for k, v in resp.trailers or []]
                assert got[: len(fields)] == fields, got
                assert all(k not in (b"content-type", b"x-hop") for k, _ in got), got
        finally:
            c.close()


@pytest.mark.parametrize("parser", ["native", "httptools", "h11"])
def test_http11_request_trailers_reach_an_h2_upstream(tmp_path: Path, parser: str) -> None:
    from tests.h2.test_upstream_h2 import proxy_config as h2_config
    from tests.h2.test_upstream_h2 import start_peer
    from tests.support import kill_pids

    variant((parser, "asyncio"))
    peer = start_peer(tmp_path)
    try:
        cfg = h2_config(peer.port, server_extra=f'http_parser = "{parser}"')
        with run_worker(tmp_path, cfg) as w, Conn(w.port()) as c:
            post_chunked(c, "/upload", b"X-Checksum: abc\r\nHost: evil\r\nGrpc-Status: 0\r\n")
            reply = c.read_response()
            assert reply.status == 200, reply
            doc = json.loads(reply.body)
            assert doc["length"] == 11, doc
            assert doc["trailers"] == [["x-checksum", "abc"], ["grpc-status", "0"]], doc
    finally:
        kill_pids([peer.proc.pid])
