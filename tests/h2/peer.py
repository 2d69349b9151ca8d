"""A blocking client built on the ``h2`` Python library: the independent peer (and, with raw
frames, the malicious one) for the socket tests."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Response:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])


class H2LibClient:
    """One connection; ``request`` sends and reads until the stream ends (bounded)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.timeout = timeout
        self.responses: dict[int, Response] = {}
        self.goaways: list[h2.events.ConnectionTerminated] = []
        self.events: list[h2.events.Event] = []
        self.eof = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path: str, method: str = "GET", extra: list | None = None) -> list:
        return [
            (":method", method),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", path),
            *(extra or []),
        ]

    def open(self, path: str, method: str = "GET", end_stream: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, method), end_stream=end_stream)
        self.responses[sid] = Response()
        self.flush()
        return sid

    def send_body(self, sid: int, data: bytes, end_stream: bool = True) -> None:
        """Send within the peer's window, reading (and acknowledging) while waiting for it."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump(until=lambda: self.conn.local_flow_control_window(sid) > 0)
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        if end_stream:
            self.conn.end_stream(sid)
            self.flush()

    def post_with_trailers(
        self,
        path: str,
        chunks: list[bytes],
        trailers: list[tuple[str, str]],
        extra: list | None = None,
        interim: bool = False,
    ) -> int:
        """A POST whose body ends with trailing HEADERS; ``interim``: wait for a 1xx head
        (``expect: 100-continue`` in ``extra``) before the body."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path, "POST", extra))
        self.responses[sid] = Response()
        self.flush()
        if interim:
            self.pump(
                lambda: any(
                    getattr(e, "stream_id", 0) == sid
                    and isinstance(e, h2.events.InformationalResponseReceived)
                    for e in self.events
                )
            )
        for chunk in chunks:
            self.send_body(sid, chunk, end_stream=False)
        self.conn.send_headers(sid, trailers, end_stream=True)
        self.flush()
        return sid

    def pump(self, until, deadline: float | None = None) -> None:
        deadline = deadline or (time.monotonic() + self.timeout)
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("h2 peer: condition not reached")
            if self.eof:
                raise ConnectionError("h2 peer: connection closed")
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                self.read_once()

    def read_once(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return
        for ev in self.conn.receive_data(data):
            self.events.append(ev)
            resp = self.responses.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and resp:
                resp.headers = ev.headers
            elif isinstance(ev, h2.events.DataReceived):
                if resp:
                    resp.body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived) and resp:
                resp.trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded) and resp:
                resp.ended = True
            elif isinstance(ev, h2.events.StreamReset) and resp:
                resp.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaways.append(ev)
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.eof = True

    def wait(self, sid: int) -> Response:
        resp = self.responses[sid]
        self.pump(lambda: resp.ended or resp.reset is not None)
        return resp

    def request(self, path: str, body: bytes | None = None) -> Response:
        sid = self.open(path, "POST" if body is not None else "GET", end_stream=body is None)
        if body is not None:
            self.send_body(sid, body)
        return self.wait(sid)

    def read_until_closed(self, timeout: float = 20.0) -> None:
        self.pump(lambda: self.eof, deadline=time.monotonic() + timeout)

    def close(self) -> None:
        self.sock.close()


def stats(port: int) -> dict:
    c = H2LibClient(port)
    try:
        return json.loads(bytes(c.request("/stats").body))
    finally:
        c.close()
