"""An h2c upstream built on the ``h2`` library: the independent, scriptable test peer for the
upstream-HTTP/2 tests (GOAWAY, RST_STREAM, MAX_CONCURRENT_STREAMS, slow windows).

Run as ``python -m tests.h2.upstream_peer --port P --stats FILE [--max-streams N]
[--window W]``. Paths: ``/delay/MS`` (answers after MS ms), ``/rst`` (RST_STREAM
INTERNAL_ERROR), ``/goaway`` (on the first connection: GOAWAY naming the stream before it, so
this one was not processed), ``/upload`` (reads the body, answers its length, sha256 and request trailers),
``/goaway-upload?after=N`` (on the first connection: GOAWAY once N body bytes are in, naming
the stream before it; elsewhere ``/upload``), ``/refuse-upload`` (the first one: RST_STREAM
REFUSED_STREAM on its head; later ones ``/upload``),
``/download/N`` (N bytes, paced by the proxy's window), ``/trailers`` (a body, then
grpc-status/grpc-message/x-meta trailers), ``/unsolicited/headers`` and ``/unsolicited/data``
(a complete answer, then in the same write a HEADERS frame on the next stream id the proxy
would open, or a DATA frame on the finished stream: bytes nobody asked for), anything else echoes the request head as JSON.
Every response carries ``x-conn`` (this peer's connection serial) and ``x-stream``. The stats
file (JSON, rewritten on every change) has connections (opened, closed), streams, max
concurrent streams seen, the streams the proxy reset, and per stream the body bytes sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame

STATS: dict = {
    "connections": 0,
    "streams": 0,
    "max_open": 0,
    "sent": {},
    "goaways": 0,
    "resets": [],
    "closed": 0,
}
STATS_PATH = ""


def save() -> None:
    tmp = STATS_PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump(STATS, f)
    os.replace(tmp, STATS_PATH)


class Peer(asyncio.Protocol):
    def __init__(self, max_streams: int, window: int) -> None:
        STATS["connections"] += 1
        self.serial = STATS["connections"]
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(cfg)
        self.max_streams = max_streams
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, hashlib._Hash] = {}
        self.lengths: dict[int, int] = {}
        self.pending: dict[int, tuple[bytearray, list | None]] = {}  # data left, trailers
        self.open: set[int] = set()
        self.echo: set[int] = set()  # echo requests waiting for the end of their body
        self.goaway_after: dict[int, int] = {}  # /goaway-upload streams: body bytes before GOAWAY
        self.trailers: dict[int, list] = {}  # request trailers (``/upload`` answers them)
        save()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window,
            }
        )
        self.flush()

    hold = False  # set while an answer is built that must leave in one write with more frames

    def flush(self) -> None:
        if self.hold:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception:  # a protocol error closes this test connection
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.request(ev.stream_id, dict(ev.headers), ev.stream_ended is not None)
            elif isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id
                if sid in self.bodies:
                    self.bodies[sid].update(ev.data)
                    self.lengths[sid] += len(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                if sid in self.goaway_after:
                    self.maybe_goaway(sid)
                    continue
                if ev.stream_ended is not None:
                    self.body_done(sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers[ev.stream_id] = [[k.decode(), v.decode()] for k, v in ev.headers]
                if ev.stream_ended is not None:
                    self.body_done(ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.body_done(ev.stream_id)
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                for sid in list(self.pending):
                    self.push(sid)
            elif isinstance(ev, h2.events.StreamReset):
                STATS["resets"].append([self.serial, ev.stream_id, int(ev.error_code)])
                save()
                self.closed(ev.stream_id)
        self.flush()

    def closed(self, sid: int) -> None:
        self.open.discard(sid)
        self.pending.pop(sid, None)

    def request(self, sid: int, head: dict[bytes, bytes], ended: bool) -> None:
        STATS["streams"] += 1
        self.open.add(sid)
        STATS["max_open"] = max(STATS["max_open"], len(self.open))
        save()
        self.heads[sid] = head
        path = head.get(b":path", b"/").decode()
        if path.startswith("/refuse-upload") and not STATS.get("refused"):
            # RST_STREAM(REFUSED_STREAM) once, on the head: the proxy retries (this connection
            # stays usable); later ones are uploads
            STATS["refused"] = 1
            save()
            self.conn.reset_stream(sid, 7)
            self.closed(sid)
            return
        if path.startswith("/refuse-upload"):
            path = "/upload"
        if path.startswith("/goaway-upload"):  # /goaway-upload?after=N: GOAWAY after N body bytes
            if self.serial == 1:
                self.goaway_after[sid] = int(path.partition("after=")[2] or "0")
                self.bodies[sid] = hashlib.sha256()
                self.lengths[sid] = 0
                self.maybe_goaway(sid)
                return
            path = "/upload"  # the retry on another connection: read it all, answer its digest
        if path == "/upload":
            self.bodies[sid] = hashlib.sha256()
            self.lengths[sid] = 0
            if ended:
                self.body_done(sid)
            return
        if path == "/rst":
            self.conn.reset_stream(sid, 2)
            self.closed(sid)
            return
        if path == "/goaway" and self.serial == 1:
            self.refuse_with_goaway(sid)
            return
        if path.startswith("/delay/"):
            asyncio.get_running_loop().call_later(int(path[7:]) / 1000, self.answer, sid, b"delayed\n")
            return
        if path.startswith("/download/"):
            self.respond(sid, b"\x5a" * int(path[10:]))
            return
        if path.startswith("/unsolicited/"):
            self.hold = True  # the answer is not flushed alone: it goes out with the poison
            try:
                self.respond(sid, b"mine")
            finally:
                self.hold = False
            self.unsolicited(sid, path[13:])
            return
        if path == "/trailers":
            self.respond(
                sid,
                b"grpc-ish body",
                trailers=[
                    (b"grpc-status", b"7"),
                    (b"grpc-message", b"denied by peer"),
                    (b"x-meta-bin", b"AAEC"),
                ],
            )
            return
        if ended:
            self.answer(sid)
        else:
            self.echo.add(sid)

    def maybe_goaway(self, sid: int) -> None:
        """``/goaway-upload``: once ``after`` body bytes are in, GOAWAY naming the stream
        before this one (raw, as for ``/goaway``): this stream was not processed."""
        after = self.goaway_after.get(sid)
        if after is None or self.lengths.get(sid, 0) < after:
            return
        del self.goaway_after[sid]
        self.bodies.pop(sid, None)
        STATS.setdefault("goaway_after_bytes", []).append(self.lengths.pop(sid, 0))
        self.refuse_with_goaway(sid)

    def refuse_with_goaway(self, sid: int) -> None:
        """GOAWAY naming the stream before ``sid``: ``sid`` was not processed. A raw frame: the
        h2 library's own close_connection would stop it from finishing the streams below
        last_stream_id, which is what a graceful peer does."""
        STATS["goaways"] += 1
        save()
        self.flush()
        frame = hyperframe.frame.GoAwayFrame(0, last_stream_id=max(sid - 2, 0), error_code=0)
        assert self.transport is not None
        self.transport.write(frame.serialize())
        self.closed(sid)

    def body_done(self, sid: int) -> None:
        if sid in self.bodies:
            digest = self.bodies.pop(sid).hexdigest()
            doc: dict = {"length": self.lengths.pop(sid), "sha256": digest}
            if sid in self.trailers:
                doc["trailers"] = self.trailers.pop(sid)
            self.respond(sid, json.dumps(doc).encode())
        elif sid in self.echo:
            self.echo.discard(sid)
            self.answer(sid)

    def answer(self, sid: int, body: bytes | None = None) -> None:
        if sid not in self.open:
            return
        head = self.heads.get(sid, {})
        if body is None:
            body = json.dumps({k.decode(): v.decode("latin-1") for k, v in head.items()}).encode()
        if head.get(b":method") == b"HEAD":  # the head of the GET answer, no DATA
            self.conn.send_headers(
                sid,
                [(b":status", b"200"), (b"x-conn", str(self.serial).encode()), (b"content-length", b"1234")],
                end_stream=True,
            )
            self.open.discard(sid)
            self.flush()
            return
        self.respond(sid, body)
        self.flush()

    def respond(self, sid: int, body: bytes, trailers: list | None = None) -> None:
        headers = [
            (b":status", b"200"),
            (b"x-conn", str(self.serial).encode()),
            (b"x-stream", str(sid).encode()),
        ]
        if trailers is None:
            headers.append((b"content-length", str(len(body)).encode()))
        self.conn.send_headers(sid, headers)
        self.pending[sid] = (bytearray(body), trailers)
        STATS["sent"][str(sid)] = 0
        self.push(sid)

    def push(self, sid: int) -> None:
        """Send what the proxy's windows allow; the rest waits for WINDOW_UPDATE."""
        if sid not in self.pending:
            return
        data, trailers = self.pending[sid]
        try:
            while data:
                n = min(
                    self.conn.local_flow_control_window(sid), len(data), self.conn.max_outbound_frame_size
                )
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(data[:n]))
                del data[:n]
                STATS["sent"][str(sid)] = STATS["sent"].get(str(sid), 0) + n
            if not data:
                del self.pending[sid]
                if trailers:
                    self.conn.send_headers(sid, trailers, end_stream=True)
                else:
                    self.conn.end_stream(sid)
                self.open.discard(sid)
        except Exception:  # the proxy reset the stream meanwhile
            self.closed(sid)
        save()
        self.flush()

    def unsolicited(self, sid: int, kind: str) -> None:
        """Raw frames after a complete answer, in the same write (the h2 library would refuse
        to send them): the h2 twin of an HTTP/1.1 upstream's unsolicited second response."""
        if kind == "headers":  # a response on the stream id the proxy's next request gets
            block = self.conn.encoder.encode(
                [(b":status", b"200"), (b"x-up", b"POISON"), (b"content-length", b"6")]
            )
            frame: hyperframe.frame.Frame = hyperframe.frame.HeadersFrame(sid + 2, data=block)
            frame.flags.add("END_HEADERS")
        else:  # more body on the stream that has just ended
            frame = hyperframe.frame.DataFrame(sid, data=b"POISON")
            frame.flags.add("END_STREAM")
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send() + frame.serialize())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        STATS["closed"] += 1
        save()


async def main() -> None:
    global STATS_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--max-streams", type=int, default=100)
    ap.add_argument("--window", type=int, default=65535)
    args = ap.parse_args()
    STATS_PATH = args.stats
    save()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Peer(args.max_streams, args.window), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
