"""The sans-I/O core of a server connection (the h11 idea): bytes in, events out.

``RequestReader`` owns the request parser (native, httptools or h11) and everything that is
decided from the bytes alone: the head checks (version, Host, target, CONNECT, framing
headers, size limits, with the 4xx each one answers), the request bodies (fed into the
``BodyStream`` of their ``Request``), the connection phase that the timeouts read, and the
end of parsing (an upgrade, a malformed request). It never touches a transport or a clock
other than the one it is given; what it finds goes to its ``ReaderEvents``.

``must_close`` and ``response_head`` are the other half: the keep-alive rules and the
serialised response head (framing, ``Connection``) for a request and its response.

Both are driven by ``HttpServerProtocol`` (protocol.py) and tested with plain bytes
(tests/http/test_connection_core.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol

from monolake.worker.http.body import BodyError, BodyStream
from monolake.worker.http.headers import split_headers
from monolake.worker.http.message import Request, Response, header_tokens, keep_trailers
from monolake.worker.http.parser import (
    CHUNKED,
    CONN_CLOSE,
    CONN_KEEPALIVE,
    EXPECT,
    UPGRADE,
    HttpParserError,
    ParseError,
    UpgradeRequested,
    new_request_parser,
)

# connection phases, for the timeouts: between requests, in a head, in a body, answering
IDLE, HEAD, BODY, BUSY = 0, 1, 2, 3
PHASE_NAMES = ("idle", "header", "body", "busy")

PIPELINE_MAX = 16  # parsed-but-unanswered requests before reading pauses

_SKIP_RESPONSE_HEADERS = (b"content-length", b"transfer-encoding", b"connection")
_SKIP_TUNNEL_HEADERS = (b"content-length", b"transfer-encoding")
_SPECIAL_REQUEST_HEADERS = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"connection", b"expect")
)

# what response_head says about the body
BODY_NONE, BODY_BYTES, BODY_STREAM = 0, 1, 2

_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


class ReaderEvents(Protocol):
    """What a ``RequestReader`` reports. Every call happens inside ``RequestReader.feed``."""

    def on_request(self, req: Request) -> None:
        """A whole request head; its body (``req.body``) is fed as it arrives."""

    def on_error(self, status: int, reason: str, req: Request | None, internal: BaseException | None) -> None:
        """Malformed input: answer ``status``; nothing more is parsed. ``req`` is the request
        whose body was arriving (its body has failed), ``internal`` a bug's exception (500)."""

    def on_upgrade(self, rest: bytes) -> None:
        """The parser stopped after an Upgrade request; ``rest`` belongs to the tunnel."""

    def on_continue(self, req: Request) -> None:
        """``req`` asked for ``Expect: 100-continue`` and its body is now wanted."""


class ReaderSettings(Protocol):
    """The limits and timeouts a reader needs (``ServerRuntime`` has them all)."""

    parser_kind: str
    head_limits: Any
    max_uri: int
    max_head: int
    max_body: int
    header_timeout: float
    body_timeout: float
    body_timeout_on: bool


def _status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 512:
            _STATUS_LINES[key] = line
    return line


_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]+")


def _split_absolute(target: str) -> tuple[str, str, str]:
    """``http://authority/path?query`` -> (authority, path, query); 400 without an authority
    (or with userinfo, which RFC 9110 §4.2.4 forbids in http URIs)."""
    rest = target.split("://", 1)[1]
    end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority = rest[:end]
    # the authority becomes the Host sent upstream: RFC 3986 characters only (reg-name,
    # IP-literal, port), as llhttp checks them; no userinfo (RFC 9110 §4.2.4 forbids it)
    if not _AUTHORITY.fullmatch(authority) or "@" in authority:
        raise ParseError("invalid authority in the request target")
    path_q = rest[end:].partition("#")[0]
    path, _, query = path_q.partition("?")
    return authority, path or "/", query


def _with_host(headers: list[tuple[bytes, bytes]], host: bytes) -> list[tuple[bytes, bytes]]:
    """The header list with its Host field (added when missing) set to ``host``."""
    out = [(k, host if k == b"host" else v) for k, v in headers]
    if not any(k == b"host" for k, _ in headers):
        out.append((b"host", host))
    return out


def _hostname(host: bytes | None) -> str:
    """The Host header without its port, lower-case (``[v6]`` without brackets)."""
    if not host:
        return ""
    h = host.decode("latin-1").lower()
    if h[:1] == "[":
        return h[1 : h.find("]")] if "]" in h else h
    return h.partition(":")[0]


def _target(
    method: str, target: str, host: bytes | None, headers: list[tuple[bytes, bytes]]
) -> tuple[str, str, bytes | None, list]:
    """(path, query, host, headers) of a request target; ParseError for one we refuse."""
    if target[:1] == "/":
        path, _, query = target.partition("?")
        return path, query, host, headers
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        # RFC 9112 §3.2.2: the target's authority wins over Host, which it replaces
        authority, path, query = _split_absolute(target)
        host = authority.encode("latin-1")
        return path, query, host, _with_host(headers, host)
    if target == "*" and method == "OPTIONS":
        return "*", "", host, headers
    raise ParseError("invalid request target")


def _framing_flags(
    headers: list[tuple[bytes, bytes]], should_upgrade: Callable[[], bool]
) -> tuple[bytes | None, int | None, int]:
    """httptools / h11: (host, content length, flags) from a head's header list, with the
    checks the native parser makes in C (one Host, one numeric Content-Length, not both
    framings, only ``Expect: 100-continue``)."""
    host = None
    content_length = None
    chunked = False
    conn_tokens: set[bytes] | None = None
    expect = False
    special = _SPECIAL_REQUEST_HEADERS
    for k, v in headers:
        if k not in special:
            continue
        if k == b"host":
            if host is not None:
                raise ParseError("more than one Host header")
            host = v
        elif k == b"content-length":
            if content_length is not None:
                raise ParseError("more than one Content-Length")
            if not v.isdigit():
                raise ParseError("invalid Content-Length")
            content_length = int(v)
        elif k == b"transfer-encoding":
            # exactly "chunked", once, as native and h11 (_check_framing) refuse otherwise:
            # llhttp takes "gzip" then "chunked" on two lines, and the coding would be lost
            # once the hop-by-hop field is dropped
            if chunked:
                raise ParseError("duplicate Transfer-Encoding")
            if v.strip(b" \t").lower() != b"chunked":
                raise ParseError("unsupported Transfer-Encoding")
            chunked = True
        elif k == b"connection":
            conn_tokens = header_tokens(headers, b"connection")
        elif v.lower() == b"100-continue":  # expect
            expect = True
        else:
            raise ParseError("unsupported Expect", 417)
    if chunked and content_length is not None:
        raise ParseError("Content-Length with Transfer-Encoding")
    flags = CHUNKED if chunked else 0
    if expect:
        flags |= EXPECT
    if conn_tokens is not None:
        if b"close" in conn_tokens:
            flags |= CONN_CLOSE
        if b"keep-alive" in conn_tokens:
            flags |= CONN_KEEPALIVE
        if should_upgrade():
            flags |= UPGRADE
    return host, content_length, flags


class _Sink:
    """What a released reader reports to: nothing listens any more."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


_SINK: Any = _Sink()
_RELEASED: Any = _Sink()  # the parser of a released reader: started, feeds nothing
_NO_LIST: list[Any] = []  # shared, always empty: replaced before anything is appended


class RequestReader:
    """Parses a connection's requests; see the module docstring. ``producer`` is what a
    request body pauses and resumes (the connection's reading) when it backs up."""

    __slots__ = (
        "_head_bytes",
        "_head_size",
        "_headers",
        "_trailers",
        "_url",
        "_url_len",
        "clock",
        "dead",
        "deadline",
        "events",
        "fresh",
        "parser",
        "phase",
        "producer",
        "receiving",
        "settings",
    )

    def __init__(
        self,
        settings: ReaderSettings,
        events: ReaderEvents,
        producer: Any,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.events = events
        self.producer = producer
        self.settings = settings
        self.clock = clock
        self.parser: Any = None
        self.phase = HEAD  # until start(): a prelude or a TLS handshake is a head too
        self.deadline = clock() + settings.header_timeout
        self.dead = False  # parsing ended (error, upgrade, timeout, closing)
        self.fresh = True  # no request byte received yet
        self.receiving: Request | None = None  # the request whose body is arriving
        self._url: list[bytes] = _NO_LIST  # lists from on_message_begin (httptools, h11)
        self._url_len = 0
        self._headers: list[tuple[bytes, bytes]] = _NO_LIST
        self._trailers: list[tuple[bytes, bytes]] = _NO_LIST  # httptools: a body's trailer fields
        self._head_size = 0
        self._head_bytes = 0

    @property
    def started(self) -> bool:
        return self.parser is not None

    def start(self) -> None:
        """Start parsing HTTP (after the PROXY protocol header and the TLS handshake)."""
        s = self.settings
        self.parser = new_request_parser(s.parser_kind, self, s.head_limits, s.max_uri)
        self.phase = IDLE
        self.deadline = self.clock() + s.header_timeout

    # -- input -----------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse ``data``; events follow from inside this call."""
        if self.dead:
            return
        if self.phase == IDLE:
            self.phase = HEAD
            self.fresh = False
            self.deadline = self.clock() + self.settings.header_timeout
        try:
            self.parser.feed_data(data)
        except UpgradeRequested as exc:
            self._upgrade(exc.rest)
        except (HttpParserError, ParseError) as exc:
            cause = exc.__context__ if not isinstance(exc, ParseError) else exc
            if isinstance(cause, ParseError):
                self.fail(cause.status, str(cause))
            elif cause is not None and not isinstance(cause, HttpParserError):
                self.fail(500, "internal error", cause)  # an exception in our callback
            else:
                self.fail(400, str(exc))
        except Exception as exc:  # a request must never take the worker down
            self.fail(500, "internal error", exc)
        else:
            if self.phase == HEAD:  # still inside a head after this read: bound it
                self._head_bytes += len(data)
                s = self.settings
                if self._head_bytes > s.max_head + s.max_uri:
                    self.fail(431, "request header block too large")
                elif s.parser_kind == "httptools" and self._url_len and not self._headers:
                    self._check_http09(data)
            elif self.phase == BODY and self.settings.parser_kind == "httptools":
                self._bound_trailers(len(data))

    def fail(self, status: int, reason: str, internal: BaseException | None = None) -> None:
        """Stop parsing: the request being received fails, ``on_error`` answers ``status``."""
        self.dead = True
        req = self.receiving
        if req is not None:
            self.receiving = None
            body = req.body
            if body is not None and not body.done:
                body.fail(BodyError(reason))
        self.events.on_error(status, reason, req, internal)

    def stop(self, why: str) -> Request | None:
        """Parse nothing more (a body timeout, a lingering close); the body being received
        fails with ``why``. The request it belonged to, or None."""
        self.dead = True
        req = self.receiving
        if req is not None:
            self.receiving = None
            if req.body is not None and not req.body.done:
                req.body.fail(BodyError(why))
        return req

    def release(self) -> None:
        """The connection is gone: parse nothing more and drop the references back to it
        (the protocol and the parser point at each other through this reader)."""
        self.dead = True
        self.receiving = None
        self.parser = _RELEASED
        self.events = self.producer = _SINK
        self._url = self._headers = self._trailers = _NO_LIST

    def peer_closed(self) -> None:
        """The client sent FIN: a body still arriving is incomplete."""
        req = self.receiving
        if req is not None and req.body is not None and not req.body.done:
            req.body.fail(BodyError("client closed before the body was complete"))

    def _upgrade(self, rest: bytes) -> None:
        self.dead = True
        req = self.receiving
        if req is not None:
            self.receiving = None
            if req.body is not None and not req.body.done:
                req.body.finish()
        self.events.on_upgrade(rest)

    # -- timeouts --------------------------------------------------------------------------
    def due(self, now: float, reading_paused: bool) -> int:
        """The phase whose timeout has expired at ``now`` (its deadline is then cleared), or
        -1. A body is not late while we are the ones not reading it."""
        deadline = self.deadline
        if not deadline or now < deadline:
            return -1
        if reading_paused and self.phase == BODY:
            self.deadline = now + self.settings.body_timeout
            return -1
        self.deadline = 0.0
        return self.phase

    def answered(self, keepalive_timeout: float) -> None:
        """The last response in flight went out: idle until the next request, unless one
        is already being received."""
        if self.receiving is None:
            self.phase = IDLE
            self.deadline = self.clock() + keepalive_timeout

    def tunnel(self) -> None:
        """The connection became a tunnel: no more phases or timeouts."""
        self.phase = BUSY
        self.deadline = 0.0

    def _bound_trailers(self, n: int) -> None:
        """httptools: llhttp hands a trailer field over in pieces that httptools joins until
        its line ends, without bound; the bytes of reads that brought no body byte (a
        trailer section, or a chunk-size line) are bounded as a head is (on_body restarts the
        count: ``_head_bytes`` is -1 after a read that fed the body)."""
        if self._head_bytes < 0:
            self._head_bytes = 0
            return
        self._head_bytes += n
        s = self.settings
        if self._head_bytes > s.max_head + s.max_uri:
            self.fail(431, "request trailer section too large")

    def _check_http09(self, data: bytes) -> None:
        """httptools: llhttp reads a request line without ``HTTP/x.y`` as HTTP/0.9 and waits
        for one more line end; refuse it as soon as its line is in, as native and h11 do. The
        version reads 0.0 until a request line with one was parsed, so only before the first
        request of a connection (llhttp keeps the last version after that: a later HTTP/0.9
        line on a keep-alive connection is refused at the next line end). The URL's last
        piece after the last LF: the line is still open (llhttp ends a URL with an empty
        piece when it ends in a later read)."""
        if self.parser.get_http_version() != "0.0":
            return
        nl = data.rfind(b"\n")
        if nl < 0:
            return
        piece = next((p for p in reversed(self._url) if p), b"")
        if not piece or piece not in data[nl + 1 :]:
            self.fail(400, "invalid request line (an HTTP/0.9 request?)")

    # -- parser callbacks (httptools API) --------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = []
        self._url_len = 0
        self._headers = []
        self._head_size = 0
        if self.phase == IDLE:
            self.phase = HEAD
            self.deadline = self.clock() + self.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        if self._url_len > self.settings.max_uri:
            raise ParseError("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps the trailing whitespace of a value; it is not part of it (RFC 9110
        # §5.5), and the native parser and h11 drop it
        value = value.rstrip(b" \t")
        if self.receiving is not None:
            # httptools calls on_header for the trailer fields of a chunked body too (after
            # its last on_chunk_header, before on_message_complete; no on_headers_complete):
            # they must not join the head's list, which went upstream already
            trailers = self._trailers
            if trailers is _NO_LIST:
                trailers = self._trailers = []
            self._head_size = self.settings.head_limits.field(name, value, self._head_size, len(trailers))
            trailers.append((name.lower(), value))
            return
        self._head_size = self.settings.head_limits.field(name, value, self._head_size, len(self._headers))
        self._headers.append((name.lower(), value))

    def on_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """The trailer section of a chunked body (native: checked against the head limits in
        C already; h11: from its EndOfMessage), just before on_message_complete."""
        size = 0
        limits = self.settings.head_limits
        for n, (name, value) in enumerate(fields):  # the same bounds as a head (h11's are not)
            size = limits.field(name, value, size, n)
        self._trailers = fields

    def _attach_trailers(self, req: Request) -> None:
        """The kept trailer fields of ``req``'s body, for whoever forwards it (keep_trailers:
        framing, routing, hop-by-hop and the head's Connection-named fields dropped)."""
        fields, self._trailers = self._trailers, _NO_LIST
        if req.body is not None:
            req.body.trailers = keep_trailers(fields, req.headers) or None

    def on_headers_complete(self) -> None:
        """httptools / h11: the head is in; collect the framing facts from the header list."""
        parser = self.parser
        headers = self._headers
        host, content_length, flags = _framing_flags(headers, parser.should_upgrade)
        url = self._url
        self.on_request_head(
            parser.get_method().decode("ascii", "replace"),
            (url[0] if len(url) == 1 else b"".join(url)).decode("latin-1"),
            parser.get_http_version(),
            headers,
            host,
            content_length,
            flags,
        )

    def on_request_head(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[bytes, bytes]],
        host: bytes | None,
        content_length: int | None,
        flags: int,
    ) -> None:
        """A whole request head with its framing facts: from the native parser directly (see
        mu_http.c), from on_headers_complete for httptools / h11. A request without a body is
        complete here (a later on_message_complete finds nothing)."""
        s = self.settings
        if version != "1.1" and version != "1.0":
            if version[:2] != "1.":
                raise ParseError(f"unsupported HTTP version {version}", 505 if version >= "2" else 400)
            version = "1.1"  # RFC 9110 §2.5: a later 1.x minor version is served as 1.1
        self._head_size = 0
        self._head_bytes = 0
        if host is None and version == "1.1":
            raise ParseError("missing Host header")
        if method == "CONNECT":
            raise ParseError("CONNECT is not supported", 405)
        if target[:1] == "/":  # origin form, nearly always: inline
            path, _, query = target.partition("?")
        else:
            path, query, host, headers = _target(method, target, host, headers)
        max_body = s.max_body
        if max_body and content_length is not None and content_length > max_body:
            raise ParseError("request body too large", 413)
        chunked = flags & CHUNKED
        body = BodyStream(content_length, self.producer) if chunked or content_length else None
        # HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked to keep it
        keep_alive = not flags & CONN_CLOSE if version == "1.1" else bool(flags & CONN_KEEPALIVE)
        expect = bool(flags & EXPECT) and body is not None
        req = Request(
            method,
            target,
            path,
            query,
            version,
            headers,
            body,
            keep_alive,
            bool(flags & UPGRADE),
            expect,
            content_length,
            bool(chunked),
            _hostname(host) if host else "",
        )
        if body is not None:
            self.receiving = req
            if expect:
                body.on_consume = lambda: self.events.on_continue(req)
            self.phase = BODY
            self.deadline = self.clock() + s.body_timeout
        else:
            self.receiving = None
            self.phase = BUSY
            self.deadline = 0.0
        self.events.on_request(req)

    def on_body(self, data: bytes) -> None:
        req = self.receiving
        if req is None:
            return
        body = req.body
        s = self.settings
        max_body = s.max_body
        if max_body and body.received + len(data) > max_body:
            raise ParseError("request body too large", 413)
        if s.body_timeout_on:
            self.deadline = self.clock() + s.body_timeout
        self._head_bytes = -1  # this read fed the body (see _bound_trailers)
        body.feed(data)

    # -- a body spliced around the parser (worker/http/splice_relay.py) ------------------
    def body_progress(self) -> None:
        """Body bytes are moving (or we are the ones not reading): not late, as on_body."""
        s = self.settings
        if s.body_timeout_on and self.phase == BODY:
            self.deadline = self.clock() + s.body_timeout

    def body_spliced(self) -> None:
        """The rest of the body went around the parser: that parser still counts it, so a
        fresh one takes the next request, and the request is complete."""
        s = self.settings
        self.parser = new_request_parser(s.parser_kind, self, s.head_limits, s.max_uri)
        self.on_message_complete()

    def on_message_complete(self) -> None:
        req = self.receiving
        if req is None:
            return
        self.receiving = None
        if self._trailers:
            self._attach_trailers(req)
        body = req.body
        if body is not None:
            body.finish()
        if self.phase in (BODY, HEAD):
            self.phase = BUSY
            self.deadline = 0.0


# -- the response side ---------------------------------------------------------------------


def must_close(req: Request | None, resp: Response, closing: bool) -> bool:
    """Whether the connection ends after ``resp`` (the keep-alive rules): asked by the
    response or the request, the server draining or the client gone (``closing``), no
    request (a parse error), a refused upgrade (the parser stopped at it), or a request
    body that is not all in."""
    if resp.close or closing or req is None or not req.keep_alive:
        return True
    if req.upgrade and resp.status != 101:
        return True
    return req.body is not None and not req.body.done


def _header_lines(resp: Response, tunnel: bool) -> bytes:
    """The response's header lines without framing headers (a relayed response brings them
    serialised already); a 101 keeps its Connection / Upgrade fields."""
    block = resp.head_block
    if block is not None and not tunnel:
        return block
    return split_headers(resp.headers, _SKIP_TUNNEL_HEADERS if tunnel else _SKIP_RESPONSE_HEADERS)[0]


def _stream_framing(req: Request | None, length: int | None, head_only: bool, no_body: bool) -> bytes | None:
    """How a streamed body is delimited: its framing header line, or None when closing the
    connection delimits it (an HTTP/1.0 client and no length). HEAD and bodiless statuses
    announce nothing they will not send, except a known length for HEAD."""
    if no_body:
        return b""
    if length is not None:
        return b"content-length: %d\r\n" % length
    if head_only:
        return b""
    if req is not None and req.version == "1.1":
        return b"transfer-encoding: chunked\r\n"
    return None


def _sendable(body: Any, lends_ok: bool) -> Any:
    """An in-memory body as it is sent: bytes, or the memoryview itself when the transport
    copies what it does not send at once (the view may be lent for the respond call only)."""
    if type(body) is bytes or (lends_ok and type(body) is memoryview):
        return body
    return bytes(body) if body else b""


def response_head(
    req: Request | None, resp: Response, close: bool, lends_ok: bool
) -> tuple[list[bytes], Any, int, bool, bool]:
    """The response head for ``req``: (head parts, body, body kind, chunked, close).

    The body kind is BODY_BYTES (``body`` is the bytes to send after the head), BODY_STREAM
    (``body`` is the ``BodyStream`` to pipe, chunked when ``chunked``) or BODY_NONE (nothing
    follows the head: HEAD, 1xx, 204, 304; ``body`` is a stream to let go of, or None).
    ``close`` comes back True when the body can only be delimited by closing (HTTP/1.0).
    A memoryview body stays one only when the transport copies what it does not send at
    once (``lends_ok``: it may be lent for the respond call only)."""
    status = resp.status
    head_only = req is not None and req.method == "HEAD"
    no_body = status < 200 or status == 204 or status == 304
    tunnel = status == 101 and resp.tunnel is not None
    block = resp.head_block  # the common case inline: a relayed response's lines
    parts = [
        _status_line(status, resp.reason),
        block if block is not None and not tunnel else _header_lines(resp, tunnel),
    ]
    body = resp.body
    chunked = False
    if body is None or isinstance(body, (bytes, bytearray, memoryview)):
        out: Any = _sendable(body, lends_ok)
        if not no_body:
            parts.append(b"content-length: %d\r\n" % len(out))
        if head_only or no_body or not out:
            kind, out = BODY_NONE, None
        else:
            kind = BODY_BYTES
    else:
        out = body
        kind = BODY_NONE if head_only or no_body or tunnel else BODY_STREAM
        framing = _stream_framing(req, body.length, head_only, no_body)
        if framing is None:
            close = True  # HTTP/1.0 client, unknown length: delimit by closing
        elif framing:
            parts.append(framing)
            chunked = kind == BODY_STREAM and body.length is None
    if not tunnel:
        if close:
            parts.append(b"connection: close\r\n")
        elif req is not None and req.version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return parts, out, kind, chunked, close
