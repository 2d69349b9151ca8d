"""The C balancer (uring/mu_balance.c) against its Python twin, the kit's Balancer: seeded
sequences of picks (with retry exclusions), health changes, weight changes, in-flight counts,
list replacements, SRV tiers, rejecting health checks and state migrations must give the
same endpoint every time, random policies included (both draw from one splitmix64 stream)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from monolake.worker.upstream import native_balance as nbm
from monolake.worker.upstream.balance import POLICIES, Balancer
from monolake.worker.upstream.endpoint import DOWN, UNHEALTHY, UP, Health
from monolake.worker.upstream.native_balance import NativeBalancer, NativeRng, SplitMix64

pytestmark = pytest.mark.skipif(nbm.lib is None, reason="the codec extension is not built")


class Ep(Health):
    """An endpoint as balancers see it (HTTP's Upstream is one of these)."""

    __slots__ = ("active", "name", "priority", "weight")

    def __init__(self, name: str, weight: int = 1, priority: int = 0) -> None:
        super().__init__()
        self.name = name
        self.weight = weight
        self.priority = priority
        self.active = 0

    def load(self) -> int:
        return self.active

    def __repr__(self) -> str:
        return f"<Ep {self.name} w={self.weight} p={self.priority} a={self.active}>"


class Rejecting:
    def __init__(self, rejecting: bool) -> None:
        self.rejecting = rejecting


def test_splitmix64_known_answer() -> None:
    """splitmix64's published first outputs for seed 0 (both sides)."""
    expect = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    c, py = NativeRng(0), SplitMix64(0)
    assert [c.next64() for _ in expect] == expect
    assert [py.next64() for _ in expect] == expect


@pytest.mark.parametrize("seed", [1, 2**63 + 5, 12345])
def test_rng_draws_alike(seed: int) -> None:
    """Every draw the balancers make: getrandbits, random(), below(n) = randrange(n)."""
    c, py = NativeRng(seed), SplitMix64(seed)
    rnd = random.Random(seed)
    for _ in range(3000):
        what = rnd.randrange(3)
        if what == 0:
            k = rnd.randint(1, 64)
            assert c.getrandbits(k) == py.getrandbits(k)
        elif what == 1:
            assert c.random() == py.random()
        else:
            n = rnd.choice([1, 2, 3, 5, 7, 8, 100, 2**31 + 1, rnd.randint(1, 10**6)])
            assert c.below(n) == py.randrange(n)
    assert c.next64() == py.next64()


def _pair(policy: str, eps: list[Ep], seed: int, fallback: bool) -> tuple[Balancer, NativeBalancer]:
    py = Balancer(policy, eps, rand=SplitMix64(seed), fallback_all=fallback)
    return py, NativeBalancer.of(py, seed)


def _index(py: Balancer, ep: Any) -> int | None:
    if ep is None:
        return None
    return next(i for i, x in enumerate(py.items) if x is ep)


def _scenario(seed: int, steps: int, picks: Counter[str]) -> None:
    rnd = random.Random(seed)
    policy = POLICIES[seed % len(POLICIES)]
    fallback = rnd.random() < 0.3
    tiered = rnd.random() < 0.35
    serial = 0

    def new_ep() -> Ep:
        nonlocal serial
        serial += 1
        prio = rnd.choice([0, 0, 10, 20]) if tiered else 0
        return Ep(f"e{serial}", rnd.choice([0, 1, 1, 2, 3, 7, 100]), prio)

    eps = [new_ep() for _ in range(rnd.choice([1, 1, 2, 3, 4, 6, 9, 40]))]
    bseed = rnd.getrandbits(64)
    py, nb = _pair(policy, eps, bseed, fallback)
    now = 1000.0
    inflight: list[Ep] = []
    for step in range(steps):
        op = rnd.random()
        items = py.items
        where = f"seed={seed} step={step} policy={policy} items={items}"
        if op < 0.5:
            exclude = None
            if items and rnd.random() < 0.25:
                exclude = set(rnd.sample(range(len(items)), rnd.randint(1, len(items))))
            nb.sync_health(items)
            want = _index(py, py.pick(now, exclude))
            got = nb.pick(now, exclude)
            assert got == want, where
            picks[policy] += want is not None
            if want is not None and rnd.random() < 0.6:  # the request starts: both count it
                ep = items[want]
                ep.active += 1
                nb.acquire(want)
                inflight.append(ep)
                assert nb.active(want) == ep.active, where
        elif op < 0.62 and inflight:  # a request ends (C hears of it at the next sync)
            ep = inflight.pop(rnd.randrange(len(inflight)))
            ep.active -= 1
        elif op < 0.77 and items:  # health changes
            ep = rnd.choice(items)
            what = rnd.randrange(5)
            if what == 0:
                ep.draining = not ep.draining
            elif what == 1:
                ep.admin = rnd.choice(["", "", "disabled", "draining"])
            elif what == 2:
                ep.set_checked(rnd.choice([None, UP, UNHEALTHY, DOWN]))
            else:
                ep.ejected_until = now + rnd.choice([-1.0, 0.0, 0.5, 2.0, 30.0])
        elif op < 0.82 and items:  # the runtime API changes a weight
            rnd.choice(items).weight = rnd.choice([0, 1, 2, 5, 50])
            py.reweigh()
            nb.reweigh(items)
        elif op < 0.88:
            now += rnd.choice([0.1, 0.5, 1.0, 3.0])
        elif op < 0.93:  # DNS replaces the list: some stay (reordered), some are new
            keep = rnd.sample(items, rnd.randint(0, len(items)))
            fresh = keep + [new_ep() for _ in range(rnd.randint(0 if keep else 1, 3))]
            rnd.shuffle(fresh)
            py.replace(fresh)
            nb.replace(fresh)
        elif op < 0.96:  # the route's active checks start or stop rejecting everything
            py.health = Rejecting(rnd.random() < 0.5) if rnd.random() < 0.8 else None
            nb.set_rejecting(py)
        else:  # state migration (reload): the position as RouterService exports it
            exported = {"position": nb.position}
            assert exported["position"] == py.position, where
            bseed = rnd.getrandbits(64)
            n = len(items)
            py = Balancer(policy, items, rand=SplitMix64(bseed), fallback_all=fallback)
            py.position = int(exported["position"]) % n if n else 0
            nb = NativeBalancer(policy, bseed, fallback_all=fallback)
            nb.replace(items)
            nb.position = int(exported["position"])
        assert nb.position == py.position, where
        assert nb.size == len(py.items), where


def test_differential() -> None:
    """Many seeded scenarios, every policy; some pick happens for each policy."""
    picks: Counter[str] = Counter()
    for seed in range(150):
        _scenario(seed, 300, picks)
    assert set(picks) == set(POLICIES)
    assert min(picks.values()) > 500


@pytest.mark.parametrize("policy", POLICIES)
def test_round_robin_position_survives_migration(policy: str) -> None:
    """Positions move to the next process through the exported state; a shorter list takes
    the position modulo its length, as RouterService.import_state does."""
    eps = [Ep(f"e{i}") for i in range(5)]
    py, nb = _pair(policy, eps, 7, False)
    for _ in range(3):
        assert nb.pick(1.0) == _index(py, py.pick(1.0))
    exported = nb.position
    assert exported == py.position == (3 if policy == "round_robin" else 0)
    shorter = eps[:2]
    py2 = Balancer(policy, shorter, rand=SplitMix64(9))
    py2.position = exported % len(shorter)
    nb2 = NativeBalancer(policy, 9)
    nb2.replace(shorter)
    nb2.position = exported
    for _ in range(5):
        assert nb2.pick(1.0) == _index(py2, py2.pick(1.0))
        assert nb2.position == py2.position


@pytest.mark.parametrize("position", [-7, -1, 0, 4, 5, 2**70 + 3])
def test_imported_position_modulo(position: int) -> None:
    """Any int an old state holds lands where Python's ``% n`` puts it."""
    eps = [Ep(f"e{i}") for i in range(5)]
    py, nb = _pair("round_robin", eps, 1, False)
    py.position = position % len(eps)
    nb.position = position
    assert nb.position == py.position
    assert nb.pick(0.0) == _index(py, py.pick(0.0))


def test_eligibility_matches_available() -> None:
    """The table's flags and ejected_until say what Health.available and a Thrift target's
    available say (the target: its own verdict and admin, and all of its pools')."""
    from types import SimpleNamespace

    from monolake.worker.thrift.proxy import Target

    rnd = random.Random(5)
    nb = NativeBalancer("first", 0)

    def health() -> Ep:
        ep = Ep("h")
        ep.draining = rnd.random() < 0.2
        ep.admin = rnd.choice(["", "", "", "disabled", "draining"])
        ep.checked = rnd.choice([None, None, UP, UNHEALTHY, DOWN])
        ep.ejected_until = rnd.choice([0.0, 9.0, 10.0, 11.0])
        return ep

    for _ in range(500):
        now = 10.0
        ep = health()
        target = SimpleNamespace(
            weight=1,
            held_down=rnd.random() < 0.2,
            admin=rnd.choice(["", "", "disabled"]),
            pools={k: health() for k in range(rnd.randint(0, 3))},
            load=lambda: 0,
        )
        nb.replace([ep, target])
        assert bool(nbm.lib.mu_bal_available(nb._b, 0, now)) == ep.available(now)
        assert bool(nbm.lib.mu_bal_available(nb._b, 1, now)) == Target.available(target, now)  # type: ignore[arg-type]


def test_weighted_distribution() -> None:
    """The C weighted pick follows the weights (its own stream, no Python involved)."""
    eps = [Ep("a", 1), Ep("b", 3), Ep("c", 6)]
    nb = NativeBalancer("weighted_random", 42)
    nb.replace(eps)
    n = 20000
    seen = Counter(nb.pick(0.0) for _ in range(n))
    for i, share in enumerate((0.1, 0.3, 0.6)):
        assert abs(seen[i] / n - share) < 0.02, seen


def test_no_candidate_and_fallback() -> None:
    """None available: None, or (fallback_all, Thrift) any endpoint; exclusions still hold."""
    eps = [Ep("a"), Ep("b")]
    for ep in eps:
        ep.draining = True
    nb = NativeBalancer("first", 0)
    nb.replace(eps)
    assert nb.pick(0.0) is None
    fb = NativeBalancer("first", 0, fallback_all=True)
    fb.replace(eps)
    assert fb.pick(0.0) == 0
    assert fb.pick(0.0, {0}) == 1
    assert fb.pick(0.0, {0, 1}) is None
    assert NativeBalancer("random", 0).pick(0.0) is None  # an empty table


def test_bad_policy() -> None:
    with pytest.raises(ValueError, match="unknown load_balancer"):
        NativeBalancer("fastest", 0)


def test_default_seeds_differ() -> None:
    """Without a seed each balancer draws its own (workers must not share one sequence)."""
    eps = [Ep(f"e{i}") for i in range(10)]
    a, b = NativeBalancer("random"), NativeBalancer("random")
    a.replace(eps)
    b.replace(eps)
    assert [a.pick(0.0) for _ in range(50)] != [b.pick(0.0) for _ in range(50)]
