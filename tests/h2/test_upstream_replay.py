"""GOAWAY from an h2 upstream mid-request: a stream above its last stream id is sent again on a
new connection together with its request body, replayed from the stream's bounded buffer
(``REPLAY_LIMIT``); a body that had gone past the buffer fails with 502. The upstream is the
``h2``-library peer (upstream_peer.py, ``/goaway-upload?after=N``: GOAWAY once N body bytes
arrived, naming the stream before), the clients are http.client (Content-Length and chunked)
and the ``h2`` library (with request trailers)."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.worker.h2.upstream import REPLAY_LIMIT
from tests.h2.peer import H2LibClient
from tests.h2.test_downstream import config
from tests.h2.test_upstream_h2 import Peer, proxy_config, start_peer
from tests.http.conftest import LOOPS, run_worker
from tests.http.upstream import pattern
from tests.support import kill_pids


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = start_peer(tmp_path)
    yield p
    kill_pids([p.proc.pid])


def post(port: int, path: str, body: bytes, chunked: bool = False) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        if chunked:
            conn.request("POST", path, body=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]))
        else:
            conn.request("POST", path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("chunked", [False, True])
def test_goaway_mid_body_replays_it_on_a_new_connection(
    tmp_path: Path, peer: Peer, chunked: bool, loop: str
) -> None:
    """16 KiB of a 40 KB body reached connection 1, then GOAWAY: the whole body arrives on
    connection 2, byte for byte (the peer hashes it)."""
    body = pattern(40_000)
    with run_worker(tmp_path, proxy_config(peer.port), loop=loop) as w:
        status, data, headers = post(w.port(), "/goaway-upload?after=16384", body, chunked)
        assert status == 200, data
        assert headers["x-conn"] == "2", headers
        doc = json.loads(data)
        assert doc == {"length": 40_000, "sha256": hashlib.sha256(body).hexdigest()}, doc
        # the next request on the worker goes on connection 2 as usual
        status, data, headers = post(w.port(), "/upload", b"after")
        assert status == 200 and headers["x-conn"] == "2"
    st = peer.stats()
    assert st["goaways"] == 1 and st["connections"] == 2, st
    assert st["goaway_after_bytes"][0] >= 16384, st


def test_goaway_on_the_head_replays_the_body(tmp_path: Path, peer: Peer) -> None:
    """GOAWAY as the request head arrives (``after=0``): the body the client is still sending
    goes to connection 2 (before the replay buffer, such a request was a 502)."""
    body = pattern(20_000)
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        status, data, headers = post(w.port(), "/goaway-upload?after=0", body)
    assert status == 200 and headers["x-conn"] == "2", (status, data)
    assert json.loads(data)["sha256"] == hashlib.sha256(body).hexdigest()


def test_goaway_after_the_replay_buffer_is_502(tmp_path: Path, peer: Peer) -> None:
    """More than ``REPLAY_LIMIT`` body bytes were streamed when the GOAWAY came: they cannot
    be sent again, the client gets 502 and no second attempt reaches the upstream; the worker
    serves the next request."""
    body = pattern(400_000)
    after = REPLAY_LIMIT + 40_000
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        status, data, _ = post(w.port(), f"/goaway-upload?after={after}", body)
        assert status == 502, data
        assert b"refused" in data, data
        status, data, headers = post(w.port(), "/upload", b"next")
        assert status == 200 and headers["x-conn"] == "2", data
        assert "h2_upstream_no_replay" in w.log() or "upstream_failed" in w.log()
    st = peer.stats()
    assert st["goaways"] == 1 and st["streams"] == 2, st  # the refused one, then "next"


def test_h2_client_body_and_trailers_replayed(tmp_path: Path, peer: Peer) -> None:
    """An h2 client's body and its trailing HEADERS, refused by GOAWAY after 5000 bytes:
    connection 2 gets both."""
    with run_worker(tmp_path, config(peer.port, version="http2")) as w:
        c = H2LibClient(w.port(), timeout=20)
        try:
            sid = c.post_with_trailers("/goaway-upload?after=5000", [b"r" * 30_000], [("x-sum", "7")])
            resp = c.wait(sid)
        finally:
            c.close()
    assert resp.status == 200 and dict(resp.headers)[b"x-conn"] == b"2", resp.headers
    doc = json.loads(bytes(resp.body))
    assert doc["length"] == 30_000 and doc["trailers"] == [["x-sum", "7"]], doc


def test_refused_stream_replays_on_the_same_endpoint(tmp_path: Path, peer: Peer) -> None:
    """RST_STREAM(REFUSED_STREAM) on the head (RFC 9113 §8.7: not processed): the request and
    its body go again, the connection stays (no GOAWAY: the retry may use it)."""
    body = pattern(30_000)
    with run_worker(tmp_path, proxy_config(peer.port)) as w:
        status, data, _ = post(w.port(), "/refuse-upload", body)
    assert status == 200, data
    assert json.loads(data)["sha256"] == hashlib.sha256(body).hexdigest()
    st = peer.stats()
    assert st["refused"] == 1 and st["goaways"] == 0 and st["streams"] == 2, st


def test_queued_unsent_body_bytes_are_replayed(tmp_path: Path) -> None:
    """The peer's 16 KiB stream window holds the proxy back: when the GOAWAY comes, most of
    the 60 000-byte body sits in the refused stream's send queue, unsent (nghttp2 drops it
    with the stream). The replay buffer has every byte the stream took, so connection 2 gets
    all of them."""
    small = start_peer(tmp_path, "--window", "16384")
    try:
        body = pattern(60_000)
        with run_worker(tmp_path, proxy_config(small.port)) as w:
            status, data, headers = post(w.port(), "/goaway-upload?after=1000", body, chunked=True)
        assert status == 200 and headers["x-conn"] == "2", data
        assert json.loads(data) == {"length": 60_000, "sha256": hashlib.sha256(body).hexdigest()}
        assert small.stats()["goaway_after_bytes"][0] <= 16384  # the rest was never on the wire
    finally:
        kill_pids([small.proc.pid])
