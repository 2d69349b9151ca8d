"""The checks of one route's endpoints in one worker, and the flags they set.

A group asks its route for the current endpoints at every tick (so a DNS change starts or
stops checks within one tick, with no hook in discovery), runs each endpoint's check every
``interval_sec`` x (1 ± ``jitter``) on its own connection, and sets ``held_down`` on the
endpoints the balancer must skip. When every checked endpoint is unhealthy the route is in
*panic*: ``all_unhealthy = "fail_open"`` clears every flag (traffic goes to all, passive
ejection still applies, as Envoy's panic threshold), ``"reject"`` keeps them and sets
``rejecting`` (HTTP answers 503, thrift its "no upstream" error).

The group holds its route weakly and one task per group runs while the route lives: a route
dropped by a reload stops its checks without being told.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import weakref
from collections.abc import Callable
from typing import Any

import structlog

from monolake.conf.health import HealthCheckConfig
from monolake.worker.health.probes import Address, probe
from monolake.worker.health.state import EndpointHealth
from monolake.worker.upstream.endpoint import UNHEALTHY, UP

log = structlog.get_logger()

MAX_TICK = 0.25  # seconds: how soon a new endpoint or a dropped route is noticed

Member = tuple[Any, str, Address]  # (the balancer's endpoint object, its label, where to probe)
LIVE: weakref.WeakSet[HealthGroup] = weakref.WeakSet()
_SERIAL = itertools.count()


class HealthGroup:
    """Health of one route's endpoints; ``members(route)`` lists the checkable ones now."""

    def __init__(
        self,
        cfg: HealthCheckConfig,
        server: str,
        route_label: str,
        route: Any,
        members: Callable[[Any], list[Member]],
        framed: bool = True,
    ) -> None:
        self.cfg = cfg
        self.server = server
        self.route_label = route_label
        self.framed = framed
        self.rejecting = False  # every endpoint unhealthy and all_unhealthy = "reject"
        self.panic_open = False  # every endpoint unhealthy and all_unhealthy = "fail_open"
        self.panic = False  # every endpoint unhealthy (either behaviour)
        self._route = weakref.ref(route)
        self._members = members
        self._states: dict[int, tuple[Any, str, Address, EndpointHealth]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self.serial = next(_SERIAL)  # build order: a reload's new group after the old one
        LIVE.add(self)

    def start(self) -> None:
        """Begin checking (needs a running loop; the route build runs in one)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(_run(weakref.ref(self)))

    def stop(self) -> None:
        """Cancel the checks in flight (the route is gone; ``_run`` returns on its own)."""
        for task in list(self._tasks):
            task.cancel()

    # -- scheduling ------------------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Start the checks that are due; the seconds until the next tick, None once the
        route is gone."""
        route = self._route()
        if route is None:
            return None
        if self._sync(self._members(route), now):
            self._apply()
        soonest = now + MAX_TICK
        for obj, label, addr, st in self._states.values():
            if st.next_due <= now and not st.in_flight:
                st.in_flight = True
                st.next_due = now + self._interval()
                task = asyncio.get_running_loop().create_task(self._check(obj, label, addr, st))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            soonest = min(soonest, st.next_due)
        return max(0.005, soonest - now)

    def _interval(self) -> float:
        j = self.cfg.jitter
        return self.cfg.interval_sec * (1 + random.uniform(-j, j))

    def _sync(self, members: list[Member], now: float) -> bool:
        """Track exactly the current endpoints: a new one is checked at once, one that left
        (DNS removed it) is forgotten. True when the set changed."""
        fresh = {id(m[0]): m for m in members}
        changed = False
        for key in [k for k in self._states if k not in fresh]:
            del self._states[key]
            changed = True
        for key, (obj, label, addr) in fresh.items():
            if key not in self._states:
                self._states[key] = (obj, label, addr, EndpointHealth(now))
                changed = True
        return changed

    async def _check(self, obj: Any, label: str, addr: Address, st: EndpointHealth) -> None:
        try:
            error = await probe(self.cfg, addr, self.framed)
        except Exception as exc:
            error = f"check failed: {exc!r}"
        finally:
            st.in_flight = False
        if self._states.get(id(obj), (None,))[0] is not obj:
            return  # left the route while the check ran
        if st.record(error, self.cfg.rise, self.cfg.fall):
            log.warning(
                "upstream_health_changed",
                server=self.server,
                route=self.route_label,
                upstream=label,
                healthy=st.healthy,
                error=error or "",
                checks=self.cfg.type,
            )
            self._apply()

    # -- what the balancer sees ------------------------------------------------------------

    def _apply(self) -> None:
        states = list(self._states.values())
        everyone_down = bool(states) and not any(st.healthy for *_, st in states)
        if everyone_down != self.panic:
            log.warning(
                "upstream_health_panic" if everyone_down else "upstream_health_panic_over",
                server=self.server,
                route=self.route_label,
                behaviour=self.cfg.all_unhealthy,
            )
        self.panic = everyone_down
        fail_open = self.panic_open = everyone_down and self.cfg.all_unhealthy == "fail_open"
        self.rejecting = everyone_down and not fail_open
        for obj, _label, _addr, st in states:
            obj.set_checked(UNHEALTHY if not st.healthy and not fail_open else UP)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "server": self.server,
                "route": self.route_label,
                "upstream": label,
                "type": self.cfg.type,
                "healthy": st.healthy,
                "held_down": not st.healthy and not self.panic_open,
                "checks_ok": st.checks_ok,
                "checks_failed": st.checks_failed,
                "last_error": st.last_error,
                "panic": self.panic,
            }
            for obj, label, _addr, st in self._states.values()
        ]


async def _run(ref: weakref.ref[HealthGroup]) -> None:
    """The group's ticks, holding it only between them (so a dropped route ends this task)."""
    while True:
        group = ref()
        if group is None:
            return
        delay = group.tick(asyncio.get_running_loop().time())
        if delay is None:
            group.stop()
            return
        del group
        await asyncio.sleep(delay)


def report() -> list[dict[str, Any]]:
    """Every live group's endpoints, for the heartbeat: one row per (server, route, upstream);
    when a reload leaves an old and a new group for the same route, the newer one's row wins."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for group in sorted(LIVE, key=lambda g: g.serial):
        if group._runner is None:
            continue
        for row in group.rows():
            out[(row["server"], row["route"], row["upstream"])] = row
    return list(out.values())
