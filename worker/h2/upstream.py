"""One multiplexed HTTP/2 connection to an upstream, and the streams on it.

Why a class of its own and not ``UpstreamConnection``: an HTTP/1.1 connection serves one
exchange at a time and is pooled when idle; an h2 connection serves many streams at once and
stays in the pool while it has stream capacity. Flow control is per stream here, never by
pausing the socket (that would stall every other stream on it):

- request body: ``send_data`` queues on the stream; above ``HIGH_WATER`` the client's body is
  paused, and ``StreamWritable`` resumes it (the upstream's window paces the client);
- response body: received DATA is acknowledged (the upstream's window reopened) only while the
  client's side takes it; a paused client body holds the acknowledgements back, so a slow
  client stalls the upstream stream after one window instead of filling memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic as _now
from typing import TYPE_CHECKING, Any

from monolake.worker.h2 import events as ev
from monolake.worker.h2.session import H2ClientSession
from monolake.worker.h2.translate import response_fields, trailer_fields
from monolake.worker.http.body import BodyStream
from monolake.worker.http.client import UpstreamError, UpstreamTimeout
from monolake.worker.http.message import Response

if TYPE_CHECKING:
    from monolake.worker.h2.pool import H2Pool
    from monolake.worker.h2.settings import H2Settings
    from monolake.worker.http.upstream import Upstream


class H2StreamReset(UpstreamError):
    """The upstream reset the stream (``error_code``, RFC 9113 §7). Before the head it is a
    502; a body that fails with it lets a downstream h2 stream answer with RST_STREAM."""

    def __init__(self, message: str, error_code: int, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.error_code = error_code


HIGH_WATER = 256 * 1024  # a stream's queued request bytes before the client's body pauses
# request-body bytes a stream keeps so that a GOAWAY/REFUSED_STREAM retry can send them again
# on a new connection (one initial window of nghttp2's peer; nginx keeps 16 KiB in memory,
# Envoy's retry buffer is per_request_buffer_limit_bytes): a longer body is not replayed
REPLAY_LIMIT = 64 * 1024
CANCEL = 0x8
OnHead = Callable[[Response | None, BaseException | None], None]


class H2Stream:
    """One request/response on an h2 connection: the request body's sink, the response
    body's producer."""

    __slots__ = (
        "body_end",
        "conn",
        "deadline",
        "held",
        "id",
        "method",
        "next",
        "on_head",
        "parked",
        "paused",
        "replay",
        "replay_size",
        "req_body",
        "req_paused",
        "resp_body",
        "trailers",
        "via",
    )

    def __init__(
        self, conn: H2Connection, sid: int, on_head: OnHead, method: str, via: bool, deadline: float
    ) -> None:
        self.conn = conn
        self.id = sid
        self.on_head: OnHead | None = on_head
        self.method = method
        self.via = via
        self.req_body: BodyStream | None = None
        self.resp_body: BodyStream | None = None
        self.paused = False  # the client's side is not taking the response body
        self.held = 0  # received bytes not acknowledged while paused
        self.deadline = deadline
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.req_paused = False
        # the replay buffer (None: the body outgrew REPLAY_LIMIT, it cannot be sent again)
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        # how the client's body ended: None (still coming), its trailers or [] (ended), or
        # the exception it broke off with
        self.body_end: list[tuple[bytes, bytes]] | BaseException | None = None
        self.parked = False  # refused by the upstream, the body kept for a retry
        self.next: H2Stream | None = None  # the retry's stream: the rest of the body goes there

    # BodySink: the client's request body goes into the stream
    def write(self, data: bytes) -> None:
        if self.next is not None:
            self.next.write(data)
            return
        self._keep(data)
        if self.parked:
            return  # the body is paused; what was already under way waits for the retry
        n = self.conn.session.send_data(self.id, data)
        if n > HIGH_WATER and self.req_body is not None and not self.req_paused:
            self.req_paused = True
            self.req_body.pause()
        self.conn.flush()

    def _keep(self, data: bytes) -> None:
        """Keep what is sent, up to REPLAY_LIMIT. Parked, every byte is kept: none of it was
        sent, and the paused client can only deliver what was already under way (one read
        for HTTP/1.1, at most one stream window for h2)."""
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT and not self.parked:
                self.replay = None  # too long to replay: a refused stream becomes a 502
            else:
                self.replay.append(data if isinstance(data, bytes) else bytes(data))  # owned bytes

    def end(self) -> None:
        if self.next is not None:
            self.next.end()
            return
        body = self.req_body
        trailers = body.trailers if body is not None else None
        self.body_end = list(trailers or ())
        if self.parked:
            return
        self.req_body = None
        self._send_end(self.body_end)

    def _send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if trailers:  # an h2 client's request trailers: trailing HEADERS here too
            self.conn.session.send_trailers(self.id, trailer_fields(trailers))
        else:
            self.conn.session.end_stream(self.id)
        self.conn.flush()

    def abort(self, exc: BaseException | None = None) -> None:
        """The client's body broke off: the upstream must not take a truncated request."""
        if self.next is not None:
            self.next.abort(exc)
            return
        self.body_end = exc or UpstreamError("request body broke off")
        if self.parked:
            return
        self.req_body = None
        self.conn.session.reset_stream(self.id, CANCEL)
        self.conn.flush()

    # GOAWAY / REFUSED_STREAM retry with the request body
    @property
    def replayable(self) -> bool:
        """The upstream refused this stream and every body byte sent so far is still here."""
        return self.parked and self.replay is not None and not isinstance(self.body_end, BaseException)

    def _park(self) -> None:
        """Refused (retryable): keep the body for the retry instead of dropping it; stop
        reading the client meanwhile (bytes already under way still land in ``replay``)."""
        self.parked = True
        if self.req_body is not None and not self.req_paused:
            self.req_paused = True
            self.req_body.pause()

    def hand_over(self, new: H2Stream) -> None:
        """The retry's stream ``new`` takes the body: the kept bytes first, then the rest."""
        assert self.replay is not None
        self.parked = False
        self.next = new
        body, self.req_body = self.req_body, None
        new.req_body = body
        queued = 0
        for data in self.replay:
            new._keep(data)
            queued = new.conn.session.send_data(new.id, data)
        self.replay = None
        end = self.body_end
        if isinstance(end, list):
            new.body_end = end
            new.req_body = None
            new._send_end(end)
        elif self.req_paused and body is not None:
            self.req_paused = False
            if queued > HIGH_WATER:
                new.req_paused = True  # StreamWritable on the new stream resumes it
            else:
                body.resume()
        new.conn.flush()

    def release(self) -> None:
        """No retry after all: drop the kept body and keep reading (and discarding) the client."""
        if not self.parked:
            return
        self.parked = False
        self.replay = None
        req, self.req_body = self.req_body, None
        if req is not None and not req.done:
            req.discard()
            if self.req_paused:
                self.req_paused = False
                req.resume()

    # Producer: the client's side of the response body
    def body_pause(self) -> None:
        self.paused = True

    def body_resume(self) -> None:
        self.paused = False
        held, self.held = self.held, 0
        if held:
            self.conn.session.acknowledge_received_data(self.id, held)
            self.conn.flush()
        self.deadline = _now() + self.conn.pool.read_timeout
        self.conn.pool.wake_by(self.deadline)

    def body_abandon(self) -> None:
        """The client went away mid-response: cancel just this stream."""
        self.resp_body = None
        self.conn.session.reset_stream(self.id, CANCEL)
        self.conn.flush()

    def fail(self, exc: UpstreamError) -> None:
        cb, self.on_head = self.on_head, None
        if (
            exc.retryable
            and cb is not None
            and self.replay is not None
            and (self.req_body is not None or isinstance(self.body_end, list))
        ):
            self._park()  # before the callback: forward() decides on ``replayable``
        if cb is not None:
            cb(None, exc)
        body, self.resp_body = self.resp_body, None
        if body is not None and not body.done:
            body.fail(exc)
        if self.parked:
            return
        req, self.req_body = self.req_body, None
        if req is not None and not req.done:
            req.discard()  # keep reading the client, drop the bytes (the stream is gone)
            if self.req_paused:
                req.resume()


class H2Connection(asyncio.Protocol):
    """A pooled h2 connection to one upstream endpoint (see the module docstring)."""

    def __init__(self, pool: H2Pool, up: Upstream, settings: H2Settings) -> None:
        self.pool = pool
        self.upstream = up
        self.key = up.key
        self.session = H2ClientSession(settings)
        self.streams: dict[int, H2Stream] = {}
        self.transport: Any = None
        self.closed = False
        loop = pool.loop or asyncio.get_running_loop()
        self.ready: asyncio.Future = loop.create_future()  # the peer's SETTINGS arrived
        self.idle_since = _now()
        self.streams_opened = 0
        self._write_paused = False
        self._flushing = False
        self._again = False

    # -- capacity ------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return not self.closed and self.session.accepting_streams

    @property
    def available(self) -> int:
        return self.session.available_streams if not self.closed else 0

    # -- one request ---------------------------------------------------------------------
    def send(
        self,
        method: str,
        headers: list[tuple[bytes, bytes]],
        body: BodyStream | None,
        via: bool,
        on_head: OnHead,
        replay_from: H2Stream | None = None,
    ) -> H2Stream:
        """Open a stream; ``on_head(response, None)`` or ``on_head(None, error)`` follows once.
        A retryable error means the upstream never processed the stream (GOAWAY, refused):
        then, if ``stream.replayable``, pass it as ``replay_from`` to another connection's
        ``send`` and the request body goes there (what was sent again, then the rest)."""
        end = body is None and replay_from is None
        sid = self.session.send_request(headers, end_stream=end)
        st = H2Stream(self, sid, on_head, method, via, _now() + self.pool.read_timeout)
        self.streams[sid] = st
        self.pool.wake_by(st.deadline)
        self.streams_opened += 1
        self.upstream.active += 1
        if replay_from is not None:
            replay_from.hand_over(st)
        elif body is not None:
            st.req_body = body
            body.pipe(st)
        self.flush()
        return st

    def cancel(self, sid: int) -> None:
        """Nobody waits for stream ``sid`` any more: reset it, keep the connection."""
        st = self.streams.pop(sid, None)
        if st is not None:
            self._finish(st)
            st.on_head = None
            self.session.reset_stream(sid, CANCEL)
            st.fail(UpstreamError("cancelled"))
            self.flush()

    # -- transport -----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None and ssl_obj.selected_alpn_protocol() != "h2":
            return  # not h2 by ALPN: not one byte of the preface (the pool closes this)
        self.flush()

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            events = self.session.receive_data(data)
        except Exception as exc:  # one broken session must not escape
            self.pool.log.exception("h2_upstream_error", upstream=self.upstream.label)
            self._lose(UpstreamError(f"HTTP/2 upstream session error: {exc!r}"))
            return
        self._handle(events)
        self.flush()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lose(UpstreamError(f"HTTP/2 upstream closed the connection ({exc or 'EOF'})", retryable=False))

    def flush(self) -> None:
        """Write what the session has due (unless the socket is full), handle the events that
        produced, and close once the session is done. Re-entrant calls fold into one loop."""
        if self._flushing:
            self._again = True
            return
        self._flushing = True
        try:
            while not self.closed:
                self._again = False
                out = b"" if self._write_paused else self.session.data_to_send()
                if out:
                    self.transport.write(out)
                events = self.session.pop_events()
                if events:
                    self._handle(events)
                if not out and not events and not self._again:
                    break
        finally:
            self._flushing = False
        if (
            not self.closed
            and self.transport is not None
            and (
                self.session.closed
                or (not self.session.accepting_streams and not self.streams and not self.session.wants_write)
            )
        ):
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.dropped(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.dropped(self)
            if self.transport is not None:
                self.transport.abort()

    def _lose(self, exc: UpstreamError) -> None:
        """The connection is gone: only its own streams fail."""
        self.closed = True
        self.pool.dropped(self)
        if not self.ready.done():
            self.ready.set_exception(exc)
        streams, self.streams = self.streams, {}
        for st in streams.values():
            self._finish(st)
            st.fail(exc)
        if self.transport is not None:
            self.transport.abort()

    # -- events --------------------------------------------------------------------------
    def _handle(self, events: list[ev.Event]) -> None:
        for e in events:
            st = self.streams.get(e.stream_id) if e.stream_id else None
            if isinstance(e, ev.DataReceived):
                if st is None:
                    continue
                st.deadline = _now() + self.pool.read_timeout
                body = st.resp_body
                if body is not None and not body.done:
                    body.feed(e.data)
                if st.paused:  # the client is slow: the upstream's window stays shut
                    st.held += e.flow_controlled_length
                else:
                    self.session.acknowledge_received_data(e.stream_id, e.flow_controlled_length)
            elif isinstance(e, ev.ResponseReceived):
                if st is not None:
                    self._response(st, e.headers, e.end_stream)
            elif isinstance(e, ev.TrailersReceived):
                if st is not None:
                    st.trailers = trailer_fields(e.headers)
                    if st.resp_body is not None:
                        st.resp_body.trailers = st.trailers
            elif isinstance(e, ev.StreamEnded):
                if st is not None:
                    self._ended(st)
            elif isinstance(e, ev.StreamClosed):
                st = self.streams.pop(e.stream_id, None)
                if st is not None:
                    self._finish(st)
                    self._ended(st)
                    if st.on_head is not None:
                        st.fail(UpstreamError("HTTP/2 upstream closed the stream unanswered"))
            elif isinstance(e, ev.StreamReset):
                st = self.streams.pop(e.stream_id, None)
                if st is not None:
                    self._finish(st)
                    self.pool.stats_reset(e)
                    st.fail(
                        H2StreamReset(
                            f"HTTP/2 upstream {'reset' if e.remote else 'closed'} the stream "
                            f"(error code {e.error_code})",
                            e.error_code,
                            retryable=e.retryable,
                        )
                    )
            elif isinstance(e, ev.StreamWritable):
                if st is not None and st.req_paused and st.req_body is not None:
                    st.req_paused = False
                    st.req_body.resume()
            elif isinstance(e, ev.RemoteSettingsChanged):
                if not self.ready.done():
                    self.ready.set_result(None)
                self.pool.slot_free(self.key, everyone=True)  # its stream limit may have grown
            elif isinstance(e, ev.ConnectionTerminated):
                self.pool.log.info(
                    "h2_upstream_goaway",
                    upstream=self.upstream.label,
                    error_code=e.error_code,
                    last_stream_id=e.last_stream_id,
                    unprocessed=len(e.unprocessed_stream_ids),
                    error=e.error,
                )
                self.pool.forget(self)  # no new streams here; the rest finish
                if not e.remote:  # our session failed: nothing more can be read or sent
                    self._lose(UpstreamError(f"HTTP/2 upstream session failed: {e.error}"))
                    return

    def _response(self, st: H2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        st.replay = None  # answered: never retried, the kept body bytes can go
        status, fields, length = response_fields(headers, st.via)
        resp = Response(status, fields)
        resp.upstream_info = self.upstream.label
        if end:
            if st.method == "HEAD" or status in (204, 304):
                body = BodyStream(length if st.method == "HEAD" else None)
                body.finish()
                resp.body = body
            else:
                resp.body = b""
        else:
            st.resp_body = resp.body = BodyStream(length, st)
        cb, st.on_head = st.on_head, None
        if cb is not None:
            cb(resp, None)
        elif st.resp_body is not None:
            st.resp_body.abandon()

    def _ended(self, st: H2Stream) -> None:
        body, st.resp_body = st.resp_body, None
        if body is not None and not body.done:
            if st.trailers is not None:
                body.trailers = st.trailers
            body.finish()

    def _finish(self, st: H2Stream) -> None:
        """A stream left this connection: its count, the idle clock when it was the last, and
        a request queued at the pool's connection cap may take the slot."""
        self.upstream.active -= 1
        if not self.streams:
            self.idle_since = _now()
        self.pool.slot_free(self.key)

    def next_deadline(self, default: float) -> float:
        """The earliest read deadline of a stream that can time out (not paused), or
        ``default``."""
        return min(
            (st.deadline for st in self.streams.values() if st.deadline and not st.paused), default=default
        )

    def check_timeouts(self, now: float) -> None:
        """Per-stream read timeout (not while the client holds the stream back)."""
        for st in list(self.streams.values()):
            if st.deadline and now >= st.deadline and not st.paused:
                st.deadline = 0.0
                self.streams.pop(st.id, None)
                self._finish(st)
                self.session.reset_stream(st.id, CANCEL)
                self.pool.log.info("upstream_timeout", upstream=self.upstream.label, stream=st.id)
                st.fail(UpstreamTimeout("upstream read timeout"))
        self.flush()
