"""The native parsers' chunk_left / skip_chunk (uring/mu_http.c), which let a spliced chunk
payload go around the parser (worker/http/splice_relay.py), against a Python twin: at every
cut through random chunked bodies, ``chunk_left()`` is what the twin says is still due of the
chunk at that offset; skipping any part of it and feeding the rest gives the same message
(the payload minus the skipped bytes, in order, then the end) as feeding everything."""

from __future__ import annotations

import random
from typing import Any

import pytest

from monolake.worker.http.parser import native

pytestmark = pytest.mark.skipif(native is None, reason="native parser not built")

REQUEST_HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class Events:
    """What a parser reports: body pieces and the end (heads are ignored)."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = 0

    def on_request_head(self, *args: Any) -> None: ...

    def on_response(self, *args: Any) -> None: ...

    def on_body(self, data: Any) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete += 1


def body_and_due(rng: random.Random) -> tuple[bytes, bytes, list[int]]:
    """A random chunked body (extensions, a trailer), its payload, and the twin's answer per
    offset: how many payload bytes of the chunk at that offset are still due (0 outside)."""
    out, payload, due = bytearray(), bytearray(), []
    for _ in range(rng.randint(0, 6)):
        n = rng.choice([1, 2, 17, 300, rng.randint(1, 5000)])
        line = b"%x%s\r\n" % (n, b";e=1" if rng.random() < 0.3 else b"")
        data = bytes(rng.getrandbits(8) for _ in range(n))
        due += [0] * len(line) + list(range(n, 0, -1)) + [0, 0]
        out += line + data + b"\r\n"
        payload += data
    tail = b"0\r\nx-t: 1\r\n\r\n" if rng.random() < 0.5 else b"0\r\n\r\n"
    due += [0] * (len(tail) + 1)
    return bytes(out + tail), bytes(payload), due


def new_parser(kind: str, ev: Events) -> Any:
    if kind == "request":
        return native.RequestParser(ev, 65536, 8192)
    return native.ResponseParser(ev, False)


@pytest.mark.parametrize("kind", ["request", "response"])
def test_chunk_left_and_skip_match_the_twin(kind: str) -> None:
    rng = random.Random(13)
    head = REQUEST_HEAD if kind == "request" else RESPONSE_HEAD
    for _ in range(300):
        wire, payload, due = body_and_due(rng)
        ev = Events()
        p = new_parser(kind, ev)
        p.feed_data(head)
        skipped = bytearray()
        pos = 0
        while pos < len(wire):
            cut = min(len(wire), pos + rng.randint(1, 700))
            p.feed_data(wire[pos:cut])
            pos = cut
            left = p.chunk_left()
            assert left == (due[pos] if pos < len(wire) else 0), (pos, left, due[pos])
            if left:
                with pytest.raises(ValueError):
                    p.skip_chunk(left + 1)  # more than is due: refused, nothing changed
                assert p.chunk_left() == left
                k = rng.choice([0, 1, left, rng.randint(0, left)])
                p.skip_chunk(k)
                assert p.chunk_left() == left - k
                skipped += wire[pos : pos + k]
                ev.body += wire[pos : pos + k]  # what went around the parser, in its place
                pos += k
        assert ev.complete == 1
        assert bytes(ev.body) == payload, (len(ev.body), len(payload), len(skipped))


def test_skip_outside_a_chunk_is_refused() -> None:
    ev = Events()
    p = new_parser("request", ev)
    p.feed_data(REQUEST_HEAD + b"a")  # inside a chunk-size line: nothing may be skipped
    assert p.chunk_left() == 0
    with pytest.raises(ValueError):
        p.skip_chunk(1)
    p.feed_data(b"\r\n0123456789")
    assert p.chunk_left() == 0  # the chunk's payload is all in: its CRLF is due
    p.feed_data(b"\r\n0\r\n\r\n")
    assert ev.complete == 1 and bytes(ev.body) == b"0123456789"
