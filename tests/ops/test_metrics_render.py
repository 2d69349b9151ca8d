"""The Prometheus page rendered from a master's state, read back with prometheus_client."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from monolake.conf import parse_config
from monolake.supervisor import metrics
from monolake.supervisor.master import Master, ReloadRecord
from monolake.supervisor.workers import DRAINING, READY, Slot
from tests.config_text import http_server

CONFIG = http_server("web") + http_server("api", "127.0.0.1:18081")


@dataclass
class FakeWorker:
    """What metrics.py reads of a WorkerProc."""

    slot: int
    pid: int
    state: str = READY
    generation: int = 1
    runtime: str = "asyncio"
    lag: float = 0.002
    server_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    silent: bool = False  # no heartbeat for a while (see WorkerProc.unresponsive)

    def current_lag(self, now: float, interval: float) -> float:
        return self.lag + (5.0 if self.silent else 0.0)

    def unresponsive(self, now: float, interval: float) -> bool:
        return self.silent


def web_stats(requests: int, **more: int) -> dict[str, int]:
    base = {
        "connections_total": requests,
        "requests": requests,
        "responses_2xx": requests - 1,
        "responses_5xx": 1,
        "bytes_in": 100 * requests,
        "bytes_out": 200 * requests,
        "open_connections": 2,
        "active_requests": 1,
        "errors": 1,
        "upstream_connect_failures": 3,
        "upstream_ejections": 1,
        "duration_le_1": 1,
        "duration_le_5": requests - 2,
        "duration_le_100": requests,
        "duration_sum_us": 4000 * requests,
        "duration_count": requests,
    }
    base.update(more)
    return base


def make_master() -> Master:
    master = Master(parse_config(CONFIG, source="test.toml"), None)
    master.slots = [Slot(index=0, cpu=0, restarts=2), Slot(index=1, cpu=1)]
    # FakeWorker stands in for WorkerProc with the fields the renderer reads (hence the ignores)
    master.slots[0].worker = FakeWorker(0, os.getpid(), server_stats={"web": web_stats(10)})  # type: ignore[assignment]
    master.slots[1].worker = FakeWorker(
        1,
        999999999,
        generation=2,  # type: ignore[assignment]
        server_stats={"web": web_stats(5), "api": {"requests": 4}},
    )
    master.state.generation = 2
    master.state.reloads.append(ReloadRecord(time.time(), 0.5, True, "", 2, "generation"))
    master.state.reloads_ok = 1
    master.state.reloads_failed = 3
    return master


def parse(text: str) -> dict[str, Any]:
    """name -> list of (sample name, labels, value); fails on any format error."""
    families = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in families, f"family {fam.name} split in two"
        families[fam.name] = fam
    return families


def sample(families: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    found = [
        s.value
        for s in families[family].samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family, name, labels, found)
    return found[0]


def test_every_required_family_parses_with_the_right_type():
    fams = parse(metrics.render(make_master()))
    expected = {
        "monolake_requests": "counter",
        "monolake_responses": "counter",
        "monolake_active_requests": "gauge",
        "monolake_open_connections": "gauge",
        "monolake_received_bytes": "counter",
        "monolake_sent_bytes": "counter",
        "monolake_request_duration_seconds": "histogram",
        "monolake_upstream_connect_failures": "counter",
        "monolake_upstream_ejections": "counter",
        "monolake_reloads": "counter",
        "monolake_generation": "gauge",
        "monolake_worker_restarts": "counter",
        "monolake_event_loop_lag_seconds": "gauge",
        "monolake_connections": "counter",
        "monolake_errors": "counter",
    }
    for name, kind in expected.items():
        assert fams[name].type == kind, name


def test_values_per_worker_and_server():
    fams = parse(metrics.render(make_master()))
    assert sample(fams, "monolake_requests", server="web", worker="0") == 10
    assert sample(fams, "monolake_requests", server="web", worker="1") == 5
    assert sample(fams, "monolake_requests", server="api", worker="1") == 4
    assert sample(fams, "monolake_requests", server="api", worker="0") == 0  # series from the start
    assert sample(fams, "monolake_responses", server="web", worker="0", code="2xx") == 9
    assert sample(fams, "monolake_responses", server="web", worker="0", code="5xx") == 1
    assert sample(fams, "monolake_active_requests", server="web", worker="1") == 1
    assert sample(fams, "monolake_sent_bytes", server="web", worker="0") == 2000
    assert sample(fams, "monolake_reloads", result="ok") == 1
    assert sample(fams, "monolake_reloads", result="failed") == 3
    assert sample(fams, "monolake_generation") == 2
    assert sample(fams, "monolake_worker_restarts", worker="0") == 2
    assert sample(fams, "monolake_event_loop_lag_seconds", worker="1") == 0.002
    assert sample(fams, "monolake_worker_up", worker="0") == 1
    assert sample(fams, "monolake_last_reload_success") == 1
    # a live process has memory; a pid that does not exist has no series, and no error
    assert sample(fams, "monolake_worker_resident_memory_bytes", worker="0") > 1_000_000
    assert not [s for s in fams["monolake_worker_resident_memory_bytes"].samples if s.labels["worker"] == "1"]


def test_histogram_is_cumulative_in_seconds():
    fams = parse(metrics.render(make_master()))
    buckets = {
        s.labels["le"]: s.value
        for s in fams["monolake_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["worker"] == "0"
    }
    assert buckets == {"0.001": 1, "0.005": 8, "0.1": 10, "+Inf": 10}
    h = "monolake_request_duration_seconds"
    assert sample(fams, h, h + "_sum", server="web", worker="0") == 0.04
    assert sample(fams, h, h + "_count", server="web", worker="0") == 10
    # a server that does not measure durations gets no histogram rather than zeros
    assert not [s for s in fams[h].samples if s.labels["server"] == "api"]


def test_draining_old_generation_and_carried_totals_add_up():
    master = make_master()
    old = FakeWorker(0, 12345, state=DRAINING, server_stats={"web": web_stats(12)})
    master.retired.append(old)
    master.totals.exported(12345, {"web": web_stats(10)})
    master.totals.committed(12345, {"web": web_stats(10)})
    master.totals.carried[0] = {"web": {"requests": 100}}
    fams = parse(metrics.render(master))
    # carried 100 + current 10 + the draining worker's 2 after its export
    assert sample(fams, "monolake_requests", server="web", worker="0") == 112
    assert sample(fams, "monolake_open_connections", server="web", worker="0") == 4
    assert sample(fams, "monolake_workers", state="draining") == 1


def test_unknown_stats_and_label_escaping():
    master = make_master()
    master.slots[0].worker.server_stats["web"]["thrift frames"] = 7
    master.slots[0].worker.runtime = 'odd "name"\\x\n'
    fams = parse(metrics.render(master))
    assert sample(fams, "monolake_server_thrift_frames", server="web", worker="0") == 7
    info = [s for s in fams["monolake_worker_info"].samples if s.labels["worker"] == "0"]
    assert info[0].labels["runtime"] == 'odd "name"\\x\n'


def test_format_value():
    assert metrics.format_value(3) == "3"
    assert metrics.format_value(0.25) == "0.25"
    assert metrics.format_value(float("inf")) == "+Inf"
    assert metrics.format_value(float("nan")) == "NaN"
