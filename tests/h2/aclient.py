"""An asyncio HTTP/2 client connection built from H2ClientSession: how the upstream side is
meant to be driven (pull bytes only while the transport is not paused, produce body bytes only
while the stream's send queue is under a high-water mark)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from monolake.worker.h2 import H2ClientSession, H2Settings
from monolake.worker.h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)

HIGH_WATER = 256 * 1024


@dataclass
class Stream:
    headers: list = field(default_factory=list)
    trailers: list = field(default_factory=list)
    received: int = 0
    body: bytearray = field(default_factory=bytearray)
    keep_body: bool = True
    chunks: asyncio.Queue | None = None  # slow reader: chunks wait here until consumed
    queued: int = 0
    peak_queued: int = 0
    # made in a running loop: Streams are created by ClientConn.open()
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    writable: asyncio.Event = field(default_factory=asyncio.Event)
    reset: int | None = None


class ClientConn(asyncio.Protocol):
    def __init__(self, settings: H2Settings | None = None) -> None:
        self.h2 = H2ClientSession(settings)
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.streams: dict[int, Stream] = {}
        self.goaways: list[ConnectionTerminated] = []
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.peak_buffered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's
        self.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.handle(self.h2.receive_data(data))
        self.flush()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        for st in self.streams.values():
            if st.done and not st.done.done():
                st.done.set_exception(ConnectionError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(exc)

    def flush(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            data = b"" if self.paused else self.h2.data_to_send(64 * 1024)
            if data:
                self.transport.write(data)
            events = self.h2.pop_events()
            self.handle(events)
            self.peak_buffered = max(self.peak_buffered, self.h2.buffered)
            if not data and not events:
                break

    def handle(self, events: list[Event]) -> None:
        for ev in events:
            st = self.streams.get(ev.stream_id)
            if isinstance(ev, ConnectionTerminated):
                self.goaways.append(ev)
            elif st is None:
                continue
            elif isinstance(ev, ResponseReceived):
                st.headers = ev.headers
            elif isinstance(ev, DataReceived):
                st.received += len(ev.data)
                if st.chunks is not None:
                    st.queued += len(ev.data)
                    st.peak_queued = max(st.peak_queued, st.queued)
                    st.chunks.put_nowait((ev.data, ev.flow_controlled_length))
                else:
                    if st.keep_body:
                        st.body += ev.data
                    self.h2.acknowledge_received_data(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, TrailersReceived):
                st.trailers = ev.headers
            elif isinstance(ev, StreamWritable):
                st.writable.set()
            elif isinstance(ev, StreamReset):
                st.reset = ev.error_code
                if st.done and not st.done.done():
                    st.done.set_result(st)
            elif isinstance(ev, StreamEnded) and not st.done.done():
                st.done.set_result(st)

    def open(
        self,
        path: str,
        method: str = "POST",
        end_stream: bool = False,
        *,
        slow_reader: bool = False,
        keep_body: bool = True,
    ) -> int:
        sid = self.h2.send_request(
            [
                (":method", method),
                (":scheme", "http"),
                (":authority", "127.0.0.1"),
                (":path", path),
                ("te", "trailers"),
            ],
            end_stream=end_stream,
        )
        st = self.streams[sid] = Stream(keep_body=keep_body)
        if slow_reader:
            st.chunks = asyncio.Queue()
        self.flush()
        return sid

    async def upload(self, sid: int, total: int, chunk: int = 64 * 1024) -> None:
        """Produce ``total`` bytes, pausing above the high-water mark until StreamWritable."""
        st = self.streams[sid]
        sent = 0
        block = b"u" * chunk
        while sent < total:
            if self.h2.stream_buffered(sid) >= HIGH_WATER:
                st.writable.clear()
                await st.writable.wait()
                continue
            n = min(chunk, total - sent)
            sent += n
            if self.h2.send_data(sid, block[:n], end_stream=sent == total) < 0:
                return
            self.flush()
            await asyncio.sleep(0)

    async def consume(self, sid: int, per_chunk: float = 0.0) -> None:
        """The slow reader: one chunk at a time, acknowledged only when consumed."""
        st = self.streams[sid]
        assert st.chunks is not None
        while not (st.done.done() and st.chunks.empty()):
            try:
                data, n = await asyncio.wait_for(st.chunks.get(), 0.5)
            except TimeoutError:
                continue
            await asyncio.sleep(per_chunk)
            st.queued -= len(data)
            self.h2.acknowledge_received_data(sid, n)
            self.flush()


async def connect(port: int, settings: H2Settings | None = None) -> ClientConn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: ClientConn(settings), "127.0.0.1", port)
    return proto
