"""One balancer table for both engines (issue 13 §2): a route the native engine serves picks its
upstream from a C balancer (uring/mu_balance.c), and so does the Python engine for that route.

Why one table and not two twins side by side: on a native server a connection's first request,
every request C declines and every retry are the Python engine's, the rest C's. With two
balancers the round-robin position, the RNG and least_conn's in-flight counts would split in
two and the sequence of choices would depend on which engine served what. So once a route is
C's, its ``Balancer`` picks through the C table (``MirroredBalancer.pick``), and what Python
decides about the endpoints is written into that table the moment Python decides it:

- passive ejection (``ejected_until``), draining, the operator's state (``admin``), an
  active-check verdict (``checked``) and ``weight`` are properties of a ``MirroredUpstream``
  that write the Python field and then the endpoint's C row (flags, ejected_until, weight):
  C never decides eligibility, it reads Python's decision;
- ``active`` (least_conn's load) is the row's count, which holds the requests in flight of
  both engines: the Python engine's ``up.active += 1`` / ``-= 1`` (the pool's ConnectHold
  while connecting, the exchange while it runs) add to it, C adds its own in mu_native.c
  (acquire at the pick, release when the response ends or Python takes the exchange over);
- the round-robin position lives in C (``position`` reads and writes it, so export/import of
  state work as before); the RNG is C's splitmix64, continuing the Python balancer's stream
  when that is a ``SplitMix64`` (a test's seed), else seeded from os.urandom.

When the endpoint list changes (``replace``: the runtime API adds or removes an entry) the
indices C was built with no longer name the same endpoints: the balancer goes back to plain
Python (position copied back) and the engine drops the route (its requests are Python's).

The classes are swapped on the objects (``__class__``, same layout, no new slots) so the Python
engine of a server that is not native runs exactly the code it ran before.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from monolake.worker.http.upstream import Balancer, Upstream
from monolake.worker.upstream.balance import Balancer as KitBalancer
from monolake.worker.upstream.endpoint import Health
from monolake.worker.upstream.native_balance import NativeBalancer, SplitMix64, health_row

try:
    from monolake.uring._codec import ffi as _codec_ffi  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:  # no codec extension: nothing is mirrored (native_engine checks first)
    _codec_ffi = None


class _Mirror:
    """A mirrored balancer's C table and whom to tell when it stops being C's."""

    __slots__ = ("drops", "nb")

    def __init__(self, nb: NativeBalancer) -> None:
        self.nb = nb
        self.drops: list[Callable[[], None]] = []


_MIRRORS: weakref.WeakKeyDictionary[Any, _Mirror] = weakref.WeakKeyDictionary()
# a mirrored upstream's row: (its balancer's C table, its index)
_ROWS: weakref.WeakKeyDictionary[Any, tuple[NativeBalancer, int]] = weakref.WeakKeyDictionary()

_POSITION = KitBalancer.__dict__["position"]  # the slot under MirroredBalancer's property
_ACTIVE = Upstream.__dict__["active"]
_WEIGHT = Upstream.__dict__["weight"]


def mirror(balancer: Balancer, drop: Callable[[], None]) -> NativeBalancer | None:
    """The C table ``balancer`` picks from from now on (made on the first call, shared by every
    engine built over this balancer), or None when it cannot be C's: a subclass, active
    checks, an endpoint that is not a static ``Upstream``. ``drop`` is called once when the
    balancer stops being C's (its list changed)."""
    m = _MIRRORS.get(balancer)
    if m is None:
        if _codec_ffi is None or type(balancer) is not Balancer or balancer.health is not None:
            return None
        items = balancer.items
        if not items or any(type(up) is not Upstream or up.discovered or up.group for up in items):
            return None
        rand = balancer._rand
        seed = rand.getstate()[0] if isinstance(rand, SplitMix64) else None
        nb = NativeBalancer.of(balancer, seed)
        m = _MIRRORS[balancer] = _Mirror(nb)
        for i, up in enumerate(items):
            _ROWS[up] = (nb, i)
            up.__class__ = MirroredUpstream
        balancer.__class__ = MirroredBalancer
    m.drops.append(drop)
    return m.nb


def address(nb: NativeBalancer) -> int:
    """The mu_balancer's address, for the engine (it stays alive in the engine's refs)."""
    return int(_codec_ffi.cast("uintptr_t", nb._b))


def unmirror(balancer: Any) -> None:
    """Back to the plain Python balancer and upstreams, the C position copied back."""
    m = _MIRRORS.pop(balancer, None)
    if m is None:
        return
    position = m.nb.position
    balancer.__class__ = Balancer
    _POSITION.__set__(balancer, position)
    for up in balancer.items:
        if _ROWS.pop(up, None) is not None:
            up.__class__ = Upstream
    for drop in m.drops:
        drop()


class MirroredBalancer(Balancer):
    """A route's balancer while C serves the route: every pick from the C table."""

    __slots__ = ()

    def pick(self, exclude: set[int] | None = None) -> Upstream | None:  # type: ignore[override]
        i = _MIRRORS[self].nb.pick(time.monotonic(), exclude)
        return None if i is None else self.items[i]

    def replace(self, items: Iterable[Any]) -> None:  # type: ignore[override]
        unmirror(self)
        Balancer.replace(self, list(items))

    def reweigh(self) -> None:
        KitBalancer.reweigh(self)
        _MIRRORS[self].nb.reweigh(self.items)

    @property  # type: ignore[override]
    def position(self) -> int:
        return _MIRRORS[self].nb.position

    @position.setter
    def position(self, value: int) -> None:
        _MIRRORS[self].nb.position = value


def _health_field(name: str) -> property:
    slot = Health.__dict__[name]

    def get(self: Any) -> Any:
        return slot.__get__(self)

    def set_(self: Any, value: Any) -> None:
        slot.__set__(self, value)
        _write_row(self)

    return property(get, set_, doc=f"Health.{name}, written through to the C row")


def _write_row(up: Any) -> None:
    row = _ROWS.get(up)
    if row is not None:
        nb, i = row
        eps = nb._b.eps
        eps[i].flags, eps[i].ejected_until = health_row(up)
        eps[i].weight = max(1, _WEIGHT.__get__(up))


class MirroredUpstream(Upstream):
    """An endpoint of a mirrored balancer: what Python decides about it reaches its C row."""

    __slots__ = ()

    ejected_until = _health_field("ejected_until")
    draining = _health_field("draining")
    admin = _health_field("admin")
    checked = _health_field("checked")

    @property  # type: ignore[override]
    def weight(self) -> int:
        return _WEIGHT.__get__(self)

    @weight.setter
    def weight(self, value: int) -> None:
        _WEIGHT.__set__(self, value)
        _write_row(self)

    @property  # type: ignore[override]
    def active(self) -> int:
        """Requests in flight on this endpoint, both engines' (the C row's count)."""
        row = _ROWS.get(self)
        if row is None:
            return _ACTIVE.__get__(self)
        nb, i = row
        return nb.active(i)

    @active.setter
    def active(self, value: int) -> None:
        """The Python engine's ``+= 1`` / ``-= 1``: the change goes to both counts."""
        row = _ROWS.get(self)
        if row is None:
            _ACTIVE.__set__(self, value)
            return
        nb, i = row
        delta = value - nb.active(i)
        _ACTIVE.__set__(self, _ACTIVE.__get__(self) + delta)
        ep = nb._b.eps[i]
        ep.active = max(0, ep.active + delta)

    def load(self) -> int:
        return self.active
