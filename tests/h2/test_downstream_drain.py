"""Graceful drain of h2 client connections through a real daemon: on reload and on stop the
connection gets GOAWAY, the stream in flight still gets its whole answer, then the connection
closes; a new connection is served by the new generation."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import hpack
import hyperframe.frame as hf

from tests.h2 import attack
from tests.h2.test_upstream_h2 import daemon_config
from tests.http.upstream import UpstreamServer
from tests.support import free_port, wait_for


class RawClient:
    """An h2 client from raw frames (hyperframe/hpack): the ``h2`` library closes its state
    machine on the first GOAWAY, so it cannot see a graceful drain (notice, PING, the final
    GOAWAY, then the answers of the streams in flight). This one ACKs SETTINGS and PINGs and
    records what arrives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.buf = bytearray()
        self.goaways: list[tuple[int, int]] = []  # (last stream id, error code)
        self.pings = 0
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.eof = False
        self.next_sid = 1
        self.sock.sendall(attack.hello())

    def get(self, path: str) -> int:
        sid, self.next_sid = self.next_sid, self.next_sid + 2
        req = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path)]
        self.sock.sendall(attack.headers_frame(sid, self.enc.encode(req)))
        return sid

    def pump(self, until: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0 and not self.eof, (self.goaways, self.heads, self.eof)
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.buf += data
        while len(self.buf) >= 9:
            frame, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(bytes(self.buf[9 : 9 + length])))
            del self.buf[: 9 + length]
            self._frame(frame)

    def _frame(self, f: hf.Frame) -> None:
        if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
            self.sock.sendall(hf.SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(f, hf.PingFrame) and "ACK" not in f.flags:
            self.pings += 1
            self.sock.sendall(hf.PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(f, hf.GoAwayFrame):
            self.goaways.append((f.last_stream_id, f.error_code))
        elif isinstance(f, hf.HeadersFrame):
            self.heads[f.stream_id] = dict(self.dec.decode(f.data, raw=True))
        elif isinstance(f, hf.DataFrame):
            self.bodies[f.stream_id] = self.bodies.get(f.stream_id, b"") + f.data
        if "END_STREAM" in f.flags:
            self.ended.add(f.stream_id)

    def close(self) -> None:
        self.sock.close()


def slow_stream_survives(c: RawClient, up: UpstreamServer, start: Callable[[], None]) -> None:
    """Open a 1.5 s request, run ``start`` (the reload or the stop), and check: the GOAWAY
    notice, the whole answer, the final GOAWAY naming that stream, then the close."""
    seen = up.paths.count("/slow?delay=1.5")
    sid = c.get("/slow?delay=1.5")
    wait_for(lambda: up.paths.count("/slow?delay=1.5") > seen, 10, what="the slow request at the upstream")
    start()
    c.pump(lambda: bool(c.goaways))
    assert c.goaways[0] == (2**31 - 1, 0), c.goaways  # the notice: nothing refused yet
    c.pump(lambda: sid in c.ended)
    assert c.heads[sid][b":status"] == b"200" and c.bodies[sid] == b"slow ok", c.heads
    c.pump(lambda: c.eof)
    assert c.goaways[-1] == (sid, 0), c.goaways
    assert c.pings >= 1  # the drain PING: the final GOAWAY came after its round trip


def reload_survives(m, c: RawClient, up: UpstreamServer) -> None:
    """``monolaked reload`` (in a thread: the CLI returns when the reload is over) while a slow
    stream is in flight on ``c``: slow_stream_survives, and the reload succeeded."""
    result: list[subprocess.CompletedProcess] = []
    reload = threading.Thread(target=lambda: result.append(m.cli("reload", timeout=120)))
    slow_stream_survives(c, up, reload.start)
    reload.join(120)
    assert result and result[0].returncode == 0, result


def test_drain_on_reload_and_stop(master_factory, tmp_path: Path) -> None:
    port = free_port()
    with UpstreamServer("h1") as up:
        m = master_factory(daemon_config(tmp_path, port, up.port, version=None))
        m.wait_ready()
        c = RawClient(port)
        try:
            sid = c.get("/first")
            c.pump(lambda: sid in c.ended)
            # metrics by protocol: the heartbeat carries the h2 counters (also in /metrics)
            wait_for(
                lambda: sum(w["stats"].get("h2_requests", 0) for w in m.status()["workers"]) == 1,
                10,
                what="h2_requests in the status",
            )
            stats = m.status()["workers"][0]["stats"]
            assert stats["h2_connections_total"] == 1 and stats["requests"] == 1, stats
            reload_survives(m, c, up)
        finally:
            c.close()

        # the new generation serves h2; a stop drains it the same way
        m.wait_ready()
        c = RawClient(port)
        try:
            sid = c.get("/again")
            c.pump(lambda: sid in c.ended)
            assert c.heads[sid][b":status"] == b"200"
            slow_stream_survives(c, up, lambda: m.proc.send_signal(signal.SIGTERM))
        finally:
            c.close()
        wait_for(lambda: m.proc.poll() is not None, timeout=30, what="master exited")


def test_in_place_reload_moves_h2_connections_to_the_new_stack(master_factory, tmp_path: Path) -> None:
    """reload_mode = "in_place": an h2 connection on the retired stack drains (GOAWAY, its
    stream in flight finishes there), so the client's next connection sees the new routes
    (an HTTP/1.1 keep-alive connection would simply finish on the old stack)."""
    port = free_port()
    with UpstreamServer("h1") as up:
        text = daemon_config(tmp_path, port, up.port, version=None).replace(
            "[supervisor]\n", '[supervisor]\nreload_mode = "in_place"\n'
        )
        m = master_factory(text)
        m.wait_ready()
        pid = m.worker_pids()
        c = RawClient(port)
        try:
            sid = c.get("/first")
            c.pump(lambda: sid in c.ended)
            new_route = textwrap.dedent("""
                [[servers.web.routes]]
                path = "/new"
                upstreams = [{ endpoint = { type = "builtin", value = "hello" } }]
            """)
            m.config_path.write_text(
                text.replace("[[servers.web.routes]]", new_route.strip() + "\n\n[[servers.web.routes]]", 1)
            )
            reload_survives(m, c, up)
        finally:
            c.close()
        assert m.worker_pids() == pid  # in place: the same worker process
        c = RawClient(port)
        try:
            sid = c.get("/new")
            c.pump(lambda: sid in c.ended)
            assert c.bodies[sid].startswith(b"Hello from monolake"), c.bodies
        finally:
            c.close()


def test_stop_timeout_bounds_a_stream_that_outlives_it(master_factory, tmp_path: Path) -> None:
    """A stop with a stream longer than its bound (``graceful_timeout``, 1 s here, the stream
    8 s; a reload's is ``drain_timeout``): the GOAWAY notice, then, at the bound, the connection
    closes with the stream unfinished, and the daemon exits: the drain is bounded, not held
    open by the client."""
    port = free_port()
    with UpstreamServer("h1") as up:
        text = daemon_config(tmp_path, port, up.port, version=None)
        m = master_factory(text.replace("graceful_timeout = 10", "graceful_timeout = 1", 1))
        m.wait_ready()
        c = RawClient(port)
        try:
            seen = up.paths.count("/slow?delay=8")
            sid = c.get("/slow?delay=8")
            wait_for(
                lambda: up.paths.count("/slow?delay=8") > seen, 10, what="the slow request at the upstream"
            )
            start = time.monotonic()
            m.proc.send_signal(signal.SIGTERM)
            c.pump(lambda: bool(c.goaways))
            assert c.goaways[0] == (2**31 - 1, 0), c.goaways
            deadline = time.monotonic() + 10
            while not c.eof and time.monotonic() < deadline:
                r, _, _ = select.select([c.sock], [], [], deadline - time.monotonic())
                if r:
                    c._read()
            took = time.monotonic() - start
            assert c.eof, "the connection outlived the drain timeout"
            assert sid not in c.ended, (took, c.heads, c.bodies, c.goaways)  # it could not finish
            assert 0.9 <= took < 5, took  # graceful_timeout (1 s), then the close
        finally:
            c.close()
        wait_for(lambda: m.proc.poll() is not None, timeout=15, what="master exited")
