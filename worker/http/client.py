"""The upstream side: one ``UpstreamConnection`` per pooled keep-alive connection.

``request()`` writes a request head, pipes the request body in (this object is its sink, so
the body moves from the client's parser callback straight into this transport), and resolves
one future with the response head; the response body is then pushed through a ``BodyStream``
by the parser callbacks. That future is the only per-request allocation on this side.

A connection is owned by one exchange from checkout to release, and goes back to the pool
only after the parser has returned from the read that completed the response: any byte after
a complete response (a second, unsolicited response, a stray head or half of one, a body after
a 204/304 or a HEAD answer) means the upstream and we disagree on framing, and the next
request on that connection could get this one's bytes. Such a connection is closed, never
pooled, as nginx and HAProxy do.
"""

from __future__ import annotations

import asyncio
from time import monotonic as _now
from typing import TYPE_CHECKING, Any

from monolake.worker.http.body import BodyStream
from monolake.worker.http.headers import split_response_headers, with_via
from monolake.worker.http.message import Response, keep_trailers, trailer_lines
from monolake.worker.http.parser import HttpParserError, ParseError, UpgradeRequested, new_response_parser
from monolake.worker.http.protocol import tune_transport

if TYPE_CHECKING:
    from monolake.worker.http.pool import UpstreamPool
    from monolake.worker.http.upstream import Upstream


def _discard(resp: Response) -> None:
    """A response nobody waits for any more (the request was cancelled)."""
    body = resp.body
    if isinstance(body, BodyStream) and not body.done:
        body.abandon()


class UpstreamError(Exception):
    """The upstream failed. ``retryable``: nothing was received and the request body was not
    consumed, so an idempotent request may go to another connection."""

    status = 502

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status = 504


class NoAddress(UpstreamError):
    """A discovered upstream has no address (DNS has not answered, or named none)."""

    status = 503


# framing of the response body
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2, 3


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        # the native parser copies what it keeps: on io_uring, reads need no bytes of their
        # own (the transport lends a view of its receive buffer for the data_received call)
        self._native = pool.parser_kind == "native"
        self.reads_lent_views = self._native
        self._lend_body = False  # on_head takes a body lent for the call (see send)
        self.key = upstream.key
        self.transport: Any = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        self.deadline = 0.0
        self._parser: Any = None
        self._on_head: Any = None  # callable(response, exc): the response head or the failure
        self._req_body: BodyStream | None = None
        self._req_done = True
        self._req_chunked = False
        self._resp_body: BodyStream | None = None
        self._resp_done = True
        self._framing = _NONE
        self._keep_alive = True
        self._headers: list[tuple[bytes, bytes]] = []
        # a chunked response's trailer fields: None outside its body (httptools: on_header
        # then reads a head field), else the fields so far (see on_header, on_trailers)
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._reason = b""
        self._received = False
        self._method = "GET"
        self._upgrade = False
        self._via = False
        self._tunnel: Any = None
        self._busy = False
        self._read_paused = False
        self._pending_tunnel_bytes = b""
        self._upgraded = False
        self._deferred: Response | None = None
        self._deferred_length: int | None = None
        self._chunks: list[bytes] = []
        self._head_size = 0  # HeadLimits.field's count for httptools / h11
        self._head_bytes = 0  # httptools: bytes read while no head was complete
        self._feeding = False  # inside parser.feed_data: releases wait until it returns
        self._release_due = False
        self._finished = False  # the current response is complete: more parser events are unsolicited
        self._interim = False  # a 1xx head was seen: its on_message_complete ends nothing
        self.poisoned = ""  # why this connection must never be reused ("" while it may)
        # the native engine (worker/http/native_engine.py): its reader while it holds this
        # connection, and the head it already sent when it hands a request over (late decline)
        self.native: Any = None
        self.fast_reader: Any = None
        self.presend: bytes | None = None
        self.presend_body = 0  # and how many bytes of its body

    # -- lifecycle -------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        tune_transport(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.forget(self)
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.upstream_closed()
            return
        if self._deferred is not None:
            if self._framing == _UNTIL_CLOSE:  # closing is how this body ends
                self._parser_eof()
                if self._deferred is not None:
                    self._resp_done = False
                    self.on_message_complete()
            self._deferred = None
        if self._on_head is not None:
            retry = not self._received and (self._req_body is None or not self._req_body.consumed)
            self._deliver(
                None,
                UpstreamError(
                    f"upstream closed the connection before responding ({exc or 'EOF'})",
                    retryable=retry and self.requests > 1,
                ),
            )
        body = self._resp_body
        if body is not None and not body.done:
            if self._framing == _UNTIL_CLOSE:
                self._parser_eof()
                body.finish()
            else:
                body.fail(UpstreamError("upstream closed the connection mid-response"))
        self._end_exchange()
        req_body = self._req_body
        if req_body is not None:
            self._req_body = None
            req_body.abandon()

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            self._tunnel.upstream_eof()
            return True
        return False

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # -- one exchange ----------------------------------------------------------------------
    def request(
        self, method: str, head: bytes, body: Any, upgrade: bool, via: bool, read_timeout: float
    ) -> asyncio.Future:
        """Send one request; the returned future resolves to the response head."""
        waiter = (self.pool.loop or asyncio.get_running_loop()).create_future()

        def done(resp: Response | None, exc: BaseException | None) -> None:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(resp)
                else:
                    waiter.set_exception(exc)
            elif resp is not None:
                _discard(resp)

        self.send(method, head, body, upgrade, via, read_timeout, done)
        return waiter

    def send(
        self,
        method: str,
        head: bytes,
        body: Any,
        upgrade: bool,
        via: bool,
        read_timeout: float,
        on_head: Any,
        lend_body: bool = False,
    ) -> None:
        """Send one request; ``on_head(response, None)`` or ``on_head(None, error)`` follows,
        exactly once (the callback form: no future, no task).

        With ``lend_body``, on_head promises to be done with ``response.body`` when it
        returns (it wrote or copied it): a body that came with the head may then be a
        memoryview of the received bytes, released after the call, instead of a copy."""
        if self._busy:
            # a pooling bug, never an upstream's doing: refuse rather than interleave exchanges
            raise RuntimeError(f"upstream connection to {self.upstream.label} is already serving a request")
        if self.closed:
            # the upstream's doing: it closed, or spoke first (an h2 server's SETTINGS to an
            # HTTP/1.1 request), between the connect and this send. Nothing was sent: a 502,
            # retryable on a fresh connection (this was a RuntimeError, hence a 500)
            on_head(None, UpstreamError(f"upstream {self.upstream.label} closed the connection first", True))
            return
        self._on_head = on_head
        self._lend_body = lend_body
        self._method = method
        self._upgrade = upgrade
        self._via = via
        self._received = False
        self._resp_done = False
        self._finished = False
        self._interim = False
        self._head_bytes = 0
        self._resp_body = None
        self._headers = []
        self._busy = True
        self.requests += 1
        self.upstream.active += 1
        self.upstream.requests += 1
        if self._parser is None or self.pool.parser_kind == "h11" or method == "HEAD":
            self._parser = new_response_parser(
                self.pool.parser_kind, self, method, upgrade, self.pool.head_limits
            )
        if self._native:
            # the callback path writes the client head itself: a whole response may come as
            # its serialised header block (on_relay), unless Via must be merged in first
            self._parser.relay = lend_body and not via
        self.deadline = _now() + read_timeout
        if body is None:
            self._req_done = True
            self._write_head(head)
        else:
            self._req_done = False
            self._req_chunked = body.length is None
            self._req_body = body
            self._write_head(head)
            body.pipe(self)

    def _write_head(self, head: bytes) -> None:
        """The request head goes out, unless the native engine sent this very head already
        (a late decline hands its request to this exchange: native_engine.py)."""
        sent = self.presend
        if sent is not None:
            self.presend = None
            if sent != head:  # a twin disagreement (tests/http/test_native_head.py): the
                # upstream has this request already; never a second copy, never reused
                self.pool.log.error("native_head_mismatch", upstream=self.upstream.label)
                self.poisoned = "native head mismatch"
            return
        self.transport.write(head)

    def _deliver(self, resp: Response | None, exc: BaseException | None) -> None:
        cb = self._on_head
        if cb is not None:
            self._on_head = None
            cb(resp, exc)

    # BodySink for the request body
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        skip = self.presend_body
        if skip:  # the native engine sent these already (a late decline)
            self.presend_body = max(0, skip - len(data))
            data = data[skip:]
            if not data:
                return
        if self._req_chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def end(self) -> None:
        body, self._req_body = self._req_body, None
        if self.closed:
            return
        if self._req_chunked:
            # an h2 client's trailing HEADERS become the chunked trailer section
            trailers = body.trailers if body is not None else None
            self.transport.write(b"0\r\n" + (trailer_lines(trailers) if trailers else b"") + b"\r\n")
        self._req_done = True
        if self._resp_done:
            self._maybe_release()

    def abort(self, exc: BaseException | None = None) -> None:  # type: ignore[override]
        """BodySink.abort (request body broke off) and plain abort: this connection is done."""
        self._req_body = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # flow control: our transport is full -> stop reading the client's body
    def pause_writing(self) -> None:
        if self.native is not None:
            self.native.write_paused(True)  # an upload C relays: its client stops being read
        if self._req_body is not None:
            self._req_body.pause()
        if self._tunnel is not None:
            self._tunnel.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.native is not None:
            self.native.write_paused(False)
        if self._req_body is not None:
            self._req_body.resume()
        if self._tunnel is not None:
            self._tunnel.upstream_write_paused(False)

    # Producer of the response body: the client's transport is full -> stop reading upstream
    def body_pause(self) -> None:
        if not self._read_paused and not self.closed:
            self._read_paused = True
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass

    def body_resume(self) -> None:
        if self._read_paused and not self.closed:
            self._read_paused = False
            if self._busy:  # the client was the slow side: the upstream's clock restarts
                self.deadline = _now() + self.pool.read_timeout
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass

    def body_abandon(self) -> None:
        """The client went away mid-response: this connection cannot be reused."""
        self._resp_body = None
        self.abort()

    # splicing (worker/http/splice_relay.py)
    def splice_target(self, chunks: bool) -> Any:
        """The transport a spliced request body may go to straight: one sent as it came
        (``chunks`` False: a Content-Length body) or re-chunked (``chunks``: chunk payloads
        framed by ``splice_chunk``), on an open connection; else None."""
        return None if self.closed or self._req_chunked != chunks else self.transport

    def splice_chunk(self, n: int) -> None:
        """A chunk of ``n`` payload bytes is spliced next: its size line."""
        if not self.closed:
            self.transport.write(b"%x\r\n" % n)

    def splice_chunk_end(self) -> None:
        if not self.closed:
            self.transport.write(b"\r\n")

    @property
    def chunked_body(self) -> bool:
        """The response body in flight is framed by chunks (not ended by the close)."""
        return self._framing == _CHUNKED

    def body_spliced(self) -> None:
        """The rest of the response body went around the parser: that parser still counts
        it, so the next response gets a fresh one, and this one is complete."""
        self._parser = None
        self.on_message_complete()

    # -- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes | memoryview) -> None:
        """``data`` is a memoryview lent for this call when ``reads_lent_views`` (the
        transport reuses the memory after): whatever is kept is copied (bytes(view))."""
        if self.native is not None:  # C holds it: a read held while paused comes this way
            self.native(bytes(data))
            return
        if self._tunnel is not None:
            self._tunnel.from_upstream(bytes(data))
            return
        if self._upgraded:
            self._pending_tunnel_bytes += data
            return
        if not self._busy:
            # bytes on an idle connection: the upstream is confused; never reuse it
            self.abort()
            return
        self._received = True
        self.deadline = _now() + self.pool.read_timeout
        parser = self._parser  # kept: a HEAD answer drops self._parser within the call
        self._feeding = True
        try:
            parser.feed_data(data)
        except UpgradeRequested as exc:
            self._feeding = False
            self._on_upgrade(exc.rest)
        except (HttpParserError, ParseError) as exc:
            self._feeding = False
            if self._finished:  # the response was whole: what broke is what came after it
                self._unsolicited(f"unparsable bytes after the response ({exc})")
            else:
                self._protocol_error(f"invalid response from upstream: {exc}")
        except Exception as exc:
            self._feeding = False
            self.pool.log.exception("upstream_connection_error", upstream=self.upstream.label)
            self._protocol_error(f"internal error: {exc!r}")
        else:
            self._feeding = False
            if self._deferred is not None:
                self._flush_deferred()
            if self._on_head is not None and self.pool.parser_kind == "httptools":
                # llhttp keeps an incomplete head without bound: bound it (the native parser
                # and h11 do it themselves)
                self._head_bytes += len(data)
                limits = self.pool.head_limits
                if self._head_bytes > limits.size + limits.line:
                    self._protocol_error("invalid response from upstream: response header block too large")
            elif self._trailers is not None and self.pool.parser_kind == "httptools":
                # the same for a trailer section (httptools joins a field's pieces without
                # bound): reads that fed no body byte count, as the request side's
                if self._head_bytes < 0:
                    self._head_bytes = 0
                else:
                    self._head_bytes += len(data)
                    limits = self.pool.head_limits
                    if self._head_bytes > limits.size + limits.line:
                        self._protocol_error("invalid response from upstream: trailer section too large")
            if self._finished:
                left = getattr(parser, "leftover", 0)
                if left:
                    self._unsolicited(f"{left} bytes after the response")
        if self._release_due:
            self._release_due = False
            self._maybe_release()

    def _unsolicited(self, why: str) -> None:
        """Bytes beyond the complete response: the connection is poisoned (closed, not pooled)."""
        if not self.poisoned:
            self.poisoned = why
            self.pool.stats.upstream_unsolicited += 1
            self.pool.log.warning("upstream_unsolicited_bytes", upstream=self.upstream.label, detail=why)

    def _protocol_error(self, message: str) -> None:
        self._deferred = None
        if self._on_head is not None:
            self._deliver(None, UpstreamError(message))
        body = self._resp_body
        if body is not None and not body.done:
            body.fail(UpstreamError(message))
        self.pool.stats.errors += 1
        self.abort()

    def _parser_eof(self) -> None:
        if self.pool.parser_kind == "h11" and self._parser is not None:
            try:
                self._parser.feed_data(b"")
            except Exception:
                pass

    # parser callbacks
    def on_message_begin(self) -> None:
        if self._finished:
            self._unsolicited("a second response began")
            return
        self._headers = []
        self._trailers = None
        self._head_size = 0
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        # llhttp calls this once per piece of the reason phrase a read holds
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._finished:
            return  # a stray message: on_message_begin has poisoned the connection
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (see the server's)
        trailers = self._trailers
        if trailers is not None:
            # httptools: a field of the chunked body's trailer section (after the last
            # on_chunk_header, before on_message_complete), bounded as a head is
            self._head_size = self.pool.head_limits.field(name, value, self._head_size, len(trailers))
            trailers.append((name.lower(), value))
            return
        self._head_size = self.pool.head_limits.field(name, value, self._head_size, len(self._headers))
        self._headers.append((name.lower(), value))

    def on_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """The trailer section of a chunked response (native: bounded in C already; h11:
        from its EndOfMessage), just before on_message_complete. Filtered and kept for the
        body's ``trailers`` there (``_take_trailers``)."""
        size = 0
        limits = self.pool.head_limits
        for n, (name, value) in enumerate(fields):  # h11 bounds only the bytes it buffers
            size = limits.field(name, value, size, n)
        self._trailers = fields

    def _take_trailers(self) -> list[tuple[bytes, bytes]] | None:
        """The kept trailer fields of the response just completed (keep_trailers), or None."""
        fields, self._trailers = self._trailers, None
        if not fields:
            return None
        conn = getattr(self._parser, "connection", None)  # native: its head's Connection values
        head = self._headers if conn is None else [(b"connection", conn)]
        return keep_trailers(fields, head) or None

    def on_headers_complete(self) -> None:
        """httptools / h11: the head is in."""
        if self._finished:
            self._unsolicited("a second response head")
            return
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers = []  # interim response (100 Continue, 103 Early Hints): skip
            self._interim = True  # its on_message_complete follows and ends nothing
            return
        headers, length, chunked = split_response_headers(self._headers, status, self._via)
        if chunked:
            self._trailers = []  # on_header now reads the trailer section, if one comes
            self._head_size = 0
        self._response_head(
            status, self._reason or None, headers, parser.should_keep_alive(), length, chunked
        )

    def on_response(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        length: int | None,
        chunked: bool,
        body: bytes | memoryview | None,
    ) -> None:
        """The native parser: a final head, hop-by-hop headers already removed (mu_http.c);
        ``body`` is the whole Content-Length body when it arrived with the head (a view lent
        for this call) or was collected (at most parser.COLLECT_MAX), else None and the body
        streams."""
        if self._finished:
            self._unsolicited(f"a second response ({status})")
            return
        if self._via:
            headers = with_via(headers)
        if body is None:
            self._response_head(status, reason or None, headers, keep_alive, length, chunked)
            return
        if type(body) is memoryview and not self._lend_body:
            body = body.tobytes()  # lent by the parser for this call only
        self._whole(Response(status, headers, body, reason=reason or None), keep_alive)

    def on_relay(
        self, status: int, reason: bytes, block: bytes, keep_alive: bool, body: bytes | memoryview
    ) -> None:
        """The native parser in relay mode (set by send for the callback path): a whole
        response with the client's header lines already serialised (no list built)."""
        if self._finished:
            self._unsolicited(f"a second response ({status})")
            return
        self._whole(Response(status, None, body, reason=reason or None, head_block=block), keep_alive)

    def _whole(self, resp: Response, keep_alive: bool) -> None:
        """A response complete with its body: this connection is done with it."""
        resp.upstream_info = self.upstream.label
        self._keep_alive = keep_alive
        self._framing = _LENGTH
        self._resp_done = True
        self._complete(resp)

    def _response_head(
        self,
        status: int,
        reason: bytes | None,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        length: int | None,
        chunked: bool,
    ) -> None:
        resp = Response(status, headers, reason=reason)
        self._keep_alive = keep_alive
        if self._method == "HEAD" or status in (204, 304) or status == 101:
            self._framing = _NONE
            body = BodyStream(length if self._method == "HEAD" and not chunked else None, self)
            body.finish()
            if status == 101:
                resp.body = b""
            else:
                resp.body = body
            self._resp_done = True
            if self._method == "HEAD" and self.pool.parser_kind != "h11":
                self._parser = None  # llhttp would wait for a body; a fresh parser next time
        elif length == 0 and not chunked:
            self._framing = _LENGTH
            resp.body = b""
        else:
            # hold the head back until the end of this read: a body that is complete by then
            # goes out as bytes with the head (no stream); otherwise a BodyStream starts with
            # what has arrived (see _flush_deferred)
            if chunked:
                self._framing = _CHUNKED
                length = None
            elif length is not None:
                self._framing = _LENGTH
            else:
                self._framing = _UNTIL_CLOSE
                self._keep_alive = False
            resp.upstream_info = self.upstream.label
            self._deferred = resp
            self._deferred_length = length
            self._chunks = []
            return
        resp.upstream_info = self.upstream.label
        if self._on_head is not None:
            self._deliver(resp, None)
        elif self._resp_body is not None:
            self._resp_body.abandon()
        if self._resp_done and status != 101:
            self._after_response()

    def on_body(self, data: bytes) -> None:
        if self._finished:
            self._unsolicited(f"{len(data)} body bytes after the response")
            return
        self._head_bytes = -1  # this read fed the body (see data_received's trailer bound)
        if self._deferred is not None:
            self._chunks.append(data)
            return
        body = self._resp_body
        if body is not None:
            body.feed(data)

    def _flush_deferred(self) -> None:
        """The body did not complete within the read that brought the head: stream it."""
        resp = self._deferred
        if resp is None:  # the caller checks; nothing is deferred
            return
        self._deferred = None
        body = self._resp_body = BodyStream(self._deferred_length, self)
        for chunk in self._chunks:
            body.feed(chunk)
        self._chunks = []
        resp.body = body
        if self._on_head is not None:
            self._deliver(resp, None)
        else:
            body.abandon()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._resp_done:
            return
        self._resp_done = True
        trailers = self._take_trailers() if self._trailers else None
        resp = self._deferred
        if resp is not None:
            self._deferred = None
            chunks = self._chunks
            self._chunks = []
            if trailers is not None:
                # trailers need a chunked (HTTP/1.1) or HEADERS-ended (h2) body: a stream,
                # complete already, not bytes sent with a Content-Length
                body = BodyStream(None, self)
                for chunk in chunks:
                    body.feed(chunk)
                body.trailers = trailers
                body.finish()
                resp.body = body
            else:
                resp.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._complete(resp)
            return
        stream = self._resp_body
        self._resp_body = None
        if stream is not None:
            if trailers is not None:
                stream.trailers = trailers
            stream.finish()
        self._after_response()

    def _complete(self, resp: Response) -> None:
        """The whole answer is here (head and body): release the connection, then hand over."""
        self._after_response()
        if self._on_head is not None:
            self._deliver(resp, None)

    def _after_response(self) -> None:
        self._finished = True
        self._end_exchange()
        if self._req_done:
            self._maybe_release()
        # else: the request body is still streaming (the upstream answered early); release
        # when it ends (see end())

    def _end_exchange(self) -> None:
        if self._busy:
            self._busy = False
            self.upstream.active -= 1
            self.deadline = 0.0

    def _maybe_release(self) -> None:
        if self.closed:
            return
        if self._feeding:
            # still inside the read that completed the response: whatever follows it in this
            # read decides (see data_received); nobody may take the connection before that
            self._release_due = True
            return
        if self.poisoned:
            self.close()
            return
        if self._keep_alive and self._resp_done and self._req_done and self._tunnel is None:
            self._busy = False
            self.pool.release(self)
        else:
            self.close()

    # -- upgrade ---------------------------------------------------------------------------
    def _on_upgrade(self, rest: bytes) -> None:
        """101 received: the parser is done with this connection; bytes wait for the tunnel
        (if nobody takes it, the discarded response closes us: see Tunnel.close)."""
        self._upgraded = True
        self._end_exchange()
        if rest:
            self._pending_tunnel_bytes += rest

    def attach_tunnel(self, tunnel: Any) -> bytes:
        """Become one end of a byte pipe; returns bytes already received after the 101."""
        self._tunnel = tunnel
        self._end_exchange()
        self.deadline = 0.0
        rest = self._pending_tunnel_bytes
        self._pending_tunnel_bytes = b""
        return rest

    def check_timeout(self, now: float) -> None:
        if self._busy and self.deadline and now >= self.deadline and not self._read_paused:
            self.deadline = 0.0
            self._deferred = None
            err = UpstreamTimeout("upstream read timeout")
            if self._on_head is not None:
                self._deliver(None, err)
            body = self._resp_body
            if body is not None and not body.done:
                body.fail(err)
            self.pool.log.info("upstream_timeout", upstream=self.upstream.label)
            self.abort()
