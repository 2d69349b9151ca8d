"""The native Thrift relay against the Python engine: one corpus of conversations (valid
calls in both protocols, oneway, multiplexed names, split and pipelined frames, oversize
frames, garbage, a reply type the client may not send, an unknown method, and upstreams that
close, time out, raise, answer garbage, the wrong seqid or too much) through a worker with
``engine = "python"`` and one with ``engine = "native"``, against the same recording
upstream; the bytes each client and the upstream saw must be the same, byte for byte
(pipelined replies, whose order is the upstream's timing, as a set)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from monolake.worker.thrift import native
from monolake.worker.thrift.message import parse_head, varint
from monolake.worker.thrift.server import STATS_FILE_ENV
from tests.thrift.thrift_support import free_port, listener, proxy, wait_for

pytestmark = pytest.mark.skipif(native.THRIFT is None, reason="monolake.uring._thrift is not available")


def frame(msg: bytes) -> bytes:
    return struct.pack("!I", len(msg)) + msg


def msg(name: str, seqid: int, mtype: int = 1, proto: str = "binary", body: bytes = b"\x00") -> bytes:
    n = name.encode()
    if proto == "compact":
        return bytes([0x82, (mtype << 5) | 1]) + varint(seqid) + varint(len(n)) + n + body
    return struct.pack("!Ii", 0x80010000 | mtype, len(n)) + n + struct.pack("!i", seqid) + body


class Recorder:
    """A Thrift upstream that records every byte per connection and answers by method name:
    echo (a REPLY), boom (an EXCEPTION message), close (closes), garbage (a frame that is no
    message), badseq (another seqid), extra (a reply and two stray bytes), slow (nothing);
    oneway messages get nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.streams: list[bytearray] = []
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                rec = bytearray()
                self.streams.append(rec)
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def _serve(self, c: socket.socket, rec: bytearray) -> None:
        buf = b""
        with c:
            while True:
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    rec += data
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from("!I", buf)[0]:
                    n = struct.unpack_from("!I", buf)[0]
                    m, buf = buf[4 : 4 + n], buf[4 + n :]
                    if not self._answer(c, m):
                        return

    def _answer(self, c: socket.socket, m: bytes) -> bool:
        head = parse_head(m)
        proto = "compact" if m[0] == 0x82 else "binary"
        name = head.name.rpartition(":")[2]
        if head.mtype != 1 or name == "slow":
            return True
        if name == "close":
            return False
        out = {
            "boom": frame(msg(head.name, head.seqid, 3, proto)),
            "garbage": frame(b"hello"),
            "badseq": frame(msg(head.name, head.seqid + 1, 2, proto)),
            "extra": frame(msg(head.name, head.seqid, 2, proto)) + b"\x00\x00",
        }.get(name, frame(msg(head.name, head.seqid, 2, proto, b"\x0b\x00\x00" + m[-8:])))
        c.sendall(out)
        return name not in ("extra",)

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return sorted(bytes(s) for s in self.streams)

    def reset(self) -> None:
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.streams.clear()
            self.conns.clear()

    def close(self) -> None:
        self.sock.close()
        self.reset()


# one conversation: steps of (bytes to send, reply frames to read, the connection then closes)
Step = tuple[bytes, int, bool]
B = "binary"
CORPUS: dict[str, tuple[str, list[Step]]] = {
    "calls": ("px", [(frame(msg("echo", i)), 1, False) for i in range(1, 5)]),
    "compact": ("px", [(frame(msg("echo", 300 + i, proto="compact")), 1, False) for i in range(3)]),
    "negative-seqid": (
        "px",
        [(frame(msg("echo", -5)), 1, False), (frame(msg("echo", -5, proto="compact")), 1, False)],
    ),
    "oneway-then-call": ("px", [(frame(msg("note", 9, mtype=4)) + frame(msg("echo", 10)), 1, False)]),
    "multiplexed": ("px", [(frame(msg("Echo:echo", 11)), 1, False), (frame(msg("Echo:echo", 12)), 1, False)]),
    # oneway first: a message behind a call would open a second upstream connection, and which
    # of the two is idle last (so taken next) is the upstream's timing, in both engines
    "two-in-one-read": ("px", [(frame(msg("note", 13, mtype=4)) + frame(msg("echo", 14)), 1, False)]),
    "split-frame": ("px", [(frame(msg("echo", 15))[:7], 0, False), (frame(msg("echo", 15))[7:], 1, False)]),
    "then-native-again": (
        "px",
        [
            (frame(msg("echo", 16))[:3], 0, False),
            (frame(msg("echo", 16))[3:], 1, False),
            (frame(msg("echo", 17)), 1, False),
        ],
    ),
    "upstream-exception": ("px", [(frame(msg("boom", 20)), 1, False), (frame(msg("echo", 21)), 1, False)]),
    "upstream-close": ("px", [(frame(msg("close", 22)), 1, False), (frame(msg("echo", 23)), 1, False)]),
    "upstream-garbage": ("px", [(frame(msg("garbage", 24)), 1, False), (frame(msg("echo", 25)), 1, False)]),
    "upstream-badseq": ("px", [(frame(msg("badseq", 26)), 1, False), (frame(msg("echo", 27)), 1, False)]),
    "upstream-extra": ("px", [(frame(msg("extra", 28)), 1, False), (frame(msg("echo", 29)), 1, False)]),
    "upstream-timeout": ("px", [(frame(msg("slow", 30)), 1, False), (frame(msg("echo", 31)), 1, False)]),
    "unknown-method": ("nd", [(frame(msg("nothing", 32)), 1, False), (frame(msg("echo", 33)), 1, False)]),
    "non-ascii-name": ("px", [(frame(msg("\u00e9cho", 34)), 1, False)]),
    "old-binary": (
        "px",
        [(frame(struct.pack("!i", 4) + b"echo\x01" + struct.pack("!i", 35) + b"\x00"), 1, False)],
    ),
    "client-sends-reply": (
        "px",
        [(frame(msg("echo", 36)), 1, False), (frame(msg("echo", 37, mtype=2)), 0, True)],
    ),
    "oversize": (
        "px",
        [(frame(msg("echo", 38)), 1, False), (struct.pack("!I", 5000) + b"\x80" * 10, 0, True)],
    ),
    "garbage": ("px", [(frame(msg("echo", 39)), 1, False), (b"GET / HTTP/1.1\r\n\r\n", 0, True)]),
    "bad-head": ("px", [(frame(b"\x80\x02\x00\x01\x00\x00"), 0, True)]),
    "pipelined": (
        "px",
        [(frame(msg("echo", 40)) + frame(msg("echo", 41)) + frame(msg("echo", 42)), 3, False)],
    ),
}
PIPELINED = {"pipelined"}


def _exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def read_frame(s: socket.socket) -> bytes | None:
    """One whole frame, its length included; None at EOF (a cut frame: the bytes there were)."""
    head = _exact(s, 4)
    if len(head) < 4:
        return head or None
    return head + _exact(s, struct.unpack("!I", head)[0])


def converse(port: int, steps: list[Step]) -> list[bytes]:
    seen: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for data, replies, eof in steps:
            s.sendall(data)
            for _ in range(replies):
                f = read_frame(s)
                seen.append(f if f is not None else b"EOF")
                if f is None:
                    return seen
            if eof:
                deadline = time.monotonic() + 10
                rest = b""
                while time.monotonic() < deadline:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    if not chunk:
                        break
                    rest += chunk
                seen.append(rest + b"EOF")
                return seen
            if not replies:
                time.sleep(0.05)  # the next step must come as a read of its own
    return seen


def run(tmp: Path, engine: str, up: Recorder) -> tuple[dict[str, list[bytes]], list[bytes], dict]:
    px, nd = free_port(), free_port()
    ep = f'{{ type = "socket", value = "127.0.0.1:{up.port}" }}'
    servers = f"""
[servers.px]
proxy_type = "thrift"
engine = "{engine}"
max_frame_size = 4096
timeout = {{ upstream_read_timeout_sec = 0.4 }}
listener = {listener(f"127.0.0.1:{px}")}
route = {{ upstreams = [{{ endpoint = {ep} }}] }}

[servers.nd]
proxy_type = "thrift"
engine = "{engine}"
listener = {listener(f"127.0.0.1:{nd}")}
[[servers.nd.routes]]
methods = ["echo"]
upstreams = [{{ endpoint = {ep} }}]
"""
    stats = tmp / f"stats-{engine}.json.px"
    seen: dict[str, list[bytes]] = {}
    (tmp / engine).mkdir()
    with proxy(
        tmp / engine,
        servers,
        runtime='runtime_type = "io_uring"',
        env={STATS_FILE_ENV: str(stats)[: -len(".px")]},
    ):
        for name, (server, steps) in CORPUS.items():
            try:
                got = converse(px if server == "px" else nd, steps)
            except OSError as exc:
                raise AssertionError(f"{engine}: conversation {name}: {exc!r}") from exc
            seen[name] = sorted(got) if name in PIPELINED else got
        done = time.time()

        def settled() -> bool:  # written by a sweep after the last conversation, nothing in flight
            return (
                stats.exists()
                and stats.stat().st_mtime > done
                and json.loads(stats.read_text()).get("active_requests") == 0
            )

        wait_for(settled, 15)
        counters = json.loads(stats.read_text()) if stats.exists() else {}
    time.sleep(0.2)  # the worker's upstream connections closed: their bytes are all recorded
    upstream = up.snapshot()
    up.reset()
    return seen, upstream, counters


def test_both_engines_send_the_same_bytes(tmp_path: Path) -> None:
    up = Recorder()
    try:
        py_client, py_up, py_stats = run(tmp_path, "python", up)
        c_client, c_up, c_stats = run(tmp_path, "native", up)
    finally:
        up.close()
    assert "native_requests" not in py_stats
    for name in CORPUS:
        assert c_client[name] == py_client[name], name
    assert c_up == py_up
    # the corpus went through C, not only around it
    assert c_stats["native_requests"] >= 10 and c_stats["native_declined"] >= 5, c_stats
    assert c_stats["native_declined_late"] >= 4, c_stats
    for key in ("requests", "responses_2xx", "responses_5xx", "bytes_in", "bytes_out"):
        assert c_stats[key] == py_stats[key], key
