"""Bodies spliced socket -> pipe -> socket (issue 13 §2): which ones, and the glue that keeps
both connections exactly where the Python engine would leave them.

Python decides, per exchange (worker/http/exchange.py): a body with a known Content-Length of
at least the server's ``splice_threshold``, arriving on a plain io_uring socket transport and
piped (no layer reads it) into another plain one, gets a ``SpliceSource`` on its
``BodyStream``. When ``pipe`` runs, a ``BodySplice`` lends the source's reading to a
``SpliceJob`` (uring/splice.py): the bytes the parser has seen went out as usual, the reads
the ring completed meanwhile are fed to the body straight (they are body bytes: if they held
all of it, or its end, nothing is spliced), and the rest moves in the kernel. Anything that
fails a condition, at any step, leaves the body to the Python relay.

The parser never sees the spliced bytes, so it is behind: at the end the source gets a fresh
one and the message is completed as the parser would have (``body_spliced``). Timeouts keep
their meaning: a ticker moves the source's deadline on while bytes move, or while the sink is
the slow side (the Python engine does not count that time either: it has stopped reading).
An early end is handed back to the transports: the source's end of stream is read again by
its recv (a TCP socket reports it to every read), a failed write or read aborts the
transport it happened on, so the producer and the sink fail as they would have.

A chunked body (the native parser on the source, a chunked sink) is spliced chunk by chunk:
the chunk-size lines, the CRLFs and the trailers go through the parser in user space as
usual; whenever the parser stands inside a chunk with at least ``splice_threshold`` payload
bytes still due (``chunk_left``), the rest of that chunk is spliced (one try per chunk): the
sink writes the size line, the kernel moves the payload, the sink writes the CRLF, and the
parser is told the payload went past it (``skip_chunk``) and reads on. The framing the sink
writes is its own, as the Python relay's is (one chunk per piece relayed): payload and
trailers are the same bytes in both engines, the chunk boundaries need not be.

A response can be ready before the relay has reported: the upstream answers as soon as the
kernel has written the body's last bytes, and the worker may read that answer before it has
reaped the splice's last completion (or run the job's ``on_done``). The Python relay cannot
see this (its last write precedes the body's end), and the exchange decides keep-alive by
whether the body is all in, so it asks the relay to ``settle`` first: the job stops, and the
response is sent once the counts are final (the body complete, or not: then as for an early
answer, the connection closes after it).
"""

from __future__ import annotations

import errno
from time import monotonic
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from monolake.worker.http.body import BodyStream

# the pipe of one relay (F_SETPIPE_SZ): what one spliced body can pin, as the Python relay's
# write buffer high-water mark bounds what it keeps
PIPE_SIZE = 256 * 1024


def _splice_module() -> Any:
    from monolake.uring import splice  # io_uring only: imported when a body qualifies

    return splice


def lends_reading(transport: Any) -> bool:
    """A transport a splice can read from (the io_uring socket transport, open)."""
    return transport is not None and hasattr(transport, "lend_reading") and not transport.is_closing()


class SpliceSource:
    """The side a body arrives on, as a splice needs it: its transport, its timeout, how to
    count bytes, how to move its deadline on and how to complete the message afterwards."""

    __slots__ = ("chunk_min", "not_before", "timeout", "transport")

    def __init__(self, transport: Any, timeout: float, chunk_min: int = 0) -> None:
        self.transport = transport
        self.timeout = timeout
        # > 0: a chunked body, whose chunks of at least this many payload bytes are spliced
        self.chunk_min = chunk_min
        # a chunked body: no splice before the body has received this much (the end of a
        # chunk whose splice gave up because its rest was already read: one try per chunk)
        self.not_before = 0

    def start(self, body: BodyStream, sink: Any) -> None:
        """``body`` is being piped into ``sink``: splice the rest if both ends allow it."""
        if self.chunk_min:
            self.fed(body, sink)
            return
        target = getattr(sink, "splice_target", None)
        dst = target(False) if target is not None else None
        if dst is None or not BodySplice(body, self, sink, dst).start():
            body.splice = None  # the Python relay takes it

    def fed(self, body: BodyStream, sink: Any) -> None:
        """Bytes of a piped body went to ``sink`` (``BodyStream.feed``): in a chunked body,
        splice the rest of the chunk the parser stands in, if it is large enough."""
        if not self.chunk_min or body.received < self.not_before:
            return
        left = self.chunk_left()
        if left < self.chunk_min or not self.fits(body, left):
            return
        self.not_before = body.received + left
        target = getattr(sink, "splice_target", None)
        dst = target(True) if target is not None else None
        if dst is None or not BodySplice(body, self, sink, dst, chunk=left).start():
            body.splice = None  # the Python relay takes the rest of this body

    def fits(self, body: BodyStream, n: int) -> bool:
        """``n`` more bytes of ``body`` are within its limits (else the parser refuses them)."""
        return True

    def parser(self) -> Any:
        """The source's parser (chunked bodies: the native one)."""

    def chunk_left(self) -> int:
        """Payload bytes of the chunk the source's parser stands in (0: not in one)."""
        return int(self.parser().chunk_left())

    def skip(self, n: int) -> None:
        """``n`` payload bytes of the current chunk went around the parser (unless that parser
        is gone: the connection closed under the splice)."""
        parser = self.parser()
        if n and _splits_chunks(parser) and parser.chunk_left() >= n:
            parser.skip_chunk(n)

    def account(self, n: int) -> None:
        """``n`` body bytes went around the parser."""

    def progress(self) -> None:
        """Bytes moved (or the sink is the slow side): the source is not late."""

    def finished(self) -> None:
        """The whole body went around the parser: complete the message."""


class ClientSource(SpliceSource):
    """A request body from the client connection (an ``HttpServerProtocol``)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any, chunk_min: int = 0) -> None:
        rt = conn._rt
        super().__init__(conn._transport, rt.body_timeout if rt.body_timeout_on else 0.0, chunk_min)
        self.conn = conn

    def account(self, n: int) -> None:
        self.conn._rt.stats.bytes_in += n

    def progress(self) -> None:
        self.conn._reader.body_progress()

    def finished(self) -> None:
        self.conn._reader.body_spliced()

    def fits(self, body: BodyStream, n: int) -> bool:
        limit = self.conn._rt.max_body  # a Content-Length over it was refused with the head
        return not limit or body.received + n <= limit

    def parser(self) -> Any:
        return self.conn._reader.parser


class UpstreamSource(SpliceSource):
    """A response body from an upstream connection (an ``UpstreamConnection``)."""

    __slots__ = ("up",)

    def __init__(self, up: Any, chunk_min: int = 0) -> None:
        super().__init__(up.transport, up.pool.read_timeout, chunk_min)
        self.up = up

    def progress(self) -> None:
        if self.up.deadline:  # 0.0: not busy any more
            self.up.deadline = monotonic() + self.timeout

    def finished(self) -> None:
        self.up.body_spliced()

    def parser(self) -> Any:
        return self.up._parser


def _splits_chunks(parser: Any) -> bool:
    """A parser that lets chunk payloads go around it (the native one)."""
    return hasattr(parser, "skip_chunk")


def client_source(conn: Any, chunk_min: int = 0) -> SpliceSource | None:
    """How a request body on ``conn`` can be spliced: plain (no TLS layer in between) on a
    transport that lends its reading; a chunked one (``chunk_min``: the smallest chunk to
    splice) under the native parser; else None (the Python relay)."""
    reader = getattr(conn, "_reader", None)
    if getattr(reader, "body_spliced", None) is None:
        return None  # not an HTTP/1.1 connection (an h2 stream's body comes in frames)
    if conn._tls is not None or conn._prelude is not None or not lends_reading(conn._transport):
        return None
    if chunk_min and not _splits_chunks(reader.parser):  # type: ignore[union-attr]
        return None
    return ClientSource(conn, chunk_min)


def upstream_source(body: BodyStream, chunk_min: int = 0) -> SpliceSource | None:
    """How a response body can be spliced: it comes from a plain upstream connection (a TLS
    one's transport lends nothing); a chunked one (``chunk_min``) framed by chunks (not
    ended by the close) under the native parser; else None."""
    up: Any = body.producer
    if getattr(up, "body_spliced", None) is None or not lends_reading(up.transport):
        return None
    if chunk_min and not (up.chunked_body and _splits_chunks(up._parser)):
        return None
    return UpstreamSource(up, chunk_min)


class BodySplice:
    """One body's relay; see the module docstring. Lives from ``pipe`` to the body's end."""

    __slots__ = ("body", "chunk", "dst", "fed", "job", "last_read", "sink", "source", "src", "then", "ticker")

    def __init__(self, body: BodyStream, source: SpliceSource, sink: Any, dst: Any, chunk: int = 0) -> None:
        self.body = body
        self.chunk = chunk  # a chunked body: the payload bytes of the chunk to splice
        self.fed = 0  # of those, what the transport held and was fed to the body
        self.source = source
        self.sink = sink
        self.src = source.transport
        self.dst = dst
        self.job: Any = None
        self.ticker: Any = None
        self.last_read = 0
        self.then: Callable[[], None] | None = None  # what waits for settle()

    def start(self) -> bool:
        src, dst = self.src, self.dst
        splice = _splice_module()
        if not splice.can_splice(src, dst) or not src.lend_reading():
            return False
        try:
            self.job = splice.SpliceJob(src._loop, src, dst, self._ready, self._done, pipe_size=PIPE_SIZE)
        except OSError:
            src.return_reading()
            return False
        self.body.relay = self
        self._arm_ticker()
        return True

    def settle(self, then: Callable[[], None]) -> None:
        """Something must know whether the body is all in (a response is due): stop the job,
        complete the body if its last bytes had gone through, then call ``then`` (also when
        the body ends another way meanwhile)."""
        self.then = then
        self.job.settle()

    def cancel(self) -> None:
        """The body ended another way (the parser had it all, a failure, a timeout): stop."""
        self._release()
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.src.return_reading()
        then = self.then
        if then is not None:
            self.then = None
            self.src._loop.call_soon(then)  # not from inside the body's own end

    def _release(self) -> None:
        """No references left between the body, this relay and its job (the job's callbacks
        point back here): all of it goes by reference counting, not at a later GC."""
        self.body.relay = None
        if not self.chunk:
            self.body.splice = None  # a chunked body's next chunk may be spliced again
        self._stop_ticker()

    def _ready(self, job: Any) -> None:
        """The source's recv has stopped: feed what it held, then splice what is left."""
        body = self.body
        left = self.chunk or (body.length or 0) - body.received
        held = self.src.held_size()
        if held < 0 or held >= left:
            self.cancel()  # the rest (or the end of the stream) is here: the parser takes it
            return
        if held:
            data = self.src.take_held()
            self.source.account(len(data))
            self.fed = len(data)
            body.feed(data)
        if self.chunk:
            self.sink.splice_chunk(left - held)  # the size line of the spliced chunk first
        job.go(left - held)

    def _done(self, job: Any) -> None:
        if self.body.relay is not self:
            return
        then = self.then
        self.then = None
        self._finish(job)
        if then is not None:
            then()

    def _finish(self, job: Any) -> None:
        body = self.body
        self._release()
        self.job = None
        job.on_ready = None
        res = job.result
        moved = res if isinstance(res, int) else res.moved
        body.received += moved
        self.source.account(moved)
        counted = getattr(self.sink, "spliced", None)
        if counted is not None:
            counted(moved)
        src, dst = self.src, self.dst
        if self.chunk:
            self.source.skip(self.fed + moved)  # the parser reads on after what went past it
            if isinstance(res, int):
                self.sink.splice_chunk_end()
        src.return_reading()
        if isinstance(res, int):
            if not self.chunk:
                self.source.finished()
            return
        if src.is_closing() or dst.is_closing():
            return  # that connection's connection_lost decides, as for the Python relay
        if res.errno in (errno.ENODATA, errno.ECANCELED):
            # ENODATA: the source ended early: its recv reads that end again, as the parser
            # would; ECANCELED: settled short of the end: whoever asked decides
            return
        # a write error leaves bytes in the pipe (read > moved); a read error does not
        (dst if res.read > res.moved else src).abort()

    def _arm_ticker(self) -> None:
        t = self.source.timeout
        if t > 0:
            self.ticker = self.src._loop.call_later(max(0.01, min(1.0, t / 4)), self._tick)

    def _stop_ticker(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def _tick(self) -> None:
        job = self.job
        read = job.read
        if read != self.last_read or read > job.moved:
            self.source.progress()
        self.last_read = read
        self._arm_ticker()
