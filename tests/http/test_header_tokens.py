"""``header_tokens``: the one parser of comma-separated header tokens (Connection, TE).

The proxy decides keep-alive, upgrades and which headers are hop-by-hop from these tokens, in
the server's head checks, both h11 parsers, the forwarding rules and the h2 translation; a
token misread in one of them and not the others would make them disagree on one request.
"""

from __future__ import annotations

import h11
import pytest

from monolake.worker.http.headers import split_response_headers
from monolake.worker.http.message import header_tokens
from monolake.worker.http.parser import H11ResponseParser


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"close"], {b"close"}),
        ([b"Close"], {b"close"}),
        ([b"KEEP-ALIVE, Upgrade"], {b"keep-alive", b"upgrade"}),
        ([b"  close\t"], {b"close"}),
        ([b"a ,\tb , c"], {b"a", b"b", b"c"}),
        ([b",,a,, ,b,"], {b"a", b"b"}),
        ([b""], set()),
        ([b" , ,"], set()),
        ([b"upgrade", b"X-Private"], {b"upgrade", b"x-private"}),
        ([b"a, b", b"b, c", b"A"], {b"a", b"b", b"c"}),
    ],
)
def test_tokens_of_connection_values(values: list[bytes], expected: set[bytes]) -> None:
    headers = [(b"host", b"x")] + [(b"connection", v) for v in values] + [(b"via", b"1.1 y")]
    assert header_tokens(headers, b"connection") == expected


def test_only_the_named_header_counts() -> None:
    headers = [(b"te", b"trailers"), (b"connection", b"close"), (b"x-connection", b"keep-alive")]
    assert header_tokens(headers, b"connection") == {b"close"}
    assert header_tokens(headers, b"te") == {b"trailers"}
    assert header_tokens(headers, b"upgrade") == set()
    assert header_tokens([], b"connection") == set()


def test_names_are_matched_lower_case() -> None:
    """Callers pass lower-cased names (the parsers lower-case them); a raw name is not folded."""
    assert header_tokens([(b"Connection", b"close")], b"connection") == set()


def test_h11_headers_are_accepted_as_they_are() -> None:
    """h11 lower-cases names when its Headers are iterated: the h11 parsers pass them as is."""
    ev = h11.Response(status_code=200, headers=[("Connection", "Keep-Alive, CLOSE"), ("Content-Length", "0")])
    assert header_tokens(ev.headers, b"connection") == {b"keep-alive", b"close"}


class _Proto:
    """The callbacks a response parser drives; only what the test reads is kept."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_begin(self) -> None: ...
    def on_status(self, reason: bytes) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, data: bytes) -> None: ...

    def on_message_complete(self) -> None:
        self.complete += 1


@pytest.mark.parametrize(
    ("connection", "keep_alive"),
    [
        (None, True),
        (b"keep-alive", True),
        (b"Close", False),
        (b"foo, ,CLOSE ", False),
        (b"closed", True),
    ],
)
def test_h11_response_parser_keep_alive(connection: bytes | None, keep_alive: bool) -> None:
    proto = _Proto()
    parser = H11ResponseParser(proto, "GET", upgrade=False)
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    parser.feed_data(head + b"\r\n")
    assert proto.complete == 1
    assert parser.should_keep_alive() is keep_alive


def test_headers_named_by_connection_are_dropped_from_responses() -> None:
    headers = [
        (b"connection", b"X-Private , ,Keep-Alive"),
        (b"connection", b"etag"),
        (b"x-private", b"1"),
        (b"etag", b'"v"'),
        (b"keep-alive", b"timeout=5"),
        (b"x-kept", b"yes"),
    ]
    out, _length, _chunked = split_response_headers(headers, 200, via=False)
    assert out == [(b"x-kept", b"yes")]
