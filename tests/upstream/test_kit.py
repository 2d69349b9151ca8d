"""The upstream kit on its own: balancer choice counts, ejection windows, eligibility,
idle expiry and the fd export/import round trip over a real loopback socket pair."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter

import pytest

from monolake.worker.upstream import balance, ejection, idle
from monolake.worker.upstream.endpoint import DOWN, DRAINING, EJECTED, UNHEALTHY, UP, Health


class Ep(Health):
    __slots__ = ("active", "name", "priority", "weight")

    def __init__(self, name: str, weight: int = 1, priority: int = 0, active: int = 0) -> None:
        super().__init__()
        self.name, self.weight, self.priority, self.active = name, weight, priority, active

    def load(self) -> int:
        return self.active


def counts(b: balance.Balancer, n: int, now: float = 0.0) -> Counter:
    return Counter(getattr(b.pick(now), "name", None) for _ in range(n))


def test_choice_counts_per_policy() -> None:
    eps = [Ep("a", 1), Ep("b", 3), Ep("c", 1)]
    eps[2].ejected_until = 100.0
    w = counts(balance.Balancer("weighted_random", eps, rand=random.Random(7)), 4000)
    assert "c" not in w and 2.5 < w["b"] / w["a"] < 3.5, w
    assert counts(balance.Balancer("round_robin", eps), 10) == Counter({"a": 5, "b": 5})
    assert counts(balance.Balancer("first", eps), 5) == Counter({"a": 5})
    lc = [Ep("x", active=4), Ep("y", active=1), Ep("z", active=1)]
    got = counts(balance.Balancer("least_conn", lc, rand=random.Random(1)), 200)
    assert set(got) == {"y", "z"}
    r = counts(balance.Balancer("random", eps, rand=random.Random(3)), 1000)
    assert set(r) == {"a", "b"} and min(r.values()) > 350


def test_none_or_all_when_nothing_is_eligible() -> None:
    eps = [Ep("a"), Ep("b")]
    for ep in eps:
        ep.ejected_until = 50.0
    assert balance.Balancer("random", eps).pick(0.0) is None
    assert set(counts(balance.Balancer("random", eps, fallback_all=True), 100)) == {"a", "b"}
    assert balance.Balancer("random", eps).pick(60.0) is not None  # the window ended


def test_lowest_priority_tier_and_exclude() -> None:
    eps = [Ep("a", priority=10), Ep("b", priority=10), Ep("c", priority=20)]
    b = balance.Balancer("round_robin", eps)
    assert set(counts(b, 10)) == {"a", "b"}
    picked = b.pick(0.0, exclude={0, 1})
    assert picked is not None and picked.name == "c"
    with pytest.raises(ValueError):
        balance.Balancer("fastest", eps)


def test_ejection_window_and_readmission() -> None:
    h = Health()
    assert not ejection.record_failure(h, 0.0, 3, 10.0)
    assert not ejection.record_failure(h, 0.0, 3, 10.0)
    assert ejection.record_failure(h, 1.0, 3, 10.0)
    assert h.state(5.0) == EJECTED and not h.available(5.0)
    assert h.available(11.0) and h.state(11.0) == UP
    assert not ejection.record_failure(h, 2.0, 3, 10.0)  # already out: the window stays
    assert h.ejected_until == 11.0
    ejection.record_success(h)
    assert h.failures == 0 and h.ejected_until == 11.0
    ejection.record_success(h, readmit=True)
    assert h.available(0.0)
    off = Health()
    assert not any(ejection.record_failure(off, 0.0, 0, 10.0) for _ in range(5))
    assert not ejection.eject_now(off, 0.0, 10.0, enabled=False) and off.available(0.0)
    assert ejection.eject_now(off, 0.0, 10.0) and not off.available(9.9)


def test_one_eligibility_decision_for_passive_and_active_health() -> None:
    h = Health()
    h.set_checked(UNHEALTHY)
    assert not h.available(0.0) and h.state(0.0) == UNHEALTHY
    h.set_checked(DOWN)
    assert h.state(0.0) == DOWN
    h.set_checked(UP)
    assert h.available(0.0)
    h.set_checked(None)
    h.draining = True
    assert not h.available(0.0) and h.state(0.0) == DRAINING
    with pytest.raises(ValueError):
        h.set_checked("sleepy")


def test_idle_expiry() -> None:
    assert not idle.expired(10.0, 14.9, 5.0)
    assert idle.expired(10.0, 15.0, 5.0)


def test_export_import_round_trip() -> None:
    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        fd = idle.export_fd(transport)
        assert fd >= 0
        transport.abort()  # our copy goes; the dup keeps the connection open
        sock = idle.import_fd(fd)
        assert sock is not None and not sock.getblocking()
        b.sendall(b"ping")
        reader, writer = await asyncio.open_connection(sock=sock)
        data = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
        b.close()
        return data

    assert asyncio.run(scenario()) == b"ping"
    assert idle.export_fd(None) == -1 and idle.import_fd(-1) is None
    r, w = socket.socketpair()
    fd = r.detach()
    w.close()
    s = idle.import_fd(fd)
    assert s is not None
    s.close()
