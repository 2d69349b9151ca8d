"""HTTP/1.x parser adapters: native (C, the default), httptools (llhttp) and h11.

The native parsers (``monolake.uring._http``, from the ``monolake.uring._codec`` extension,
which needs no liburing and serves every event loop: see uring/mu_http.c) parse a whole head in C and call the protocol once per head
(``on_request_head`` / ``on_response``), then ``on_body`` and ``on_message_complete``.
httptools and h11 use httptools' callback API (``on_url``, ``on_header``,
``on_headers_complete``, ...; ``H11RequestParser`` / ``H11ResponseParser`` replay h11's events
as those callbacks). The protocols turn both shapes into the same request/response code, and
every parser passes the same tests.

Both report errors as ``ParseError`` (with the status to answer) and an accepted protocol
upgrade as ``UpgradeRequested`` (with the bytes that follow the head, which belong to the tunnel).

Response parsers expose ``leftover``: how many bytes they hold that did not complete a message
(the native parser's buffered partial head, h11's trailing data after a complete response);
after a complete response any is a framing disagreement (see worker/http/client.py). llhttp
keeps no such bytes: it reports them as the callbacks of a next message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import h11

from monolake.worker.http.message import header_tokens

try:  # httptools is a hard dependency, but "auto" must still work where it is missing
    import httptools
    from httptools import HttpParserError, HttpParserUpgrade
except ImportError:  # pragma: no cover - exercised only without httptools
    httptools = None  # type: ignore[assignment]

    class HttpParserError(Exception):  # type: ignore[no-redef]
        pass

    class HttpParserUpgrade(Exception):  # type: ignore[no-redef]
        pass


class ParseError(Exception):
    """The peer sent something that is not acceptable HTTP/1.1; ``status`` is the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class UpgradeRequested(Exception):
    """The message switched protocols; ``rest`` holds the bytes after its head."""

    def __init__(self, rest: bytes) -> None:
        super().__init__("upgrade")
        self.rest = rest


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The bounds of one message head, and the status when one is crossed (431 for a client's
    request, 502 for an upstream's response). ``field`` is the Python twin of field_limits in
    uring/mu_http.c: the same counting, so every parser refuses the same heads."""

    size: int = 65536  # the sum of name + value + 4 over the fields
    line: int = 8192  # one field line: name + ": " + value
    count: int = 100  # fields per head
    status: int = 431

    @classmethod
    def for_requests(cls, cfg: Any) -> HeadLimits:
        return cls(cfg.max_header_size, cfg.max_header_line_size, cfg.max_headers, 431)

    @classmethod
    def for_responses(cls, cfg: Any) -> HeadLimits:
        return cls(cfg.max_response_header_size, cfg.max_header_line_size, cfg.max_headers, 502)

    def field(self, name: bytes, value: bytes, size: int, count: int) -> int:
        """One more field after ``count`` of them summing to ``size``: the new size."""
        if count >= self.count:
            raise ParseError("too many header fields", self.status)
        if len(name) + len(value) + 2 > self.line:
            raise ParseError("header field line too long", self.status)
        size += len(name) + len(value) + 4
        if size > self.size:
            which = "request" if self.status == 431 else "response"
            raise ParseError(f"{which} header block too large", self.status)
        return size


def _load_native() -> Any:
    """monolake.uring._http, or None where the codec extension was not built (no C compiler
    at install time). Independent of the io_uring extension: see uring/_build.py."""
    try:
        from monolake.uring._codec import lib  # type: ignore[import-not-found]

        if lib.mu_http_install() != 0:
            return None
        from monolake.uring import _http  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    _http.configure(ParseError, UpgradeRequested)
    return _http


native = _load_native()
# flags of on_request_head (native)
CHUNKED = native.CHUNKED if native else 1
EXPECT = native.EXPECT if native else 2
CONN_CLOSE = native.CONN_CLOSE if native else 4
CONN_KEEPALIVE = native.CONN_KEEPALIVE if native else 8
UPGRADE = native.UPGRADE if native else 16

PARSERS = ("auto", "native", "httptools", "h11")
# an upstream response whose Content-Length is at most this is collected whole by the native
# parser before it goes on (one copy per byte, one callback, like nginx's proxy buffers);
# larger ones stream with backpressure
COLLECT_MAX = 64 * 1024


def resolve_parser(kind: str) -> str:
    """``auto`` -> native when the extension is built, else httptools, else h11."""
    if kind == "auto":
        return "native" if native is not None else "httptools" if httptools is not None else "h11"
    if kind == "native" and native is None:
        raise ValueError(
            "http_parser = 'native' but the monolake.uring._codec extension is "
            "not built (install a C compiler and python3-dev, then reinstall)"
        )
    if kind == "httptools" and httptools is None:
        raise ValueError("http_parser = 'httptools' but httptools is not installed")
    if kind not in PARSERS:
        raise ValueError(f"unknown http_parser {kind!r}")
    return kind


def new_request_parser(kind: str, proto: Any, limits: HeadLimits, max_uri: int) -> Any:
    """httptools and h11 leave the field limits to the protocol's on_header (limits.field)."""
    if kind == "native":
        return native.RequestParser(proto, limits.size, max_uri, limits.line, limits.count)
    if kind == "httptools":
        return _HttptoolsRequestParser(proto)
    return H11RequestParser(proto, limits.size)


def new_response_parser(
    kind: str, proto: Any, method: str, upgrade: bool, limits: HeadLimits = HeadLimits(status=502)
) -> Any:
    if kind == "native":
        # lend: a body that came with its head reaches on_response as a view, not a copy
        return native.ResponseParser(
            proto, method == "HEAD", COLLECT_MAX, True, limits.size, limits.line, limits.count
        )
    if kind == "httptools":
        return _HttptoolsResponseParser(proto)
    return H11ResponseParser(proto, method, upgrade, limits.size)


class _UpgradeAsRest:
    """Mixed into httptools' parsers: llhttp stops at an upgrade with the offset of the bytes
    after the head; raise the ``UpgradeRequested`` the other parsers raise, so the protocols
    handle one exception."""

    def feed_data(self, data: bytes) -> None:
        try:
            super().feed_data(data)  # type: ignore[misc]
        except HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            raise UpgradeRequested(bytes(data[offset:])) from None


if httptools is not None:

    class _HttptoolsRequestParser(_UpgradeAsRest, httptools.HttpRequestParser):  # type: ignore[misc]
        def __init__(self, proto: Any) -> None:
            super().__init__(proto)
            # llhttp refuses HTTP/1.2; the protocol decides versions as for the other parsers
            # (1.x served as 1.1, 2 and later 505)
            self.set_dangerous_leniencies(lenient_version=True)

    class _HttptoolsResponseParser(_UpgradeAsRest, httptools.HttpResponseParser):  # type: ignore[misc]
        pass


def _check_framing(head: bytes | bytearray) -> None:
    """Content-Length must be one run of digits, at most once; Transfer-Encoding exactly
    ``chunked``, at most once, and never with Content-Length (h11 merges or tolerates some)."""
    cl = te = 0
    for line in bytes(head).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            cl += 1
            if not value.isdigit():
                raise ParseError("invalid Content-Length")
        elif name == b"transfer-encoding":
            te += 1
            if value.lower() != b"chunked":
                raise ParseError("unsupported Transfer-Encoding")
    if cl > 1:
        raise ParseError("duplicate Content-Length")
    if te > 1:
        raise ParseError("duplicate Transfer-Encoding")
    if cl and te:
        raise ParseError("Content-Length with Transfer-Encoding")


# h11 accepts chunk sizes of up to 20 hex digits (more than 64 bits); llhttp refuses an
# overflow. Both must refuse the same input, so h11's chunk-size pattern is narrowed to 16.
try:
    from h11 import _readers as _h11_readers

    _h11_readers.chunk_header_re = re.compile(
        _h11_readers.chunk_header_re.pattern.replace(b"{1,20}", b"{1,16}")
    )
except (ImportError, AttributeError):  # pragma: no cover - another h11 layout: keep its own
    pass


_VERSION_SUFFIX = re.compile(rb" HTTP/[0-9]\.[0-9]\r\n")


def check_request_line(buf: bytes | bytearray) -> None:
    """An incomplete head whose request line is complete: 400 now if that line has no
    ``HTTP/x.y`` (an HTTP/0.9 request gets no head end, so it would wait for the header
    timeout). The twin of the same check in uring/mu_http.c; leading empty lines are skipped,
    as between pipelined requests."""
    start = 0
    while buf[start : start + 2] == b"\r\n":
        start += 2
    nl = buf.find(b"\n", start)
    if nl < 0:
        return
    if nl - start < 10 or not _VERSION_SUFFIX.fullmatch(buf, nl - 10, nl + 1):
        raise ParseError("invalid request line (an HTTP/0.9 request?)")


def _check_head_bytes(head: bytes | bytearray) -> None:
    """Reject what h11 tolerates but an upstream might read differently (smuggling defences)."""
    if b"\x00" in head:
        raise ParseError("NUL byte in request head")
    if head.count(b"\n") != head.count(b"\r\n"):
        raise ParseError("bare LF in request head")
    if b"\n " in head or b"\n\t" in head:
        raise ParseError("obsolete line folding in request head")


def _check_head_so_far(buf: bytearray) -> None:
    """The head received so far (up to its blank line, if it has come): its bytes, and while
    it is incomplete, the request line's shape."""
    end = buf.find(b"\r\n\r\n")
    _check_head_bytes(buf if end < 0 else buf[: end + 4])
    if end < 0:
        check_request_line(buf)


def _deliver_head(proto: Any, headers: Any) -> None:
    """A parsed head's fields to the httptools-style callbacks (after on_url / on_status)."""
    for k, v in headers.raw_items():
        proto.on_header(k, v)
    proto.on_headers_complete()


def _deliver_end(proto: Any, ev: h11.EndOfMessage) -> None:
    """A message's end, with the trailer section of a chunked body if it had one."""
    if ev.headers:
        proto.on_trailers([(k.lower(), v) for k, v in ev.headers.raw_items()])
    proto.on_message_complete()


class _H11Parser:
    """What the request and the response parser share: the message's HTTP version."""

    _version: bytes

    def get_http_version(self) -> str:
        return self._version.decode()


class H11RequestParser(_H11Parser):
    """Server-side h11 used as a pure parser (we never send through it)."""

    def __init__(self, proto: Any, max_head: int) -> None:
        self._proto = proto
        self._max = max_head
        self._method = b"GET"
        self._version = b"1.1"
        self._upgrade = False
        self._headbuf = bytearray()
        self._in_body = False
        self._conn = self._new_conn()

    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max)

    # httptools-compatible accessors
    def get_method(self) -> bytes:
        return self._method

    def should_upgrade(self) -> bool:
        return self._upgrade

    def feed_data(self, data: bytes) -> None:
        if not self._in_body:
            self._headbuf += data
            _check_head_so_far(self._headbuf)
        self._conn.receive_data(data)
        self._drain()

    def _drain(self) -> None:
        proto = self._proto
        while True:
            try:
                ev = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                hint = getattr(exc, "error_status_hint", 400) or 400
                raise ParseError(str(exc), 431 if hint == 431 else 400) from exc
            if ev is h11.NEED_DATA:
                return
            if isinstance(ev, h11.Request):
                _check_framing(self._headbuf[: self._headbuf.find(b"\r\n\r\n")])
                lowered = [(k.lower(), v) for k, v in ev.headers.raw_items()]
                names = {k for k, _ in lowered}
                self._method = ev.method
                self._version = ev.http_version
                conn_tokens = header_tokens(lowered, b"connection")
                self._upgrade = b"upgrade" in names and b"upgrade" in conn_tokens
                self._in_body = True
                self._headbuf = bytearray()
                proto.on_message_begin()
                proto.on_url(ev.target)
                _deliver_head(proto, ev.headers)
            elif isinstance(ev, h11.Data):
                proto.on_body(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                _deliver_end(proto, ev)
                if not self._upgrade:
                    # start the next cycle at once (h11 would refuse more data after an
                    # HTTP/1.0 request; keep-alive is decided by the server, not by h11)
                    self._next_cycle(bytes(self._conn.trailing_data[0]))
            elif ev is h11.PAUSED:
                rest, _closed = self._conn.trailing_data
                rest = bytes(rest)
                if self._upgrade:
                    raise UpgradeRequested(rest)
                self._next_cycle(rest)
            elif isinstance(ev, h11.ConnectionClosed):
                return

    def _next_cycle(self, rest: bytes) -> None:
        """A fresh h11 connection for the next request, fed what followed the last one."""
        self._conn = self._new_conn()
        self._in_body = False
        self._headbuf = bytearray(rest)
        if rest:
            _check_head_so_far(self._headbuf)
            self._conn.receive_data(rest)


class H11ResponseParser(_H11Parser):
    """Client-side h11 for one response cycle (a new one per request: it must know the method)."""

    def __init__(self, proto: Any, method: str, upgrade: bool, max_head: int = 65536) -> None:
        self._proto = proto
        self.leftover = 0  # bytes after the complete response (see UpstreamConnection)
        self._status = 0
        self._version = b"1.1"
        self._keep_alive = True
        # h11's own bound on a head still incomplete (status line and line ends included); the
        # fields are counted exactly by the protocol's on_header (HeadLimits.field)
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head + 8192)
        headers = [("host", "upstream")]
        if upgrade:
            headers += [("connection", "upgrade"), ("upgrade", "websocket")]
        conn.send(h11.Request(method=method, target="/", headers=headers))
        conn.send(h11.EndOfMessage())
        self._conn = conn

    def get_status_code(self) -> int:
        return self._status

    def should_keep_alive(self) -> bool:
        return self._keep_alive

    def feed_data(self, data: bytes) -> None:
        conn = self._conn
        if data:
            conn.receive_data(data)
        else:
            conn.receive_data(b"")  # EOF: a close-delimited body ends here
        proto = self._proto
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ParseError(str(exc), 502) from exc
            if ev is h11.NEED_DATA:
                return
            if isinstance(ev, (h11.Response, h11.InformationalResponse)):
                self._status = ev.status_code
                self._version = ev.http_version
                tokens = header_tokens(ev.headers, b"connection")  # h11: names lower-cased
                self._keep_alive = ev.http_version == b"1.1" and b"close" not in tokens
                proto.on_message_begin()
                proto.on_status(ev.reason)
                _deliver_head(proto, ev.headers)
                if isinstance(ev, h11.InformationalResponse):
                    if ev.status_code == 101:
                        continue
                    proto.on_message_complete()
            elif isinstance(ev, h11.Data):
                proto.on_body(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                _deliver_end(proto, ev)
            elif ev is h11.PAUSED:
                rest, _closed = conn.trailing_data
                if self._status == 101:
                    raise UpgradeRequested(bytes(rest))
                # the response is complete and more bytes follow it: not ours to parse
                self.leftover = len(rest)
                return
            elif isinstance(ev, h11.ConnectionClosed):
                return
