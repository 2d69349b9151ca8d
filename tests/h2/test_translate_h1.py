"""h2 client → HTTP/1.1 upstream, the request direction in detail: request trailers (trailing
HEADERS after DATA) become the chunked body's trailer section, a body of unknown length goes
chunked, ``te`` and ``expect: 100-continue`` stay on the h2 side. Real clients (the ``h2``
library, nghttp) through a real worker to a recording upstream (recorder.py) whose own parser
says what crossed the wire."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.worker.http.message import trailer_lines
from tests.h2.peer import H2LibClient
from tests.h2.recorder import Recorder
from tests.h2.test_downstream import config
from tests.h2.test_upstream_h2 import start_peer
from tests.http.conftest import LOOPS, run_worker
from tests.support import kill_pids


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as rec:
        yield rec


@pytest.mark.parametrize("loop", LOOPS)
def test_request_trailers_reach_http11_upstream_chunked(
    tmp_path: Path, recorder: Recorder, loop: str
) -> None:
    """DATA without content-length, then trailing HEADERS: the upstream gets
    ``transfer-encoding: chunked``, the exact body, and the trailer fields after the last
    chunk; ``te: trailers`` is not forwarded (hop-by-hop in HTTP/1.1, as nginx)."""
    with run_worker(tmp_path, config(recorder.port), loop=loop) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            body = [b"a" * 1000, b"b" * 70_000, b"c"]
            sid = c.post_with_trailers(
                "/t",
                body,
                [("x-checksum", "abc123"), ("grpc-status", "0")],
                [("te", "trailers"), ("content-type", "application/octet-stream")],
            )
            resp = c.wait(sid)
            assert resp.status == 200, resp.headers
            doc = json.loads(bytes(resp.body))
            assert doc["chunked"] and doc["length"] == 71_001, doc
        finally:
            c.close()
    rec = recorder.received[-1]
    assert rec.line.startswith(b"POST /t HTTP/1.1"), rec.line
    assert rec.header(b"transfer-encoding") == b"chunked" and rec.header(b"content-length") is None
    assert rec.header(b"te") is None and rec.header(b"expect") is None, rec.headers
    assert rec.body == b"".join(body)
    assert rec.trailers == [(b"x-checksum", b"abc123"), (b"grpc-status", b"0")], rec.trailers
    assert rec.raw_tail == b"0\r\nx-checksum: abc123\r\ngrpc-status: 0\r\n\r\n", rec.raw_tail
    assert not recorder.errors, recorder.errors


def test_trailers_with_100_continue_and_keepalive(tmp_path: Path, recorder: Recorder) -> None:
    """``expect: 100-continue`` is answered by the proxy (a 100 HEADERS when the body is first
    read) and not forwarded; the trailers still arrive; a second request on the same upstream
    connection (keep-alive after a trailer section) is parsed cleanly."""
    with run_worker(tmp_path, config(recorder.port)) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.post_with_trailers(
                "/e", [b"z" * 5000], [("x-after", "continue")], [("expect", "100-continue")], interim=True
            )
            assert c.wait(sid).status == 200
            again = c.request("/plain", b"no trailers here")
            assert again.status == 200
            assert json.loads(bytes(again.body)) == {"length": 16, "chunked": True, "trailers": []}
        finally:
            c.close()
    first, second = recorder.received[-2:]
    assert first.header(b"expect") is None and first.trailers == [(b"x-after", b"continue")]
    assert first.body == b"z" * 5000
    assert second.body == b"no trailers here" and second.raw_tail == b"0\r\n\r\n", second
    assert not recorder.errors, recorder.errors


def test_nghttp_request_trailers(tmp_path: Path, recorder: Recorder) -> None:
    """nghttp (nghttp2's own client) sends ``--trailer`` after a ``-d`` body with a
    ``content-length`` and announces it (``trailer: x-ng``): the body goes chunked and the
    trailers arrive. The ``h2`` library sending a content-length body and unannounced trailers:
    the upstream gets the Content-Length body and the trailer fields are dropped (a
    Content-Length message has no trailer section; Envoy does the same)."""
    data = tmp_path / "body.bin"
    data.write_bytes(b"q" * 40_000)
    with run_worker(tmp_path, config(recorder.port)) as w:
        r = subprocess.run(
            [
                "nghttp",
                "-t",
                "20",
                "-d",
                str(data),
                "--trailer",
                "x-ng: file",
                f"http://127.0.0.1:{w.port()}/ng",
            ],
            capture_output=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["length"] == 40_000, r.stdout
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.post_with_trailers(
                "/cl", [b"p" * 30_000], [("x-lost", "1")], [("content-length", "30000")]
            )
            assert c.wait(sid).status == 200
        finally:
            c.close()
    announced, plain = recorder.received[-2:]
    assert announced.body == b"q" * 40_000 and plain.body == b"p" * 30_000
    assert announced.chunked and announced.header(b"content-length") is None, announced
    assert announced.trailers == [(b"x-ng", b"file")], announced.trailers
    assert plain.header(b"content-length") == b"30000" and not plain.chunked and plain.trailers == []
    assert not recorder.errors, recorder.errors


def test_trailer_lines_drops_framing_and_routing_fields() -> None:
    """What may not sit in a trailer section (RFC 9110 §6.5.1) is left out; the rest is kept
    in order."""
    got = trailer_lines(
        [
            (b"x-a", b"1"),
            (b"content-length", b"5"),
            (b":status", b"200"),
            (b"transfer-encoding", b"chunked"),
            (b"host", b"evil"),
            (b"x-bad", b"a\r\nb: c"),
            (b"grpc-status", b"0"),
        ]
    )
    assert got == b"x-a: 1\r\ngrpc-status: 0\r\n"


def test_request_trailers_reach_h2_upstream(tmp_path: Path) -> None:
    """h2 in, h2 out: the client's trailing HEADERS go upstream as trailing HEADERS after the
    DATA (the ``h2``-library upstream answers what it received)."""
    peer = start_peer(tmp_path)
    try:
        with run_worker(tmp_path, config(peer.port, version="http2")) as w:
            c = H2LibClient(w.port(), timeout=20)
            try:
                sid = c.post_with_trailers("/upload", [b"u" * 50_000], [("x-sum", "42")])
                resp = c.wait(sid)
                assert resp.status == 200, resp.headers
                doc = json.loads(bytes(resp.body))
                assert doc["length"] == 50_000 and doc["trailers"] == [["x-sum", "42"]], doc
            finally:
                c.close()
    finally:
        kill_pids([peer.proc.pid])
