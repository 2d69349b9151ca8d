"""The C balancer (uring/mu_balance.c) over the kit's endpoints, and its RNG's Python twin.

Python stays the reference: ``balance.Balancer`` decides, and ``NativeBalancer`` is the same
decision over a table Python writes (weights, eligibility, SRV priority, in-flight counts),
for the native exchange to pick without calling Python. ``SplitMix64`` is a ``random.Random``
that draws the C RNG's stream: a ``Balancer`` given one makes the same random choices as a
``NativeBalancer`` with the same seed, which is how tests/upstream/test_native_balance.py
compares every choice, random ones included.

What is copied when: ``load`` takes everything from a Python balancer (once, and after a state
migration: the round-robin position comes with it, as RouterService.import_state passes it
on); ``replace`` is Balancer.replace (the position is kept modulo the new length);
``sync_health`` copies eligibility and in-flight counts (what changes between picks);
``reweigh`` is Balancer.reweigh. The position and the RNG are never copied back and forth
after ``load``: each side advances its own, which is what the differential test checks.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

from .balance import POLICIES, Balancer
from .endpoint import UP, Health

try:
    from monolake.uring._codec import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:  # the codec extension is not built
    ffi = lib = None

MASK64 = (1 << 64) - 1
DRAINING, ADMIN, UNHEALTHY = 1, 2, 4  # MU_EP_* (mu_balance.h)
NONE = -1


class SplitMix64(random.Random):
    """A ``random.Random`` over splitmix64, drawn exactly as mu_rng draws: ``getrandbits(k)``
    is the top k bits of one 64-bit output and ``random()`` its top 53 bits over 2**53, so
    randrange / choice / choices (CPython's algorithms over these two) match mu_rng_below and
    mu_balance.c's weighted pick."""

    def __init__(self, seed: int = 0) -> None:
        self._state = 0
        super().__init__(seed)

    def seed(self, a: Any = None, version: int = 2) -> None:
        self._state = int(a or 0) & MASK64

    def next64(self) -> int:
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def getrandbits(self, k: int) -> int:
        if k <= 0:
            return 0
        if k > 64:
            raise ValueError("SplitMix64 draws at most 64 bits")
        return self.next64() >> (64 - k)

    def random(self) -> float:
        return (self.next64() >> 11) * (1.0 / 9007199254740992.0)

    def getstate(self) -> tuple[Any, ...]:
        return (self._state,)

    def setstate(self, state: tuple[Any, ...]) -> None:
        self._state = int(state[0]) & MASK64


def health_row(ep: Any) -> tuple[int, float]:
    """(MU_EP_* flags, ejected_until) of an endpoint: ``Health.available`` as table fields.
    A Thrift target is its own verdict and operator state plus those of its pools (it is
    available when all of them are: the latest ejection counts)."""
    if isinstance(ep, Health):
        flags = (DRAINING if ep.draining else 0) | (ADMIN if ep.admin else 0)
        if ep.checked is not None and ep.checked != UP:
            flags |= UNHEALTHY
        return flags, ep.ejected_until
    pools = getattr(ep, "pools", None)
    if pools is None:
        raise TypeError(f"not an endpoint the C balancer can mirror: {ep!r}")
    flags = (ADMIN if ep.admin else 0) | (UNHEALTHY if ep.held_down else 0)
    until = 0.0
    for pool in pools.values():
        f, e = health_row(pool)
        flags |= f
        until = max(until, e)
    return flags, until


class NativeBalancer:
    """One mu_balancer: ``pick`` gives an index into the items last passed to ``replace``."""

    __slots__ = ("_b", "_exclude", "policy")

    def __init__(self, policy: str, seed: int | None = None, *, fallback_all: bool = False) -> None:
        """``seed``: the RNG's (a test's); None draws one from os.urandom, so the workers'
        random choices are not the same sequence."""
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        if policy not in POLICIES:
            raise ValueError(f"unknown load_balancer {policy!r}")
        self.policy = policy
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        b = lib.mu_bal_new(POLICIES.index(policy), seed & MASK64, int(fallback_all))
        if b == ffi.NULL:
            raise MemoryError("mu_bal_new")
        self._b = ffi.gc(b, lib.mu_bal_free)
        self._exclude = ffi.new("uint32_t[]", 8)

    @classmethod
    def of(cls, balancer: Balancer, seed: int | None = None) -> NativeBalancer:
        """The C twin of a Python balancer, its state (position included) copied."""
        nb = cls(balancer.policy, seed, fallback_all=balancer._fallback_all)
        nb.load(balancer)
        return nb

    def load(self, balancer: Balancer) -> None:
        """Everything from ``balancer``: items, weights, health, counts, tiering, position."""
        self.replace(balancer.items)
        self.reweigh(balancer.items)
        self._b.tiered = int(balancer._tiered)
        self.position = balancer.position
        self.set_rejecting(balancer)

    def replace(self, items: Sequence[Any]) -> None:
        """Balancer.replace: a new table (rows from the endpoints), position kept modulo n."""
        rows = ffi.new("mu_bal_endpoint[]", max(1, len(items)))
        for i, ep in enumerate(items):
            row = rows[i]
            row.flags, row.ejected_until = health_row(ep)
            row.weight = max(1, ep.weight)
            row.priority = getattr(ep, "priority", 0)
            row.active = ep.load()
        if lib.mu_bal_replace(self._b, rows, len(items)) != 0:
            raise MemoryError("mu_bal_replace")

    def reweigh(self, items: Sequence[Any]) -> None:
        """Balancer.reweigh: the endpoints' weights again."""
        eps = self._b.eps
        for i, ep in enumerate(items):
            eps[i].weight = max(1, ep.weight)

    def sync_health(self, items: Sequence[Any]) -> None:
        """Eligibility and in-flight counts: what Python keeps up to date between picks."""
        eps = self._b.eps
        for i, ep in enumerate(items):
            row = eps[i]
            row.flags, row.ejected_until = health_row(ep)
            row.active = ep.load()

    def set_rejecting(self, balancer: Balancer) -> None:
        """The route's active checks reject everything (Balancer.health.rejecting)."""
        health = balancer.health
        self._b.rejecting = int(health is not None and bool(health.rejecting))

    @property
    def position(self) -> int:
        return int(self._b.position)

    @position.setter
    def position(self, value: int) -> None:
        """Python's ``value % n`` (an imported position may be any int, negative too)."""
        n = int(self._b.n)
        lib.mu_bal_set_position(self._b, int(value) % n if n else 0)

    @property
    def size(self) -> int:
        return int(self._b.n)

    def active(self, i: int) -> int:
        return int(self._b.eps[i].active)

    def acquire(self, i: int) -> None:
        lib.mu_bal_acquire(self._b, i)

    def release(self, i: int) -> None:
        lib.mu_bal_release(self._b, i)

    def pick(self, now: float, exclude: Iterable[int] | None = None) -> int | None:
        """The index Balancer.pick would choose, or None."""
        if not exclude:
            i = lib.mu_bal_pick(self._b, now, ffi.NULL, 0)
        else:
            ex = list(exclude)
            if len(ex) > len(self._exclude):
                self._exclude = ffi.new("uint32_t[]", len(ex))
            for j, x in enumerate(ex):
                self._exclude[j] = x
            i = lib.mu_bal_pick(self._b, now, self._exclude, len(ex))
        return None if i == NONE else int(i)


class NativeRng:
    """mu_rng by itself (for the tests that compare it with SplitMix64 draw by draw)."""

    __slots__ = ("_r",)

    def __init__(self, seed: int) -> None:
        if lib is None:
            raise RuntimeError("the monolake.uring._codec extension is not built")
        self._r = ffi.new("mu_rng *")
        lib.mu_rng_seed(self._r, seed & MASK64)

    def next64(self) -> int:
        return int(lib.mu_rng_next(self._r))

    def getrandbits(self, k: int) -> int:
        return int(lib.mu_rng_getrandbits(self._r, k))

    def random(self) -> float:
        return float(lib.mu_rng_random(self._r))

    def below(self, n: int) -> int:
        return int(lib.mu_rng_below(self._r, n))
