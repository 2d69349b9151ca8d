"""Length-prefixed JSON messages with optional file descriptors over a unix stream socket.

Both ends of the master <-> worker control channel use this module; it holds no service code
(the worker imports it too). A frame is a 4-byte big-endian length and a UTF-8 JSON object
with a ``"type"`` key. File descriptors ride on the first byte of a frame as SCM_RIGHTS data,
and the message says how many (``"nfds"``) so the reader knows to expect them.

One ``sendmsg`` takes at most 253 fds (the kernel's SCM_MAX_FD; it refuses more with EINVAL),
so a message with more is preceded by continuation frames (``{"type": "fds", "nfds": k}``,
k <= 253) that carry the first fds in order; the message's own frame carries the last chunk
and its ``nfds`` counts them all. The reader hands the message out with every fd, in order,
and never shows a continuation frame to its caller. A sender that fails between chunks (the
socket still usable) sends ``{"type": "fds", "nfds": 0, "cancel": true}`` so the reader closes
the fds it was collecting instead of pinning them to the next message.

``FrameReader`` is sans-I/O (h11 style): feed it bytes and fds, take complete messages out.

Two ways to send: ``send`` blocks until the message is written (a worker, or code that runs
before an event loop exists); ``Outbox`` never blocks (the master's loop, which must not wait
on any one worker): it writes what the socket takes and queues the rest, bounded in size and
in time, and reports a peer that does not drain as stuck.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import select
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # state snapshots can be large; anything beyond is a bug
MAX_FDS_PER_SENDMSG = 253  # SCM_MAX_FD: the kernel refuses a sendmsg with more
MAX_FDS_PER_RECV = MAX_FDS_PER_SENDMSG  # one recvmsg returns at most one sendmsg's fds
MAX_FDS_PER_MESSAGE = 1 << 20  # a bound for the reader, far above any pool
FDS = "fds"  # the continuation frame's type (never handed to the caller)
# bytes an Outbox holds for a peer before it counts as stuck: the largest message and more,
# so one big state handover followed by small messages is not mistaken for a stuck peer
MAX_QUEUED = MAX_FRAME + 16 * 1024 * 1024


class ChannelError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ChannelError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte limit")
    return HEADER.pack(len(body)) + body


def _nfds(message: dict[str, Any]) -> int:
    value = message.get("nfds", 0) or 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_FDS_PER_MESSAGE:
        raise ChannelError(f"bad nfds {value!r} in a {message.get('type')!r} frame")
    return value


class FrameReader:
    """Reassembles frames (and their fds) from what a socket delivered.

    Frames are queued with the number of fds each carries itself; fds are queued in arrival
    order, which is send order on a stream socket. Continuation frames add their fds to the
    message that follows them.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        # (message or None for a continuation, fds on this frame, cancel the carried fds)
        self._frames: deque[tuple[dict[str, Any] | None, int, bool]] = deque()
        self._carried: list[int] = []  # fds of continuation frames already taken off _fds
        self._announced = 0  # fds announced by continuation frames since the last message

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        self._buf += data
        self._fds.extend(fds)
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ChannelError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
            if len(self._buf) < HEADER.size + size:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + size])
            del self._buf[: HEADER.size + size]
            try:
                message = json.loads(body)
            except (ValueError, RecursionError) as exc:  # nesting beyond the decoder's stack
                raise ChannelError(f"frame is not JSON: {exc}") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ChannelError("frame is not an object with a string 'type'")
            self._queue(message)

    def _queue(self, message: dict[str, Any]) -> None:
        """Check a frame's fd accounting (here, so errors surface where bytes are read)."""
        nfds = _nfds(message)
        if message["type"] == FDS:
            if message.get("cancel"):
                self._frames.append((None, 0, True))
                self._announced = 0
                return
            if not 1 <= nfds <= MAX_FDS_PER_SENDMSG:
                raise ChannelError(f"continuation frame with {nfds} fds")
            self._announced += nfds
            if self._announced > MAX_FDS_PER_MESSAGE:
                raise ChannelError("too many fds announced for one message")
            self._frames.append((None, nfds, False))
            return
        own = nfds - self._announced
        if not 0 <= own <= MAX_FDS_PER_SENDMSG:
            raise ChannelError(
                f"a {message['type']!r} message announces {nfds} fds after "
                f"{self._announced} in continuation frames"
            )
        self._announced = 0
        self._frames.append((message, own, False))

    def next_message(self) -> tuple[dict[str, Any], list[int]] | None:
        """The next complete message and all the fds it announced, in order, or None."""
        while self._frames:
            message, count, cancel = self._frames[0]
            if len(self._fds) < count:
                return None  # ancillary data always arrives with the frame's first byte; not yet here
            self._frames.popleft()
            own = [self._fds.popleft() for _ in range(count)]
            if cancel:
                close_fds(self._carried)
                self._carried = []
            elif message is None:
                self._carried.extend(own)
            else:
                fds, self._carried = self._carried + own, []
                return message, fds
        return None

    def close_fds(self) -> None:
        """Close every fd received but not handed out (the channel is being dropped)."""
        close_fds(self._carried)
        self._carried = []
        while self._fds:
            close_fds([self._fds.popleft()])


def close_fds(fds: list[int]) -> None:
    """Close each fd, ignoring those already closed (fds received or dup'ed for sending)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def frames_of(
    message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
) -> list[tuple[bytes, list[int]]]:
    """The frames one message goes out as, each with the fds on its first byte: continuation
    frames for all but the last ``MAX_FDS_PER_SENDMSG`` fds, then the message itself."""
    fds = list(fds)
    chunks = [fds[i : i + MAX_FDS_PER_SENDMSG] for i in range(0, len(fds), MAX_FDS_PER_SENDMSG)]
    frames = [encode({"type": FDS, "nfds": len(chunk)}) for chunk in chunks[:-1]]
    frames.append(encode({**message, "nfds": len(fds)} if fds else message))
    return list(zip(frames, chunks or [[]], strict=True))


CANCEL = encode({"type": FDS, "nfds": 0, "cancel": True})


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message, blocking until it is written (the socket may be non-blocking).

    More than ``MAX_FDS_PER_SENDMSG`` fds go out on continuation frames first. If a chunk is
    refused after earlier ones went out, a cancel frame tells the reader to drop them (when the
    socket still takes it) and the error is raised: the caller still owns every fd."""
    for i, (data, chunk) in enumerate(frames_of(message, fds)):
        try:
            _send_frame(sock, data, chunk)
        except _NothingSent as exc:
            if i:
                try:
                    _send_frame(sock, CANCEL, [])
                except (_NothingSent, OSError):
                    pass  # the socket is broken: the reader drops everything with it
            raise exc.error from None


class _NothingSent(Exception):
    """A frame's first ``sendmsg`` failed: the stream is still at a frame boundary."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _send_frame(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """Write one frame; its fds (at most SCM_MAX_FD) ride on its first byte."""
    view = memoryview(data)
    first = True
    while view:
        try:
            if first and fds:
                sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            _wait(sock, select.POLLOUT, 1.0)
            continue
        except OSError as exc:
            if first:
                raise _NothingSent(exc) from None
            raise
        first = False
        view = view[sent:]


class Outbox:
    """Sends to one peer from an event loop without ever blocking it.

    ``send`` writes what the socket takes at once and queues the rest, written as the peer
    reads. Fds stay with the bytes they belong to: those of a frame whose first byte could not
    go out yet are duplicated into the queue (the caller keeps its own, as with ``send``) and
    ride on that byte when it goes. A peer is *stuck* when more than ``limit`` bytes wait for
    it, or when it takes nothing for ``deadline`` seconds while bytes wait: ``on_stuck(reason)``
    is called once, the queue is dropped (its fds closed) and later sends are refused. The
    owner may change ``deadline`` (a peer that is still starting gets longer).
    """

    def __init__(
        self, sock: socket.socket, deadline: float, on_stuck: Callable[[str], None], limit: int = MAX_QUEUED
    ) -> None:
        self.sock = sock
        self.deadline = deadline
        self.limit = limit
        self._on_stuck = on_stuck
        self._loop = asyncio.get_running_loop()
        # [bytes not yet written, fds for their first byte (owned here), first byte written]
        self._queue: deque[list[Any]] = deque()
        self.queued = 0  # bytes waiting
        self._progress = 0.0  # loop time of the last write, or of the first queued byte
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False
        self.closed = False
        self.stuck = False

    def send(self, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> bool:
        """Write or queue one message; False if it cannot be sent at all (peer gone or stuck,
        a frame refused, fds that cannot be duplicated): then nothing of it is delivered."""
        if self.closed:
            return False
        if self.queued > self.limit:
            self._give_up(f"{self.queued} bytes queued, more than {self.limit}")
            return False
        frames = frames_of(message, fds)
        for i, (data, chunk) in enumerate(frames):
            if self._queue:  # behind queued bytes: queue it all, in order
                return self._enqueue(frames[i:], cancel_first=i > 0)
            try:
                sent = _try_frame(self.sock, data, chunk)
            except _NothingSent:  # refused at a frame boundary: the stream is still in step
                if i:  # continuation frames went out: have the reader drop their fds
                    self._enqueue_raw(CANCEL, [])
                    self._flush()
                return False
            if sent < len(data):
                if sent:  # the fds went with the first byte; the rest of this frame waits
                    self._enqueue_raw(data[sent:], [], first_written=True)
                    return self._enqueue(frames[i + 1 :], cancel_first=True)
                return self._enqueue(frames[i:], cancel_first=i > 0)
        return True

    def _enqueue(self, frames: list[tuple[bytes, list[int]]], cancel_first: bool) -> bool:
        """Queue frames, duplicating their fds; if that fails, a cancel frame replaces the
        rest of the message (``cancel_first``: some of it is already on its way)."""
        entries: list[list[Any]] = []
        try:
            for data, chunk in frames:
                entries.append([memoryview(data), _dup_all(chunk), False])
        except OSError:
            for entry in entries:
                close_fds(entry[1])
            if cancel_first:
                self._enqueue_raw(CANCEL, [])
            return False
        for entry in entries:
            self._push(entry)
        return True

    def _enqueue_raw(self, data: bytes | memoryview, fds: list[int], first_written: bool = False) -> None:
        self._push([memoryview(data), fds, first_written])

    def _push(self, entry: list[Any]) -> None:
        if not self._queue:
            self._progress = self._loop.time()
        self._queue.append(entry)
        self.queued += len(entry[0])
        if not self._writing:
            self._loop.add_writer(self.sock.fileno(), self._flush)
            self._writing = True
        if self._timer is None:
            self._timer = self._loop.call_later(self.deadline, self._check)

    def _flush(self) -> None:
        """The socket is writable: write queued frames until it takes no more."""
        while self._queue:
            entry = self._queue[0]
            data, fds, first_written = entry
            try:
                sent = _try_frame(self.sock, data, [] if first_written else fds)
            except _NothingSent as exc:
                if isinstance(exc.error, (BrokenPipeError, ConnectionResetError)):
                    self.close()  # the peer is gone: its exit is handled where it is reaped
                else:  # the peer is alive but cannot be reached: as good as stuck
                    self._give_up(f"a queued frame was refused: {exc.error}")
                return
            if sent:
                self._progress = self._loop.time()
                self.queued -= sent
                if not first_written:
                    close_fds(fds)  # the kernel holds its own references now
                    entry[1], entry[2] = [], True
            if sent < len(data):
                entry[0] = data[sent:]
                return
            self._queue.popleft()
        self._idle()

    def _check(self) -> None:
        self._timer = None
        if not self._queue or self.closed:
            return
        waited = self._loop.time() - self._progress
        if waited >= self.deadline:
            self._give_up(f"took nothing for {waited:.1f}s with {self.queued} bytes queued")
        else:
            self._timer = self._loop.call_later(self.deadline - waited, self._check)

    def _give_up(self, reason: str) -> None:
        if self.stuck:
            return
        self.stuck = True
        self.close()
        self._on_stuck(reason)

    def _idle(self) -> None:
        if self._writing:
            try:
                self._loop.remove_writer(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self._writing = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Drop whatever is queued (closing its fds); the socket is the owner's to close."""
        if self.closed:
            return
        self._idle()
        self.closed = True
        while self._queue:
            entry = self._queue.popleft()
            if not entry[2]:
                close_fds(entry[1])
        self.queued = 0


def _dup_all(fds: list[int]) -> list[int]:
    dups: list[int] = []
    try:
        for fd in fds:
            dups.append(os.dup(fd))
    except OSError:
        close_fds(dups)
        raise
    return dups


def _try_frame(sock: socket.socket, data: bytes | memoryview, fds: list[int]) -> int:
    """One non-blocking write of a frame (or its rest); ``fds`` ride on its first byte.
    Returns the bytes written (0: the socket is full). ``_NothingSent`` if refused outright."""
    try:
        if fds:
            return sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], socket.MSG_DONTWAIT
            )
        return sock.send(data, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as exc:
        raise _NothingSent(exc) from None


def _wait(sock: socket.socket, events: int, timeout: float | None) -> bool:
    """poll(), not select(): a process passing many fds has sockets numbered above 1023."""
    poller = select.poll()
    poller.register(sock.fileno(), events)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def recv_into(sock: socket.socket, reader: FrameReader, bufsize: int = 65536) -> bool:
    """Read what is available into ``reader``; False on EOF. Raises BlockingIOError if nothing."""
    fds = array.array("i")
    data, ancdata, flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(MAX_FDS_PER_RECV * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if flags & socket.MSG_CTRUNC:
        close_fds(list(fds))  # the kernel dropped some fds: the accounting cannot recover
        raise ChannelError("file descriptors were truncated (more than SCM_MAX_FD in one send?)")
    if not data and not fds:
        return False
    reader.feed(data, list(fds))
    return True


def recv_message(
    sock: socket.socket, reader: FrameReader, timeout: float | None = None
) -> tuple[dict[str, Any], list[int]] | None:
    """Blocking read of one whole message (used before an event loop exists); None on EOF."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got = reader.next_message()
        if got is not None:
            return got
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if remaining == 0.0:
            raise TimeoutError("no control message within the timeout")
        if not _wait(sock, select.POLLIN, remaining):
            continue
        try:
            if not recv_into(sock, reader):
                return None
        except (BlockingIOError, InterruptedError):
            continue
