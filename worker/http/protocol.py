"""The downstream side: one ``HttpServerProtocol`` per accepted connection.

Callback-shaped: the parser runs inside ``data_received`` and calls back into this object;
a request body is pushed into a ``BodyStream`` chunk by chunk, and a streamed response body is
pushed out through ``write``/``end`` (this object is the response's ``BodySink``). The only
coroutine is the service call, one per request.

Requests are answered strictly in order: heads parsed while a response is still going out
(pipelining) wait in ``_queue``, and reading pauses when too many wait.
"""

from __future__ import annotations

import asyncio
import re
import time
from time import monotonic as _now
from collections import deque
from typing import TYPE_CHECKING, Any

from monolake.worker.http import proxy_protocol
from monolake.worker.http.body import BodyError, BodyStream
from monolake.worker.http.headers import split_headers
from monolake.worker.http.message import Request, Response, header_tokens, text_response
from monolake.worker.http.parser import (CHUNKED, CONN_CLOSE, CONN_KEEPALIVE, EXPECT, UPGRADE,
                                         HttpParserError, ParseError,
                                         UpgradeRequested, new_request_parser)
from monolake.worker.http.tls import TlsError
from monolake.worker.service.context import ConnectionContext, RequestContext
from monolake.worker.sockopts import set_nodelay

if TYPE_CHECKING:
    from monolake.worker.http.server import ServerRuntime

# phases, for timeouts
IDLE, HEAD, BODY, BUSY = 0, 1, 2, 3

PIPELINE_MAX = 16          # parsed-but-unanswered requests before reading pauses
DRAIN_IDLE_GRACE = 1.0     # a draining server closes keep-alive connections idle this long
LINGER_SECONDS = 2.0       # how long to drain a client's unread body before closing

_PAUSE_PIPELINE = 1 << 20  # reasons to stop reading (bodies count in the low bits)
_PAUSE_TUNNEL = 1 << 21
# a whole response body at least this large goes out beside its head (transport.writelines)
# instead of being copied into one buffer with it: io_uring and uvloop send the pair with one
# vectored write (asyncio's own transport joins them, as before)
_WRITELINES_MIN = 16384

_SKIP_RESPONSE_HEADERS = (b"content-length", b"transfer-encoding", b"connection")
_SKIP_TUNNEL_HEADERS = (b"content-length", b"transfer-encoding")
_SPECIAL_REQUEST_HEADERS = frozenset((b"host", b"content-length", b"transfer-encoding",
                                      b"connection", b"expect"))

_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 512:
            _STATUS_LINES[key] = line
    return line


class Exchange:
    """One request/response pair on a connection. ``respond`` and ``spawn`` are what the
    callback-shaped router (``RouterService.fast``) answers through."""

    __slots__ = ("proto", "request", "ctx", "task", "error", "head_sent", "status", "close",
                 "bytes_out", "started", "upstream")

    def __init__(self, proto: "HttpServerProtocol", request: Request | None, error: int = 0) -> None:
        self.proto = proto
        self.request = request
        self.ctx: RequestContext | None = None
        self.task: asyncio.Task | None = None
        self.error = error          # answer this status (a parse error) instead of calling
        self.head_sent = False
        self.status = 0
        self.close = False
        self.bytes_out = 0
        self.started = 0.0

    def respond(self, resp: Response) -> None:
        """Answer this request now (a response ready without waiting). A memoryview body is
        written or copied before this returns, so it may be one lent for the call only."""
        self.proto._fast_respond(self, resp)

    def spawn(self, coro: Any) -> asyncio.Task:
        """Continue this request as a coroutine (it has to wait for something)."""
        return self.proto._spawn(self, coro)


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


class HttpServerProtocol(asyncio.Protocol):
    """HTTP/1.1 server connection: prelude (PROXY protocol, TLS), parsing, responses, tunnel."""

    def __init__(self, rt: "ServerRuntime") -> None:
        self._rt = rt
        self._stack = rt.stack
        self._fast = getattr(rt.stack.entry, "fast", None)  # the router itself, unwrapped
        self._loop = rt.loop
        self._transport: Any = None
        self._write: Any = None
        self._lends_ok = False  # the transport's writelines copies what it does not send
        self._parser: Any = None
        self._ctx: ConnectionContext | None = None
        self._queue: deque[Exchange] = deque()
        self._parsing: Exchange | None = None
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_bytes = 0
        self._pauses = 0
        self._read_paused = False
        self._write_paused = False
        self._out_body: BodyStream | None = None
        self._out_chunked = False
        self._pending_head: bytes | None = None
        self._closing = False
        self._parse_dead = False
        self._phase = HEAD
        self._deadline = 0.0
        self._prelude: bytearray | None = None
        self._tls: Any = None
        self._tunnel: Any = None
        self._tunnel_pending: list[bytes] = []
        self._lingering = False
        self._fresh = True  # no request byte received yet

    # -- connection lifecycle --------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        rt = self._rt
        self._transport = transport
        self._write = transport.write
        self._lends_ok = getattr(transport, "writelines_copies", False)
        tune_transport(transport)
        rt.connections.add(self)
        st = rt.stats
        st.connections_total += 1
        st.open_connections += 1
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            peer = peer[:2]
        if isinstance(local, tuple):
            local = local[:2]
        self._ctx = ConnectionContext(server=rt.name, worker_slot=rt.slot,
                                      connection_id=st.connections_total, peer=peer,
                                      local=local, socket_peer=peer)
        self._deadline = _now() + rt.header_timeout
        if rt.settings.proxy_protocol:
            self._prelude = bytearray()
        elif rt.tls is not None:
            self._start_tls()
        else:
            self._start_http()

    def _start_tls(self) -> None:
        self._tls = self._rt.tls.session(self._transport.write)
        self._write = self._tls_write
        self._ctx.scheme = "https"

    def _tls_write(self, data: bytes) -> None:
        try:
            self._tls.write(data)
        except TlsError:
            self._abort()

    def _start_http(self) -> None:
        self._parser = new_request_parser(self._rt.parser_kind, self, self._rt.head_limits,
                                          self._rt.max_uri)
        self._phase = IDLE
        self._deadline = _now() + self._rt.header_timeout

    def connection_lost(self, exc: BaseException | None) -> None:
        rt = self._rt
        if self._transport is None:
            return
        self._transport = None
        rt.connections.discard(self)
        rt.stats.open_connections -= 1
        err = BodyError("client connection lost")
        if self._parsing is not None and self._parsing.request is not None:
            body = self._parsing.request.body
            if body is not None and not body.done:
                body.fail(err)
        out = self._out_body
        if out is not None:
            self._out_body = None
            out.abandon()
        for ex in self._queue:
            if ex.task is not None and not ex.task.done():
                ex.task.cancel()
            if ex.request is not None and ex.request.body is not None and not ex.request.body.done:
                ex.request.body.fail(err)
            if ex.ctx is not None:
                rt.stats.active_requests -= 1
                ex.ctx = None
        self._queue.clear()
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.client_closed()

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            self._tunnel.client_eof()
            return True
        body = self._parsing.request.body if self._parsing and self._parsing.request else None
        if body is not None and not body.done:
            body.fail(BodyError("client closed before the body was complete"))
        self._closing = True
        if not self._queue:
            return False  # nothing in flight: close
        return True  # answer what is in flight, then close
        # (keep-alive is off from here: see _finish)

    # -- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        n = len(data)
        self._rt.stats.bytes_in += n
        if self._tls is not None:
            try:
                data = self._tls.feed(data)
            except TlsError as exc:
                self._rt.log.debug("tls_error", error=str(exc), peer=self._ctx.peer)
                self._abort()
                return
            if self._ctx.tls is None and self._tls.handshake_done:
                self._ctx.tls = self._tls.info()
                if self._parser is None:
                    self._start_http()
            if not data:
                if self._tls.peer_closed:
                    self.eof_received() or self._close()
                return
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._lingering:
            return
        if self._prelude is not None:
            self._read_prelude(data)
            return
        if self._parse_dead:
            return
        if self._phase == IDLE:
            self._phase = HEAD
            self._fresh = False
            self._deadline = _now() + self._rt.header_timeout
        try:
            self._parser.feed_data(data)
        except UpgradeRequested as exc:
            self._on_upgrade(exc.rest)
        except (HttpParserError, ParseError) as exc:
            cause = exc.__context__ if not isinstance(exc, ParseError) else exc
            if isinstance(cause, ParseError):
                self._parse_failed(cause.status, str(cause))
            elif cause is not None and not isinstance(cause, HttpParserError):
                self._rt.log.error("http_callback_error", peer=self._ctx.peer, exc_info=cause)
                self._parse_failed(500, "internal error")
            else:
                self._parse_failed(400, str(exc))
        except Exception:  # noqa: BLE001 - a request must never take the worker down
            self._rt.log.exception("http_connection_error", peer=self._ctx.peer)
            self._parse_failed(500, "internal error")
        else:
            if self._phase == HEAD:  # still inside a head after this read: bound it
                self._head_bytes += n
                if self._head_bytes > self._rt.max_head + self._rt.max_uri:
                    self._parse_failed(431, "request header block too large")

    def _read_prelude(self, data: bytes) -> None:
        buf = self._prelude
        buf += data
        try:
            parsed = proxy_protocol.parse(bytes(buf))
        except proxy_protocol.ProxyProtocolError as exc:
            self._rt.log.info("proxy_protocol_rejected", error=str(exc), peer=self._ctx.socket_peer)
            self._rt.stats.errors += 1
            self._abort()
            return
        if parsed is None:
            return
        consumed, src, dst = parsed
        if src is not None:
            self._ctx.peer = src
            self._ctx.local = dst
        rest = bytes(buf[consumed:])
        self._prelude = None
        if self._rt.tls is not None:
            self._start_tls()
        else:
            self._start_http()
        if rest:
            self._rt.stats.bytes_in -= len(rest)
            self.data_received(rest)

    # parser callbacks (httptools API)
    def on_message_begin(self) -> None:
        self._url = []
        self._url_len = 0
        self._headers = []
        self._head_size = 0
        if self._phase == IDLE:
            self._phase = HEAD
            self._deadline = _now() + self._rt.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        if self._url_len > self._rt.max_uri:
            raise ParseError("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps the trailing whitespace of a value; it is not part of it (RFC 9110
        # §5.5), and the native parser and h11 drop it
        value = value.rstrip(b" \t")
        self._head_size = self._rt.head_limits.field(name, value, self._head_size,
                                                     len(self._headers))
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        """httptools / h11: the head is in; collect the framing facts from the header list."""
        parser = self._parser
        headers = self._headers
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
            if parser.should_upgrade():
                flags |= UPGRADE
        url = self._url
        self.on_request_head(parser.get_method().decode("ascii", "replace"),
                             (url[0] if len(url) == 1 else b"".join(url)).decode("latin-1"),
                             parser.get_http_version(), headers, host, content_length, flags)

    def on_request_head(self, method: str, target: str, version: str,
                        headers: list[tuple[bytes, bytes]], host: bytes | None,
                        content_length: int | None, flags: int) -> None:
        """A whole request head with its framing facts: from the native parser directly (see
        mu_http.c), from on_headers_complete for httptools / h11. Check it, queue its exchange.
        A request without a body is complete here (a later on_message_complete finds nothing)."""
        rt = self._rt
        if version != "1.1" and version != "1.0":
            if version[:2] != "1.":
                raise ParseError(f"unsupported HTTP version {version}",
                                 505 if version >= "2" else 400)
            version = "1.1"  # RFC 9110 §2.5: a later 1.x minor version is served as 1.1
        self._head_size = 0
        self._head_bytes = 0
        if host is None and version == "1.1":
            raise ParseError("missing Host header")
        if method == "CONNECT":
            raise ParseError("CONNECT is not supported", 405)
        # target -> path and query
        if target[:1] == "/":
            path, _, query = target.partition("?")
        elif target[:7].lower() == "http://" or target[:8].lower() == "https://":
            # RFC 9112 §3.2.2: the target's authority wins over Host, which it replaces
            authority, path, query = _split_absolute(target)
            host = authority.encode("latin-1")
            headers = _with_host(headers, host)
        elif target == "*" and method == "OPTIONS":
            path, query = "*", ""
        else:
            raise ParseError("invalid request target")
        max_body = rt.max_body
        if max_body and content_length is not None and content_length > max_body:
            raise ParseError("request body too large", 413)
        chunked = flags & CHUNKED
        body = BodyStream(content_length, self) if chunked or content_length else None
        hostname = ""
        if host:
            h = host.decode("latin-1").lower()
            if h[:1] == "[":
                hostname = h[1:h.find("]")] if "]" in h else h
            else:
                hostname = h.partition(":")[0]
        if version == "1.1":
            keep_alive = not flags & CONN_CLOSE
        else:
            keep_alive = bool(flags & CONN_KEEPALIVE)
        expect = bool(flags & EXPECT) and body is not None
        req = Request(method, target, path, query, version, headers, body, keep_alive,
                      bool(flags & UPGRADE), expect, content_length, bool(chunked), hostname)
        ex = Exchange(self, req)
        if body is not None:
            self._parsing = ex
            if expect:
                body.on_consume = self._send_continue
            self._phase = BODY
            self._deadline = _now() + rt.body_timeout
        else:
            self._parsing = None
            self._phase = BUSY
            self._deadline = 0.0
        self._enqueue(ex)

    def on_body(self, data: bytes) -> None:
        ex = self._parsing
        if ex is None:
            return
        body = ex.request.body
        max_body = self._rt.max_body
        if max_body and body.received + len(data) > max_body:
            raise ParseError("request body too large", 413)
        if self._rt.body_timeout_on:
            self._deadline = _now() + self._rt.body_timeout
        body.feed(data)

    def on_message_complete(self) -> None:
        ex = self._parsing
        if ex is None:
            return
        self._parsing = None
        body = ex.request.body
        if body is not None:
            body.finish()
        if self._phase in (BODY, HEAD):
            self._phase = BUSY
            self._deadline = 0.0

    # -- request queue ---------------------------------------------------------------------
    def _enqueue(self, ex: Exchange) -> None:
        self._queue.append(ex)
        if len(self._queue) == 1:
            self._start(ex)
        elif len(self._queue) >= PIPELINE_MAX and not self._pauses & _PAUSE_PIPELINE:
            self._add_pause(_PAUSE_PIPELINE)

    def _parse_failed(self, status: int, reason: str) -> None:
        """A malformed request: answer ``status`` in turn, then close; parse nothing more."""
        self._parse_dead = True
        self._rt.stats.errors += 1
        self._rt.log.info("bad_request", status=status, reason=reason, peer=self._ctx.peer)
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            body = ex.request.body
            if body is not None and not body.done:
                body.fail(BodyError(reason))
        if ex is not None and ex in self._queue and not ex.head_sent and ex is not self._queue[0]:
            ex.error = status
        elif ex is not None and ex is self._queue[0] and not ex.head_sent:
            # the service is already running for it; answer the error instead
            if ex.task is not None:
                ex.task.cancel()
            self._respond(ex, text_response(status, close=True))
        else:
            err = Exchange(self, None, error=status)
            self._queue.append(err)
            if len(self._queue) == 1:
                self._start(err)
        self._add_pause(_PAUSE_PIPELINE)

    def _start(self, ex: Exchange) -> None:
        rt = self._rt
        ex.started = time.monotonic()
        if ex.error:
            self._respond(ex, text_response(ex.error, close=True))
            return
        rt.stats.requests += 1
        rt.stats.active_requests += 1
        ctx = RequestContext(self._ctx, ex.started)
        ex.ctx = ctx
        fast = self._fast
        if fast is not None:
            try:
                fast(ex.request, ctx, ex)
            except Exception:  # noqa: BLE001 - a request must never take the worker down
                rt.log.exception("service_error", server=rt.name, request_id=ctx.request_id)
                rt.stats.errors += 1
                self._respond(ex, text_response(500, close=True))
            return
        self._spawn(ex, self._stack.entry.call(ex.request, ctx))

    def _spawn(self, ex: Exchange, coro: Any) -> asyncio.Task:
        """Run the rest of a request as a coroutine (one task per request at most)."""
        ex.task = task = self._loop.create_task(self._run(ex, coro))
        return task

    def _fast_respond(self, ex: Exchange, resp: Response) -> None:
        try:
            self._respond(ex, resp)
        except Exception:  # noqa: BLE001
            self._rt.log.exception("respond_error", server=self._rt.name)
            self._abort()

    async def _run(self, ex: Exchange, coro: Any) -> None:
        try:
            resp = await coro
        except asyncio.CancelledError:
            return
        except BodyError as exc:
            resp = text_response(400 if self._transport is not None else 499, str(exc), close=True)
        except Exception:  # noqa: BLE001 - a request must never take the worker down
            self._rt.log.exception("service_error", server=self._rt.name,
                                   request_id=ex.ctx.request_id if ex.ctx else None)
            self._rt.stats.errors += 1
            resp = text_response(500, close=True)
        if not isinstance(resp, Response):
            self._rt.log.error("service_returned_non_response", type=type(resp).__name__)
            resp = text_response(500, close=True)
        try:
            self._respond(ex, resp)
        except Exception:  # noqa: BLE001
            self._rt.log.exception("respond_error", server=self._rt.name)
            self._abort()

    # -- writing ---------------------------------------------------------------------------
    def _send_continue(self) -> None:
        ex = self._queue[0] if self._queue else None
        if self._transport is not None and ex is not None and not ex.head_sent:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _respond(self, ex: Exchange, resp: Response) -> None:
        if self._transport is None or not self._queue or self._queue[0] is not ex:
            _discard_response(resp)
            return
        rt = self._rt
        req = ex.request
        status = resp.status
        ex.status = status
        ex.head_sent = True
        close = resp.close or self._closing or rt.draining or req is None or not req.keep_alive
        if req is not None and req.upgrade and status != 101:
            close = True  # the parser stopped at the upgrade request: nothing more to read
        if req is not None and req.body is not None and not req.body.done:
            close = True  # answered before the request body is in: the connection ends after
        head_only = req is not None and req.method == "HEAD"
        no_body = status < 200 or status == 204 or status == 304
        parts = [_status_line(status, resp.reason)]
        tunnel = resp.tunnel if status == 101 else None
        block = resp.head_block  # a relayed response's lines, framing headers excluded
        parts.append(block if block is not None and tunnel is None else
                     split_headers(resp.headers, _SKIP_RESPONSE_HEADERS if tunnel is None
                                   else _SKIP_TUNNEL_HEADERS)[0])
        body = resp.body
        stream: BodyStream | None = None
        if body is None or isinstance(body, (bytes, bytearray, memoryview)):
            # a memoryview stays one only on our io_uring transport, whose writelines copies
            # what it cannot send at once (the view may be lent for this call: see respond)
            data = (body if type(body) is bytes or (type(body) is memoryview and self._lends_ok)
                    else bytes(body) if body else b"")
            if not no_body:
                parts.append(b"content-length: %d\r\n" % len(data))
        else:
            stream = body
            data = b""
            if no_body:
                pass
            elif stream.length is not None:
                parts.append(b"content-length: %d\r\n" % stream.length)
            elif head_only:
                pass
            elif req is not None and req.version == "1.1":
                parts.append(b"transfer-encoding: chunked\r\n")
                self._out_chunked = True
            else:
                close = True  # HTTP/1.0 client, unknown length: delimit by closing
        if tunnel is None:
            if close:
                parts.append(b"connection: close\r\n")
            elif req is not None and req.version == "1.0":
                parts.append(b"connection: keep-alive\r\n")
        ex.close = close
        parts.append(b"\r\n")
        big: bytes | None = None
        if data and not head_only and not no_body:
            if len(data) >= _WRITELINES_MIN and self._tls is None:
                big = data  # sent beside the head: no copy into one buffer
            else:
                parts.append(data)
        out = b"".join(parts)
        n_out = len(out) if big is None else len(out) + len(big)
        ex.bytes_out += n_out
        rt.stats.bytes_out += n_out
        if stream is not None and tunnel is None and not (head_only or no_body):
            # a streamed body: send the head together with what is already buffered
            self._out_body = stream
            self._pending_head = out
            stream.pipe(self)
            head = self._pending_head
            if head is not None:
                self._pending_head = None
                self._write(head)
            return
        if big is None:
            self._write(out)
        elif self._transport is not None:
            self._transport.writelines((out, big))
        if tunnel is not None:
            self._queue.clear()
            self._finish_accounting(ex)
            self._tunnel = tunnel
            self._deadline = 0.0
            self._phase = BUSY
            pending, self._tunnel_pending = self._tunnel_pending, []
            tunnel.attach_client(self, pending)
            return
        if stream is None or head_only or no_body:
            if stream is not None:
                stream.abandon() if not stream.done else stream.discard()
            self._out_chunked = False
            self._finish(ex)

    # BodySink: a streamed response body goes out through these
    def write(self, data: bytes) -> None:
        n = len(data)
        if self._out_chunked:
            data = b"%x\r\n%b\r\n" % (n, data)
        self._rt.stats.bytes_out += len(data)
        if self._queue:
            self._queue[0].bytes_out += len(data)
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            data = head + data
        if self._transport is not None:
            self._write(data)

    def end(self) -> None:
        self._out_body = None
        tail = b""
        if self._out_chunked:
            self._out_chunked = False
            self._rt.stats.bytes_out += 5
            tail = b"0\r\n\r\n"
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            tail = head + tail
        if tail and self._transport is not None:
            self._write(tail)
        if self._queue:
            self._finish(self._queue[0])

    def abort(self, exc: BaseException) -> None:
        """The response body broke off upstream: the client must see a truncated response."""
        self._out_body = None
        self._out_chunked = False
        self._rt.stats.errors += 1
        self._rt.log.info("response_body_aborted", error=str(exc), peer=self._ctx.peer)
        if self._queue:
            self._finish_accounting(self._queue[0])
        self._abort()

    def _finish_accounting(self, ex: Exchange) -> None:
        rt = self._rt
        if ex.ctx is not None:
            rt.stats.active_requests -= 1
        rt.stats.count_status(ex.status)
        if ex.started:
            rt.stats.observe(time.monotonic() - ex.started)
        if rt.access_log and ex.request is not None:
            rt.log_access(ex, self._ctx)
        ex.ctx = None

    def _finish(self, ex: Exchange) -> None:
        if not self._queue or self._queue[0] is not ex:
            return
        self._queue.popleft()
        self._finish_accounting(ex)
        if self._transport is None:
            return
        req = ex.request
        incomplete = req is not None and req.body is not None and not req.body.done
        if incomplete:
            # answered before the whole request body arrived (an early upstream answer, a
            # refusal): the rest is never forwarded, and the connection cannot be reused
            req.body.fail(BodyError("response sent before the request body was complete"))
        if ex.close or self._closing or incomplete or ex.error:
            self._close(linger=incomplete or bool(ex.error))
            return
        if self._queue:
            self._start(self._queue[0])
            if len(self._queue) < PIPELINE_MAX and self._pauses & _PAUSE_PIPELINE and not self._parse_dead:
                self._remove_pause(_PAUSE_PIPELINE)
            return
        if self._pauses & _PAUSE_PIPELINE and not self._parse_dead:
            self._remove_pause(_PAUSE_PIPELINE)
        if self._rt.draining:
            self._close(linger=True)  # a request already on its way gets FIN, not RST
            return
        if self._parsing is None:
            self._phase = IDLE
            self._deadline = _now() + self._rt.keepalive_timeout

    # -- flow control ----------------------------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True
        if self._out_body is not None:
            self._out_body.pause()
        if self._tunnel is not None:
            self._tunnel.client_write_paused(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._out_body is not None:
            self._out_body.resume()
        if self._tunnel is not None:
            self._tunnel.client_write_paused(False)

    # Producer (of request bodies): a body over its high-water mark or a blocked sink
    def body_pause(self) -> None:
        self._add_pause(1)

    def body_resume(self) -> None:
        self._remove_pause(1)

    def body_abandon(self) -> None:
        """The upstream stopped taking the request body: we will close after the response."""
        self._closing = True

    def _add_pause(self, reason: int) -> None:
        self._pauses += reason
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            try:
                self._transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass

    def _remove_pause(self, reason: int) -> None:
        self._pauses -= reason
        if self._pauses <= 0:
            self._pauses = 0
            if self._read_paused and self._transport is not None:
                self._read_paused = False
                try:
                    self._transport.resume_reading()
                except (RuntimeError, AttributeError):
                    pass

    def tunnel_pause_reading(self, paused: bool) -> None:
        if paused:
            if not self._pauses & _PAUSE_TUNNEL:
                self._add_pause(_PAUSE_TUNNEL)
        elif self._pauses & _PAUSE_TUNNEL:
            self._remove_pause(_PAUSE_TUNNEL)

    def tunnel_write(self, data: bytes) -> None:
        self._rt.stats.bytes_out += len(data)
        if self._transport is not None:
            self._write(data)

    def tunnel_write_eof(self) -> None:
        t = self._transport
        if t is None:
            return
        if self._tls is None and t.can_write_eof():
            t.write_eof()
        else:
            self._close()

    def tunnel_close(self) -> None:
        self._close()

    # -- upgrade ---------------------------------------------------------------------------
    def _on_upgrade(self, rest: bytes) -> None:
        """The parser stopped after an Upgrade request: the rest is for the tunnel."""
        self._parse_dead = True
        if rest:
            self._tunnel_pending.append(rest)
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            if ex.request.body is not None and not ex.request.body.done:
                ex.request.body.finish()
        # further bytes before the 101 wait in _tunnel_pending (bounded by pausing)
        self._add_pause(_PAUSE_TUNNEL)

    # -- timeouts --------------------------------------------------------------------------
    def check_timeout(self, now: float) -> None:
        deadline = self._deadline
        if not deadline or now < deadline or self._transport is None:
            return
        phase = self._phase
        if self._read_paused and phase == BODY:
            self._deadline = now + self._rt.body_timeout  # we stopped reading, not the client
            return
        self._deadline = 0.0
        if phase == IDLE or self._prelude is not None:
            self._close()
            return
        rt = self._rt
        rt.log.info("client_timeout", phase=("idle", "header", "body", "busy")[phase],
                    peer=self._ctx.peer)
        if phase == HEAD:
            if not self._queue:
                self._parse_dead = True
                ex = Exchange(self, None, error=408)
                self._queue.append(ex)
                self._start(ex)
            else:
                self._closing = True
            return
        if phase == BODY:
            ex = self._parsing
            self._parse_dead = True
            if ex is not None:
                self._parsing = None
                if ex.request.body is not None:
                    ex.request.body.fail(BodyError("request body timeout"))
                if self._queue and self._queue[0] is ex and not ex.head_sent:
                    if ex.task is not None:
                        ex.task.cancel()
                    self._respond(ex, text_response(408, close=True))
                    return
            self._close()

    # -- closing ---------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Keep-alive off: close now if idle between requests, else after the response in
        flight. A connection that has not sent its first byte yet is served once (it was
        accepted to be served); an idle one gets a lingering close, so a request racing
        with the close sees FIN rather than a reset."""
        self._closing = True
        if self._fresh:
            return
        if self._is_idle():
            # a busy client sends its next request within the grace and gets its answer with
            # Connection: close; only a connection that stays idle is closed, so the race of
            # a request with our FIN is limited to clients idle for the whole grace period
            self._loop.call_later(DRAIN_IDLE_GRACE, self._close_if_idle)

    def _is_idle(self) -> bool:
        return not self._queue and self._tunnel is None and (self._parsing is None or self._phase == IDLE)

    def _close_if_idle(self) -> None:
        if self._transport is not None and not self._lingering and self._is_idle():
            self._close(linger=True)

    @property
    def idle(self) -> bool:
        return not self._queue and self._phase == IDLE

    @property
    def reclaimable(self) -> bool:
        """Idle between requests after serving at least one: what a worker out of fds closes
        first (a connection that has sent nothing yet was accepted to be served)."""
        return (self.idle and not self._fresh and self._transport is not None
                and not self._lingering and self._tunnel is None)

    @property
    def deadline(self) -> float:
        """When the current phase's timeout is due (0.0: none); see ServerRuntime._sweep."""
        return self._deadline

    @property
    def idle_since(self) -> float:
        return self._deadline - self._rt.keepalive_timeout

    def reclaim(self) -> None:
        self._close()

    def _close(self, linger: bool = False) -> None:
        t = self._transport
        if t is None:
            return
        if linger and self._tls is None and t.can_write_eof():
            # lingering close: stop sending, read and drop what the client still sends, so
            # that closing with unread data does not reset the connection before the client
            # has read our response
            self._lingering = True
            self._parse_dead = True
            try:
                t.write_eof()
            except (OSError, RuntimeError):
                t.abort()
                return
            while self._pauses:
                self._remove_pause(self._pauses)
            self._deadline = 0.0
            self._loop.call_later(LINGER_SECONDS, self._abort)
            return
        if self._tls is not None:
            self._tls.close_notify()
        t.close()

    def _abort(self) -> None:
        t = self._transport
        if t is not None:
            t.abort()


WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024


def tune_transport(transport: Any) -> None:
    """TCP_NODELAY (small writes leave at once), and a write buffer that holds a few typical
    bodies, so that backpressure engages for real streams, not for every 64 KiB response
    (each pause/resume costs a round of calls)."""
    try:
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
    except (AttributeError, NotImplementedError, ValueError):
        pass
    set_nodelay(transport)


def _discard_response(resp: Response) -> None:
    body = resp.body
    if isinstance(body, BodyStream) and not body.done:
        body.abandon()
    if resp.tunnel is not None:
        resp.tunnel.close()
