"""What one configured upstream stands for once DNS has answered: a list of ``Target``s.

``AddressSource``: a host name and port -> one target per A/AAAA address, each with the
upstream's full weight (the weight is *repeated*, not split: a name with three addresses
weighs three times one literal address, as nginx's ``resolve`` and Envoy's STRICT_DNS do).

``SrvSource``: ``_service._tcp.name`` -> for each SRV record, one target per address of its
target host, with the record's port, priority and weight (weight 0 counts as 1).

A source holds its owner (a balancer) weakly and calls ``endpoints_changed()`` on it when its
targets change; the watches hold the source weakly, so a route that goes away stops the
queries it caused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from monolake.worker.discovery.dns import SrvRecord
from monolake.worker.discovery.watch import FAILING, REGISTRY, Watch


@dataclass(frozen=True)
class Target:
    address: str
    port: int
    weight: int
    priority: int = 0
    name: str = ""  # the DNS name the address came from


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Source:
    """Base: the owner callback and the first-answer wait."""

    kind = ""

    def __init__(self, name: str, on_change: Callable[[], None]) -> None:
        self.name = name
        self._owner: Callable[[], Callable[[], None] | None]
        if hasattr(on_change, "__self__"):
            self._owner = weakref.WeakMethod(on_change)
        else:
            self._owner = lambda: on_change

    def records_changed(self, watch: Watch) -> None:
        callback = self._owner()
        if callback is not None:
            callback()

    def targets(self) -> list[Target]:
        raise NotImplementedError

    @property
    def settled(self) -> bool:
        raise NotImplementedError

    @property
    def error(self) -> str:
        raise NotImplementedError

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - answers False on time-out, never raises
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def why_none(self) -> str:
        """Why no address of this name can be picked, for the error a request gets."""
        if not self.settled:
            return f"no DNS answer yet for {self.name}"
        return f"DNS gave no address for {self.name}" + (f" ({self.error})" if self.error else "")


class Member(Protocol):
    """What a discovered upstream keeps of its target: the balancer's weight and priority."""

    weight: int
    priority: int


M = TypeVar("M", bound=Member)


def reconcile(
    children: dict[tuple[str, int], M],
    targets: Iterable[Target],
    make: Callable[[Target], M],
    drop: Callable[[M], None],
    keep: Callable[[M], bool] = lambda member: True,
) -> dict[tuple[str, int], M]:
    """The members for the current ``targets``, by address and port: an unchanged target
    keeps its member (so its health, counters and connections), with the target's weight
    (0 counts as 1) and priority; a new one, or one ``keep`` refuses, gets ``make(target)``;
    a member whose target left is given to ``drop``."""
    fresh: dict[tuple[str, int], M] = {}
    for t in targets:
        k = (t.address, t.port)
        if k in fresh:
            continue
        member = children.get(k)
        if member is None or not keep(member):
            member = make(t)
        else:  # an SRV weight or priority change keeps the address's connections
            member.weight, member.priority = max(1, t.weight), t.priority
        fresh[k] = member
    for k, member in children.items():
        if k not in fresh:
            drop(member)
    return fresh


class AddressSource(Source):
    kind = "addr"

    def __init__(self, name: str, port: int, weight: int, on_change: Callable[[], None]) -> None:
        super().__init__(name, on_change)
        self.port = port
        self.weight = weight
        self.watch = REGISTRY.watch("addr", name)
        self.watch.subscribe(self)

    def targets(self) -> list[Target]:
        return [Target(a, self.port, self.weight, 0, self.name) for a in self.watch.records]

    @property
    def settled(self) -> bool:
        return self.watch.settled

    @property
    def error(self) -> str:
        w = self.watch
        return w.error if w.state == FAILING else ""

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - answers False on time-out, never raises
        return await self.watch.wait_settled(timeout)

    def close(self) -> None:
        self.watch.unsubscribe(self)


class SrvSource(Source):
    kind = "srv"

    def __init__(self, name: str, on_change: Callable[[], None]) -> None:
        super().__init__(name, on_change)
        self.watch = REGISTRY.watch("srv", name)
        self.hosts: dict[str, Watch] = {}
        self.watch.subscribe(self)
        self._follow()

    def records_changed(self, watch: Watch) -> None:
        if watch is self.watch:
            self._follow()
        super().records_changed(watch)

    def _follow(self) -> None:
        """Watch the addresses of every target host the SRV records name (and no others)."""
        wanted = {r.target for r in self._records() if not is_ip(r.target)}
        for host in list(self.hosts):
            if host not in wanted:
                self.hosts.pop(host).unsubscribe(self)
        for host in wanted:
            if host not in self.hosts:
                w = self.hosts[host] = REGISTRY.watch("addr", host)
                w.subscribe(self)

    def _records(self) -> list[SrvRecord]:
        return [r for r in self.watch.records if isinstance(r, SrvRecord)]

    def targets(self) -> list[Target]:
        out: list[Target] = []
        for r in self._records():
            if is_ip(r.target):
                addresses: tuple[Any, ...] = (r.target,)
            else:
                w = self.hosts.get(r.target)
                addresses = w.records if w is not None else ()
            out.extend(Target(a, r.port, max(1, r.weight), r.priority, r.target) for a in addresses)
        return out

    @property
    def settled(self) -> bool:
        return self.watch.settled and all(w.settled for w in self.hosts.values())

    @property
    def error(self) -> str:
        errors = [w.error for w in (self.watch, *self.hosts.values()) if w.state == FAILING]
        return "; ".join(errors)

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - answers False on time-out, never raises
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self.watch.wait_settled(timeout):
            return False
        for w in list(self.hosts.values()):
            if not await w.wait_settled(max(0.0, deadline - loop.time())):
                return False
        return True

    def close(self) -> None:
        self.watch.unsubscribe(self)
        for w in self.hosts.values():
            w.unsubscribe(self)
        self.hosts.clear()
