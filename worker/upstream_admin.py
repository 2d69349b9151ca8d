"""The worker's half of the runtime upstream API (``monolaked upstreams``, issue 15 §3).

Routers register each route as they build it (``register_http``, ``register_thrift``: an
adapter of worker/upstream_routes.py); the master's ``upstreams`` messages act on them
(``handle``) and answer ``upstreams_result``. What the worker holds (from ``hello`` or a
command) is applied again to every route registered later, so respawns and an in-place
reload's new stacks get it too, while its fingerprint still matches the config the route was
built from (supervisor/upstream_rules.py says the rule):

- *edits* (add, remove) per server, route and address, applied first;
- *overrides* (drain, disable, weight) per server and address, applied to every endpoint at
  that address, also to one DNS gives later (``endpoints_changed``: an address that leaves
  the answer and comes back is still disabled).

Admin state lives on the endpoint (the kit's ``Health.admin``; a thrift ``Target.admin``) next
to passive ejection and active health: one place decides eligibility.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from monolake.supervisor.upstream_rules import (
    EDITS,
    fingerprint,
    normalize_address,
    parse_target,
    route_fingerprint,
)
from monolake.worker.upstream_routes import HttpRoute, RouteAdmin, ThriftRoute

log = structlog.get_logger()


@dataclass
class Override:
    server: str
    address: str
    state: str | None  # "draining" | "disabled" | None
    weight: int | None
    fp: str


@dataclass
class Edit:
    server: str
    route: str
    address: str
    edit: str  # "add" | "remove"
    uri: str
    weight: int
    fp: str


OVERRIDES: dict[tuple[str, str], Override] = {}
EDITS_HELD: dict[tuple[str, str, str], Edit] = {}
ROUTES: list[RouteAdmin] = []


def load(items: list[dict[str, Any]] | None) -> None:
    """What the master carries over (``hello``), before any stack is built."""
    for item in items or ():
        if item.get("edit"):
            e = Edit(
                str(item["server"]),
                str(item["route"]),
                str(item["address"]),
                str(item["edit"]),
                str(item.get("uri", "")),
                int(item.get("weight") or 1),
                str(item.get("fp", "")),
            )
            EDITS_HELD[(e.server, e.route, e.address)] = e
        else:
            o = Override(
                str(item["server"]),
                str(item["address"]),
                item.get("state"),
                item.get("weight"),
                str(item.get("fp", "")),
            )
            OVERRIDES[(o.server, o.address)] = o


# ----- registration ------------------------------------------------------------------------


def register_http(server: str, server_cfg: Any, route_cfg: Any, balancer: Any, pool: Any) -> None:
    """A router built ``balancer`` for ``route_cfg``: track it and apply what is held for it."""
    _register(HttpRoute(server, server_cfg, route_cfg, balancer, pool))


def register_thrift(server: str, server_cfg: Any, route_cfg: Any, targets: Any, router: Any) -> None:
    """A thrift router built ``targets`` (worker/thrift/discovered.RouteTargets) for ``route_cfg``."""
    _register(ThriftRoute(server, server_cfg, route_cfg, targets, router))


def _register(route: RouteAdmin) -> None:
    ROUTES[:] = [r for r in ROUTES if r.alive()]
    ROUTES.append(route)
    route_fp = route_fingerprint(route.server_cfg, route.route)
    for e in list(EDITS_HELD.values()):
        if e.server == route.server and e.route == route.route and e.fp == route_fp:
            _apply_edit(route, e)
    _apply_overrides(route)


def _apply_edit(route: RouteAdmin, e: Edit) -> None:
    why = route.add(e.uri, e.address, e.weight) if e.edit == "add" else route.check_remove(e.address)
    if e.edit == "remove" and not why:
        route.remove(e.address)
    if why:
        log.warning(
            "upstream_edit_not_applied",
            server=e.server,
            route=e.route,
            address=e.address,
            edit=e.edit,
            reason=why,
        )


def _apply_overrides(route: RouteAdmin) -> None:
    for o in list(OVERRIDES.values()):
        if o.server == route.server and fingerprint(route.server_cfg, o.address) == o.fp:
            _apply(route, o)


def endpoints_changed(balancer: Any) -> None:
    """DNS changed ``balancer``'s endpoints: what is held applies to addresses that joined."""
    for route in ROUTES:
        if route.balancer is balancer:
            _apply_overrides(route)


def _apply(route: RouteAdmin, o: Override) -> int:
    """Set ``o`` on the route's endpoints at ``o.address``; how many it touched."""
    hits = 0
    for ep in route.endpoints():
        if route.address_of(ep) != o.address:
            continue
        hits += 1
        if (ep.admin or None) != o.state:
            route.set_state(ep, o.state)
        if o.weight is not None:
            ep.weight = int(o.weight)
    if hits:  # the weighted balancers read the weights cached at the last rebuild
        route.reweigh()
    return hits


# ----- listing -----------------------------------------------------------------------------


def rows(now: float) -> list[dict[str, Any]]:
    """One row per endpoint of every live route (the newest stack of each server/route)."""
    seen: dict[tuple[str, str], RouteAdmin] = {}
    for route in ROUTES:
        if route.alive():
            seen[(route.server, route.route)] = route
    return [route.row(ep, now) for route in seen.values() for ep in route.endpoints()]


# ----- commands ----------------------------------------------------------------------------


def command(message: dict[str, Any], now: float) -> dict[str, Any]:
    """Run one ``upstreams`` message; the reply's body (without type/id)."""
    op = message.get("op")
    if op == "list":
        return {"ok": True, "rows": rows(now)}
    server = str(message.get("server", ""))
    targets = [r for r in ROUTES if r.alive() and r.server == server]
    if not targets:
        return {"ok": False, "error": f"unknown server {server!r}"}
    if op in EDITS:
        return _edit(targets, message)
    try:
        address = normalize_address(str(message.get("address", "")))
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
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
    hits = sum(_apply(r, o) for r in targets)
    if not hits:
        return {"ok": False, "error": f"server {server!r} has no upstream {address}"}
    _hold(o)
    log.info(
        "upstream_admin", op=op, server=server, address=address, state=state, weight=weight, endpoints=hits
    )
    return {"ok": True, "applied": hits}


def _hold(o: Override) -> None:
    if o.state is None and o.weight is None:
        OVERRIDES.pop((o.server, o.address), None)
    else:
        OVERRIDES[(o.server, o.address)] = o


def _edit(targets: list[RouteAdmin], message: dict[str, Any]) -> dict[str, Any]:
    """add / remove on every live stack of the route: checked on all of them first, so a
    refusal changes nothing."""
    op = str(message["op"])
    server, route_name = str(message.get("server", "")), str(message.get("route", ""))
    routes = [r for r in targets if r.route == route_name]
    if not routes:
        return {"ok": False, "error": f"server {server!r} has no route {route_name!r}"}
    try:
        uri, address = parse_target(routes[0].protocol, str(message.get("uri", "")))
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    weight = int(message.get("weight") or 1)
    if op == "add":
        why = next((w for w in (r.duplicate(address) for r in routes) if w), "")
        if why:
            return {"ok": False, "error": why}
        for r in routes:
            why = r.add(uri, address, weight) or why
    else:
        why = next((w for w in (r.check_remove(address) for r in routes) if w), "")
        if why:
            return {"ok": False, "error": why}
        for r in routes:
            r.remove(address)
    if why:
        return {"ok": False, "error": why}
    key = (server, route_name, address)
    held = EDITS_HELD.get(key)
    if held is not None and held.edit != op:
        del EDITS_HELD[key]  # undoes the earlier edit: the config's entries hold again
    else:
        EDITS_HELD[key] = Edit(server, route_name, address, op, uri, weight, str(message.get("fp", "")))
    if op == "add" and message.get("weight") is not None and held is not None:
        # a configured address removed, then added back with a weight: kept as an override
        o = OVERRIDES.get((server, address))
        _hold(
            Override(
                server, address, o.state if o else None, weight, fingerprint(routes[0].server_cfg, address)
            )
        )
    if op == "add":  # what is held for the address (a disable, say) applies to the new endpoint
        for r in routes:
            _apply_overrides(r)
    log.info(
        "upstream_admin",
        op=op,
        server=server,
        route=route_name,
        address=address,
        uri=uri,
        weight=weight if op == "add" else None,
        routes=len(routes),
    )
    return {"ok": True, "applied": len(routes)}


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
