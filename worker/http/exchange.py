"""One request/response pair on a client connection: the ``Exchange``.

An exchange is created by the connection for every request head (or for a refusal: a parse
error, a header timeout) and lives until its response has gone out. It calls the service
(``start``), takes the answer (``respond`` now, or ``spawn`` a coroutine that returns it),
writes the response head and body (it is the ``BodySink`` of a streamed response body),
and does the accounting: counters, duration, access log. What happens to the connection
afterwards (the next pipelined request, keep-alive, closing) is the connection's
(``HttpServerProtocol.exchange_done``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monolake.worker.http.body import BodyError, BodyStream
from monolake.worker.http.connection import BODY_BYTES, BODY_STREAM, must_close, response_head
from monolake.worker.http.message import Request, Response, header_tokens, text_response, trailer_lines
from monolake.worker.http.splice_relay import client_source, upstream_source
from monolake.worker.service.context import RequestContext

if TYPE_CHECKING:
    from monolake.worker.http.protocol import HttpServerProtocol

# a whole response body at least this large goes out beside its head (transport.writelines)
# instead of being copied into one buffer with it: io_uring and uvloop send the pair with one
# vectored write (asyncio's own transport joins them, as before)
WRITELINES_MIN = 16384


Serve = Callable[[Request, RequestContext, Any], None]


def entry_point(entry: Any) -> Serve:
    """How a server's exchanges call its service stack, decided once per stack: a
    callback-shaped entry (``serve(request, ctx, exchange)``: the router when nothing wraps
    it) directly; a coroutine service (a layer, the Thrift gateway) as the exchange's one
    task. Either way the exchange is the same object and the response goes out the same way."""
    serve = getattr(entry, "serve", None)
    if serve is not None:
        return serve
    call = entry.call

    def spawn_call(request: Request, ctx: RequestContext, ex: Any) -> None:
        ex.spawn(call(request, ctx))

    return spawn_call


class Exchange:
    """One request and its response; see the module docstring. ``respond`` and ``spawn``
    are what a callback-shaped service (``RouterService.serve``) answers through."""

    __slots__ = (
        "bytes_out",
        "chunked",
        "close",
        "conn",
        "ctx",
        "error",
        "head_sent",
        "pending_head",
        "request",
        "started",
        "status",
        "task",
        "upstream",
    )

    def __init__(self, conn: HttpServerProtocol, request: Request | None, error: int = 0) -> None:
        self.conn = conn
        self.request = request
        self.ctx: RequestContext | None = None
        self.task: asyncio.Task | None = None
        self.error = error  # answer this status (a parse error) instead of calling
        self.head_sent = False
        self.status = 0
        self.close = False
        self.bytes_out = 0
        self.started = 0.0
        self.upstream: Any = None
        self.chunked = False  # the response body goes out chunked
        self.pending_head: bytes | None = None  # a streamed response's head, not yet written

    # respond() is done with a response body when it returns: a service may lend it a view
    lends = True

    # -- calling the service ---------------------------------------------------------------
    def start(self) -> None:
        """This exchange is first in line: call the service (or answer its error)."""
        conn = self.conn
        rt = conn._rt
        self.started = time.monotonic()
        req = self.request
        if self.error or req is None:  # no request only with a parse error's status to answer
            self.send(text_response(self.error, close=True))
            return
        rt.stats.requests += 1
        rt.stats.active_requests += 1
        body = req.body
        if body is not None:  # spliced if it is piped to a plain upstream
            threshold = getattr(rt.settings, "splice_threshold", 0)
            length = body.length
            if threshold and length is None:
                body.splice = client_source(conn, threshold)  # chunked: its large chunks
            elif threshold and length is not None and length >= threshold:
                body.splice = client_source(conn)
        ctx = RequestContext(conn._ctx, self.started)
        self.ctx = ctx
        try:
            conn._serve(req, ctx, self)
        except Exception:  # a request must never take the worker down
            rt.log.exception("service_error", server=rt.name, request_id=ctx.request_id)
            rt.stats.errors += 1
            self.send(text_response(500, close=True))

    def respond(self, resp: Response) -> None:
        """Answer this request now (a response ready without waiting). A memoryview body is
        written or copied before this returns, so it may be one lent for the call only."""
        try:
            self.send(resp)
        except Exception:
            self.conn._rt.log.exception("respond_error", server=self.conn._rt.name)
            self.conn._abort()

    def spawn(self, coro: Any, on_done: Callable[[], None] | None = None) -> None:
        """Continue this request as a coroutine (it has to wait for something); at most one
        task per request. ``on_done`` runs when the task ends, also when it is cancelled
        before the coroutine ever ran."""
        self.task = task = self.conn._loop.create_task(self._run(coro))
        if on_done is not None:
            task.add_done_callback(lambda _t: on_done())

    def fail(self, status: int) -> None:
        """Answer ``status`` instead of what the service is working on (a parse error or a
        timeout in the request body), and close after it."""
        if self.task is not None:
            self.task.cancel()
        self.send(text_response(status, close=True))

    async def _run(self, coro: Any) -> None:
        rt = self.conn._rt
        try:
            resp = await coro
        except asyncio.CancelledError:
            return
        except BodyError as exc:
            resp = text_response(400 if self.conn._transport is not None else 499, str(exc), close=True)
        except Exception:  # a request must never take the worker down
            rt.log.exception(
                "service_error", server=rt.name, request_id=self.ctx.request_id if self.ctx else None
            )
            rt.stats.errors += 1
            resp = text_response(500, close=True)
        if not isinstance(resp, Response):
            rt.log.error("service_returned_non_response", type=type(resp).__name__)
            resp = text_response(500, close=True)
        self.respond(resp)

    # -- writing the response --------------------------------------------------------------
    def send(self, resp: Response) -> None:
        """Write ``resp`` (its head, and its body or the start of its stream)."""
        conn = self.conn
        if conn._transport is None or not conn._queue or conn._queue[0] is not self:
            discard_response(resp)
            return
        rt = conn._rt
        req = self.request
        spliced = req.body.relay if req is not None and req.body is not None else None
        if spliced is not None:
            # the request body may be spliced whole already, unreported (splice_relay.py):
            # keep-alive depends on it, so learn first, then send
            if type(resp.body) is memoryview:
                resp.body = resp.body.tobytes()  # lent for the call only
            spliced.settle(lambda: self.send(resp))
            return
        self.status = resp.status
        self.head_sent = True
        close = must_close(req, resp, conn._closing or rt.draining)
        parts, body, kind, chunked, close = response_head(req, resp, close, conn._lends_ok)
        self.close = close
        big: Any = None
        if kind == BODY_BYTES:
            if len(body) >= WRITELINES_MIN and conn._tls is None:
                big = body  # sent beside the head: no copy into one buffer
            else:
                parts.append(body)
        out = b"".join(parts)
        n_out = len(out) if big is None else len(out) + len(big)
        self.bytes_out += n_out
        rt.stats.bytes_out += n_out
        if kind == BODY_STREAM:
            # a streamed body: the head goes out together with what is already buffered
            self.chunked = chunked
            self.pending_head = out
            conn._out_body = body
            length = body.length
            threshold = getattr(rt.settings, "splice_threshold", 0)
            if threshold and body.splice is None and conn._tls is None:
                if length is None and chunked:
                    body.splice = upstream_source(body, threshold)  # its large chunks
                elif length is not None and not chunked and length >= threshold:
                    body.splice = upstream_source(body)
            body.pipe(self)
            head = self.pending_head
            if head is not None:
                self.pending_head = None
                conn._write(head)
            return
        if big is None:
            conn._write(out)
        elif conn._transport is not None:
            conn._transport.writelines((out, big))
        tunnel = resp.tunnel if resp.status == 101 else None
        if tunnel is not None:
            self.account()
            conn.become_tunnel(tunnel)
            return
        if kind != BODY_BYTES and body is not None:  # a stream nobody reads (HEAD, 204, 304)
            body.abandon() if not body.done else body.discard()
        conn.exchange_done(self)

    # a spliced response body (worker/http/splice_relay.py) goes straight to this transport
    def splice_target(self, chunks: bool) -> Any:
        """The client's transport, for a body written as it comes (``chunks`` False: not
        chunked) or chunk payloads framed by ``splice_chunk`` (``chunks``: chunked), by this
        class's ``write`` (a subclass that frames bodies its own way takes no splice)."""
        conn = self.conn
        if self.chunked != chunks or conn._tls is not None or type(self).write is not Exchange.write:
            return None
        return conn._transport

    def spliced(self, n: int) -> None:
        self.bytes_out += n
        self.conn._rt.stats.bytes_out += n

    def splice_chunk(self, n: int) -> None:
        """A chunk of ``n`` payload bytes is spliced next: its size line."""
        self._out(b"%x\r\n" % n)

    def splice_chunk_end(self) -> None:
        self._out(b"\r\n")

    # BodySink: a streamed response body goes out through these
    def write(self, data: bytes) -> None:
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._out(data)

    def _out(self, data: bytes) -> None:
        conn = self.conn
        conn._rt.stats.bytes_out += len(data)
        self.bytes_out += len(data)
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            data = head + data
        if conn._transport is not None:
            conn._write(data)

    def end(self) -> None:
        conn = self.conn
        body = conn._out_body
        conn._out_body = None
        tail = b""
        if self.chunked:
            self.chunked = False
            tail = b"0\r\n" + _trailer_lines(self.request, body) + b"\r\n"
            conn._rt.stats.bytes_out += len(tail)
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            tail = head + tail
        if tail and conn._transport is not None:
            conn._write(tail)
        conn.exchange_done(self)

    def abort(self, exc: BaseException) -> None:
        """The response body broke off upstream: the client must see a truncated response."""
        conn = self.conn
        conn._out_body = None
        self.chunked = False
        rt = conn._rt
        rt.stats.errors += 1
        rt.log.info("response_body_aborted", error=str(exc), peer=conn._ctx.peer)
        if conn._queue and conn._queue[0] is self:
            self.account()
        conn._abort()

    # -- accounting ------------------------------------------------------------------------
    def account(self) -> None:
        """Counters, duration and access log for a response that has gone out."""
        rt = self.conn._rt
        if self.ctx is not None:
            rt.stats.active_requests -= 1
        rt.stats.count_status(self.status)
        if self.started:
            rt.stats.observe(time.monotonic() - self.started)
        if rt.access_log and self.request is not None:
            rt.log_access(self, self.conn._ctx)
        self.ctx = None

    def lost(self, err: BodyError) -> None:
        """The client connection is gone before this exchange finished."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        req = self.request
        if req is not None and req.body is not None and not req.body.done:
            req.body.fail(err)
        if self.ctx is not None:
            self.conn._rt.stats.active_requests -= 1
            self.ctx = None


def _trailer_lines(req: Request | None, body: Any) -> bytes:
    """Trailer fields of a chunked response (an h2 upstream's, gRPC's grpc-status), sent
    only to a client that asked with ``TE: trailers`` (RFC 9110 §6.5.1)."""
    trailers = getattr(body, "trailers", None)
    if not trailers or req is None or b"trailers" not in header_tokens(req.headers, b"te"):
        return b""
    return trailer_lines(trailers)


def discard_response(resp: Response) -> None:
    """A response that will never be sent: let go of its body stream and its tunnel."""
    body = resp.body
    if isinstance(body, BodyStream) and not body.done:
        body.abandon()
    if resp.tunnel is not None:
        resp.tunnel.close()


class CallReply:
    """What ``RouterService.call`` hands to ``serve`` when a layer awaits the router: the
    ``respond`` / ``spawn`` of an ``Exchange``, resolved by awaiting (``wait``). A coroutine
    spawned before ``wait`` is awaited in place (no task of its own); one spawned later,
    from a callback (a retry after a stale connection), gets a task that resolves the wait."""

    __slots__ = ("coro", "fut", "on_done", "resp", "task", "upstream")

    # a layer keeps the response after respond(): its body must not be a lent view
    lends = False

    def __init__(self) -> None:
        self.resp: Response | None = None
        self.coro: Any = None
        self.on_done: Callable[[], None] | None = None
        self.fut: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.upstream: Any = None  # the upstream connection while its response head is due

    def respond(self, resp: Response) -> None:
        fut = self.fut
        if fut is None:
            self.resp = resp
        elif fut.done():
            discard_response(resp)  # the awaiting layer was cancelled
        else:
            fut.set_result(resp)

    def spawn(self, coro: Any, on_done: Callable[[], None] | None = None) -> None:
        fut = self.fut
        if fut is None:
            self.coro = coro
            self.on_done = on_done
            return
        if fut.done():  # the awaiting layer was cancelled: nothing more runs for it
            coro.close()
            if on_done is not None:
                on_done()
            return
        self.task = task = asyncio.get_running_loop().create_task(coro)
        if on_done is not None:
            task.add_done_callback(lambda _t: on_done())
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        fut = self.fut
        if fut is None:  # not reached: spawn() starts a task only once wait() made the future
            return
        if task.cancelled():
            if not fut.done():
                fut.cancel()
            return
        exc = task.exception()
        if fut.done():
            if exc is None and isinstance(task.result(), Response):
                discard_response(task.result())
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(task.result())

    async def wait(self) -> Response:
        coro = self.coro
        if coro is not None:
            self.coro = None
            try:
                return await coro
            finally:
                if self.on_done is not None:
                    self.on_done()
        if self.resp is not None:
            return self.resp
        self.fut = fut = asyncio.get_running_loop().create_future()
        try:
            return await fut
        except asyncio.CancelledError:
            # the layer gave up: what was under way for it is dropped, as an awaited
            # upstream request always was
            if self.task is not None:
                self.task.cancel()
            elif self.upstream is not None:
                self.upstream.abort()
            if fut.done() and not fut.cancelled():
                discard_response(fut.result())
            raise
