"""One balancer for every protocol: random, weighted_random, round_robin, first, least_conn.

Only ``available`` endpoints are candidates (endpoint.py decides). SRV tiers: only the lowest
priority with an available endpoint is used. When none is available the balancer either
picks None (HTTP: the request fails fast with 502) or, with ``fallback_all``, picks among all
(Thrift: a guess beats refusing everything)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from .endpoint import Endpoint

POLICIES = ("random", "weighted_random", "round_robin", "first", "least_conn")


def _priority(ep: Any) -> int:
    return getattr(ep, "priority", 0)


class Balancer:
    """Picks one endpoint per request; ``replace`` swaps the list (DNS changed it).

    ``rand`` is a ``random.Random`` (or the ``random`` module itself) for the random
    policies and least_conn's tie-break; a fresh Random by default."""

    __slots__ = (
        "__weakref__",
        "_choose",
        "_fallback_all",
        "_rand",
        "_tiered",
        "_weights",
        "health",
        "items",
        "policy",
        "position",
    )

    def __init__(
        self, policy: str, items: Sequence[Any], *, rand: Any = None, fallback_all: bool = False
    ) -> None:
        choosers: dict[str, Callable[[list[int]], int]] = {
            "random": self._random,
            "weighted_random": self._weighted,
            "round_robin": self._round_robin,
            "first": self._first,
            "least_conn": self._least_conn,
        }
        try:
            self._choose = choosers[policy]
        except KeyError:
            raise ValueError(f"unknown load_balancer {policy!r}") from None
        self.policy = policy
        self.position = 0
        self._rand = rand or random.Random()
        self._fallback_all = fallback_all
        self.items: list[Any] = []
        self._weights: list[int] = []
        self._tiered = False
        self.health: Any = None  # the route's active health checks (worker/health), if any
        self.replace(items)

    def replace(self, items: Sequence[Any]) -> None:
        self.items = list(items)
        self.reweigh()
        self._tiered = len({_priority(ep) for ep in self.items}) > 1
        n = len(self.items)
        self.position = self.position % n if n else 0

    def reweigh(self) -> None:
        """Read the endpoints' weights again (the runtime API changed one)."""
        self._weights = [max(1, ep.weight) for ep in self.items]

    def pick(self, now: float, exclude: set[int] | None = None) -> Any | None:
        if self.health is not None and self.health.rejecting:
            return None  # every endpoint fails its active checks and all_unhealthy = "reject"
        items = self.items
        if len(items) == 1 and not exclude:  # the common case: no list to build
            ep = items[0]
            return ep if self._fallback_all or ep.available(now) else None
        idx = [i for i, ep in enumerate(items) if ep.available(now) and (not exclude or i not in exclude)]
        if not idx:
            if not self._fallback_all:
                return None
            idx = [i for i in range(len(items)) if not exclude or i not in exclude]
            if not idx:
                return None
        if self._tiered:
            low = min(_priority(items[i]) for i in idx)
            idx = [i for i in idx if _priority(items[i]) == low]
        return items[self._choose(idx)]

    def _random(self, idx: list[int]) -> int:
        return idx[self._rand.randrange(len(idx))]

    def _weighted(self, idx: list[int]) -> int:
        return self._rand.choices(idx, weights=[self._weights[i] for i in idx])[0]

    def _round_robin(self, idx: list[int]) -> int:
        """The first candidate at or after the rotating position (skipping the others)."""
        pos = self.position
        chosen = next((i for i in idx if i >= pos), idx[0])
        self.position = (chosen + 1) % len(self.items)
        return chosen

    def _first(self, idx: list[int]) -> int:
        return idx[0]

    def _least_conn(self, idx: list[int]) -> int:
        items = self.items
        loads = [items[i].load() for i in idx]
        low = min(loads)
        best = [i for i, load in zip(idx, loads, strict=True) if load == low]
        return best[0] if len(best) == 1 else self._rand.choice(best)


def pick_weighted_lowest(items: Sequence[Any], rand: Any = random) -> Any | None:
    """A weighted-random item of the lowest priority, or None: how a name's address is
    chosen when its balancer is not asked (the first DNS answer, a connect fallback)."""
    if not items:
        return None
    low = min(_priority(it) for it in items)
    tier = [it for it in items if _priority(it) == low]
    return rand.choices(tier, [max(1, it.weight) for it in tier])[0]


__all__ = ["Balancer", "Endpoint", "POLICIES", "pick_weighted_lowest"]
