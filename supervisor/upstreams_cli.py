"""``monolaked upstreams [--json]`` and its verbs (drain, enable, disable, weight, add, remove):
the CLI of the runtime upstream API (supervisor/upstreams_api.py). Exit codes: 0 every worker
applied it, 1 refused or failed in some worker, 2 no master."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

VERBS = ("drain", "enable", "disable", "weight", "add", "remove")
USAGE = {
    "drain": ("SERVER ADDRESS:PORT", ("server", "address")),
    "enable": ("SERVER ADDRESS:PORT", ("server", "address")),
    "disable": ("SERVER ADDRESS:PORT", ("server", "address")),
    "weight": ("SERVER ADDRESS:PORT N", ("server", "address", "weight")),
    "add": ("SERVER ROUTE URI [--weight N]", ("server", "route", "uri")),
    "remove": ("SERVER ROUTE URI", ("server", "route", "uri")),
}


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "upstreams",
        help="list upstreams; drain, disable, enable, reweight, add or remove one at runtime "
        "(docs/operations.md)",
        description="verbs: " + "; ".join(f"{v} {u}" for v, (u, _) in USAGE.items()),
    )
    common(p)
    p.add_argument("--json", action="store_true", help="JSON with per-worker detail")
    p.add_argument("--weight", type=int, default=None, help="add: the new endpoint's weight (default 1)")
    p.add_argument("verb", nargs="?", choices=VERBS, help="omit to list")
    p.add_argument("args", nargs="*", help="SERVER ADDRESS:PORT [N], or SERVER ROUTE URI for add/remove")
    p.set_defaults(func=cmd_upstreams)


def cmd_upstreams(args: argparse.Namespace) -> int:
    from monolake.supervisor.cli import _answer

    if args.verb is None:
        if args.args:
            sys.stderr.write(
                f"monolaked: upstreams: unknown verb {args.args[0]!r} (one of {', '.join(VERBS)})\n"
            )
            return 1
        request: dict[str, Any] = {"type": "upstreams", "op": "list"}
    else:
        usage, names = USAGE[args.verb]
        if len(args.args) != len(names) or (args.weight is not None and args.verb != "add"):
            sys.stderr.write(f"monolaked: usage: monolaked upstreams {args.verb} {usage}\n")
            return 1
        request = {"type": "upstreams", "op": args.verb, **dict(zip(names, args.args, strict=True))}
        if args.weight is not None:
            request["weight"] = args.weight
    reply = _answer(args, request, "upstreams", what="upstreams: ")
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif reply["op"] == "list":
        print(render_list(reply))
    else:
        print(render_outcome(reply))
    if not reply.get("ok"):
        for error in reply.get("errors") or ["no worker applied it"]:
            sys.stderr.write(f"monolaked: upstreams {reply['op']}: {error}\n")
        return 1
    return 0


def render_list(reply: dict[str, Any]) -> str:
    rows = reply.get("upstreams") or []
    head = ("SERVER", "ROUTE", "ADDRESS", "WEIGHT", "STATE", "ACTIVE", "IDLE", "REQUESTS", "FOUND BY")
    table = [head] + [
        (
            r["server"],
            r["route"],
            r["address"],
            str(r["weight"]),
            r["state"] + _partial(r),
            str(r["active"]),
            str(r["idle"]),
            str(r["requests"]),
            r.get("found_by") or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    answered = sum(1 for w in reply.get("workers", ()) if w["ok"])
    lines.append(
        f"({answered} of {len(reply.get('workers', ()))} workers answered"
        + (f"; silent: slots {reply['silent']}" if reply.get("silent") else "")
        + ")"
    )
    return "\n".join(lines)


def _partial(row: dict[str, Any]) -> str:
    states = row.get("states") or {}
    if len(states) <= 1:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + ")"


def render_outcome(reply: dict[str, Any]) -> str:
    workers = reply.get("workers", ())
    applied = [w["slot"] for w in workers if w["ok"]]
    lines = [
        f"{reply['op']}: applied by {len(applied)} of {len(workers)} workers "
        f"(generation {reply.get('generation')})"
    ]
    for w in workers:
        if not w["ok"]:
            lines.append(f"  slot {w['slot']} (pid {w['pid']}): {w['error']}")
    return "\n".join(lines)
