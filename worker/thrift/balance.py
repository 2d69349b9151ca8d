"""Load balancing over a thrift route's upstreams: the kit's balancer (worker/upstream), with
every upstream a candidate again when all are ejected (failing fast on a guess beats
refusing everything)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from monolake.worker.upstream import balance
from monolake.worker.upstream.endpoint import Endpoint as Candidate

__all__ = ["Balancer", "Candidate"]


class Balancer(balance.Balancer):
    """Picks one upstream per request with the route's ``load_balancer`` policy; ``replace``
    swaps the list when DNS changes it (worker/thrift/discovered.py); a list left empty by
    DNS picks None."""

    __slots__ = ()

    def __init__(self, items: Sequence[Any], policy: str, rand: random.Random | None = None) -> None:
        if not items:
            raise ValueError("a route needs at least one upstream")
        super().__init__(policy, items, rand=rand, fallback_all=True)
