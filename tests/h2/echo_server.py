"""A tiny HTTP/2 server built from H2ServerSession, for the socket tests.

Run: ``python -m tests.h2.echo_server --port P --loop uring|epoll [--settings JSON]``.

Paths: ``/echo`` streams the request body back (with backpressure: the inbound bytes are only
acknowledged while the outbound queue is under HIGH_WATER) and ends with gRPC-style trailers;
``/size/N`` sends N bytes; ``/drain`` starts a graceful shutdown of every connection;
``/stats`` returns the server's counters as JSON; anything else is ``hello``.

The output contract under test: ``data_to_send`` is only called while the transport is not
paused for writing, while reading continues (so nghttp2's own flood limits apply).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
from collections.abc import Callable
from typing import Any, cast

from monolake.worker.h2 import H2Settings
from monolake.worker.h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    StreamClosed,
    StreamEnded,
    StreamReset,
    StreamWritable,
)
from monolake.worker.h2.session import H2ServerSession

HIGH_WATER = 256 * 1024
CHUNK = 16 * 1024

STATS: dict[str, Any] = {
    "connections": 0,
    "requests": 0,
    "resets": 0,
    "failures": [],
    "goaways_sent": [],
    "peak_buffered": 0,
    "peak_transport": 0,
    "peak_unacked": 0,
    "echoed": 0,
    "peak_streams": 0,
}
CONNS: set[EchoProtocol] = set()


class EchoProtocol(asyncio.Protocol):
    def __init__(self, settings: H2Settings) -> None:
        self.h2 = H2ServerSession(settings)
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.kind: dict[int, str] = {}
        self.held: dict[int, int] = {}  # echo: received bytes not yet acknowledged
        self.received: dict[int, int] = {}
        self.downloads: dict[int, int] = {}  # /size/N: bytes still to produce
        self.flushing = False
        self.lingering = False
        self.recorded = False

    # --- transport callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)  # a stream connection's
        self.transport = tr
        tr.set_write_buffer_limits(high=HIGH_WATER, low=HIGH_WATER // 4)
        STATS["connections"] += 1
        CONNS.add(self)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # read and dropped: see flush
        self.handle(self.h2.receive_data(data))
        self.flush()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.flush()

    def finish_drain(self) -> None:
        if self in CONNS:
            self.h2.finish_graceful_shutdown()
            self.flush()

    def abort(self) -> None:
        if self in CONNS and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        CONNS.discard(self)
        self.record()
        self.h2.release()

    def record(self) -> None:
        """The session's failure and GOAWAY into STATS, once: when it closes (the client may
        ask /stats as soon as it sees our FIN, before its own close reaches us)."""
        if self.recorded:
            return
        self.recorded = True
        if self.h2.failure:
            STATS["failures"].append(self.h2.failure)
        if self.h2.local_goaway and self.h2.local_goaway[0]:
            STATS["goaways_sent"].append(self.h2.local_goaway[0])

    # --- the session ----------------------------------------------------------------------
    def flush(self) -> None:
        """Pull frames only while the transport takes them; events that produces are handled
        (they may queue more)."""
        if self.flushing or self.lingering or self.transport is None or self.transport.is_closing():
            return
        self.flushing = True
        try:
            while True:
                self.produce()
                data = b"" if self.paused else self.h2.data_to_send(64 * 1024)
                if data:
                    self.transport.write(data)
                events = self.h2.pop_events()
                self.handle(events)
                self.track()
                if not data and not events:
                    break
            if self.h2.closed:
                # the product's rule (worker/h2/downstream.py H2Connection._finish): a
                # lingering close, FIN after the GOAWAY, input dropped until the peer's EOF,
                # RST after a bound (a flooder that keeps sending or never reads)
                self.lingering = True
                self.record()
                self.transport.write_eof()
                asyncio.get_running_loop().call_later(1.0 if self.h2.failure else 2.0, self.abort)
        finally:
            self.flushing = False

    def track(self) -> None:
        STATS["peak_streams"] = max(STATS["peak_streams"], self.h2.open_streams)
        STATS["peak_buffered"] = max(STATS["peak_buffered"], self.h2.buffered)
        STATS["peak_unacked"] = max(STATS["peak_unacked"], sum(self.held.values()))
        if self.transport is not None:
            STATS["peak_transport"] = max(STATS["peak_transport"], self.transport.get_write_buffer_size())

    def produce(self) -> None:
        for sid, left in list(self.downloads.items()):
            while left and self.h2.stream_buffered(sid) < HIGH_WATER:
                n = min(CHUNK, left)
                left -= n
                if self.h2.send_data(sid, b"z" * n) < 0:
                    left = 0
            if left:
                self.downloads[sid] = left
            else:
                del self.downloads[sid]
                self.h2.send_trailers(sid, [("grpc-status", "0")])

    def handle(self, events: list[Event]) -> None:
        h2 = self.h2
        for ev in events:
            if isinstance(ev, RequestReceived):
                STATS["requests"] += 1
                path = dict(ev.headers).get(b":path", b"/")
                self.start(ev.stream_id, path, ev.end_stream)
            elif isinstance(ev, DataReceived):
                sid = ev.stream_id
                self.received[sid] = self.received.get(sid, 0) + len(ev.data)
                if self.kind.get(sid) == "echo":
                    buffered = h2.send_data(sid, ev.data)
                    if buffered >= HIGH_WATER or self.held.get(sid):
                        self.held[sid] = self.held.get(sid, 0) + ev.flow_controlled_length
                    else:
                        h2.acknowledge_received_data(sid, ev.flow_controlled_length)
                    STATS["echoed"] += len(ev.data)
                else:
                    h2.acknowledge_received_data(sid, ev.flow_controlled_length)
            elif isinstance(ev, StreamWritable):
                held = self.held.pop(ev.stream_id, 0)
                if held:
                    h2.acknowledge_received_data(ev.stream_id, held)
            elif isinstance(ev, StreamEnded):
                sid = ev.stream_id
                if self.kind.get(sid) == "echo":
                    h2.send_trailers(
                        sid,
                        [
                            ("grpc-status", "0"),
                            ("grpc-message", "echoed"),
                            ("x-received", str(self.received.get(sid, 0))),
                        ],
                    )
            elif isinstance(ev, (StreamReset, StreamClosed)):
                if isinstance(ev, StreamReset):
                    STATS["resets"] += 1
                for d in (self.kind, self.held, self.received, self.downloads):
                    d.pop(ev.stream_id, None)
            elif isinstance(ev, ConnectionTerminated) and not ev.remote:
                pass  # h2.failure says why; the flush below closes once GOAWAY is out

    def start(self, sid: int, path: bytes, end_stream: bool) -> None:
        h2 = self.h2
        if path == b"/echo":
            self.kind[sid] = "echo"
            h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
            if end_stream:
                h2.send_trailers(sid, [("grpc-status", "0"), ("x-received", "0")])
        elif path.startswith(b"/size/"):
            self.kind[sid] = "size"
            h2.send_headers(sid, [(":status", "200")])
            self.downloads[sid] = int(path[6:])
        elif path == b"/stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            body = json.dumps(
                {
                    **STATS,
                    "maxrss_kb": usage.ru_maxrss,
                    "cpu": usage.ru_utime + usage.ru_stime,
                    "rss_kb": rss_kb(),
                }
            ).encode()
            h2.send_headers(sid, [(":status", "200"), ("content-type", "application/json")])
            h2.send_data(sid, body, end_stream=True)
        elif path == b"/drain":
            h2.send_headers(sid, [(":status", "200")])
            h2.send_data(sid, b"draining", end_stream=True)
            loop = asyncio.get_running_loop()
            for conn in list(CONNS):
                conn.h2.start_graceful_shutdown()
                if conn is not self:
                    conn.flush()
                # a peer that never answers the drain PING still gets the final GOAWAY
                loop.call_later(1.0, conn.finish_drain)
        else:
            h2.send_headers(sid, [(":status", "200")])
            h2.send_data(sid, b"hello", end_stream=True)


def rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def serve(port: int, settings: H2Settings) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(settings), "127.0.0.1", port, reuse_address=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uring", "epoll"), default="epoll")
    parser.add_argument("--settings", default="{}")
    args = parser.parse_args()
    settings = H2Settings.from_mapping(json.loads(args.settings))
    factory: Callable[[], asyncio.AbstractEventLoop]
    if args.loop == "uring":
        from monolake.uring import new_event_loop

        factory = new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, settings))


if __name__ == "__main__":
    main()
