"""Load balancing over a route's upstreams, skipping ejected ones (Monolake's policies plus
``least_conn``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Candidate(Protocol):
    """What a balancer needs of an upstream: its weight, health and load (and its SRV
    priority, when it has one: lower first)."""

    weight: int

    def available(self, now: float) -> bool: ...

    def load(self) -> int: ...


class Balancer:
    """Picks one upstream per request with the route's ``load_balancer`` policy.

    Ejected upstreams are skipped while a healthy one exists; when every upstream is ejected
    all are candidates again (failing fast on a guess beats refusing everything). Upstreams
    with a ``priority`` (SRV) are used lowest priority first, while it has a healthy one.
    ``replace`` swaps the list when DNS changes it (worker/thrift/discovered.py); a list left
    empty by DNS picks None.
    """

    __slots__ = ("items", "policy", "_rr", "_pick", "_weights", "_rand", "_tiered", "health")

    def __init__(self, items: Sequence[Candidate], policy: str, rand: random.Random | None = None) -> None:
        if not items:
            raise ValueError("a route needs at least one upstream")
        self.items: list[Candidate] = []
        self.policy = policy
        self._rr = 0
        self._weights: list[int] = []
        self._tiered = False
        self.health: Any = None  # the route's active health checks (worker/health), if any
        self.replace(items)
        self._rand = rand or random.Random()
        pickers: dict[str, Callable[[list[int]], int]] = {
            "random": self._random, "weighted_random": self._weighted, "round_robin": self._round_robin,
            "first": self._first, "least_conn": self._least_conn,
        }
        try:
            self._pick = pickers[policy]
        except KeyError:
            raise ValueError(f"unknown load_balancer {policy!r}") from None

    def replace(self, items: Sequence[Candidate]) -> None:
        self.items = list(items)
        self._weights = [max(1, it.weight) for it in self.items]
        self._tiered = len({getattr(it, "priority", 0) for it in self.items}) > 1

    def pick(self, now: float) -> Candidate | None:
        items = self.items
        if self.health is not None and self.health.rejecting:
            return None  # every upstream fails its checks and all_unhealthy = "reject"
        if len(items) == 1:
            return items[0]
        if not items:
            return None
        idx = [i for i, it in enumerate(items) if it.available(now)]
        if not idx:
            idx = list(range(len(items)))
        if self._tiered:
            low = min(getattr(items[i], "priority", 0) for i in idx)
            idx = [i for i in idx if getattr(items[i], "priority", 0) == low]
        return items[self._pick(idx)]

    def _random(self, idx: list[int]) -> int:
        return idx[self._rand.randrange(len(idx))]

    def _weighted(self, idx: list[int]) -> int:
        return self._rand.choices(idx, weights=[self._weights[i] for i in idx])[0]

    def _round_robin(self, idx: list[int]) -> int:
        self._rr += 1
        return idx[self._rr % len(idx)]

    def _first(self, idx: list[int]) -> int:
        return idx[0]

    def _least_conn(self, idx: list[int]) -> int:
        items = self.items
        return min(idx, key=lambda i: items[i].load())
