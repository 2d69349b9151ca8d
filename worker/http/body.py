"""Streamed message bodies with backpressure, without a Future per read.

A ``BodyStream`` is fed by a connection's parser callbacks (the producer) and consumed once,
either by ``pipe(sink)`` (the proxy's path: every chunk goes straight into the other
connection's transport from inside the parser callback) or by ``await read()`` (for services
written as coroutines). Flow control runs both ways:

- buffered bytes over ``HIGH_WATER`` (nobody consuming yet) pause the producer;
- a sink whose transport is over its write high-water mark calls ``pause()``; its
  ``resume_writing`` calls ``resume()``; the producer's transport stops reading meanwhile.

A body with a known length may instead be spliced socket to socket (``splice``, set by the
exchange that decided it: worker/http/splice_relay.py): ``pipe`` then hands the rest of the
body to that relay, and any end of the stream (finish, fail, abandon, discard) stops it first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

HIGH_WATER = 256 * 1024

_BUFFER_FULL = 1
_SINK_BLOCKED = 2


class BodySink(Protocol):
    """Where a piped body goes (a connection writing it out)."""

    def write(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def abort(self, exc: BaseException) -> None: ...


class Producer(Protocol):
    """The connection feeding a body: stops and restarts reading its transport."""

    def body_pause(self) -> None: ...

    def body_resume(self) -> None: ...

    def body_abandon(self) -> None: ...


class BodyError(Exception):
    """The body could not be received completely (peer closed, timeout, parse error)."""


class BodyStream:
    """One message body in flight; see the module docstring."""

    __slots__ = (
        "_buf",
        "_buffered",
        "_discard",
        "_paused",
        "_producer",
        "_sink",
        "_waiter",
        "consumed",
        "done",
        "exc",
        "length",
        "on_consume",
        "received",
        "relay",
        "splice",
        "trailers",
    )

    def __init__(
        self,
        length: int | None,
        producer: Producer | None = None,
        on_consume: Callable[[], None] | None = None,
    ) -> None:
        self.length = length  # Content-Length, or None (chunked / until close)
        self.received = 0
        self.consumed = False  # a consumer attached (pipe/read) at least once
        self.done = False  # producer finished (all bytes received)
        self.exc: BaseException | None = None
        self._producer = producer
        self._sink: BodySink | None = None
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._paused = 0
        self.on_consume = on_consume  # called once when a consumer first attaches (100-continue)
        self._discard = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.splice: Any = None  # a SpliceSource: this body may be spliced when piped
        self.relay: Any = None  # the BodySplice moving the rest of it, while one does

    @property
    def producer(self) -> Producer | None:
        return self._producer

    # -- producer side -------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.received += len(data)
        sink = self._sink
        if sink is not None:
            sink.write(data)
            splice = self.splice
            if splice is not None and self.relay is None:
                splice.fed(self, sink)  # a chunked body: the rest of a large chunk may splice
            return
        if self._discard:
            return
        self._buf.append(data)
        self._buffered += len(data)
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)
        if self._buffered > HIGH_WATER and not self._paused & _BUFFER_FULL:
            self._set_pause(_BUFFER_FULL)

    def finish(self) -> None:
        if self.done:
            return
        if self.relay is not None:
            self.relay.cancel()
        self.done = True
        self._release_producer()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.end()
            return
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        if self.relay is not None:
            self.relay.cancel()
        self.done = True
        self.exc = exc
        self._release_producer()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.abort(exc)
            return
        self._wake()

    def _release_producer(self) -> None:
        if self._paused:
            self._paused = 0
            if self._producer is not None:
                self._producer.body_resume()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    # -- consumer side -------------------------------------------------------------------
    def _consume(self) -> None:
        if not self.consumed:
            self.consumed = True
            cb = self.on_consume
            if cb is not None:
                self.on_consume = None
                cb()

    def pipe(self, sink: BodySink) -> None:
        """Send everything (buffered and future) into ``sink``; ends or aborts it at the end."""
        self._consume()
        while self._buf:
            sink.write(self._buf.popleft())
        self._buffered = 0
        if self._paused & _BUFFER_FULL:
            self._clear_pause(_BUFFER_FULL)
        if self.done:
            if self.exc is not None:
                sink.abort(self.exc)
            else:
                sink.end()
            return
        self._sink = sink
        if self.splice is not None:
            self.splice.start(self, sink)  # the rest around the parser, if it can

    def abandon(self) -> None:
        """The consumer went away: drop everything, and tell the producer (it may close)."""
        if self.relay is not None:
            self.relay.cancel()
        self._sink = None
        self._discard = True
        self._buf.clear()
        self._buffered = 0
        self._release_producer()
        if not self.done and self._producer is not None:
            self._producer.body_abandon()

    def discard(self) -> None:
        """Nobody will read this body: drop what is buffered and what still comes."""
        if self.relay is not None:
            self.relay.cancel()
        self._discard = True
        self._buf.clear()
        self._buffered = 0
        if self._paused & _BUFFER_FULL:
            self._clear_pause(_BUFFER_FULL)

    async def read(self) -> bytes:
        """The next chunk, or b"" at the end; raises ``BodyError`` if the body broke off."""
        self._consume()
        while True:
            if self._buf:
                data = self._buf.popleft()
                self._buffered -= len(data)
                if self._paused & _BUFFER_FULL and self._buffered <= HIGH_WATER // 2:
                    self._clear_pause(_BUFFER_FULL)
                return data
            if self.done:
                if self.exc is not None:
                    raise BodyError(str(self.exc)) from self.exc
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read_all(self, limit: int | None = None) -> bytes:
        """The whole body; ``BodyError`` when it exceeds ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if limit is not None and total > limit:
                self.discard()
                raise BodyError(f"body larger than {limit} bytes")
            parts.append(chunk)

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    # -- flow control from the sink ------------------------------------------------------
    def pause(self) -> None:
        if not self._paused & _SINK_BLOCKED:
            self._set_pause(_SINK_BLOCKED)

    def resume(self) -> None:
        if self._paused & _SINK_BLOCKED:
            self._clear_pause(_SINK_BLOCKED)

    def _set_pause(self, flag: int) -> None:
        if self.done:
            return
        was = self._paused
        self._paused |= flag
        if not was and self._producer is not None:
            self._producer.body_pause()

    def _clear_pause(self, flag: int) -> None:
        if not self._paused & flag:
            return
        self._paused &= ~flag
        if not self._paused and self._producer is not None:
            self._producer.body_resume()
