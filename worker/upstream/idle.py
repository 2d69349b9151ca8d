"""Idle upstream connections: one LIFO list per endpoint, expiry, and the fd hand-over on reload.

``IdleList`` is the idle list of one endpoint for the HTTP pool (one per pool key) and the
Thrift pool (one per endpoint and framing): the most recently used connection is handed out
first (the most likely to still be open), at most ``limit`` wait, and the sweep closes those
idle for ``idle_timeout_sec``. ``IdleCounters`` are the counters both pools keep.

On a generation reload the old worker dups each idle connection's fd (``IdleList.export``)
into the state message and lets its own copy go; the new one wraps each received fd back into
a non-blocking socket (``import_fd``) and its pool turns it into a transport
(``address.adopt``)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar


class IdleConn(Protocol):
    """What the kit needs of a pooled connection (HTTP and Thrift ``UpstreamConnection``)."""

    idle_since: float
    closed: bool

    @property
    def transport(self) -> Any: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=IdleConn)


class IdleCounters:
    """Connections a pool opened, reused from idle, expired, exported to and adopted from
    another generation: the same counters for HTTP and Thrift."""

    __slots__ = ("adopted", "expired", "exported", "opened", "reused")

    def __init__(self) -> None:
        self.opened = 0
        self.reused = 0
        self.expired = 0
        self.exported = 0
        self.adopted = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def usable(conn: IdleConn) -> bool:
    """Open, with a transport that is not closing: may carry the next request."""
    t = conn.transport
    return not conn.closed and t is not None and not t.is_closing()


class IdleList(list[C]):
    """The idle connections of one endpoint, oldest first (``take`` pops the newest)."""

    __slots__ = ("counters",)

    def __init__(self, counters: IdleCounters, conns: Iterable[C] = ()) -> None:
        super().__init__(conns)
        self.counters = counters

    def park(self, conn: C, now: float, limit: int) -> bool:
        """Keep ``conn`` idle from ``now``; False when ``limit`` wait already (the caller closes it)."""
        if len(self) >= limit:
            return False
        conn.idle_since = now
        self.append(conn)
        return True

    def take(self, refuse: Callable[[C], bool] | None = None) -> C | None:
        """The newest usable connection, or None; dead ones on the way are closed and dropped,
        and ones ``refuse`` names (a pool's consistency check) are dropped."""
        while self:
            conn = self.pop()
            if refuse is not None and refuse(conn):
                continue
            if usable(conn):
                self.counters.reused += 1
                return conn
            if not conn.closed:
                conn.close()
        return None

    def discard(self, conn: C) -> None:
        """``conn`` is closed or busy: drop it if it is here."""
        try:
            self.remove(conn)
        except ValueError:
            pass

    def expire(self, now: float, timeout: float | Callable[[C], float]) -> list[C]:
        """Close and drop every connection idle for ``timeout`` (or ``timeout(conn)``: HTTP
        routes that share an address keep their own ``idle_timeout_sec``); returns them."""
        if callable(timeout):
            gone = [c for c in self if expired(c.idle_since, now, timeout(c))]
        else:
            gone = [c for c in self if expired(c.idle_since, now, timeout)]
        return self._close(gone, expired=True)

    def close_where(self, pred: Callable[[C], bool] | None = None) -> list[C]:
        """Close and drop the connections ``pred`` names (all of them without one)."""
        return self._close([c for c in self if pred is None or pred(c)])

    def _close(self, gone: list[C], expired: bool = False) -> list[C]:
        if gone:
            dead = set(map(id, gone))
            self[:] = [c for c in self if id(c) not in dead]
            for conn in gone:
                conn.close()
            if expired:
                self.counters.expired += len(gone)
        return gone

    def export(self, fds: list[int], exportable: Callable[[C], bool] | None = None) -> list[C]:
        """Hand idle connections to the next generation: a dup of each one's fd is appended to
        ``fds`` (in the order of the returned connections), and this worker lets its own copy
        go without shutting the connection down. Those not ``exportable`` (TLS), or whose fd
        cannot be dup'ed, stay."""
        out: list[C] = []
        keep: list[C] = []
        for conn in self:
            fd = (
                export_fd(conn.transport) if usable(conn) and (exportable is None or exportable(conn)) else -1
            )
            if fd < 0:
                keep.append(conn)
                continue
            fds.append(fd)
            out.append(conn)
        self[:] = keep
        for conn in out:
            conn.closed = True
            conn.transport.abort()  # closes our fd only: the dup keeps the socket open
        self.counters.exported += len(out)
        return out


def export_fd(transport: asyncio.BaseTransport | None) -> int:
    """A dup of the transport's socket fd (the caller then drops its own copy), or -1."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return -1
    try:
        return os.dup(sock.fileno())
    except OSError:
        return -1


def import_fd(fd: int) -> socket.socket | None:
    """The received fd as a non-blocking socket; None (and the fd closed) when it is not one."""
    if fd < 0:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock


def peer_gone(sock: socket.socket) -> bool:
    """A pooled connection the peer has closed reads EOF (or errors) without blocking."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return not data


def expired(idle_since: float, now: float, timeout: float) -> bool:
    """Has a connection idle since ``idle_since`` outlived ``idle_timeout_sec``?"""
    return now - idle_since >= timeout
