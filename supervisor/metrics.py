"""The master's state in the Prometheus text exposition format (version 0.0.4).

Rendered on demand for ``GET /metrics`` of the admin listener, from what the master already
holds: the workers' last heartbeats (per-server stats), the carried totals of exited workers
(``accounting.Totals``), slot restarts, and reload records. Nothing here talks to a worker, so a
scrape costs the master a few microseconds per series and never waits on a busy worker.

Series are labelled ``worker`` (the slot index: stable across restarts and reloads, unlike a
pid) and ``server`` (the config's server name). Sum over ``worker`` for per-server totals.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

from monolake.supervisor.accounting import GAUGES, ServerStats

if TYPE_CHECKING:
    from monolake.supervisor.master import Master

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# stats key -> (metric name, help)
SERVER_COUNTERS: dict[str, tuple[str, str]] = {
    "connections_total": ("monolake_connections_total", "Client connections accepted."),
    "requests": ("monolake_requests_total", "Requests received (started)."),
    "errors": ("monolake_errors_total", "Requests or connections that ended in an error."),
    "bytes_in": ("monolake_received_bytes_total", "Bytes received from clients."),
    "bytes_out": ("monolake_sent_bytes_total", "Bytes sent to clients."),
    "upstream_connect_failures": (
        "monolake_upstream_connect_failures_total",
        "Failed connection attempts to upstreams.",
    ),
    "upstream_ejections": (
        "monolake_upstream_ejections_total",
        "Upstreams ejected after consecutive connect failures.",
    ),
    "upstream_unsolicited": (
        "monolake_upstream_unsolicited_total",
        "Upstream connections closed, not pooled, because bytes followed a complete response.",
    ),
}
# HTTP/2, reported by the HTTP engine only (worker/http/stats.py): a server without them (thrift)
# gets no series rather than zeros that would read as "no HTTP/2 traffic"
H2_COUNTERS: dict[str, tuple[str, str]] = {
    "h2_connections_total": (
        "monolake_h2_connections_total",
        "Client connections that spoke HTTP/2 (also counted in monolake_connections_total).",
    ),
    "h2_requests": (
        "monolake_h2_requests_total",
        "HTTP/2 client streams (requests; also counted in monolake_requests_total).",
    ),
    "h2_upstream_requests": (
        "monolake_h2_upstream_requests_total",
        "Requests sent to HTTP/2 upstreams as streams, retries included.",
    ),
    "h2_upstream_retries": (
        "monolake_h2_upstream_retries_total",
        "Requests sent again on a new connection after an upstream GOAWAY or REFUSED_STREAM.",
    ),
    "h2_upstream_retry_failures": (
        "monolake_h2_upstream_retry_failures_total",
        "Refused requests answered 502 because their body had outgrown the replay buffer.",
    ),
    "h2_upstream_cap_waits": (
        "monolake_h2_upstream_cap_waits_total",
        "Requests that waited for a stream slot at max_h2_connections_per_upstream.",
    ),
    "h2_upstream_cap_timeouts": (
        "monolake_h2_upstream_cap_timeouts_total",
        "Requests answered 503: no stream slot at the connection cap within the connect timeout.",
    ),
}
SERVER_GAUGES: dict[str, tuple[str, str]] = {
    "open_connections": ("monolake_open_connections", "Client connections open now."),
    "active_requests": ("monolake_active_requests", "Requests in flight now."),
}
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
RESPONSES = ("monolake_responses_total", "Responses sent, by status class.")
DURATION = ("monolake_request_duration_seconds", "Time from a request's head to the end of its response.")
BUCKET_KEY = re.compile(r"^duration_le_(\d+)$")  # cumulative count of requests <= N ms
HISTOGRAM_KEYS = ("duration_sum_us", "duration_count")
KNOWN_KEYS = frozenset(
    [
        *SERVER_COUNTERS,
        *H2_COUNTERS,
        *SERVER_GAUGES,
        *HISTOGRAM_KEYS,
        *(f"responses_{c}" for c in STATUS_CLASSES),
    ]
)


# ----- the exposition format ---------------------------------------------------------------


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass
class Family:
    """One metric family: its HELP and TYPE lines, then every sample, contiguous."""

    name: str
    kind: str  # counter | gauge | histogram | untyped
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        self.samples.append((self.name + suffix, labels, value))

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for name, labels, value in self.samples:
            if labels:
                text = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
                out.append(f"{name}{{{text}}} {format_value(value)}")
            else:
                out.append(f"{name} {format_value(value)}")


class Registry:
    """Families in first-use order."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def family(self, name: str, kind: str, help: str) -> Family:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name, kind, help)
        return fam

    def render(self) -> str:
        out: list[str] = []
        for fam in self.families.values():
            if fam.samples or fam.kind != "untyped":
                fam.render(out)
        return "\n".join(out) + "\n"


# ----- per-server series -------------------------------------------------------------------


def seconds_label(ms: int) -> str:
    return format_value(ms / 1000.0)


def add_server_series(reg: Registry, labels: dict[str, str], stats: dict[str, int]) -> None:
    """Every series of one server on one worker slot."""
    for key, (name, text) in SERVER_COUNTERS.items():
        reg.family(name, "counter", text).add(labels, int(stats.get(key, 0)))
    responses = reg.family(RESPONSES[0], "counter", RESPONSES[1])
    for code in STATUS_CLASSES:
        responses.add({**labels, "code": code}, int(stats.get(f"responses_{code}", 0)))
    for key, (name, text) in SERVER_GAUGES.items():
        reg.family(name, "gauge", text).add(labels, int(stats.get(key, 0)))
    add_histogram(reg, labels, stats)
    if "h2_requests" in stats:
        for key, (name, text) in H2_COUNTERS.items():
            reg.family(name, "counter", text).add(labels, int(stats.get(key, 0)))
    for key in sorted(stats):
        if key in KNOWN_KEYS or BUCKET_KEY.match(key):
            continue
        name = "monolake_server_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        kind = "gauge" if key in GAUGES else "untyped"
        reg.family(name, kind, f"Server stat {key!r} (as reported by the server).").add(
            labels, int(stats[key])
        )


def add_histogram(reg: Registry, labels: dict[str, str], stats: dict[str, int]) -> None:
    """The request duration histogram, from cumulative ``duration_le_<ms>`` counters.

    Servers that do not measure durations report no ``duration_count``; they get no series
    rather than a histogram of zeros that would read as "no requests".
    """
    if "duration_count" not in stats:
        return
    fam = reg.family(DURATION[0], "histogram", DURATION[1])
    buckets = sorted((int(m.group(1)), int(v)) for k, v in stats.items() if (m := BUCKET_KEY.match(k)))
    count = int(stats.get("duration_count", 0))
    for ms, value in buckets:
        fam.add({**labels, "le": seconds_label(ms)}, min(value, count), "_bucket")
    fam.add({**labels, "le": "+Inf"}, count, "_bucket")
    fam.add(labels, int(stats.get("duration_sum_us", 0)) / 1e6, "_sum")
    fam.add(labels, count, "_count")


# ----- collection from the master ----------------------------------------------------------


def slot_workers(master: Master, index: int) -> list[tuple[int, ServerStats, bool]]:
    """``(pid, server_stats, retired)`` of every live process serving slot ``index``."""
    from monolake.supervisor.workers import EXITED

    out: list[tuple[int, ServerStats, bool]] = []
    if index < len(master.slots):
        worker = master.slots[index].worker
        if worker is not None and worker.state != EXITED:
            out.append((worker.pid, worker.server_stats, False))
    for worker in master.retired:
        if worker.slot == index and worker.state != EXITED:
            out.append((worker.pid, worker.server_stats, True))
    return out


def server_totals(master: Master) -> dict[int, ServerStats]:
    """Per slot index: per server totals (carried + live), for the slots worth showing."""
    indexes = set(range(len(master.slots)))
    indexes.update(w.slot for w in master.retired)
    return {i: master.totals.slot_view(i, slot_workers(master, i)) for i in sorted(indexes)}


def _rss_and_cpu(pid: int) -> tuple[int, float] | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return proc.memory_info().rss, times.user + times.system
    except (psutil.Error, OSError):
        return None


def add_worker_series(reg: Registry, master: Master) -> None:
    from monolake.supervisor.workers import EXITED, READY

    restarts = reg.family(
        "monolake_worker_restarts_total", "counter", "Times a slot's worker died and was respawned."
    )
    up = reg.family("monolake_worker_up", "gauge", "1 if the slot's worker is ready and serving.")
    lag = reg.family(
        "monolake_event_loop_lag_seconds",
        "gauge",
        "How late the worker's last heartbeat timer fired (event-loop lag), or, "
        "while a heartbeat is overdue, how overdue it is.",
    )
    gen = reg.family("monolake_worker_generation", "gauge", "Generation of the slot's worker.")
    flapping = reg.family(
        "monolake_worker_flapping",
        "gauge",
        "1 if the slot crashed flapping_threshold times within flapping_window.",
    )
    rss = reg.family("monolake_worker_resident_memory_bytes", "gauge", "Worker resident memory.")
    cpu = reg.family(
        "monolake_worker_cpu_seconds_total",
        "counter",
        "CPU time of the slot's current worker process (restarts at respawn).",
    )
    info = reg.family("monolake_worker_info", "gauge", "The slot's current worker: pid, CPU, event loop.")
    now = time.monotonic()
    beat = master.config.supervisor.heartbeat_interval
    for slot in master.slots:
        labels = {"worker": str(slot.index)}
        worker = slot.worker
        alive = worker is not None and worker.state != EXITED
        restarts.add(labels, slot.restarts)
        ready = worker is not None and alive and worker.state == READY
        up.add(labels, 1 if ready and worker is not None and not worker.unresponsive(now, beat) else 0)
        flapping.add(labels, 1 if slot.flapping else 0)
        if worker is None or not alive:
            continue
        lag.add(labels, worker.current_lag(now, beat))
        gen.add(labels, worker.generation)
        info.add(
            {
                **labels,
                "pid": str(worker.pid),
                "cpu": "" if slot.cpu is None else str(slot.cpu),
                "runtime": worker.runtime,
            },
            1,
        )
        usage = _rss_and_cpu(worker.pid)
        if usage is not None:
            rss.add(labels, usage[0])
            cpu.add(labels, round(usage[1], 3))
    states = reg.family("monolake_workers", "gauge", "Worker processes by state.")
    counts: dict[str, int] = {}
    for worker in master.live_workers():
        counts[worker.state] = counts.get(worker.state, 0) + 1
    for state in ("starting", "prepared", "ready", "draining", "stopping"):
        states.add({"state": state}, counts.get(state, 0))


def add_master_series(reg: Registry, master: Master) -> None:
    state = master.state
    reg.family("monolake_info", "gauge", "monolake version.").add({"version": _version()}, 1)
    reg.family("monolake_master_start_time_seconds", "gauge", "When the master started (unix time).").add(
        {}, float(state.started)
    )
    reg.family(
        "monolake_generation", "gauge", "Current generation (1 at start, +1 per successful reload)."
    ).add({}, state.generation)
    reg.family("monolake_worker_slots", "gauge", "Configured worker slots.").add({}, len(master.slots))
    reloads = reg.family("monolake_reloads_total", "counter", "Reloads, by outcome.")
    reloads.add({"result": "ok"}, int(getattr(state, "reloads_ok", 0)))
    reloads.add({"result": "failed"}, int(getattr(state, "reloads_failed", 0)))
    busy = bool(master.reloader is not None and master.reloader.busy)
    reg.family("monolake_reloading", "gauge", "1 while a reload runs.").add({}, 1 if busy else 0)
    if state.reloads:
        last = state.reloads[-1]
        reg.family("monolake_last_reload_success", "gauge", "1 if the last reload succeeded.").add(
            {}, 1 if last.ok else 0
        )
        reg.family(
            "monolake_last_reload_timestamp_seconds", "gauge", "When the last reload started (unix time)."
        ).add({}, float(last.started))
        reg.family("monolake_last_reload_duration_seconds", "gauge", "How long the last reload took.").add(
            {}, float(last.duration)
        )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("monolake")
    except Exception:
        return "unknown"


def collect(master: Master) -> Registry:
    reg = Registry()
    add_master_series(reg, master)
    add_worker_series(reg, master)
    configured = list(master.config.servers)
    for index, servers in server_totals(master).items():
        names = configured + sorted(n for n in servers if n not in configured and _has_live(master, index, n))
        for name in names:
            add_server_series(reg, {"server": name, "worker": str(index)}, servers.get(name, {}))
    add_health_series(reg, master)
    add_upstream_series(reg, master)
    return reg


def add_upstream_series(reg: Registry, master: Master) -> None:
    """Every endpoint's state, per worker (DNS-found addresses too; worker/upstream_routes.py)."""
    from monolake.supervisor.workers import EXITED

    state = reg.family(
        "monolake_upstream_state",
        "gauge",
        "1 for the endpoint's state in this worker (up, ejected, unhealthy, down, draining, disabled).",
    )
    active = reg.family("monolake_upstream_active", "gauge", "Requests in flight to the endpoint.")
    requests = reg.family("monolake_upstream_requests_total", "counter", "Requests sent to the endpoint.")
    for slot in master.slots:
        worker = slot.worker
        if worker is None or worker.state == EXITED:
            continue
        seen: set[tuple[str, str, str]] = set()
        for row in getattr(worker, "upstreams", ()):
            key = (row["server"], row["route"], row["address"])
            if key in seen:  # one series per address, also when a route names it twice
                continue
            seen.add(key)
            labels = {"server": key[0], "route": key[1], "address": key[2], "worker": str(slot.index)}
            state.add({**labels, "state": row["state"]}, 1)
            active.add(labels, row.get("active", 0))
            requests.add(labels, row.get("requests", 0))


def add_health_series(reg: Registry, master: Master) -> None:
    """Active health checks, per worker (each checks for itself; worker/health)."""
    from monolake.supervisor.workers import EXITED

    healthy = reg.family(
        "monolake_upstream_healthy",
        "gauge",
        "1 while the upstream passes this worker's active health checks.",
    )
    checks = reg.family(
        "monolake_upstream_health_checks_total",
        "counter",
        "Active health checks of the upstream by this worker, by result.",
    )
    for slot in master.slots:
        worker = slot.worker
        if worker is None or worker.state == EXITED:
            continue
        for row in getattr(worker, "health", ()):
            labels = {
                "server": row["server"],
                "route": row["route"],
                "upstream": row["upstream"],
                "worker": str(slot.index),
            }
            healthy.add(labels, 1 if row["healthy"] else 0)
            checks.add({**labels, "result": "ok"}, row.get("checks_ok", 0))
            checks.add({**labels, "result": "failed"}, row.get("checks_failed", 0))


def _has_live(master: Master, index: int, server: str) -> bool:
    """A server removed by a reload is still shown while an old worker serves it."""
    return any(server in stats for _, stats, _ in slot_workers(master, index))


def render(master: Master) -> str:
    return collect(master).render()
