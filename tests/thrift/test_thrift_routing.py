"""Method routing and load-balancing policies, in-process (no sockets)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from monolake.conf import parse_config
from monolake.worker.thrift.balance import Balancer
from monolake.worker.thrift.pool import Upstreams
from monolake.worker.thrift.proxy import MethodRouter
from monolake.worker.thrift.stats import Counters


def router(text: str) -> MethodRouter:
    cfg = parse_config(text, source="t.toml").servers["s"]
    return MethodRouter(cfg, Upstreams(Counters()))


HEAD = '[servers.s]\nproxy_type = "thrift"\nlistener = { type = "socket", value = "127.0.0.1:9999" }\n'


def up(port: int) -> str:
    return f'{{ endpoint = {{ type = "socket", value = "127.0.0.1:{port}" }} }}'


def label(route) -> str:
    return route.balancer.items[0].endpoint.label


def test_methods_then_default_and_multiplexed_names() -> None:
    r = router(
        HEAD
        + f"""route = {{ upstreams = [{up(1)}] }}
[[servers.s.routes]]
methods = ["search", "Svc:special"]
upstreams = [{up(2)}]
"""
    )
    assert label(r.route("search")) == "127.0.0.1:2"
    assert label(r.route("Svc:search")) == "127.0.0.1:2"  # multiplexed: the bare name matches
    assert label(r.route("Svc:special")) == "127.0.0.1:2"
    assert label(r.route("Other:special")) == "127.0.0.1:1"
    assert label(r.route("anything")) == "127.0.0.1:1"


def test_no_default_route() -> None:
    r = router(
        HEAD
        + f"""[[servers.s.routes]]
methods = ["a"]
upstreams = [{up(2)}]
"""
    )
    assert r.route("a") is not None and r.route("b") is None


class Item:
    def __init__(self, name: str, weight: int = 1, up: bool = True, load: int = 0) -> None:
        self.name, self.weight, self.up, self._load = name, weight, up, load

    def available(self, now: float) -> bool:
        return self.up

    def load(self) -> int:
        return self._load


def picked(b: Balancer, now: float = 0.0) -> str:
    """The name of the target ``b`` picks (the tests' balancers always have one)."""
    target = b.pick(now)
    assert target is not None
    return target.name


def picks(b: Balancer, n: int = 3000) -> Counter:
    return Counter(picked(b) for _ in range(n))


def test_policies() -> None:
    items = [Item("a", 1), Item("b", 3), Item("c", 1, up=False)]
    assert set(picks(Balancer(items, "random", random.Random(1)))) == {"a", "b"}
    w = picks(Balancer(items, "weighted_random", random.Random(1)))
    assert 2.3 < w["b"] / w["a"] < 3.8 and "c" not in w
    b = Balancer(items, "round_robin")
    assert [picked(b, 0) for _ in range(4)] in (["b", "a", "b", "a"], ["a", "b", "a", "b"])
    assert picks(Balancer(items, "first"), 10) == Counter({"a": 10})
    lc = [Item("x", load=5), Item("y", load=1)]
    assert picks(Balancer(lc, "least_conn"), 10) == Counter({"y": 10})


def test_all_ejected_means_all_candidates() -> None:
    items = [Item("a", up=False), Item("b", up=False)]
    assert set(picks(Balancer(items, "random", random.Random(2)))) == {"a", "b"}


def test_unknown_policy() -> None:
    with pytest.raises(ValueError):
        Balancer([Item("a")], "fastest")
