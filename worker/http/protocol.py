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
import time
from time import monotonic as _now
from collections import deque
from typing import TYPE_CHECKING, Any

from monolake.worker.http import proxy_protocol
from monolake.worker.http.body import BodyError, BodyStream
from monolake.worker.http.connection import (BODY, BODY_BYTES, BODY_STREAM, HEAD, IDLE,
                                             PHASE_NAMES, PIPELINE_MAX, RequestReader,
                                             must_close, response_head)
from monolake.worker.http.message import Request, Response, text_response
from monolake.worker.http.tls import TlsError
from monolake.worker.service.context import ConnectionContext, RequestContext
from monolake.worker.sockopts import set_nodelay

if TYPE_CHECKING:
    from monolake.worker.http.server import ServerRuntime

DRAIN_IDLE_GRACE = 1.0     # a draining server closes keep-alive connections idle this long
LINGER_SECONDS = 2.0       # how long to drain a client's unread body before closing

_PAUSE_PIPELINE = 1 << 20  # reasons to stop reading (bodies count in the low bits)
_PAUSE_TUNNEL = 1 << 21
# a whole response body at least this large goes out beside its head (transport.writelines)
# instead of being copied into one buffer with it: io_uring and uvloop send the pair with one
# vectored write (asyncio's own transport joins them, as before)
_WRITELINES_MIN = 16384

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
        self._reader = RequestReader(rt, self, self)  # bytes -> requests (connection.py)
        self._ctx: ConnectionContext | None = None
        self._queue: deque[Exchange] = deque()
        self._pauses = 0
        self._read_paused = False
        self._write_paused = False
        self._out_body: BodyStream | None = None
        self._out_chunked = False
        self._pending_head: bytes | None = None
        self._closing = False
        self._prelude: bytearray | None = None
        self._tls: Any = None
        self._tunnel: Any = None
        self._tunnel_pending: list[bytes] = []
        self._lingering = False

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
        self._reader.deadline = _now() + rt.header_timeout
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
        self._reader.start()

    def connection_lost(self, exc: BaseException | None) -> None:
        rt = self._rt
        if self._transport is None:
            return
        self._transport = None
        rt.connections.discard(self)
        rt.stats.open_connections -= 1
        err = BodyError("client connection lost")
        self._reader.stop(str(err))
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
        self._reader.peer_closed()
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
                if not self._reader.started:
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
        self._reader.feed(data)

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

    # RequestReader events (connection.py)
    def on_request(self, req: Request) -> None:
        self._enqueue(Exchange(self, req))

    def on_error(self, status: int, reason: str, req: Request | None,
                 internal: BaseException | None) -> None:
        """A malformed request: answer ``status`` in turn, then close; parse nothing more."""
        if internal is not None:
            self._rt.log.error("http_callback_error", peer=self._ctx.peer, exc_info=internal)
        self._rt.stats.errors += 1
        self._rt.log.info("bad_request", status=status, reason=reason, peer=self._ctx.peer)
        ex = self._exchange_of(req)
        if ex is not None and not ex.head_sent and ex is not self._queue[0]:
            ex.error = status
        elif ex is not None and not ex.head_sent:
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

    def on_upgrade(self, rest: bytes) -> None:
        """The parser stopped after an Upgrade request: the rest is for the tunnel."""
        if rest:
            self._tunnel_pending.append(rest)
        # further bytes before the 101 wait in _tunnel_pending (bounded by pausing)
        self._add_pause(_PAUSE_TUNNEL)

    def on_continue(self, req: Request) -> None:
        ex = self._queue[0] if self._queue else None
        if self._transport is not None and ex is not None and not ex.head_sent:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _exchange_of(self, req: Request | None) -> "Exchange | None":
        if req is not None:
            for ex in self._queue:
                if ex.request is req:
                    return ex
        return None

    # -- request queue ---------------------------------------------------------------------
    def _enqueue(self, ex: Exchange) -> None:
        self._queue.append(ex)
        if len(self._queue) == 1:
            self._start(ex)
        elif len(self._queue) >= PIPELINE_MAX and not self._pauses & _PAUSE_PIPELINE:
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
    def _respond(self, ex: Exchange, resp: Response) -> None:
        if self._transport is None or not self._queue or self._queue[0] is not ex:
            _discard_response(resp)
            return
        rt = self._rt
        req = ex.request
        ex.status = resp.status
        ex.head_sent = True
        close = must_close(req, resp, self._closing or rt.draining)
        parts, body, kind, chunked, close = response_head(req, resp, close, self._lends_ok)
        ex.close = close
        big: Any = None
        if kind == BODY_BYTES:
            if len(body) >= _WRITELINES_MIN and self._tls is None:
                big = body  # sent beside the head: no copy into one buffer
            else:
                parts.append(body)
        out = b"".join(parts)
        n_out = len(out) if big is None else len(out) + len(big)
        ex.bytes_out += n_out
        rt.stats.bytes_out += n_out
        if kind == BODY_STREAM:
            # a streamed body: send the head together with what is already buffered
            self._out_chunked = chunked
            self._out_body = body
            self._pending_head = out
            body.pipe(self)
            head = self._pending_head
            if head is not None:
                self._pending_head = None
                self._write(head)
            return
        if big is None:
            self._write(out)
        elif self._transport is not None:
            self._transport.writelines((out, big))
        tunnel = resp.tunnel if resp.status == 101 else None
        if tunnel is not None:
            self._queue.clear()
            self._finish_accounting(ex)
            self._tunnel = tunnel
            self._reader.tunnel()
            pending, self._tunnel_pending = self._tunnel_pending, []
            tunnel.attach_client(self, pending)
            return
        if kind != BODY_BYTES and body is not None:  # a stream nobody reads (HEAD, 204, 304)
            body.abandon() if not body.done else body.discard()
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
            if len(self._queue) < PIPELINE_MAX and self._pauses & _PAUSE_PIPELINE and not self._reader.dead:
                self._remove_pause(_PAUSE_PIPELINE)
            return
        if self._pauses & _PAUSE_PIPELINE and not self._reader.dead:
            self._remove_pause(_PAUSE_PIPELINE)
        if self._rt.draining:
            self._close(linger=True)  # a request already on its way gets FIN, not RST
            return
        self._reader.answered(self._rt.keepalive_timeout)

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

    # -- timeouts --------------------------------------------------------------------------
    def check_timeout(self, now: float) -> None:
        if self._transport is None:
            return
        reader = self._reader
        phase = reader.due(now, self._read_paused)
        if phase < 0:
            return
        if phase == IDLE or self._prelude is not None:
            self._close()
            return
        self._rt.log.info("client_timeout", phase=PHASE_NAMES[phase], peer=self._ctx.peer)
        if phase == HEAD:
            if not self._queue:
                reader.dead = True
                ex = Exchange(self, None, error=408)
                self._queue.append(ex)
                self._start(ex)
            else:
                self._closing = True
            return
        if phase == BODY:
            req = reader.stop("request body timeout")
            ex = self._queue[0] if self._queue else None
            if req is not None and ex is not None and ex.request is req and not ex.head_sent:
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
        if self._reader.fresh:
            return
        if self._is_idle():
            # a busy client sends its next request within the grace and gets its answer with
            # Connection: close; only a connection that stays idle is closed, so the race of
            # a request with our FIN is limited to clients idle for the whole grace period
            self._loop.call_later(DRAIN_IDLE_GRACE, self._close_if_idle)

    def _is_idle(self) -> bool:
        return not self._queue and self._tunnel is None and (self._reader.receiving is None
                                                             or self._reader.phase == IDLE)

    def _close_if_idle(self) -> None:
        if self._transport is not None and not self._lingering and self._is_idle():
            self._close(linger=True)

    @property
    def idle(self) -> bool:
        return not self._queue and self._reader.phase == IDLE

    @property
    def reclaimable(self) -> bool:
        """Idle between requests after serving at least one: what a worker out of fds closes
        first (a connection that has sent nothing yet was accepted to be served)."""
        return (self.idle and not self._reader.fresh and self._transport is not None
                and not self._lingering and self._tunnel is None)

    @property
    def deadline(self) -> float:
        """When the current phase's timeout is due (0.0: none); see ServerRuntime._sweep."""
        return self._reader.deadline

    @property
    def idle_since(self) -> float:
        return self._reader.deadline - self._rt.keepalive_timeout

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
            self._reader.dead = True
            try:
                t.write_eof()
            except (OSError, RuntimeError):
                t.abort()
                return
            while self._pauses:
                self._remove_pause(self._pauses)
            self._reader.deadline = 0.0
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
