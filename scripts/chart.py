#!/usr/bin/env python3
"""Benchmark charts: requests per second by response body size, one bar per server.

Like the charts in CloudWeGo Monolake's README: body sizes along the x axis, a group of bars
per size (monolake, nginx, the Python peer, ...), requests/s up the y axis.

Used by the benchmark scripts (``scripts/bench_proxy.py``, ``scripts/bench_loop.py``)::

    from chart import write_chart          # scripts/ is on sys.path when a script runs there
    write_chart(results, "docs/img/proxy.png", "HTTP proxy, 2 workers, wrk -c 64")

and from the command line, on results saved as JSON::

    python scripts/chart.py --from-json results.json -o chart.png --title "..."

Results shape (a list of rows, in any order; the JSON file holds the list itself or an object
``{"title": ..., "subtitle": ..., "results": [...]}``)::

    [{"server": "monolake", "body_size": 1024, "rps": 41234.5},
     {"server": "nginx",    "body_size": 1024, "rps": 52345.0},
     ...]

A row may also carry ``cpu_us_per_req`` (the server's CPU µs per request); when any row does,
the chart gets a second panel, CPU per request by body size, next to the requests/s one (lower
is better there). Either panel switches to a log scale when its values span more than 20×
(1 MiB next to 100 B), so every bar stays visible; each bar is labelled with its value.

``server`` names the series (bars keep the order in which servers first appear; monolake,
nginx and python get fixed colours), ``body_size`` is the response body in bytes, ``rps`` the
measured requests per second. A missing (server, size) pair leaves a gap; a duplicate is an
error, so two runs are never silently mixed.

matplotlib is an optional extra: ``pip install 'monolake[chart]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLOURS = {"monolake": "#1f6feb", "nginx": "#2da44e", "python": "#d29922"}
FALLBACK = ("#8250df", "#cf222e", "#57606a", "#bf8700", "#0a3069")


class ChartError(ValueError):
    """The results cannot be charted (bad shape or values)."""


@dataclass(frozen=True)
class Table:
    servers: list[str]
    sizes: list[int]
    rps: dict[tuple[str, int], float]
    cpu: dict[tuple[str, int], float] = field(default_factory=dict)


def tabulate(results: Iterable[Mapping[str, Any]]) -> Table:
    """Check the rows and index them by (server, body size)."""
    servers: list[str] = []
    sizes: set[int] = set()
    rps: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}
    for i, row in enumerate(results):
        try:
            server, size, value = str(row["server"]), row["body_size"], row["rps"]
        except (KeyError, TypeError):
            raise ChartError(f"row {i}: expected server, body_size and rps, found {row!r}") from None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ChartError(f"row {i}: body_size must be a byte count, found {size!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
            raise ChartError(f"row {i}: rps must be a non-negative number, found {value!r}")
        if "cpu_us_per_req" in row:
            us = row["cpu_us_per_req"]
            if isinstance(us, bool) or not isinstance(us, (int, float)) or us < 0 or us != us:
                raise ChartError(f"row {i}: cpu_us_per_req must be a non-negative number, found {us!r}")
            cpu[(server, size)] = float(us)
        if (server, size) in rps:
            raise ChartError(f"row {i}: a second result for {server} at {size} bytes")
        if server not in servers:
            servers.append(server)
        sizes.add(size)
        rps[(server, size)] = float(value)
    if not rps:
        raise ChartError("no results to chart")
    return Table(servers, sorted(sizes), rps, cpu)


def human_size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def human_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def human_us(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def colours(servers: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    spare = iter(FALLBACK * (len(servers) // len(FALLBACK) + 1))
    used: set[str] = set()
    for server in servers:
        known = next((c for key, c in COLOURS.items() if key in server.lower()), None)
        if known in used:
            known = None  # a second series of the same family (monolake/legacy) gets its own
        out[server] = known or next(spare)
        used.add(out[server])
    return out


def write_chart(
    results: Iterable[Mapping[str, Any]], path: str | Path, title: str, subtitle: str = ""
) -> Path:
    """Draw ``results`` (see the module docstring) as a grouped bar chart PNG at ``path``."""
    table = tabulate(results)
    try:
        import matplotlib
    except ImportError:
        raise ChartError("matplotlib is not installed: pip install 'monolake[chart]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels: list[tuple[dict[tuple[str, int], float], str, Callable[[float], str]]] = [
        (table.rps, "requests / s (higher is better)", human_rate)
    ]
    if table.cpu:
        panels.append((table.cpu, "proxy CPU µs / request (lower is better)", human_us))
    per_panel = max(6.0, 1.6 * len(table.sizes) + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(per_panel * len(panels), 4.5), dpi=120, squeeze=False)
    palette = colours(table.servers)
    for ax, (values, ylabel, fmt) in zip(axes[0], panels, strict=True):
        _panel(matplotlib, ax, table, values, palette, fmt)
        ax.set_ylabel(ylabel)
    axes[0][0].legend(frameon=False)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def _panel(
    matplotlib: Any,
    ax: Any,
    table: Table,
    values: dict[tuple[str, int], float],
    palette: dict[str, str],
    fmt: Callable[[float], str],
) -> None:
    """One grouped bar panel: a group per body size, a bar per server."""
    n = len(table.servers)
    width = 0.8 / n
    top = max(values.values()) or 1.0
    positive = [v for v in values.values() if v > 0]
    log = bool(positive) and top / min(positive) > 20
    for i, server in enumerate(table.servers):
        xs, heights = [], []
        for j, size in enumerate(table.sizes):
            if (server, size) in values:
                xs.append(j - 0.4 + width * (i + 0.5))
                heights.append(values[(server, size)])
        if not heights:
            continue
        bars = ax.bar(xs, heights, width * 0.92, label=server, color=palette[server])
        for bar, value in zip(bars, heights, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height() * 1.03 if log else bar.get_height() + top * 0.01,
                fmt(value),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(table.sizes)), [human_size(s) for s in table.sizes])
    ax.set_xlabel("response body size")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 2, top * 2)
    else:
        ax.set_ylim(0, top * 1.15)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v)))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def load_results(path: str | Path) -> tuple[list[Mapping[str, Any]], str, str]:
    """Rows, title and subtitle from a JSON file (a list, or an object with ``results``)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        return data, "", ""
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return data["results"], str(data.get("title", "")), str(data.get("subtitle", ""))
    raise ChartError(f"{path}: expected a list of results or an object with a results list")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-json", required=True, metavar="FILE", help="results as JSON")
    parser.add_argument("-o", "--output", default="chart.png", help="PNG to write")
    parser.add_argument("--title", help="chart title (default: the file's title)")
    parser.add_argument("--subtitle", help="second title line (machine, tool, settings)")
    args = parser.parse_args(argv)
    try:
        rows, title, subtitle = load_results(args.from_json)
        out = write_chart(
            rows,
            args.output,
            args.title or title or "requests/s by body size",
            args.subtitle if args.subtitle is not None else subtitle,
        )
    except (ChartError, OSError, json.JSONDecodeError) as exc:
        sys.stderr.write(f"chart: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
