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
    return "\n".join(lines)
