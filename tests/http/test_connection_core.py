"""The sans-I/O connection core (worker/http/connection.py) with plain bytes: no sockets, no
loop, no worker. Every parser must produce the same events for the same bytes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from monolake.worker.http.body import BodyStream
from monolake.worker.http.connection import (
    BODY,
    BODY_BYTES,
    BODY_NONE,
    BODY_STREAM,
    BUSY,
    HEAD,
    IDLE,
    RequestReader,
    must_close,
    response_head,
)
from monolake.worker.http.message import Request, Response
from monolake.worker.http.parser import HeadLimits, native

PARSERS = [
    pytest.param("native", marks=pytest.mark.skipif(native is None, reason="no extension")),
    "httptools",
    "h11",
]


class Recorder:
    """ReaderEvents that keeps what it is told, and a producer that counts pauses."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.pauses = 0

    def on_request(self, req: Request) -> None:
        self.events.append(("request", req))

    def on_error(self, status: int, reason: str, req: Request | None, internal: BaseException | None) -> None:
        self.events.append(("error", status))

    def on_upgrade(self, rest: bytes) -> None:
        self.events.append(("upgrade", rest))

    def on_continue(self, req: Request) -> None:
        self.events.append(("continue", req))

    def body_pause(self) -> None:
        self.pauses += 1

    def body_resume(self) -> None:
        self.pauses -= 1

    def body_abandon(self) -> None:
        pass

    def requests(self) -> list[Request]:
        return [v for k, v in self.events if k == "request"]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(parser: str, **over: Any) -> tuple[RequestReader, Recorder, Clock]:
    settings = SimpleNamespace(
        parser_kind=parser,
        head_limits=HeadLimits(8192, 4096, 20, 431),
        max_uri=1024,
        max_head=8192,
        max_body=over.pop("max_body", 0),
        header_timeout=5.0,
        body_timeout=7.0,
        body_timeout_on=True,
    )
    rec = Recorder()
    clock = Clock()
    reader = RequestReader(settings, rec, rec, clock)
    reader.start()
    return reader, rec, clock


def body_bytes(body: BodyStream) -> bytes:
    """What a finished body holds (read without a loop: everything is buffered)."""
    out: list[bytes] = []
    sink = SimpleNamespace(
        write=out.append, end=lambda: out.append(b"<end>"), abort=lambda exc: out.append(b"<abort>")
    )
    body.pipe(sink)
    return b"".join(out)


@pytest.mark.parametrize("parser", PARSERS)
def test_pipelined_requests_come_out_in_order_with_their_bodies(parser: str) -> None:
    reader, rec, _ = make(parser)
    data = (
        b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    # in one read and one byte at a time: the same events
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader, rec, _ = make(parser)
        for c in chunks:
            reader.feed(c)
        reqs = rec.requests()
        assert rec.kinds() == ["request"] * 3
        assert [(r.method, r.path, r.query) for r in reqs] == [
            ("GET", "/a", "x=1"),
            ("POST", "/b", ""),
            ("POST", "/c", ""),
        ]
        assert reqs[0].body is None
        assert body_bytes(reqs[1].body) == b"hello<end>"
        assert reqs[2].chunked and body_bytes(reqs[2].body) == b"abc<end>"
        assert reader.receiving is None and reader.phase == BUSY


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    "head,status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Hosts
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n", 417),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n", 431),
        (b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # userinfo
        (b"GET nothing HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # bad target
    ],
)
def test_malformed_heads_get_their_status_and_end_parsing(parser: str, head: bytes, status: int) -> None:
    reader, rec, _ = make(parser)
    reader.feed(head)
    assert rec.events == [("error", status)]
    assert reader.dead
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # nothing more is parsed
    assert rec.events == [("error", status)]


@pytest.mark.parametrize("parser", PARSERS)
def test_body_over_the_limit_fails_it_with_413(parser: str) -> None:
    reader, rec, _ = make(parser, max_body=4)
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n")
    assert rec.events == [("error", 413)]
    reader, rec, _ = make(parser, max_body=4)
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    req = rec.requests()[0]
    reader.feed(b"9\r\n123456789\r\n")
    assert rec.kinds() == ["request", "error"] and rec.events[1][1] == 413
    assert req.body.done and req.body.exc is not None  # the request's body failed


@pytest.mark.parametrize("parser", PARSERS)
def test_head_growing_past_the_limit_is_431_before_it_ends(parser: str) -> None:
    reader, rec, _ = make(parser)
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    for _ in range(200):
        if rec.events:
            break
        reader.feed(b"X-Long: " + b"v" * 100 + b"\r\n")
    assert rec.events and rec.events[0][0] == "error" and rec.events[0][1] in (400, 431)


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    "head,keep_alive,version",
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True, "1.1"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False, "1.1"),
        (b"GET / HTTP/1.0\r\n\r\n", False, "1.0"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, "1.0"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, Close\r\n\r\n", False, "1.1"),
    ],
)
def test_keep_alive_rules(parser: str, head: bytes, keep_alive: bool, version: str) -> None:
    reader, rec, _ = make(parser)
    reader.feed(head)
    (req,) = rec.requests()
    assert (req.keep_alive, req.version) == (keep_alive, version)
    ok = Response(200, [], b"x")
    assert must_close(req, ok, closing=False) is (not keep_alive)
    assert must_close(req, ok, closing=True)  # draining, or the client sent FIN
    assert must_close(req, Response(200, [], b"x", close=True), closing=False)
    parts, _, _, _, _close = response_head(req, ok, not keep_alive, False)
    head_out = b"".join(parts).lower()
    assert (b"connection: close" in head_out) is (not keep_alive)
    assert (b"connection: keep-alive" in head_out) is (keep_alive and version == "1.0")


def test_keep_alive_ends_after_an_early_answer_and_a_refused_upgrade() -> None:
    body = BodyStream(10)
    early = Request("POST", "/", "/", "", "1.1", [], body, True, content_length=10)
    assert must_close(early, Response(413), closing=False)  # body not all in
    body.feed(b"0123456789")
    body.finish()
    assert not must_close(early, Response(200), closing=False)
    up = Request("GET", "/", "/", "", "1.1", [], None, True, upgrade=True)
    assert must_close(up, Response(400), closing=False)
    assert not must_close(up, Response(101), closing=False)
    assert must_close(None, Response(400), closing=False)  # a parse error: no request


@pytest.mark.parametrize("parser", PARSERS)
def test_expect_100_continue_waits_until_the_body_is_wanted(parser: str) -> None:
    reader, rec, _ = make(parser)
    reader.feed(b"PUT /u HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    (req,) = rec.requests()
    assert req.expect_continue and rec.kinds() == ["request"]
    assert reader.phase == BODY
    out: list[bytes] = []
    req.body.pipe(SimpleNamespace(write=out.append, end=lambda: out.append(b"<end>"), abort=lambda exc: None))
    assert rec.kinds() == ["request", "continue"]  # the first consumer asked for the body
    reader.feed(b"data")
    assert out == [b"data", b"<end>"] and reader.phase == BUSY
    # without a body there is nothing to continue
    reader, rec, _ = make(parser)
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n")
    assert not rec.requests()[0].expect_continue


@pytest.mark.parametrize("parser", PARSERS)
def test_upgrade_stops_parsing_and_hands_over_the_rest(parser: str) -> None:
    reader, rec, _ = make(parser)
    reader.feed(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    )
    assert rec.kinds() == ["request", "upgrade"]
    assert rec.requests()[0].upgrade
    assert rec.events[1][1] == b"\x81\x05hello"
    assert reader.dead
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert rec.kinds() == ["request", "upgrade"]
    # Upgrade without Connection: upgrade is a plain request
    reader, rec, _ = make(parser)
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    assert rec.kinds() == ["request"] and not rec.requests()[0].upgrade


@pytest.mark.parametrize("parser", PARSERS)
def test_phases_and_deadlines(parser: str) -> None:
    reader, rec, clock = make(parser)
    assert reader.phase == IDLE and reader.fresh
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\n")
    assert reader.phase == HEAD and not reader.fresh and reader.deadline == 105.0
    assert reader.due(104.9, False) == -1
    clock.now = 101.0
    reader.feed(b"Content-Length: 2\r\n\r\n")
    assert reader.phase == BODY and reader.deadline == 108.0
    assert reader.due(200.0, True) == -1 and reader.deadline == 207.0  # we stopped reading
    assert reader.due(207.0, False) == BODY and reader.deadline == 0.0
    req = reader.stop("request body timeout")
    assert req is rec.requests()[0] and req.body.done and req.body.exc is not None
    reader, rec, clock = make(parser)
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert reader.phase == BUSY and reader.deadline == 0.0 and reader.due(1e9, False) == -1
    reader.answered(30.0)
    assert reader.phase == IDLE and reader.deadline == 130.0


@pytest.mark.parametrize("parser", PARSERS)
def test_absolute_form_target_replaces_host(parser: str) -> None:
    reader, rec, _ = make(parser)
    reader.feed(b"GET http://Example.COM:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    (req,) = rec.requests()
    assert (req.host, req.path, req.query) == ("example.com", "/p", "q=1")
    assert [v for k, v in req.headers if k == b"host"] == [b"Example.COM:8080"]


def test_response_head_framing() -> None:
    v11 = Request("GET", "/", "/", "", "1.1", [], None, True)
    v10 = Request("GET", "/", "/", "", "1.0", [], None, True)
    head = Request("HEAD", "/", "/", "", "1.1", [], None, True)
    parts, body, kind, chunked, close = response_head(
        v11, Response(200, [(b"a", b"b")], b"xyz"), False, False
    )
    assert b"".join(parts) == b"HTTP/1.1 200 OK\r\na: b\r\ncontent-length: 3\r\n\r\n"
    assert (body, kind, chunked, close) == (b"xyz", BODY_BYTES, False, False)
    stream = BodyStream(None)
    parts, body, kind, chunked, close = response_head(v11, Response(200, [], stream), False, False)
    assert b"transfer-encoding: chunked\r\n" in parts and (kind, chunked) == (BODY_STREAM, True)
    parts, _, kind, chunked, close = response_head(v10, Response(200, [], BodyStream(None)), False, False)
    assert close and not chunked and b"connection: close\r\n" in parts  # delimited by closing
    parts, body, kind, _, _ = response_head(head, Response(200, [], b"xyz"), False, False)
    assert kind == BODY_NONE and b"content-length: 3\r\n" in parts  # HEAD keeps the length
    parts, _, kind, _, _ = response_head(v11, Response(204, [], b""), False, False)
    assert kind == BODY_NONE and not any(p.startswith(b"content-length") for p in parts)
    # framing headers of the service's response never pass through
    parts, _, _, _, _ = response_head(
        v11, Response(200, [(b"content-length", b"99"), (b"connection", b"x")], b"ab"), False, False
    )
    assert b"".join(parts) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    # a memoryview body is copied unless the transport copies what it cannot send
    view = memoryview(b"abc")
    assert type(response_head(v11, Response(200, [], view), False, False)[1]) is bytes
    assert response_head(v11, Response(200, [], view), False, True)[1] is view
