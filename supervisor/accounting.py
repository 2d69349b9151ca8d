"""Per-slot counter totals that outlive worker processes.

A worker's counters live in its process and die with it. The master keeps, per slot and
server, the totals of the workers that already exited, so a respawned worker's figures add to
its slot's past instead of starting over, and a Prometheus counter never goes backwards.

Reloads are subtler: a new generation *imports* its predecessor's counters through
``export_state`` (the HTTP server's ``Stats.absorb``). The old worker's figures at export time
are then counted by the successor, so only what the old worker adds while it drains (its
*post-export delta*) is its own. The master learns the old worker's figures at export (the
``state`` reply carries them) and the new worker's right after import (the ``committed``
reply), and decides per counter whether the successor really imported it: a successor that
started fresh for some counter leaves the old worker's whole value to the old worker.

Gauges (open connections, in-flight requests) describe live processes and are never carried.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GAUGES = frozenset({"open_connections", "active_requests"})

ServerStats = dict[str, dict[str, int]]  # server name -> counter -> value


def counters_only(stats: Mapping[str, Any]) -> dict[str, int]:
    """The monotonic counters of one server's stats (gauges and non-integers dropped)."""
    return {
        k: int(v)
        for k, v in stats.items()
        if k not in GAUGES and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def add_into(target: ServerStats, servers: Mapping[str, Mapping[str, int]], sign: int = 1) -> None:
    for name, stats in servers.items():
        row = target.setdefault(name, {})
        for key, value in stats.items():
            row[key] = row.get(key, 0) + sign * int(value)


@dataclass
class _Baseline:
    """What a worker had counted when it exported its state to its successor."""

    exported: ServerStats
    settled: ServerStats | None = None  # per counter: the part the successor took over


@dataclass
class Totals:
    """Carried totals per slot, and the export baselines of reloaded workers (by pid)."""

    carried: dict[int, ServerStats] = field(default_factory=dict)
    baselines: dict[int, _Baseline] = field(default_factory=dict)

    # ----- events from the control channels ----------------------------------------------

    def exported(self, pid: int, servers: Mapping[str, Mapping[str, Any]]) -> None:
        """The worker ``pid`` exported its state; ``servers`` are its stats at that moment."""
        self.baselines[pid] = _Baseline({n: counters_only(s) for n, s in servers.items()})

    def committed(self, old_pid: int, new_servers: Mapping[str, Mapping[str, Any]] | None) -> None:
        """The successor of ``old_pid`` imported the state; ``new_servers`` are its stats now.

        A counter the successor holds at least the exported value of was imported (counters
        only grow); one it holds less of started from zero, so the old worker keeps it all.
        ``None`` (a worker that does not report its stats at commit): assume all imported.
        """
        baseline = self.baselines.get(old_pid)
        if baseline is None:
            return
        if new_servers is None:
            baseline.settled = {n: dict(s) for n, s in baseline.exported.items()}
            return
        settled: ServerStats = {}
        for name, exported in baseline.exported.items():
            now = new_servers.get(name) or {}
            settled[name] = {
                k: v for k, v in exported.items() if isinstance(now.get(k), (int, float)) and now[k] >= v
            }
        baseline.settled = settled

    def worker_exited(self, slot: int, pid: int, servers: Mapping[str, Mapping[str, Any]]) -> None:
        """Add what an exited worker counted (minus what its successor took over) to its slot."""
        add_into(self.carried.setdefault(slot, {}), self.own_counters(pid, servers, retired=True))
        self.baselines.pop(pid, None)

    # ----- views -------------------------------------------------------------------------

    def own_counters(self, pid: int, servers: Mapping[str, Mapping[str, Any]], retired: bool) -> ServerStats:
        """The counters that are this worker's own: a retired worker whose successor imported
        its counters owns only what it added after the export."""
        own = {name: counters_only(stats) for name, stats in servers.items()}
        baseline = self.baselines.get(pid)
        if retired and baseline is not None and baseline.settled is not None:
            add_into(own, baseline.settled, sign=-1)
            for row in own.values():
                for key, value in row.items():
                    row[key] = max(0, value)
        return own

    def slot_view(
        self, slot: int, workers: Iterable[tuple[int, Mapping[str, Mapping[str, Any]], bool]]
    ) -> ServerStats:
        """Totals of one slot: carried + every live worker's own counters + live gauges.

        ``workers`` are ``(pid, server_stats, retired)`` of the slot's live processes: its
        current worker (``retired=False``) and any old generation still draining.
        """
        view: ServerStats = {name: dict(row) for name, row in self.carried.get(slot, {}).items()}
        for pid, servers, retired in workers:
            add_into(view, self.own_counters(pid, servers, retired))
            for name, stats in servers.items():
                row = view.setdefault(name, {})
                for gauge in GAUGES:
                    if isinstance(stats.get(gauge), (int, float)):
                        row[gauge] = row.get(gauge, 0) + int(stats[gauge])
        return view
