"""The master's half of the runtime upstream API (``monolaked upstreams``, issue 15 §3).

A control request is validated here, broadcast as ``upstreams`` to every ready worker of the
current generation, and answered with each worker's outcome, collected within a deadline (a
worker that does not answer is reported, never waited on). Applied overrides are kept here and
handed to every worker the master starts (``kept_for``, in ``hello``: respawns, new generations) while
their fingerprint matches the config the worker gets (supervisor/upstream_rules.py).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import structlog

from monolake.supervisor import messages
from monolake.supervisor.upstream_rules import (
    EDITS,
    MAX_WEIGHT,
    OPS,
    endpoint_address,
    find_route,
    fingerprint,
    fingerprint_of,
    matching,
    normalize_address,
    parse_target,
    route_fingerprint,
    routes_of,
)

if TYPE_CHECKING:
    from monolake.supervisor.master import Master
    from monolake.supervisor.workers import WorkerProc

log = structlog.get_logger()

ANSWER_DEADLINE = 5.0  # seconds a worker gets to answer; then it is reported as silent


def for_master(master: Master) -> UpstreamsApi:
    """The master's API object, made on first use."""
    api = master.runtime_upstreams
    if api is None:
        api = master.runtime_upstreams = UpstreamsApi(master)
    return api


class UpstreamsApi:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.overrides: dict[tuple[str, str], dict[str, Any]] = {}  # drain/disable/weight
        self.edits: dict[tuple[str, str, str], dict[str, Any]] = {}  # add/remove (server, route, address)
        self._ids = itertools.count(1)
        self._waiting: dict[tuple[int, int], asyncio.Future[dict[str, Any]]] = {}  # (id, worker pid)

    # ----- carried over to new workers ---------------------------------------------------

    def kept_for(self, config: Any) -> list[dict[str, Any]]:
        """The overrides that still hold under ``config``; pruned for good when ``config`` is
        the one the master serves now."""
        held: list[tuple[dict[Any, dict[str, Any]], Any, dict[str, Any]]] = [
            (self.edits, k, e) for k, e in self.edits.items()
        ] + [(self.overrides, k, o) for k, o in self.overrides.items()]
        kept, dropped = [], []
        for table, key, item in held:  # edits first: an override may name an added address
            if fingerprint_of(config.servers.get(item["server"]), item) == item["fp"]:
                kept.append(item)
            else:
                dropped.append((table, key, item))
        if config is self.master.config and dropped:
            log.info(
                "upstream overrides dropped: the config changed them",
                dropped=[" ".join(str(x) for x in key) for _, key, _ in dropped],
            )
            for table, key, _ in dropped:
                del table[key]
        return kept

    # ----- replies from workers ------------------------------------------------------------

    def on_result(self, worker: Any, message: dict[str, Any]) -> None:
        fut = self._waiting.pop((int(message.get("id") or 0), worker.pid), None)
        if fut is not None and not fut.done():
            fut.set_result(message)

    # ----- control requests ------------------------------------------------------------------

    def _targets(self) -> list[WorkerProc]:
        from monolake.supervisor.workers import READY

        gen = self.master.state.generation
        return [
            s.worker
            for s in self.master.slots
            if s.worker is not None and s.worker.state == READY and s.worker.generation == gen
        ]

    def validate(self, request: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The message for the workers, or None and why the request is refused."""
        op = request.get("op", "list")
        if op not in OPS:
            return None, f"unknown upstreams command {op!r} (one of {', '.join(OPS)})"
        if op == "list":
            return {"op": "list"}, ""
        server = str(request.get("server", ""))
        config = self.master.config
        server_cfg = config.servers.get(server)
        if server_cfg is None:
            return None, f"unknown server {server!r} (servers: {', '.join(sorted(config.servers))})"
        if op in EDITS:
            return self._validate_edit(op, server, server_cfg, request)
        try:
            address = normalize_address(str(request.get("address", "")))
        except ValueError as exc:
            return None, str(exc)
        discovered = any(
            u.endpoint.type == "srv" or (u.endpoint.type in ("uri", "socket") and not _is_ip(u.endpoint.host))
            for r in routes_of(server_cfg)
            for u in r.upstreams
        )
        added = any(e["edit"] == "add" for (s, _, a), e in self.edits.items() if (s, a) == (server, address))
        if not matching(server_cfg, address) and not discovered and not added:
            return None, f"server {server!r} has no upstream {address}"
        message = {"op": op, "server": server, "address": address, "fp": fingerprint(server_cfg, address)}
        if op == "weight":
            weight, why = _weight(request.get("weight"))
            if weight is None:
                return None, why
            message["weight"] = weight
        return message, ""

    def _validate_edit(
        self, op: str, server: str, server_cfg: Any, request: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str]:
        """``add`` / ``remove SERVER ROUTE URI``: checked against the config and what is held,
        so every worker gets the same, valid, edit."""
        route_cfg, why = find_route(server_cfg, str(request.get("route", "")))
        if route_cfg is None:
            return None, why
        route = route_cfg.pattern
        proxy = "http" if server_cfg.proxy_type == "http" else "thrift"
        try:
            uri, address = parse_target(proxy, str(request.get("uri", "")))
        except ValueError as exc:
            return None, str(exc)
        message: dict[str, Any] = {
            "op": op,
            "server": server,
            "route": route,
            "uri": uri,
            "address": address,
            "fp": route_fingerprint(server_cfg, route),
        }
        if request.get("weight") is not None:
            weight, why = _weight(request.get("weight"))
            if weight is None:
                return None, why
            message["weight"] = weight
        held = self.edits.get((server, route, address))
        configured = [u for u in route_cfg.upstreams if endpoint_address(u.endpoint) == address]
        present = (bool(configured) and not (held and held["edit"] == "remove")) or bool(
            held and held["edit"] == "add"
        )
        if op == "add":
            if present:
                return None, f"{address} is already an endpoint of route {route!r} of server {server!r}"
            return message, ""
        if present:
            left = len(route_cfg.upstreams) - len(configured)
            left -= sum(
                1
                for (s, r, _), e in self.edits.items()
                if (s, r) == (server, route) and e["edit"] == "remove"
            )
            left += sum(
                1 for (s, r, _), e in self.edits.items() if (s, r) == (server, route) and e["edit"] == "add"
            )
            left -= 1 if held and held["edit"] == "add" else 0
            if left <= 0:
                return None, f"{address} is the last endpoint of route {route!r}: add another one first"
        return message, ""  # not present: the workers say why (found by DNS, or no such endpoint)

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.kept_for(self.master.config)
        message, error = self.validate(request)
        if message is None:
            return {"type": "error", "error": error}
        outcome = await self.broadcast(message)
        applied = [w for w in outcome["workers"] if w["ok"]]
        if message["op"] == "list":
            outcome["upstreams"] = aggregate(outcome["workers"])
        elif applied:
            self._remember(message)
        errors = sorted({w["error"] for w in outcome["workers"] if w.get("error")})
        ok = bool(outcome["workers"]) and len(applied) == len(outcome["workers"])
        return {
            "type": "upstreams",
            "op": message["op"],
            "ok": ok,
            "errors": errors,
            "overrides": list(self.overrides.values()),
            "edits": list(self.edits.values()),
            **outcome,
        }

    def _remember(self, message: dict[str, Any]) -> None:
        if message["op"] in EDITS:
            self._remember_edit(message)
            return
        key = (message["server"], message["address"])
        held = dict(
            self.overrides.get(key) or {"server": key[0], "address": key[1], "state": None, "weight": None}
        )
        op = message["op"]
        if op in ("drain", "disable"):
            held["state"] = "draining" if op == "drain" else "disabled"
        elif op == "enable":
            held["state"] = None
        elif op == "weight":
            held["weight"] = message["weight"]
        held["fp"] = message["fp"]
        if held["state"] is None and held["weight"] is None:
            self.overrides.pop(key, None)
        else:
            self.overrides[key] = held

    def _remember_edit(self, message: dict[str, Any]) -> None:
        """An add after a remove of the same address (or the other way round) undoes it."""
        server, route, address, op = message["server"], message["route"], message["address"], message["op"]
        key = (server, route, address)
        held = self.edits.get(key)
        if held is not None and held["edit"] != op:
            del self.edits[key]
            if op == "add" and "weight" in message:  # a configured address back, with a weight
                self._remember(
                    {
                        "op": "weight",
                        "server": server,
                        "address": address,
                        "weight": message["weight"],
                        "fp": fingerprint(self.master.config.servers.get(server), address),
                    }
                )
            return
        self.edits[key] = {
            "server": server,
            "route": route,
            "address": address,
            "edit": op,
            "uri": message["uri"],
            "weight": message.get("weight", 1),
            "fp": message["fp"],
        }

    async def broadcast(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send to every current worker; each one's answer, or ``silent`` past the deadline."""
        ident = next(self._ids)
        loop = asyncio.get_running_loop()
        pending: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        rows: list[dict[str, Any]] = []
        for worker in self._targets():
            fut = loop.create_future()
            self._waiting[(ident, worker.pid)] = fut
            if worker.send(messages.Upstreams(id=ident, **message)):
                pending.append((worker, fut))
            else:
                self._waiting.pop((ident, worker.pid), None)
                rows.append(_row(worker, {"ok": False, "error": "cannot reach the worker"}))
        if pending:
            await asyncio.wait([f for _, f in pending], timeout=ANSWER_DEADLINE)
        silent = []
        for worker, fut in pending:
            self._waiting.pop((ident, worker.pid), None)
            if fut.done():
                rows.append(_row(worker, fut.result()))
            else:
                fut.cancel()
                silent.append(worker.slot)
                rows.append(_row(worker, {"ok": False, "error": f"no answer within {ANSWER_DEADLINE:g}s"}))
        rows.sort(key=lambda r: r["slot"])
        return {"workers": rows, "silent": sorted(silent), "generation": self.master.state.generation}


def _row(worker: Any, reply: dict[str, Any]) -> dict[str, Any]:
    row = {
        "slot": worker.slot,
        "pid": worker.pid,
        "ok": bool(reply.get("ok")),
        "error": str(reply.get("error", "")),
    }
    if "applied" in reply:
        row["applied"] = int(reply["applied"])
    if "rows" in reply:
        row["upstreams"] = list(reply["rows"])
    return row


STATE_ORDER = ("disabled", "draining", "down", "unhealthy", "ejected", "up")  # most severe first


def aggregate(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per server/route/address summed over workers; ``state`` is the most severe one
    any worker reports, ``states`` counts them, ``per_worker`` has each worker's row."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for w in workers:
        for r in w.get("upstreams", ()):
            key = (r["server"], r["route"], r["address"])
            agg = out.setdefault(
                key,
                {
                    "server": r["server"],
                    "route": r["route"],
                    "address": r["address"],
                    "upstream": r["upstream"],
                    "balancer": r.get("balancer", ""),
                    "proxy": r.get("proxy", ""),
                    "found_by": r.get("found_by", ""),
                    "weight": r["weight"],
                    "state": "up",
                    "states": {},
                    "active": 0,
                    "idle": 0,
                    "requests": 0,
                    "per_worker": [],
                },
            )
            for k in ("active", "idle", "requests"):
                agg[k] += int(r.get(k, 0))
            agg["states"][r["state"]] = agg["states"].get(r["state"], 0) + 1
            if _severity(r["state"]) < _severity(agg["state"]):
                agg["state"] = r["state"]
            agg["per_worker"].append(
                {
                    "slot": w["slot"],
                    "pid": w["pid"],
                    **{k: r[k] for k in ("weight", "state", "active", "idle", "requests")},
                }
            )
    return [out[k] for k in sorted(out)]


def _weight(value: Any) -> tuple[int | None, str]:
    """A weight as the config takes it (1 to 65535), or None and why not."""
    try:
        weight = int(str(value))
    except (TypeError, ValueError):
        return None, "weight: expected an integer"
    if not 1 <= weight <= MAX_WEIGHT:
        return None, f"weight: expected 1 to {MAX_WEIGHT}, got {weight}"
    return weight, ""


def _severity(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
