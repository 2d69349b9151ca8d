"""Python face of mu_splice.c: relay a byte count from one socket to another through a pipe
with IORING_OP_SPLICE, the bytes never copied into user space (issue 13 §2).

Why this shape: Python decides (which connections, how many bytes) and is told once at the end;
C moves the bytes. A job runs in two phases because Python must see every byte the ring already
read into user space before the first spliced one: ``start`` waits until the source's
multishot recv has let go (``ready`` then fires, after the batch that proved it), the caller
delivers what the transport held meanwhile, then ``go(n)`` waits until the sink's queued
writes are sent and relays ``n`` bytes. ``done`` resolves with the count or a ``SpliceError``.

``settle`` is for a caller that must know now whether the bytes are all through (a response
is due while the request body may be spliced whole already: the kernel has written its end,
the completion saying so may not have been reaped yet). It stops the job and reports once
every step in flight has completed, with exact counts: the count if all ``go`` asked for
reached the sink, else ``SpliceError`` ECANCELED.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from monolake.uring._uring import ffi, lib  # type: ignore[import-not-found]

# default pipe size (F_SETPIPE_SZ): the body window of one job, the memory it can pin
PIPE_SIZE = 256 * 1024

_RUNNING, _DONE, _READY = lib.MU_SPLICE_RUNNING, lib.MU_SPLICE_DONE, lib.MU_SPLICE_READY


class SpliceError(OSError):
    """The relay stopped early: ``moved`` bytes reached the sink (errno ENODATA: the source
    ended first; ECANCELED: ``cancel`` was called)."""

    def __init__(self, code: int, moved: int, read: int) -> None:
        what = "source ended early" if code == errno.ENODATA else os.strerror(code)
        super().__init__(code, f"splice stopped after {moved} bytes: {what}")
        self.moved = moved
        self.read = read


def conn_of(transport: Any) -> Any:
    """The C conn behind an io_uring socket transport, or None (another loop's transport, TLS,
    a closing one): only those can be spliced."""
    handle = getattr(transport, "splice_handle", None)
    got = handle() if handle is not None else None
    return got[1] if got is not None else None


def can_splice(src: Any, dst: Any) -> bool:
    """Both are open io_uring socket transports on the same loop, and the source can lend its
    reading (``UringSocketTransport.lend_reading``)."""
    return (
        conn_of(src) is not None
        and conn_of(dst) is not None
        and getattr(src, "_loop", None) is getattr(dst, "_loop", 0)
        and hasattr(src, "lend_reading")
    )


class SpliceJob:
    """One relay on the loop's ring; see the module docstring. ``on_ready`` / ``on_done`` are
    called from the loop (``on_ready`` after the batch, so every held read has been seen)."""

    __slots__ = (
        "_ended",
        "_gated",
        "_settling",
        "dst",
        "loop",
        "on_done",
        "on_ready",
        "ptr",
        "result",
        "src",
        "token",
        "wanted",
    )

    def __init__(
        self,
        loop: Any,
        src: Any,
        dst: Any,
        on_ready: Callable[[SpliceJob], None],
        on_done: Callable[[SpliceJob], None],
        pipe_size: int = PIPE_SIZE,
    ) -> None:
        ring = loop._ring
        self.loop = loop
        self.src, self.dst = src, dst
        self.on_ready, self.on_done = on_ready, on_done
        self.result: int | BaseException | None = None
        self._ended = False
        self._gated = True
        self._settling = False
        self.wanted: int | None = None  # what go() asked for
        src_fd, src_conn = src.splice_handle()
        dst_fd, dst_conn = dst.splice_handle()
        self.token = ring.token()
        err = ffi.new("int *")
        self.ptr = lib.mu_splice_new(
            ring.ptr, src_fd, dst_fd, self.token << 8, src_conn, dst_conn, pipe_size, err
        )
        if self.ptr == ffi.NULL:
            raise OSError(-err[0], f"splice setup: {os.strerror(-err[0])}")
        loop._handlers[self.token] = self._event

    @property
    def moved(self) -> int:
        return int(lib.mu_splice_moved(self.ptr)) if self.ptr != ffi.NULL else 0

    @property
    def read(self) -> int:
        """Bytes taken from the source so far (``read - moved`` wait in the pipe)."""
        return int(lib.mu_splice_read(self.ptr)) if self.ptr != ffi.NULL else 0

    def go(self, nbytes: int) -> None:
        """Relay ``nbytes`` now (after ``on_ready``), once the sink's queue is empty."""
        self.wanted = nbytes
        rc = lib.mu_splice_go(self.ptr, nbytes)
        if rc < 0:
            self._end(rc)

    def cancel(self) -> None:
        """Stop: no further operation is submitted; ``on_done`` is not called."""
        self.on_done = None  # type: ignore[assignment]
        self.on_ready = None  # type: ignore[assignment]
        self._settling = False
        if self._ended:
            return
        self._ended = True
        self.result = SpliceError(errno.ECANCELED, self.moved, 0)
        lib.mu_splice_cancel(self.ptr)
        self._maybe_free()

    def settle(self) -> None:
        """Stop, and call ``on_done`` once every step in flight has reported (see the module
        docstring). Nothing to do when the job has ended already: its ``on_done`` is due."""
        if self._ended:
            return
        self._ended = True
        self._settling = True
        lib.mu_splice_cancel(self.ptr)
        self._maybe_settled()

    def _maybe_settled(self) -> None:
        if not self._settling or self.ptr == ffi.NULL or lib.mu_splice_inflight(self.ptr) != 0:
            return
        self._settling = False
        moved, read = int(lib.mu_splice_moved(self.ptr)), int(lib.mu_splice_read(self.ptr))
        if self.wanted is not None and moved == read == self.wanted:
            self.result = moved  # the last step had moved it all before it was stopped
        else:
            self.result = SpliceError(errno.ECANCELED, moved, read)
        cb = self.on_done
        self.on_done = None  # type: ignore[assignment]
        if cb is not None:
            self.loop.call_soon(cb, self)
        self._maybe_free()

    def _event(self, kind: int, res: int, flags: int, off: int) -> None:
        if self.ptr == ffi.NULL:
            return
        if not self._ended and (self.src.is_closing() or self.dst.is_closing()):
            # a transport is closing: its fd and conn go away; submit nothing more on them
            self._end(-errno.EPIPE, cancel=True)
        rc = lib.mu_splice_event(self.ptr, kind, res)
        if not self._ended:
            if rc == _READY:
                self.loop.call_soon(self._ready)
            elif rc != _RUNNING:
                self._end(rc)
        elif self._settling:
            self._maybe_settled()
        self._maybe_free()

    def _ready(self) -> None:
        if not self._ended and self.on_ready is not None:
            self.on_ready(self)

    def _end(self, rc: int, cancel: bool = False) -> None:
        self._ended = True
        if cancel:
            lib.mu_splice_cancel(self.ptr)
        if rc == _DONE:
            self.result = int(lib.mu_splice_moved(self.ptr))
        else:
            self.result = SpliceError(
                -rc, int(lib.mu_splice_moved(self.ptr)), int(lib.mu_splice_read(self.ptr))
            )
        cb = self.on_done
        self.on_done = None  # type: ignore[assignment]
        if cb is not None:
            self.loop.call_soon(cb, self)

    def _maybe_free(self) -> None:
        if self._ended and self.ptr != ffi.NULL and lib.mu_splice_inflight(self.ptr) == 0:
            self.loop._handlers.pop(self.token, None)
            lib.mu_splice_free(self.ptr)
            self.ptr = ffi.NULL


def pool_count() -> int:
    """Pipes kept for the next job in this process (for tests)."""
    return int(lib.mu_splice_pool_count())
