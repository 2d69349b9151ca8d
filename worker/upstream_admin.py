"""The worker's half of the runtime upstream API (``monolaked upstreams``, issue 15 §3).

Routers register their balancers here as they are built (``register_http``); the master's
``upstreams`` messages act on them (``handle``) and answer ``upstreams_result``. Overrides the
worker holds (from ``hello`` or a command) are re-applied to every balancer registered later,
so an in-place reload's new stacks get them too, while their fingerprint still matches the
config the balancer was built from (supervisor/upstream_rules.py says the rule).

Admin state lives on the endpoint (the kit's ``Health.admin``), next to passive ejection and active
health in ``Upstream.healthy``: one place decides eligibility.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import structlog

from monolake.supervisor.upstream_rules import fingerprint, join, normalize_address

log = structlog.get_logger()


@dataclass
class Override:
    server: str
    address: str
    state: str | None  # "draining" | "disabled" | None
    weight: int | None
    fp: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "address": self.address,
            "state": self.state,
            "weight": self.weight,
            "fp": self.fp,
        }


@dataclass
class Registered:
    server: str
    route: str
    server_cfg: Any
    balancer: weakref.ref[Any]
    pool: weakref.ref[Any]


OVERRIDES: dict[tuple[str, str], Override] = {}
ROUTES: list[Registered] = []


def load(items: list[dict[str, Any]] | None) -> None:
    """The overrides the master carries over (``hello``), before any stack is built."""
    for item in items or ():
        o = Override(
            str(item["server"]),
            str(item["address"]),
            item.get("state"),
            item.get("weight"),
            str(item.get("fp", "")),
        )
        OVERRIDES[(o.server, o.address)] = o


def register_http(server: str, server_cfg: Any, route: str, balancer: Any, pool: Any) -> None:
    """A router built ``balancer`` for ``route``: track it and apply what is held for it."""
    ROUTES[:] = [r for r in ROUTES if r.balancer() is not None]
    ROUTES.append(Registered(server, route, server_cfg, weakref.ref(balancer), weakref.ref(pool)))
    for o in list(OVERRIDES.values()):
        if o.server == server and fingerprint(server_cfg, o.address) == o.fp:
            _apply(balancer, pool, o)


def address_of(up: Any) -> str:
    return join(up.connect_host, int(up.port)) if up.port else up.label


def _targets(server: str) -> list[tuple[Registered, Any, Any]]:
    out = []
    for reg in ROUTES:
        balancer, pool = reg.balancer(), reg.pool()
        if balancer is not None and reg.server == server:
            out.append((reg, balancer, pool))
    return out


def _apply(balancer: Any, pool: Any, o: Override) -> int:
    """Set ``o`` on the balancer's endpoints at ``o.address``; how many it touched."""
    from monolake.worker.http.upstream import DrainEpoch

    hits = 0
    for up in balancer.upstreams:
        if address_of(up) != o.address:
            continue
        hits += 1
        up.admin = o.state or ""
        if o.state == "draining" and not up.draining:
            up.draining = True  # the pool closes its idle connections, and busy ones on release
            DrainEpoch.value += 1
        elif o.state != "draining" and up.draining and up.group is None:
            up.draining = False  # a static endpoint drained by the API, enabled again
        if o.weight is not None:
            up.weight = int(o.weight)
    if hits:  # the weighted balancers read the weights cached at the last rebuild
        balancer.reweigh()
    return hits


def state_of(up: Any, now: float) -> str:
    """The kit's state (worker/upstream/endpoint.py): admin, draining, health, ejection."""
    return str(up.state(now))


def rows(now: float) -> list[dict[str, Any]]:
    """One row per endpoint of every live route (the newest stack of each server/route)."""
    seen: dict[tuple[str, str], tuple[Any, Any]] = {}
    for reg in ROUTES:
        balancer = reg.balancer()
        if balancer is not None:
            seen[(reg.server, reg.route)] = (balancer, reg.pool())
    out = []
    for (server, route), (balancer, pool) in seen.items():
        for up in balancer.upstreams:
            idle = len(pool.idle.get(up.key, ())) if pool is not None else 0
            out.append(
                {
                    "server": server,
                    "route": route,
                    "address": address_of(up),
                    "upstream": up.label,
                    "weight": up.weight,
                    "state": state_of(up, now),
                    "active": up.active,
                    "idle": idle,
                    "requests": up.requests,
                    "balancer": balancer.kind,
                }
            )
    return out


def command(message: dict[str, Any], now: float) -> dict[str, Any]:
    """Run one ``upstreams`` message; the reply's body (without type/id)."""
    op = message.get("op")
    if op == "list":
        return {"ok": True, "rows": rows(now)}
    server = str(message.get("server", ""))
    try:
        address = normalize_address(str(message.get("address", "")))
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    targets = _targets(server)
    if not targets:
        return {"ok": False, "error": f"unknown server {server!r}"}
    held = OVERRIDES.get((server, address))
    state, weight = (held.state, held.weight) if held else (None, None)
    if op in ("drain", "disable"):
        state = "draining" if op == "drain" else "disabled"
    elif op == "enable":
        state = None
    elif op == "weight":
        weight = int(message["weight"])
    else:
        return {"ok": False, "error": f"unknown op {op!r}"}
    o = Override(server, address, state, weight, str(message.get("fp", "")))
    if op == "enable":
        _enable(targets, address)
    hits = sum(_apply(b, p, o) for _, b, p in targets)
    if not hits:
        return {"ok": False, "error": f"server {server!r} has no upstream {address}"}
    if o.state is None and o.weight is None:
        OVERRIDES.pop((server, address), None)
    else:
        OVERRIDES[(server, address)] = o
    log.info(
        "upstream_admin", op=op, server=server, address=address, state=state, weight=weight, endpoints=hits
    )
    return {"ok": True, "applied": hits}


def _enable(targets: list[tuple[Registered, Any, Any]], address: str) -> None:
    for _, balancer, _ in targets:
        for up in balancer.upstreams:
            if address_of(up) == address:
                up.admin = ""


def handle(worker: Any, message: Any) -> None:
    """The ``upstreams`` control message (``messages.Upstreams``): act, then answer
    ``upstreams_result``."""
    import time

    from monolake.supervisor import messages

    try:
        body = command(messages.as_dict(message), time.monotonic())
    except Exception as exc:
        log.exception("upstream_admin_failed")
        body = {"ok": False, "error": f"internal error: {exc!r}"}
    worker.send(messages.UpstreamsResult(id=message.id, **body))
