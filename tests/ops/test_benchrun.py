"""scripts/benchrun.py and bench_h2's probe: the bookkeeping of the same-run benchmarks
(the benchmarks themselves run from scripts/, never as timed tests)."""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import bench_h2  # noqa: E402
import benchrun  # noqa: E402


def test_summarize_pairs_runs_of_the_same_round():
    s = benchrun.Sample
    samples = [
        s("nginx", "100B", 100.0, 10.0, 1000, 0, round=0),
        s("mono", "100B", 50.0, 20.0, 500, 0, round=0),
        s("nginx", "100B", 200.0, 5.0, 2000, 0, round=1),  # a faster period: ratios still pair
        s("mono", "100B", 180.0, 4.0, 1800, 1, round=1),
    ]
    rows = benchrun.summarize(
        samples, ["nginx", "mono"], ["100B"], {"nginx": "nginx"}, keys=("rps", "cpu_us_per_req")
    )
    nginx, mono = rows
    assert "x_nginx" not in nginx and nginx["rps"] == 150.0
    assert mono["x_nginx"] == pytest.approx((0.5 + 0.9) / 2)
    assert mono["x_nginx_range"] == (0.5, 0.9)
    assert mono["cpu_x_nginx"] == pytest.approx((2.0 + 0.8) / 2)
    assert mono["errors"] == 1 and mono["requests"] == 2300
    assert benchrun.ratio(mono, "x_nginx") == "0.70 [0.50-0.90]" and benchrun.ratio(nginx, "x_nginx") == "-"


def test_rotation_and_per_request():
    assert [benchrun.rotated("abc", r) for r in range(4)] == [
        list("abc"),
        list("bca"),
        list("cab"),
        list("abc"),
    ]
    assert benchrun.per_request_us(0.5, 10_000) == 50.0
    assert math.isnan(benchrun.per_request_us(0.5, 0))


def test_cpu_meter_counts_this_process():
    meter = benchrun.CpuMeter(os.getpid())
    meter.start()
    sum(i * i for i in range(300_000))
    assert meter.stop() >= 0.0
    assert os.getpid() in benchrun.tree_pids(os.getpid())


def serve_once(answer: bytes) -> int:
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.recv(64)
            conn.sendall(answer)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def test_probe_tells_h2_from_http1():
    assert bench_h2.serves_h2(serve_once(bench_h2.EMPTY_SETTINGS))
    assert not bench_h2.serves_h2(serve_once(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"))
    assert not bench_h2.serves_h2(serve_once(b""))  # closed
    assert not bench_h2.serves_h2(benchrun.free_port())  # nothing listening
