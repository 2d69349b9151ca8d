"""The HTTP balancer's rules for derived (discovered) upstreams, without DNS: SRV priority
tiers under every policy, passive ejection moving traffic to the next tier, and an upstream
that leaves the list while a request holds it."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from monolake.conf.schema import EndpointConfig, RouteConfig, UpstreamConfig
from monolake.worker.discovery.sources import Target
from monolake.worker.http.upstream import Balancer, Upstream

ROUTE = RouteConfig(upstreams=(UpstreamConfig(EndpointConfig("uri", "http://10.0.0.1:80")),), path_prefix="/")


def literal(address: str) -> Upstream:
    return Upstream(
        EndpointConfig("uri", f"http://{address}:80", scheme="http", host=address, port=80, path="/"),
        1,
        ROUTE,
        None,
    )


def picked(b: Balancer) -> str:
    """The address of the next pick (a pick of None fails the test here)."""
    up = b.pick()
    assert up is not None, "no upstream picked"
    return up.address


def tiered(policy: str) -> tuple[Balancer, list[Upstream]]:
    base = literal("10.0.0.1")
    ups = [
        base.derive(Target("10.0.0.2", 80, 3, 10)),
        base.derive(Target("10.0.0.3", 80, 1, 10)),
        base.derive(Target("10.0.0.4", 80, 1, 20)),
    ]
    return Balancer(policy, ups), ups


@pytest.mark.parametrize("policy", ["random", "weighted_random", "round_robin", "first", "least_conn"])
def test_lowest_priority_first_and_next_tier_on_ejection(policy: str) -> None:
    b, (a, bb, _c) = tiered(policy)
    picks = Counter(picked(b) for _ in range(400))
    assert picks["10.0.0.4"] == 0 and picks["10.0.0.2"] > 0
    if policy in ("random", "weighted_random", "round_robin", "least_conn"):
        assert picks["10.0.0.3"] > 0
    a.ejected_until = bb.ejected_until = time.monotonic() + 30
    assert {picked(b) for _ in range(20)} == {"10.0.0.4"}
    a.ejected_until = 0.0
    assert {picked(b) for _ in range(20)} == {"10.0.0.2"}


def test_weighted_random_follows_srv_weights() -> None:
    b, _ = tiered("weighted_random")
    picks = Counter(picked(b) for _ in range(4000))
    assert 2.4 < picks["10.0.0.2"] / picks["10.0.0.3"] < 3.7, picks


def test_derived_upstream_keeps_name_for_host_and_address_for_key() -> None:
    base = Upstream(
        EndpointConfig(
            "uri", "http://app.internal:8080", scheme="http", host="app.internal", port=8080, path="/"
        ),
        5,
        ROUTE,
        None,
    )
    up = base.derive(Target("10.0.0.9", 8080, 5))
    assert up.host_header == b"app.internal:8080" and up.connect_host == "10.0.0.9"
    assert up.key == ("http", "10.0.0.9", 8080) and up.label == "http://10.0.0.9:8080"
    assert up.weight == 5 and up.origin == "http://app.internal:8080"
    v6 = base.derive(Target("fd00::1", 8080, 1))
    assert v6.label == "http://[fd00::1]:8080"


def test_index_of_an_upstream_dns_removed_is_minus_one() -> None:
    b, (a, _bb, _c) = tiered("random")
    b.upstreams = [u for u in b.upstreams if u is not a]
    assert b.index_of(a) == -1


class Item:
    def __init__(self, name: str, priority: int, up: bool = True) -> None:
        self.name, self.priority, self.weight, self.up = name, priority, 1, up

    def available(self, now: float) -> bool:
        return self.up

    def load(self) -> int:
        return 0


def picked_name(b: Any) -> str:
    """The name of the thrift balancer's next pick of Items (``b`` is its Balancer)."""
    item = b.pick(0)
    assert item is not None, "no item picked"
    return str(item.name)


def test_thrift_balancer_tiers_replace_and_empty() -> None:
    from monolake.worker.thrift.balance import Balancer as ThriftBalancer

    items = [Item("a", 10), Item("b", 10), Item("c", 20)]
    b = ThriftBalancer(items, "round_robin")
    assert {picked_name(b) for _ in range(10)} == {"a", "b"}
    items[0].up = items[1].up = False
    assert {picked_name(b) for _ in range(10)} == {"c"}
    b.replace([Item("d", 0)])
    assert picked_name(b) == "d"
    b.replace([])
    assert b.pick(0) is None
