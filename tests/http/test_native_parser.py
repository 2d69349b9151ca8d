"""The native (C) HTTP/1.1 parsers in isolation: the callbacks they make, however the bytes are
split, and the errors they raise. End-to-end behaviour (status codes on the wire, the smuggling
table) is covered by the proxy suites, which run every parser."""

from __future__ import annotations

import random
from typing import Any

import pytest

from monolake.worker.http import parser as hp

pytestmark = pytest.mark.skipif(hp.native is None, reason="the monolake extension is not built")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_request_head(self, *args: object) -> None:
        self.events.append(("head", *args))

    def on_response(self, *args: object) -> None:
        *head, body = args
        self.events.append(("head", *head))
        if body is not None:  # the whole body came with the head: complete
            self.events += [("body", body), ("done",)]

    def on_body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def on_message_complete(self) -> None:
        self.events.append(("done",))


def feed_split(make, data: bytes, cuts: list[int]) -> Recorder:
    rec = Recorder()
    p = make(rec)
    last = 0
    for c in [*sorted(cuts), len(data)]:
        p.feed_data(data[last:c])
        last = c
    return rec


def request_parser(rec: Recorder):
    return hp.native.RequestParser(rec, 65536, 8192)


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nConnection: keep-alive\r\n\r\n"
    b"\r\n"
    b"POST /p HTTP/1.1\r\nhost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
    b"PUT /c HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n"
)


def test_pipelined_requests_in_one_read() -> None:
    rec = feed_split(request_parser, PIPELINE, [])
    assert rec.events == [
        (
            "head",
            "GET",
            "/a?x=1",
            "1.1",
            [(b"host", b"Example.COM:8080"), (b"connection", b"keep-alive")],
            b"Example.COM:8080",
            None,
            hp.CONN_KEEPALIVE,
        ),
        (
            "head",
            "POST",
            "/p",
            "1.1",
            [(b"host", b"a"), (b"content-length", b"5"), (b"expect", b"100-continue")],
            b"a",
            5,
            hp.EXPECT,
        ),
        ("body", b"hello"),
        ("done",),
        (
            "head",
            "PUT",
            "/c",
            "1.0",
            [(b"host", b"a"), (b"transfer-encoding", b"chunked"), (b"connection", b"close")],
            b"a",
            None,
            hp.CHUNKED | hp.CONN_CLOSE,
        ),
        ("body", b"helloabc"),
        ("done",),
    ]


@pytest.mark.parametrize("seed", range(40))
def test_any_split_gives_the_same_events(seed: int) -> None:
    rng = random.Random(seed)
    whole = feed_split(request_parser, PIPELINE, []).events
    cuts = rng.sample(range(1, len(PIPELINE)), rng.randint(1, 30))
    assert feed_split(request_parser, PIPELINE, cuts).events == whole


def test_byte_by_byte_and_memoryview_input() -> None:
    rec = Recorder()
    p = request_parser(rec)
    for i in range(len(PIPELINE)):
        p.feed_data(memoryview(PIPELINE)[i : i + 1])
    assert rec.events == feed_split(request_parser, PIPELINE, []).events


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 16 + b"\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX", 400),
        (b"GET / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        (b"GET /x\r\n\r\n", 400),
        (b"G@T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /" + b"a" * 9000, 414),  # not even a complete line yet
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"v" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * 20000, 431),  # never ends
    ],
)
def test_malformed_requests(raw: bytes, status: int) -> None:
    with pytest.raises(hp.ParseError) as info:
        request_parser(Recorder()).feed_data(raw)
    assert info.value.status == status


def test_upgrade_hands_over_the_rest() -> None:
    rec = Recorder()
    p = request_parser(rec)
    with pytest.raises(hp.UpgradeRequested) as info:
        p.feed_data(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
        )
    assert info.value.rest == b"\x81\x05hello"
    assert rec.events[0][-1] & hp.UPGRADE
    p.feed_data(b"more")  # after the upgrade the parser takes nothing
    assert len(rec.events) == 1


def test_callback_errors_propagate_and_stop_parsing() -> None:
    class Boom(Recorder):
        def on_request_head(self, *args: object) -> None:
            raise hp.ParseError("too large", 413)

    rec = Boom()
    p = hp.native.RequestParser(rec, 65536, 8192)
    with pytest.raises(hp.ParseError):
        p.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    p.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # dead: ignored
    assert rec.events == []


def test_feeding_from_a_callback_is_refused() -> None:
    class Reentrant(Recorder):
        parser: Any = None  # the C parser under test

        def on_request_head(self, *args: object) -> None:
            self.parser.feed_data(b"x")

    rec = Reentrant()
    rec.parser = hp.native.RequestParser(rec, 65536, 8192)
    with pytest.raises(RuntimeError):
        rec.parser.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


# -- responses ---------------------------------------------------------------------------------
def response_parser(rec: Recorder, head: bool = False):
    return hp.native.ResponseParser(rec, head)


def test_response_framing_and_hop_by_hop_removal() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n"
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\r\nxyz\r\n0\r\n\r\n"
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    )
    expected = [
        ("head", 200, b"OK", [(b"server", b"up"), (b"content-length", b"3")], True, 3, False),
        ("body", b"abc"),
        ("done",),
        ("head", 204, b"No Content", [(b"date", b"x")], True, None, False),
        ("done",),
        ("head", 200, b"OK", [], True, None, True),
        ("body", b"xyz"),
        ("done",),
        ("head", 200, b"OK", [], False, None, False),
        ("body", b"until the end"),
    ]
    assert feed_split(response_parser, data, []).events == expected
    rng = random.Random(7)
    for _ in range(20):
        cuts = rng.sample(range(1, len(data)), rng.randint(1, 25))
        assert feed_split(response_parser, data, cuts).events == expected


def test_response_to_head_has_no_body() -> None:
    rec = Recorder()
    response_parser(rec, head=True).feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert rec.events == [("head", 200, b"OK", [(b"content-length", b"1000")], True, 1000, False), ("done",)]


def test_switching_protocols_keeps_upgrade_headers() -> None:
    rec = Recorder()
    with pytest.raises(hp.UpgradeRequested) as info:
        response_parser(rec).feed_data(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe"
        )
    assert info.value.rest == b"frame"
    assert rec.events[0][3] == [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    ],
)
def test_bad_responses_are_502(raw: bytes) -> None:
    with pytest.raises(hp.ParseError) as info:
        response_parser(Recorder()).feed_data(raw)
    assert info.value.status == 502


def test_a_response_that_arrives_whole_is_one_callback() -> None:
    calls: list[str] = []

    class Counting:
        def on_response(self, *args: object) -> None:
            calls.append("response" if args[-1] is not None else "head")

        def on_body(self, data: bytes) -> None:
            calls.append("body")

        def on_message_complete(self) -> None:
            calls.append("done")

    p = hp.native.ResponseParser(Counting(), False)
    p.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert calls == ["response"]
    p.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")  # body still coming
    p.feed_data(b"!!")
    assert calls == ["response", "head", "body", "body", "done"]


def test_a_small_body_split_over_reads_is_collected_whole() -> None:
    got: list[tuple] = []

    class Collecting(Recorder):
        def on_response(self, *args: object) -> None:
            got.append(args)

    p = hp.native.ResponseParser(Collecting(), False, 10)
    p.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123")
    assert got == []  # waits for the rest
    p.feed_data(b"45")
    p.feed_data(b"6789HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nabc")  # 11 > 10: streams
    assert got == [
        (200, b"OK", [(b"content-length", b"10")], True, 10, False, b"0123456789"),
        (200, b"OK", [(b"content-length", b"11")], True, 11, False, None),
    ]


@pytest.mark.parametrize("feed", [bytes, bytearray, memoryview])
def test_a_lent_body_is_a_view_for_the_callback_only(feed: type) -> None:
    """lend=True: a body that came with its head is a read-only view of the input, valid while
    on_response runs (the proxy writes it from there); a reference kept after it is released.
    A body collected over several reads is a bytes object of its own."""
    seen: list[tuple[type, bytes]] = []
    kept: list[object] = []

    class Lending(Recorder):
        def on_response(self, *args: object) -> None:
            body = args[6]
            assert isinstance(body, (bytes, memoryview))
            seen.append((type(body), bytes(body)))
            if isinstance(body, memoryview):
                assert body.readonly
            kept.append(body)

    p = hp.native.ResponseParser(Lending(), False, 8, True)
    p.feed_data(
        feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nwor"
        )
    )
    p.feed_data(feed(b"ld!"))
    assert seen == [(memoryview, b"hello"), (bytes, b"world!")]
    with pytest.raises(ValueError):
        bytes(kept[0])  # type: ignore[call-overload]
    assert kept[1] == b"world!"


@pytest.mark.parametrize("keep", [memoryview, lambda v: v[1:], lambda v: v.cast("c")])
def test_a_view_derived_from_a_lent_body_is_an_error_not_a_dangling_view(keep: Any) -> None:
    """Views made from the lent one cannot be revoked with it: keeping one is reported."""

    class Holding(Recorder):
        def on_response(self, *args: object) -> None:
            self.held = keep(args[6])

    rec = Holding()
    p = hp.native.ResponseParser(rec, False, 0, True)
    with pytest.raises(BufferError):
        p.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_an_error_in_on_response_with_a_lent_body_propagates() -> None:
    class Failing(Recorder):
        def on_response(self, *args: object) -> None:
            self.kept = args[6]
            raise KeyError("boom")

    rec = Failing()
    p = hp.native.ResponseParser(rec, False, 0, True)
    with pytest.raises(KeyError):
        p.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with pytest.raises(ValueError):
        bytes(rec.kept)  # type: ignore[call-overload]  # a released view: the call must raise


def _mutations(rng: random.Random, seed: bytes, n: int) -> list[bytes]:
    alphabet = b"\r\n :;,\t\x00\x7f\xff0123456789abcdefxHTP/GETchunkedContent-Length"
    out = []
    for _ in range(n):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            i = rng.randrange(len(data) + 1)
            if op < 0.4 and data:
                data[min(i, len(data) - 1)] = rng.choice(alphabet)
            elif op < 0.7:
                data[i:i] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            elif data:
                del data[i : i + rng.randint(1, 6)]
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("which", ["request", "response"])
def test_mutated_input_never_crashes_and_fails_cleanly(which: str) -> None:
    """Untrusted bytes into C: whatever comes in, the parser either calls back or raises one
    of its two exceptions, however the input is split."""
    rng = random.Random(1234)
    seed = (
        PIPELINE
        if which == "request"
        else (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close, x\r\nX: 1\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
        )
    )
    outcomes = set()
    for data in _mutations(rng, seed, 3000):
        rec = Recorder()
        p = (
            hp.native.RequestParser(rec, 4096, 256)
            if which == "request"
            else hp.native.ResponseParser(rec, rng.random() < 0.1, rng.choice((0, 8, 1 << 16)))
        )
        cuts = (
            sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
            if len(data) > 1
            else []
        )
        try:
            last = 0
            for c in [*cuts, len(data)]:
                p.feed_data(data[last:c])
                last = c
            outcomes.add("ok")
        except hp.ParseError as exc:
            assert exc.status in (400, 413, 414, 417, 431, 502), exc.status
            outcomes.add("error")
        except hp.UpgradeRequested:
            outcomes.add("upgrade")
    assert {"ok", "error"} <= outcomes


# -- the upstream request head -----------------------------------------------------------------
_NAMES = [
    b"host",
    b"x-forwarded-for",
    b"forwarded",
    b"via",
    b"upgrade",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"content-length",
    b"expect",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-keep",
    b"x-secret",
    b"accept",
    b"cookie",
    b"h",
    b"x-forwarded-fo",
    b"vias",
]
_VALUES = [
    b"",
    b"1",
    b"a, b",
    b'"quoted"',
    b"client.example:8443",
    b"10.0.0.1",
    b" keep-alive , X-Secret\x0b",
    b"X-KEEP,cookie",
    b"\tupgrade\t",
    b"websocket",
    b"for=1.2.3.4",
    b"1.0 edge",
    b"caf\xe9",
]


def _random_request(rng: random.Random) -> tuple[Any, Any, Any, str, bool, bool]:
    from types import SimpleNamespace

    headers = [(rng.choice(_NAMES), rng.choice(_VALUES)) for _ in range(rng.randrange(12))]
    body = rng.choice(
        [None, SimpleNamespace(length=rng.choice([0, 7, 1 << 40])), SimpleNamespace(length=None)]
    )
    req = SimpleNamespace(
        method=rng.choice(["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH"]),
        headers=headers,
        upgrade=rng.random() < 0.3,
        body=body,
        content_length=rng.choice([None, 0, 5]),
    )
    conn = SimpleNamespace(
        forward_cache=None,
        scheme=rng.choice(["http", "https"]),
        peer=rng.choice([("127.0.0.1", 5), ("::1", 6, 0, 0), None]),
    )
    up = SimpleNamespace(kind=rng.choice(["uri", "unix"]), host_header=b"127.0.0.1:8080")
    target = rng.choice(["/", "/a/b?x=1", "/caf\xe9", "/" + "p" * 300])
    return req, SimpleNamespace(conn=conn), up, target, rng.random() < 0.5, rng.random() < 0.5


def test_forward_head_matches_the_python_reference() -> None:
    """headers.request_head's C pass (forward_head) and its Python reference agree byte for
    byte on random heads: every special header, Connection naming headers in any case and
    with any whitespace, repeated forwarding headers, quotes in Host, all framings."""
    from monolake.worker.http import headers as H

    if H._forward_head is None:
        pytest.skip("native module not built")
    rng = random.Random(4)
    for _ in range(3000):
        req, ctx, up, target, preserve_host, via = _random_request(rng)
        want = H._request_head_py(req, ctx, up, target, preserve_host=preserve_host, via=via)
        got = H.request_head(req, ctx, up, target, preserve_host=preserve_host, via=via)
        assert got == want, (req, target, preserve_host, via)


def test_forward_head_leaves_very_many_headers_to_python() -> None:
    from monolake.worker.http import headers as H

    if H._forward_head is None:
        pytest.skip("native module not built")
    rng = random.Random(5)
    req, ctx, up, target, _, _ = _random_request(rng)
    req.headers = [(b"x-n", b"%d" % i) for i in range(300)]
    assert (
        H._forward_head("GET", "/", req.headers, False, None, b"ip", b"http", b"n", False, b"\r\n")
        is NotImplemented
    )
    head = H.request_head(req, ctx, up, target, preserve_host=False, via=False)
    assert head.count(b"\r\nx-n: ") == 300


# -- relay: the client's header block instead of a header list ---------------------------------
def _random_response(rng: random.Random) -> bytes:
    lines = [
        rng.choice(
            [
                b"HTTP/1.1 200 OK",
                b"HTTP/1.0 201 Created",
                b"HTTP/1.1 404 ",
                b"HTTP/1.1 500 Internal Server Error",
                b"HTTP/1.1 200",
            ]
        )
    ]
    for _ in range(rng.randrange(10)):
        name = rng.choice(
            [
                b"Server",
                b"X-Keep",
                b"Connection",
                b"Keep-Alive",
                b"TE",
                b"Trailer",
                b"Proxy-Connection",
                b"Upgrade",
                b"X-Private",
                b"Set-Cookie",
                b"ETag",
                b"Via",
                b"CONTENT-TYPE",
            ]
        )
        if name == b"Connection":
            value = rng.choice([b"keep-alive", b"close", b"x-private", b" X-Private , etag", b"upgrade"])
        else:
            value = rng.choice([b"", b"v", b"a, b", b'"q"', b"caf\xe9", b" spaced\t"])
        lines.append(name + b":" + rng.choice([b" ", b"", b"\t"]) + value)
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    lines.append(b"Content-Length: %d" % len(body))
    rng.shuffle(lines[1:]) if rng.random() < 0.5 else None
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_relay_block_is_the_client_header_block_of_the_list() -> None:
    """relay=True: on_relay's block is exactly what the server writes from on_response's
    header list (split_headers without the framing headers), with the same status, reason,
    keep-alive and body; a response that is not whole still goes to on_response."""
    from monolake.worker.http.headers import split_headers

    skip = (b"content-length", b"transfer-encoding", b"connection")
    rng = random.Random(11)
    for _ in range(2000):
        data = _random_response(rng)
        listed: list[tuple] = []
        relayed: list[tuple] = []

        class Both(Recorder):
            def on_response(self, status, reason, headers, keep_alive, length, chunked, body):
                listed.append(  # noqa: B023 - called in this iteration only
                    (
                        status,
                        reason,
                        split_headers(headers, skip)[0],
                        keep_alive,
                        bytes(body),
                    )
                )

            def on_relay(self, status, reason, block, keep_alive, body):
                relayed.append((status, reason, block, keep_alive, bytes(body)))  # noqa: B023 - likewise

        plain = hp.native.ResponseParser(Both(), False, 0, True)
        plain.feed_data(data)
        relay = hp.native.ResponseParser(Both(), False, 0, True)
        relay.relay = True
        relay.feed_data(data)
        assert listed and relayed == listed, data
    # not whole (the body is still coming): the list form and streaming, whatever relay says
    calls: list[object] = []

    class Streams(Recorder):
        def on_response(self, *args: object) -> None:
            calls.append(("response", args[6]))

        def on_relay(self, *args: object) -> None:
            calls.append("relay")

        def on_body(self, data: bytes) -> None:
            calls.append(("body", bytes(data)))

        def on_message_complete(self) -> None:
            calls.append("done")

    p = hp.native.ResponseParser(Streams(), False, 0, True)
    p.relay = True
    p.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    p.feed_data(b"cde")
    assert calls == [("response", None), ("body", b"ab"), ("body", b"cde"), "done"]


def test_a_relayed_response_builds_its_header_list_on_demand() -> None:
    from monolake.worker.http.message import Response

    resp = Response(200, None, b"x", head_block=b"server: up\r\nx-a: b: c\r\n")
    assert resp.head_block is not None
    assert resp.headers == [(b"server", b"up"), (b"x-a", b"b: c")]
    assert resp.head_block is None  # the list (which may now change) is what gets sent
    resp.headers.append((b"x-b", b"1"))
    assert resp.header("x-b") == b"1"
    other = Response(200, None, b"x", head_block=b"server: up\r\n")
    other.headers = [(b"x", b"y")]
    assert other.head_block is None and other.headers == [(b"x", b"y")]
    assert Response(204).headers == [] and Response(204).head_block is None


# -- trailer sections (the chunked decoder's S_TRAILERS) --------------------------------------


class TrailerRecorder(Recorder):
    def on_trailers(self, fields: list) -> None:
        self.events.append(("trailers", fields))


CHUNKED_REQ = b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_RESP = b"HTTP/1.1 200 OK\r\nConnection: X-Named, keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("kind", ["request", "response"])
def test_trailer_fields_are_reported_before_completion(kind: str) -> None:
    """Lower-case names, trimmed values, in order, however the bytes are split; a section
    without fields calls nothing; a protocol without on_trailers does not get them."""
    head = CHUNKED_REQ if kind == "request" else CHUNKED_RESP
    data = head + b"3\r\nabc\r\n0\r\nX-Sum: 42 \r\nGrpc-Status:\t0\r\nX-Empty:\r\n\r\n" + head + b"0\r\n\r\n"
    make = request_parser if kind == "request" else response_parser
    fields = [(b"x-sum", b"42"), (b"grpc-status", b"0"), (b"x-empty", b"")]
    rng = random.Random(3)
    for cuts in [[], *[rng.sample(range(1, len(data)), rng.randint(1, 30)) for _ in range(30)]]:
        rec = TrailerRecorder()
        p = make(rec)
        last = 0
        for c in [*sorted(cuts), len(data)]:
            p.feed_data(data[last:c])
            last = c
        kinds = [e[0] for e in rec.events]
        assert kinds == ["head", "body", "trailers", "done", "head", "done"], rec.events
        assert rec.events[2] == ("trailers", fields)
    plain = feed_split(make, data, [])  # no on_trailers: the fields are dropped, nothing fails
    assert [e[0] for e in plain.events] == ["head", "body", "done", "head", "done"]
    if kind == "response":  # the Connection values the head had, for keep_trailers
        rec = TrailerRecorder()
        p = response_parser(rec)
        p.feed_data(CHUNKED_RESP)
        assert p.connection == b"X-Named, keep-alive"
        p.feed_data(b"0\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert p.connection is None


@pytest.mark.parametrize("kind", ["request", "response"])
@pytest.mark.parametrize(
    "section, why",
    [
        (b"no colon\r\n\r\n", "invalid header name"),
        (b"Bad Name: 1\r\n\r\n", "invalid header name"),
        (b"X-A: 1\r\n folded\r\n\r\n", "obsolete line folding in trailer section"),
        (b"X-A: 1\nX-B: 2\r\n\r\n", "bare LF in chunked body"),
        (b"X-A: a\x01b\r\n\r\n", "control character in header value"),
        (b"X-A: 1\r\n\n", "bare LF in chunked body"),
    ],
)
def test_malformed_trailer_lines_are_refused(kind: str, section: bytes, why: str) -> None:
    head = CHUNKED_REQ if kind == "request" else CHUNKED_RESP
    make = request_parser if kind == "request" else response_parser
    rec = TrailerRecorder()
    with pytest.raises(hp.ParseError) as info:
        make(rec).feed_data(head + b"0\r\n" + section)
    assert info.value.status == (400 if kind == "request" else 502)
    assert str(info.value) == why
    assert not any(e[0] in ("trailers", "done") for e in rec.events)


@pytest.mark.parametrize("kind", ["request", "response"])
def test_trailer_sections_are_bounded_by_the_head_limits(kind: str) -> None:
    """The same counting as a head (HeadLimits.field, the Python twin): fields, one line, the
    sum; 431 for a request, 502 for a response. A section at each limit passes."""
    status = 431 if kind == "request" else 502
    head = CHUNKED_REQ if kind == "request" else CHUNKED_RESP
    limits = hp.HeadLimits(size=200, line=60, count=4, status=status)

    def make(rec: Any) -> Any:
        if kind == "request":
            return hp.native.RequestParser(rec, limits.size, 8192, limits.line, limits.count)
        return hp.native.ResponseParser(rec, False, 0, False, limits.size, limits.line, limits.count)

    def twin(fields: list) -> None:  # the Python counting of the same fields
        size = 0
        for n, (k, v) in enumerate(fields):
            size = limits.field(k, v, size, n)

    cases = [
        [(b"x-%d" % i, b"v") for i in range(4)],  # 4 fields: at the count
        [(b"x-%d" % i, b"v") for i in range(5)],  # 5: over
        [(b"x", b"v" * 57)],  # 1 + 57 + 2 = 60: at the line bound
        [(b"x", b"v" * 58)],  # over it
        [(b"x-%d" % i, b"v" * 45) for i in range(4)],  # 4 * (3 + 45 + 4) = 208: over the sum
        [(b"x-%d" % i, b"v" * 43) for i in range(4)],  # 200: at it
    ]
    for fields in cases:
        section = b"".join(k + b": " + v + b"\r\n" for k, v in fields) + b"\r\n"
        rec = TrailerRecorder()
        try:
            twin(fields)
            expected = None
        except hp.ParseError as exc:
            expected = (exc.status, str(exc))
        try:
            make(rec).feed_data(head + b"0\r\n" + section)
            got = None
        except hp.ParseError as exc:
            got = (exc.status, str(exc))
        assert got == expected, (fields, got, expected)
        if got is None:
            assert ("trailers", fields) in rec.events
    # a line that never ends is refused once it is longer than a field line may be
    with pytest.raises(hp.ParseError) as info:
        make(TrailerRecorder()).feed_data(head + b"0\r\nx: " + b"v" * 100)
    assert info.value.status == status


def test_trailer_inputs_agree_with_the_httptools_twin() -> None:
    """The fuzz targets' differential on trailer sections, without a documented difference to
    excuse them: both parsers report the same fields (tests/fuzz/targets.py)."""
    from tests.fuzz import targets

    sections = [
        b"X-Sum: 42\r\nGrpc-Status: 0\r\n\r\n",
        b"x-a:1\r\nX-A: 2 \r\nHost: h\r\nTE: trailers\r\n\r\n",
        b"X-Empty:\r\n\r\n",
        b"no colon\r\n\r\n",
        b"X-A: 1\r\n folded\r\n\r\n",
    ]
    for section in sections:
        for kind, head in (
            ("request", targets.CHUNKED_REQUEST_HEAD),
            ("response", targets.CHUNKED_RESPONSE_HEAD),
        ):
            data = head + b"3\r\nabc\r\n0\r\n" + section
            for seed in range(12):
                native, twin = targets._outcomes(kind, data, seed)
                assert targets._same(kind, native, twin), (data, seed, native, twin)
