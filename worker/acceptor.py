"""Accepting connections on an inherited listening socket, so that stopping is lossless.

Why not ``loop.create_server(sock=...)``: asyncio accepts a batch of connections in one
callback and creates their protocols in tasks that run later; closing the Server in between
makes those tasks fail (``Server._attach`` asserts the server is open) and the accepted
sockets are dropped — and reset when the worker exits. A draining worker must serve every
connection it took off the queue. An io_uring accept armed when a worker dies has the same
problem (the kernel completes it into a ring nobody reads), so the worker accepts on
readiness, with plain ``accept4``, and hands each connection to ``connect_accepted_socket``
(which every loop implements, uvloop and the io_uring loop included).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger()

ACCEPT_BATCH = 64  # connections taken per readiness event before the loop does other work
# errors that mean "the system is short of something", not "the listening socket is broken"
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_FD_ERRNOS = {errno.EMFILE, errno.ENFILE}
RETRY_AFTER_RECLAIM = 0.01  # closed transports give their fds back within a loop iteration
RETRY_AFTER_SHORTAGE = 0.1  # nothing to reclaim: wait for connections to end by themselves


@dataclass
class _Shortage:
    """One burst of failed accepts, logged when it starts and when it ends."""

    since: float
    failures: int = 0
    reclaimed: int = 0


class Acceptor:
    """Accepts on ``sock`` until ``close()``; every accepted connection gets a protocol."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        reclaim: Callable[[], int] | None = None,
    ) -> None:
        """``reclaim()``: close some idle keep-alive connections to free fds; how many."""
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._reclaim = reclaim
        self._shortage: _Shortage | None = None
        self._closed = False
        self._backoff: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._short_of(exc)
                    return
                log.error("accept failed", error=str(exc))
                return
            if self._shortage is not None:
                self._recovered()
            conn.setblocking(False)
            self._loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception:  # one bad connection never takes the worker down
            log.exception("could not set up an accepted connection")
            conn.close()

    def _short_of(self, exc: OSError) -> None:
        """Out of fds (or memory): close the oldest idle keep-alive connections, as nginx
        does, and retry at once; with nothing to close, stop accepting for a moment instead
        of spinning (the connections wait in the queue). Logged once per burst."""
        freed = self._reclaim() if self._reclaim is not None and exc.errno in _FD_ERRNOS else 0
        shortage = self._shortage
        if shortage is None:
            shortage = self._shortage = _Shortage(time.monotonic())
            log.warning(
                "accept_out_of_fds" if exc.errno in _FD_ERRNOS else "accept_out_of_memory",
                error=str(exc),
                reclaimed=freed,
            )
        shortage.failures += 1
        shortage.reclaimed += freed
        self._pause(RETRY_AFTER_RECLAIM if freed else RETRY_AFTER_SHORTAGE)

    def _recovered(self) -> None:
        shortage, self._shortage = self._shortage, None
        assert shortage is not None
        log.info(
            "accept_recovered",
            failed_accepts=shortage.failures,
            reclaimed=shortage.reclaimed,
            seconds=round(time.monotonic() - shortage.since, 3),
        )

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._backoff = self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._backoff = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self, *, keep_socket: bool = False) -> None:
        """Stop accepting. Closes this process's copy of the socket only: the master keeps
        its own, so connections still queued wait there for the next worker. ``keep_socket``:
        a worker that exported its state for a reload keeps its copy, so it can accept again
        if the master resumes it (the new worker died before its commit)."""
        if self._closed:
            return
        self._closed = True
        if self._backoff is not None:
            self._backoff.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        if not keep_socket:
            self._sock.close()
