"""The per-worker DNS cache: one ``Watch`` per name, refreshed in the background.

A watch holds the last good answer for one (record kind, name) and re-queries it before the
answer's TTL runs out (``REFRESH_AHEAD`` of the clamped TTL), for as long as anything listens
(listeners are held weakly: a route that goes away with its stack stops the queries). Every
route and every server of the worker that names the same host shares the watch, so the query
load is per name, not per upstream or per connection: each worker sends one A and one AAAA
query (or one SRV query) per name per ``0.9 x TTL`` — shared-nothing, like the rest of the
worker (see docs/architecture.md for the numbers).

Failures keep the last good answer (stale-while-error) for up to ``max_stale_sec`` past its
TTL and are retried every ``negative_ttl_sec``; each change of state is logged once (failing,
recovered, stale answer dropped, records changed), never per request or per retry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from monolake.conf.resolver import ResolverConfig
from monolake.worker.discovery.dns import Answer, DnsClient, LookupFailed

REFRESH_AHEAD = 0.9  # re-query at this fraction of the (clamped) TTL: before it expires
MIN_REFRESH = 0.5  # never more often than this, whatever the TTL (min_ttl_sec = 0)

PENDING, OK, FAILING = "pending", "ok", "failing"


class Listener(Protocol):
    def records_changed(self, watch: Watch) -> None: ...


class Watch:
    """One name's records (``kind`` "addr": A+AAAA; "srv": SRV) as last seen."""

    def __init__(
        self, client: DnsClient, kind: str, name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.cfg: ResolverConfig = client.cfg
        self.kind = kind
        self.name = name
        self.clock = clock
        self.records: tuple[Any, ...] = ()
        self.state = PENDING
        self.error = ""
        self.ttl = 0.0  # the clamped TTL of the answer in use
        self.good_at = 0.0  # when that answer arrived
        self.queries = 0  # lookups sent (A+AAAA count as one), for tests and docs
        self._listeners: weakref.WeakSet[Any] = weakref.WeakSet()
        self._settled: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.log = structlog.get_logger().bind(dns_name=name, record=kind)

    # -- listeners -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.add(listener)
        self.start()

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    @property
    def settled(self) -> bool:
        """A first lookup has ended (with records, none, or a failure)."""
        return self.state != PENDING

    def start(self) -> None:
        """Begin the refresh loop (needs the running loop; a no-op until there is one)."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run(), name=f"dns {self.kind} {self.name}")

    async def wait_settled(self, timeout: float) -> bool:  # noqa: ASYNC109 - answers False on time-out, never raises
        if self.state != PENDING:
            return True
        self.start()
        if self._settled is None:
            self._settled = asyncio.Event()
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- the refresh loop ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            delay = await self.refresh()
            if not self._listeners:
                return  # nobody left: stop querying (a new subscriber restarts it)
            await asyncio.sleep(delay)
            if not self._listeners:
                return

    async def refresh(self) -> float:
        """One lookup; returns the seconds until the next one."""
        self.queries += 1
        try:
            answer = await (
                self.client.srv(self.name) if self.kind == "srv" else self.client.addresses(self.name)
            )
        except LookupFailed as exc:
            return self._failed(str(exc))
        except Exception as exc:  # a resolver bug must not end the watch
            self.log.exception("dns_lookup_error")
            return self._failed(f"{type(exc).__name__}: {exc}")
        return self._answered(answer)

    def _answered(self, answer: Answer) -> float:
        cfg = self.cfg
        if answer.negative:
            ttl = cfg.negative_ttl_sec
        else:
            ttl = min(max(answer.ttl, cfg.min_ttl_sec), cfg.max_ttl_sec)
        records = tuple(sorted(set(answer.records), key=_order))  # servers rotate their order
        was, self.state, self.error = self.state, OK, ""
        self.ttl, self.good_at = ttl, self.clock()
        if was == FAILING:
            self.log.info("dns_lookup_recovered", records=len(answer.records))
        changed = records != self.records
        if changed:
            old, new = set(self.records), set(records)
            self.log.info(
                "dns_records_changed",
                records=[_show(r) for r in records],
                added=[_show(r) for r in records if r not in old],
                removed=[_show(r) for r in self.records if r not in new],
                ttl=ttl,
                published_ttl=answer.ttl,
            )
            self.records = records
        self._settle()
        if changed or was == PENDING:
            self._notify()
        return max(MIN_REFRESH, ttl * (REFRESH_AHEAD if not answer.negative else 1.0))

    def _failed(self, error: str) -> float:
        cfg = self.cfg
        now = self.clock()
        was = self.state
        self.state, self.error = FAILING, error
        retry = max(MIN_REFRESH, min(cfg.negative_ttl_sec, self.ttl or cfg.negative_ttl_sec))
        if was != FAILING:
            if self.records:
                self.log.warning(
                    "dns_lookup_failed",
                    error=error,
                    serving="last good answer",
                    records=len(self.records),
                    stale_for_up_to=cfg.max_stale_sec,
                    retry_every=retry,
                )
            else:
                self.log.warning("dns_lookup_failed", error=error, serving="nothing", retry_every=retry)
        if self.records and now > self.good_at + self.ttl + cfg.max_stale_sec:
            self.log.error(
                "dns_stale_answer_dropped",
                error=error,
                age=round(now - self.good_at, 3),
                max_stale_sec=cfg.max_stale_sec,
                removed=[_show(r) for r in self.records],
            )
            self.records = ()
            self._notify()
        self._settle()
        if was == PENDING:
            self._notify()
        return retry

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener.records_changed(self)
            except Exception:  # one bad listener must not starve the others
                self.log.exception("dns_listener_failed")


def _order(record: Any) -> tuple[Any, ...]:
    """IPv4 before IPv6, then by address; SRV by priority, weight, port, target."""
    if isinstance(record, str):
        try:
            ip = ipaddress.ip_address(record)
        except ValueError:
            return (9, record)
        return (ip.version, ip.packed)
    return (record.priority, -record.weight, record.port, record.target)


def _show(record: Any) -> str:
    if isinstance(record, str):
        return record
    return f"{record.priority} {record.weight} {record.port} {record.target}"


class Registry:
    """This worker's watches, per resolver setting, kind and name. Each worker process has its
    own (shared-nothing): see the module docstring for why and what it costs."""

    def __init__(self) -> None:
        self.cfg = ResolverConfig()
        self._clients: dict[ResolverConfig, DnsClient] = {}
        self._strong: dict[tuple[ResolverConfig, str, str], Watch] = {}

    def configure(self, cfg: ResolverConfig) -> None:
        """The ``[resolver]`` setting for routes built from now on (those already built keep
        the watches they have until they are gone)."""
        self.cfg = cfg

    def client(self, cfg: ResolverConfig | None = None) -> DnsClient:
        cfg = cfg or self.cfg
        found = self._clients.get(cfg)
        if found is None:
            found = self._clients[cfg] = DnsClient(cfg)
        return found

    def watch(self, kind: str, name: str) -> Watch:
        key = (self.cfg, kind, name.lower().rstrip("."))
        found = self._strong.get(key)
        if found is None:
            found = self._strong[key] = Watch(self.client(), kind, key[2])
        return found

    def watches(self) -> list[Watch]:
        return list(self._strong.values())

    def reset(self) -> None:
        """Stop every watch (tests, worker exit)."""
        for w in self._strong.values():
            w.stop()
        self._strong.clear()
        self._clients.clear()


REGISTRY = Registry()


async def settle_all(timeout: float) -> None:  # noqa: ASYNC109 - returns at the deadline, never raises
    """Wait (at most ``timeout`` in all) until every watch of this worker has had its first
    answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:  # an SRV answer adds watches for its target hosts: wait for those too
        pending = [w for w in REGISTRY.watches() if not w.settled]
        left = deadline - loop.time()
        if not pending or left <= 0:
            return
        await asyncio.gather(*(w.wait_settled(left) for w in pending))


def configure(cfg: ResolverConfig) -> None:
    REGISTRY.configure(cfg)
