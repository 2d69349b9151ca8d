"""HTTP/1.1 request and response objects as services see them.

Header names are lower-case bytes, values raw bytes, order preserved (a list of pairs, the
cheapest structure to build from a parser and to serialise again).
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

Headers = list[tuple[bytes, bytes]]

REASONS: dict[int, bytes] = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}


def reason_for(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def header_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every ``name`` header (``name`` and the header names
    lower-case), each lower-cased and stripped of white space; empty list elements
    (``a,,b``, RFC 9110 §5.6.1) are skipped. The one parser of Connection, TE and the like."""
    out: set[bytes] = set()
    for k, v in headers:
        if k == name:
            for tok in v.split(b","):
                tok = tok.strip().lower()
                if tok:
                    out.add(tok)
    return out


# fields a trailer section must not carry (RFC 9110 §6.5.1: framing, routing, request
# modifiers, authentication, response controls, content format; RFC 9110 §7.6.1: connection
# handling). A peer's trailers with them lose those fields, not the message; the list is
# Go net/http's (badTrailer) plus the HTTP/1.1 connection fields
NOT_IN_TRAILERS = frozenset(
    (
        b"authorization",
        b"cache-control",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"expect",
        b"host",
        b"http2-settings",
        b"keep-alive",
        b"max-forwards",
        b"pragma",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"range",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"www-authenticate",
    )
)


def keep_trailers(
    fields: Iterable[tuple[bytes, bytes]], head: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """The trailer fields a proxy forwards, from the ones a peer sent (names lower-case):
    without pseudo-headers, the fields of ``NOT_IN_TRAILERS``, the ones the message head's
    ``Connection`` named (``head``: its header list; hop-by-hop for the whole message, RFC
    9110 §7.6.1) and values with CR, LF or NUL. Every parser's trailers pass through it when
    they arrive, so what a body's ``trailers`` holds is safe to send on, as HTTP/1.1 trailer
    lines or as HTTP/2 trailing HEADERS."""
    named = header_tokens(head, b"connection")
    return [
        (k, v)
        for k, v in fields
        if k[:1] != b":"
        and k not in NOT_IN_TRAILERS
        and k not in named
        and b"\r" not in v
        and b"\n" not in v
        and b"\x00" not in v
    ]


def trailer_lines(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The trailer section of a chunked message (``name: value\\r\\n`` per field, no final
    blank line) from trailer fields another peer sent: an HTTP/1.1 peer's trailer section, an
    h2 peer's trailing HEADERS, gRPC's ``grpc-status``; filtered by ``keep_trailers`` again
    (an h2 peer's come from another intake). The one encoder of trailers towards HTTP/1.1,
    in both directions."""
    return b"".join(k + b": " + v + b"\r\n" for k, v in keep_trailers((k.lower(), v) for k, v in fields))


class Request:
    """A parsed request head plus its body (None when the request has no body)."""

    __slots__ = (
        "body",
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "query",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        version: str,
        headers: Headers,
        body: Any = None,
        keep_alive: bool = True,
        upgrade: bool = False,
        expect_continue: bool = False,
        content_length: int | None = None,
        chunked: bool = False,
        host: str = "",
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body  # BodyStream | None
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.content_length = content_length
        self.chunked = chunked
        self.host = host  # Host header without port, lower-case

    def header(self, name: str | bytes) -> bytes | None:
        key = name.lower().encode("latin-1") if isinstance(name, str) else name.lower()
        return get_header(self.headers, key)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version}>"


class Response:
    """What a service returns.

    ``body`` is bytes (sent with Content-Length) or a ``BodyStream`` (streamed: Content-Length
    when its length is known, else chunked, or close-delimited for HTTP/1.0 clients).
    ``tunnel`` is set on a 101 answer whose connection becomes a byte pipe (see tunnel.py).

    A relayed upstream response (``head_block=``) carries its headers as the serialised lines
    the client gets (no framing headers), and builds the ``headers`` list only when somebody
    asks for it (which drops the block: the list is then what is sent).
    """

    __slots__ = (
        "_headers",
        "body",
        "close",
        "head_block",
        "reason",
        "status",
        "tunnel",
        "upstream_info",
        "version",
    )

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: Any = b"",
        *,
        reason: bytes | None = None,
        close: bool = False,
        head_block: bytes | None = None,
    ) -> None:
        self.status = status
        self.reason = reason if reason is not None else reason_for(status)
        self._headers: Headers | None = headers if headers is not None else [] if head_block is None else None
        self.head_block = head_block
        self.body = body
        self.version = "1.1"
        self.tunnel: Any = None
        self.close = close  # ask the server to close the connection after this response
        self.upstream_info: Any = None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            block = self.head_block or b""  # _headers is None only while head_block holds them
            headers = self._headers = [
                (name, value)
                for name, _, value in (line.partition(b": ") for line in block.split(b"\r\n") if line)
            ]
            self.head_block = None
        return headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value
        self.head_block = None

    def header(self, name: str | bytes) -> bytes | None:
        key = name.lower().encode("latin-1") if isinstance(name, str) else name.lower()
        return get_header(self.headers, key)

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


def text_response(
    status: int, text: str | None = None, *, close: bool = False, extra: Iterable[tuple[bytes, bytes]] = ()
) -> Response:
    """A small ``text/plain`` response, the form of every error the proxy generates."""
    body = ((text if text is not None else reason_for(status).decode()) + "\n").encode()
    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8"), *extra]
    return Response(status, headers, body, close=close)
