"""Per-worker pool of multiplexed h2 connections, one list per upstream endpoint.

Why not the HTTP/1.1 pool: a connection here is shared by many streams and is handed out while
it has stream capacity (the peer's MAX_CONCURRENT_STREAMS), not when idle. A new connection is
opened only when every usable one is full, and it is used once the peer's SETTINGS arrived (so
its stream limit is known, not nghttp2's assumed 100). A connection that got GOAWAY leaves the
pool at once; its remaining streams finish on it. Connections without streams close after the
route's ``idle_timeout_sec``; there is no PING keep-alive. Self-contained (endpoints come from
the router's ``Balancer``/``Upstream`` as they are) so it can move onto a shared upstream kit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic as _now
from typing import Any

import structlog

from monolake.worker.h2.events import StreamReset
from monolake.worker.h2.settings import H2Settings
from monolake.worker.h2.upstream import H2Connection
from monolake.worker.http.client import NoAddress, UpstreamError, UpstreamTimeout
from monolake.worker.http.upstream import Upstream

TICK = 1.0


class NotH2(UpstreamError):
    """ALPN picked something other than h2 ("auto" on https): the HTTP/1.1 path serves it."""


class PoolFull(UpstreamError):
    """Every connection the cap allows is full and none freed a stream slot in time: 503 (the
    upstream did not fail, so this is no connect failure and ejects nothing)."""

    status = 503


class H2Pool:
    """The h2 connections of one worker (all servers share it: endpoints are keyed)."""

    def __init__(self, settings: H2Settings | None = None) -> None:
        self.settings = settings or H2Settings()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.conns: dict[tuple, list[H2Connection]] = {}  # those that take new streams
        self.live: set[H2Connection] = set()  # every open one, also after a GOAWAY
        self.connect_timeout = 5.0
        self.read_timeout = 60.0
        self.log = structlog.get_logger("monolake.h2")
        self.opened = 0  # connections opened (tests, metrics)
        self.resets = 0  # streams the upstream reset
        self._connecting: dict[tuple, asyncio.Future] = {}
        self._opening: dict[tuple, int] = {}  # connects under way per endpoint (the cap counts them)
        self._waiters: dict[tuple, deque[asyncio.Future]] = {}  # requests queued at the cap
        self.queued = 0  # requests that waited at the cap (metrics)
        self.cap_timeouts = 0  # requests answered 503 after waiting at the cap
        self.alpn: dict[tuple, str] = {}  # "auto" endpoints: what ALPN picked last time
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when ``_timer`` fires (monotonic)

    def configure(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def speaks_h2(self, up: Upstream, mode: str) -> bool:
        """Whether a request to ``up`` goes to this pool: always for "http2" routes; for
        "auto" (https) unless ALPN already chose http/1.1 for this endpoint."""
        return mode == "h2" or self.alpn.get(up.key) != "http/1.1"

    # -- checkout ------------------------------------------------------------------------
    async def acquire(self, up: Upstream, ssl_ctx: Any = None, stats: Any = None) -> H2Connection:
        """A connection to ``up`` with a free stream slot: an existing one, one being opened
        by another request (awaited), or a new one. ``ssl_ctx``: an "auto" route's context
        offering h2 and http/1.1 (``NotH2`` when the upstream picks http/1.1). ``stats``: the
        server's counters (``h2_upstream_cap_waits``, ``h2_upstream_cap_timeouts``)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if up.discovered is not None:
            up = await self._resolved(up)
        key = up.key
        deadline = 0.0
        while True:
            conn = self._with_capacity(key)
            if conn is not None:
                return conn
            pending = self._connecting.get(key)
            if pending is not None:
                await asyncio.shield(pending)
                conn = self._with_capacity(key)
                if conn is not None:
                    return conn
                # the new one is full already: open another (within the cap)
            if self.open_count(key) < up.h2_max_conns:
                return await self._connect(up, ssl_ctx)
            if not deadline:
                deadline = _now() + self.connect_timeout
                self.queued += 1
                if stats is not None:
                    stats.h2_upstream_cap_waits += 1
            try:
                await self._wait_slot(up, deadline)
            except PoolFull:
                if stats is not None:
                    stats.h2_upstream_cap_timeouts += 1
                raise

    def open_count(self, key: tuple) -> int:
        """Connections to ``key`` the cap counts: those taking streams and those connecting.
        One that got GOAWAY takes no new streams and is not counted (it closes when its
        streams end)."""
        return len(self.conns.get(key, ())) + self._opening.get(key, 0)

    async def _wait_slot(self, up: Upstream, deadline: float) -> None:
        """At the cap: wait (FIFO) for a stream slot or a connection slot on ``up``, until
        ``deadline`` (the upstream connect timeout, started when the request first queued);
        then 503, as Envoy answers a request its circuit breaker overflows."""
        assert self.loop is not None
        fut: asyncio.Future = self.loop.create_future()
        queue = self._waiters.setdefault(up.key, deque())
        queue.append(fut)
        self._tick_soon()  # the tick wakes every waiter once a second: no wake-up is lost for good
        try:
            async with asyncio.timeout(max(0.0, deadline - _now())):
                await fut
        except TimeoutError:
            self.cap_timeouts += 1
            self.log.info("h2_upstream_cap_timeout", upstream=up.label, cap=up.h2_max_conns)
            raise PoolFull(
                f"{up.label}: all {up.h2_max_conns} HTTP/2 connections are full "
                f"(max_h2_connections_per_upstream); no stream slot within {self.connect_timeout:g} s"
            ) from None
        finally:
            try:
                queue.remove(fut)
            except ValueError:
                pass
            if not queue and self._waiters.get(up.key) is queue:
                del self._waiters[up.key]

    def slot_free(self, key: tuple, everyone: bool = False) -> None:
        """A stream ended on a connection to ``key`` (wake the first waiter), or a connection
        became ready, closed or raised its limit (wake them all: each one re-checks)."""
        queue = self._waiters.get(key)
        if not queue:
            return
        for fut in queue:
            if not fut.done():
                fut.set_result(None)
                if not everyone:
                    return

    def _with_capacity(self, key: tuple) -> H2Connection | None:
        best: H2Connection | None = None
        for conn in self.conns.get(key, ()):
            if (
                conn.ready.done()
                and conn.usable
                and conn.available > 0
                and (best is None or conn.available > best.available)
            ):
                best = conn
        return best

    async def _resolved(self, placeholder: Upstream) -> Upstream:
        link = placeholder.discovered
        assert link is not None
        up = await link.resolve(self.connect_timeout)
        if up is None:
            raise NoAddress(f"connect to {placeholder.label} failed: {link.why_none()}")
        return up

    async def _connect(self, up: Upstream, ssl_ctx: Any = None) -> H2Connection:
        loop = self.loop
        assert loop is not None
        done: asyncio.Future = loop.create_future()
        first = up.key not in self._connecting
        if first:
            self._connecting[up.key] = done
        self._opening[up.key] = self._opening.get(up.key, 0) + 1
        opening = True  # counted in ``_opening`` until it is in ``conns`` or failed
        factory = lambda: H2Connection(self, up, self.settings)  # noqa: E731
        try:
            async with asyncio.timeout(self.connect_timeout):
                if up.kind == "unix":
                    _t, conn = await loop.create_unix_connection(factory, up.unix_path)
                else:
                    ctx = ssl_ctx or up.ssl
                    _t, conn = await loop.create_connection(
                        factory, up.connect_host, up.port, ssl=ctx, server_hostname=up.sni if ctx else None
                    )
                if ssl_ctx is not None:
                    picked = _alpn(conn)
                    self.alpn[up.key] = picked
                    if picked != "h2":
                        conn.abort()
                        raise NotH2(f"{up.label} picked {picked or 'no protocol'} by ALPN")
                opening = False
                self._opened_one(up.key)
                self.conns.setdefault(up.key, []).append(conn)
                self.live.add(conn)
                self.opened += 1
                self._tick_soon()
                _check_alpn(conn)
                await conn.ready
        except TimeoutError:
            err: UpstreamError = UpstreamTimeout(f"connect to {up.label} timed out", retryable=True)
            self._settle(up.key, done, err)
            raise err from None
        except (OSError, ValueError) as exc:
            err = UpstreamError(f"connect to {up.label} failed: {exc}", retryable=True)
            self._settle(up.key, done, err)
            raise err from None
        except UpstreamError as exc:
            self._settle(up.key, done, exc)
            raise
        except BaseException:  # cancelled (the client went away): the others try for themselves
            self._settle(up.key, done, None)
            raise
        finally:
            if opening:
                self._opened_one(up.key)
            self.slot_free(up.key, everyone=True)  # ready, or failed: the cap's queue re-checks
        self._settle(up.key, done, None)
        return conn

    def _opened_one(self, key: tuple) -> None:
        n = self._opening.get(key, 0) - 1
        if n > 0:
            self._opening[key] = n
        else:
            self._opening.pop(key, None)

    def _settle(self, key: tuple, done: asyncio.Future, exc: BaseException | None) -> None:
        if self._connecting.get(key) is done:
            del self._connecting[key]
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)
                done.exception()  # retrieved: waiters re-raise it, nobody may not

    def forget(self, conn: H2Connection) -> None:
        """``conn`` takes no new streams (GOAWAY, failure, closed)."""
        lst = self.conns.get(conn.key)
        if lst is not None and conn in lst:
            lst.remove(conn)
            if not lst:
                del self.conns[conn.key]
            self.slot_free(conn.key, everyone=True)  # no longer counted by the cap

    def dropped(self, conn: H2Connection) -> None:
        """``conn`` is closed."""
        self.forget(conn)
        self.live.discard(conn)
        self.slot_free(conn.key, everyone=True)  # under the cap again: a waiter may connect

    def stats_reset(self, e: StreamReset) -> None:
        if e.remote and not e.retryable:
            self.resets += 1

    # -- timers --------------------------------------------------------------------------
    def _tick_soon(self) -> None:
        if self._timer is None and self.loop is not None:
            self._timer = self.loop.call_later(TICK, self._tick)
            self._timer_at = _now() + TICK

    def wake_by(self, deadline: float) -> None:
        """A stream's read deadline falls before the next tick: move the tick forward, so a
        timeout fires within milliseconds of its deadline, not up to ``TICK`` late (as the
        HTTP/1.1 sweep gives a deadline due before the next sweep its own loop timer)."""
        if self.loop is None or (self._timer is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_later(max(0.0, deadline - _now()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = _now()
        for key in list(self._waiters):
            self.slot_free(key, everyone=True)
        due = now + TICK
        for conn in list(self.live):  # a GOAWAY'd connection's streams time out too
            conn.check_timeouts(now)
            if not conn.closed and not conn.streams and now - conn.idle_since >= conn.upstream.idle_timeout:
                self.log.debug("h2_upstream_idle_close", upstream=conn.upstream.label)
                conn.session.close()
                conn.flush()
                conn.close()
            due = min(due, conn.next_deadline(due))
        if self.live or self._waiters:
            self._tick_soon()
            self.wake_by(due)

    def close_all(self) -> None:
        for conn in list(self.live):
            conn.close()


def _alpn(conn: H2Connection) -> str:
    ssl_obj = conn.transport.get_extra_info("ssl_object") if conn.transport else None
    return (ssl_obj.selected_alpn_protocol() or "") if ssl_obj is not None else ""


def _check_alpn(conn: H2Connection) -> None:
    """On TLS the upstream must have picked h2 by ALPN: anything else is not HTTP/2."""
    transport = conn.transport
    ssl_obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_obj is not None and ssl_obj.selected_alpn_protocol() != "h2":
        conn.abort()
        raise UpstreamError(
            f"upstream {conn.upstream.label} did not select h2 by ALPN ({ssl_obj.selected_alpn_protocol()!r})"
        )


_POOLS: dict[Any, H2Pool] = {}


def worker_pool() -> H2Pool:
    """The worker's one h2 pool (module state: a reload's new router finds the old pool's
    connections; a new worker process starts with none, see docs/http2.md)."""
    pool = _POOLS.get(None)
    if pool is None:
        pool = _POOLS[None] = H2Pool()
    return pool
