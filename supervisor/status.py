"""The human form of ``monolaked status``: an aligned table."""

from __future__ import annotations

import time
from typing import Any

COLUMNS = [
    ("SLOT", "slot"),
    ("CPU", "cpu"),
    ("PID", "pid"),
    ("GEN", "generation"),
    ("STATE", "state"),
    ("UPTIME", "uptime"),
    ("RSS", "rss"),
    ("CPU%", "cpu_percent"),
    ("CONNS", "open_connections"),
    ("REQUESTS", "requests"),
    ("RPS", "rps"),
    ("RESTARTS", "restarts"),
    ("LAG", "lag"),
    ("BEAT", "heartbeat_age"),
    ("RUNTIME", "runtime"),
]


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "rss":
        return human_bytes(value)
    if key == "uptime":
        return human_duration(value)
    if key == "cpu_percent":
        return f"{value:.1f}"
    if key == "lag":
        return f"{value * 1000:.1f}ms"
    if key == "heartbeat_age":
        return f"{value:.1f}s"  # since the worker's last heartbeat
    if key == "runtime" and value in ("asyncio", "uvloop"):
        return f"epoll({value})"  # both fallbacks are epoll loops
    return str(value)


def render_status(status: dict[str, Any]) -> str:
    master = status["master"]
    lines = [
        f"master pid {master['pid']}  up {human_duration(master['uptime'])}  "
        f"generation {master['generation']}  workers {master['workers']}",
        f"config   {master['config']}",
        f"listen   {', '.join(master['listeners']) or '-'}",
    ]
    rows = [[_cell(key, w.get(key)) for _, key in COLUMNS] for w in status["workers"]]
    header = [title for title, _ in COLUMNS]
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    reloads = master.get("reloads") or []
    if reloads:
        lines.append("")
        lines.append("recent reloads:")
        for r in reloads[-5:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
            reason = r["reason"].splitlines()[0] if r["reason"] else ""
            if r["ok"]:
                outcome = "ok"
            elif r.get("state_migrated") is False:  # serving, but without the old state
                outcome = f"STATE NOT MIGRATED: {reason}"
            else:
                outcome = f"FAILED: {reason}"
            lines.append(f"  {when}  gen {r['generation']}  {r['mode']}  {r['duration']}s  {outcome}")
    lines.extend(render_health(status["workers"]))
    lines.extend(render_upstreams(status["workers"]))
    return "\n".join(lines)


def render_upstreams(workers: list[dict[str, Any]]) -> list[str]:
    """Every endpoint with its state (DNS-found addresses too), summed over the workers as
    ``monolaked upstreams`` does (supervisor/upstreams_api.py)."""
    from monolake.supervisor.upstreams_api import aggregate

    rows = aggregate(
        [{"slot": w.get("slot"), "pid": w.get("pid"), "upstreams": w.get("upstreams") or ()} for w in workers]
    )
    if not rows:
        return []
    lines = ["", "upstreams (the most severe state any worker reports):"]
    for r in rows:
        states = r["states"]
        split = (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + ")" if len(states) > 1 else ""
        )
        found = f"  found by DNS: {r['found_by']}" if r.get("found_by") else ""
        lines.append(
            f"  {r['server']} {r['route']} {r['address']}  {r['state']}{split}  weight {r['weight']}  "
            f"active {r['active']}  requests {r['requests']}{found}"
        )
    return lines


def upstream_health(workers: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Health is per worker (each checks for itself): per (server, route, upstream), in how
    many workers it is healthy, and the checks summed over them."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for w in workers:
        for row in w.get("health") or ():
            agg = out.setdefault(
                (row["server"], row["route"], row["upstream"]),
                {
                    "type": row.get("type", ""),
                    "healthy": 0,
                    "workers": 0,
                    "checks_ok": 0,
                    "checks_failed": 0,
                    "last_error": "",
                    "panic": False,
                },
            )
            agg["workers"] += 1
            agg["healthy"] += 1 if row["healthy"] else 0
            agg["checks_ok"] += row.get("checks_ok", 0)
            agg["checks_failed"] += row.get("checks_failed", 0)
            agg["last_error"] = row.get("last_error") or agg["last_error"]
            agg["panic"] = agg["panic"] or bool(row.get("panic"))
    return out


def render_health(workers: list[dict[str, Any]]) -> list[str]:
    health = upstream_health(workers)
    if not health:
        return []
    lines = ["", "upstream health (healthy in N of M workers):"]
    for (server, route, upstream), h in sorted(health.items()):
        state = "UP" if h["healthy"] == h["workers"] else ("DOWN" if not h["healthy"] else "PARTIAL")
        extra = "  ALL UNHEALTHY" if h["panic"] else ""
        error = f"  last error: {h['last_error']}" if h["last_error"] and state != "UP" else ""
        lines.append(
            f"  {server} {route} {upstream}  {h['type']}  {state} "
            f"{h['healthy']}/{h['workers']}  checks ok {h['checks_ok']} "
            f"failed {h['checks_failed']}{extra}{error}"
        )
    return lines
