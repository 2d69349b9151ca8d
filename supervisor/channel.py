"""Length-prefixed JSON messages with optional file descriptors over a unix stream socket.

Both ends of the master <-> worker control channel use this module; it holds no service code
(the worker imports it too). A frame is a 4-byte big-endian length and a UTF-8 JSON object
with a ``"type"`` key. File descriptors ride on the first byte of a frame as SCM_RIGHTS data,
and the message says how many (``"nfds"``) so the reader knows to expect them.

``FrameReader`` is sans-I/O (h11 style): feed it bytes and fds, take complete messages out.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections import deque
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # state snapshots can be large; anything beyond is a bug
MAX_FDS_PER_RECV = 253  # SCM_MAX_FD


class ChannelError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ChannelError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte limit")
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Reassembles frames (and their fds) from what a socket delivered."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self._messages: deque[dict[str, Any]] = deque()

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        self._buf += data
        self._fds.extend(fds)
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ChannelError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
            if len(self._buf) < HEADER.size + size:
                break
            body = bytes(self._buf[HEADER.size:HEADER.size + size])
            del self._buf[:HEADER.size + size]
            try:
                message = json.loads(body)
            except ValueError as exc:
                raise ChannelError(f"frame is not JSON: {exc}") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ChannelError("frame is not an object with a string 'type'")
            self._messages.append(message)

    def next_message(self) -> tuple[dict[str, Any], list[int]] | None:
        """The next complete message and the fds it announced, or None."""
        if not self._messages:
            return None
        nfds = int(self._messages[0].get("nfds", 0) or 0)
        if len(self._fds) < nfds:
            return None  # ancillary data always arrives with the frame's first byte; not yet here
        message = self._messages.popleft()
        return message, [self._fds.popleft() for _ in range(nfds)]

    def close_fds(self) -> None:
        while self._fds:
            try:
                os.close(self._fds.popleft())
            except OSError:
                pass


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:
    """Send one message, blocking until it is written (the socket may be non-blocking)."""
    if fds:
        message = {**message, "nfds": len(fds)}
    data = encode(message)
    view = memoryview(data)
    first = True
    while view:
        try:
            if first and fds:
                sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
            else:
                sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            import select

            select.select([], [sock], [], 1.0)
            continue
        first = False
        view = view[sent:]


def recv_into(sock: socket.socket, reader: FrameReader, bufsize: int = 65536) -> bool:
    """Read what is available into ``reader``; False on EOF. Raises BlockingIOError if nothing."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(MAX_FDS_PER_RECV * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data and not fds:
        return False
    reader.feed(data, list(fds))
    return True


def recv_message(sock: socket.socket, reader: FrameReader, timeout: float | None = None
                 ) -> tuple[dict[str, Any], list[int]] | None:
    """Blocking read of one whole message (used before an event loop exists); None on EOF."""
    import select
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got = reader.next_message()
        if got is not None:
            return got
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if remaining == 0.0:
            raise TimeoutError("no control message within the timeout")
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            continue
        try:
            if not recv_into(sock, reader):
                return None
        except (BlockingIOError, InterruptedError):
            continue
