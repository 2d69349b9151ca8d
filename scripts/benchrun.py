"""What the same-run proxy benchmarks share (``bench_proxy.py``, ``bench_h2.py``).

- pinning: the proxy under test on ``PROXY_CPU``, the load generator and the upstream on
  ``LOAD_CPU`` (``taskset``), every process in its own session so it is stopped by PID;
- CPU accounting: the proxy's CPU time is user + sys of all its processes (master and
  workers, read from ``/proc/PID/stat``) over a run, divided by the requests served;
- interleaving: every contender is up at once and each round runs them back to back in a
  rotating order, so a ratio pairs runs seconds apart (this shared 2-core machine drifts by
  20 % over minutes); ``summarize`` reports medians over rounds and the median (with the range)
  of the per-round ratios to a reference contender, for req/s and for CPU per request.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

PROXY_CPU = 0
LOAD_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx master + workers, a daemon and its workers)."""
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                out.extend(tree_pids(int(child)))
    except OSError:
        pass
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` (all threads of each)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


class CpuMeter:
    """CPU seconds spent by a process tree between ``start()`` and ``stop()``. The tree is read
    again at each call, so workers a daemon spawned (or respawned) count too."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._pids: list[int] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._pids = tree_pids(self.root)
        self._t0 = cpu_seconds(self._pids)

    def stop(self) -> float:
        pids = sorted(set(self._pids) | set(tree_pids(self.root)))
        return cpu_seconds(pids) - self._t0


def pinned(cpu: int | None, args: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *args] if cpu is not None else list(args)


class Proc:
    """A process started pinned to ``cpu`` in its own session; ``stop()`` ends its group."""

    def __init__(self, args: list[str], cpu: int | None, log: Path, **kw: Any) -> None:
        self.log = open(log, "wb")  # noqa: SIM115 - lives as long as the process; stop() closes it
        self.p = subprocess.Popen(
            pinned(cpu, args), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, **kw
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self.log.close()


class Procs:
    """The processes of one benchmark run, stopped in reverse order on exit (also on an
    exception or Ctrl-C)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def nginx_conf(work: Path, name: str, http_body: str) -> Path:
    """An nginx config with one worker, no daemon, everything under ``work``."""
    conf = work / f"{name}.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        master_process on;
        pid {work}/{name}.pid;
        error_log {work}/{name}.error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {work}/{name}-body;
            proxy_temp_path {work}/{name}-proxy;
            fastcgi_temp_path {work}/{name}-fcgi;
            uwsgi_temp_path {work}/{name}-uwsgi;
            scgi_temp_path {work}/{name}-scgi;
            keepalive_requests 1000000;
            {http_body}
        }}
    """)
    )
    return conf


def start_nginx(work: Path, name: str, http_body: str, cpu: int | None) -> Proc:
    conf = nginx_conf(work, name, http_body)
    return Proc(["nginx", "-c", str(conf), "-e", str(work / f"{name}.stderr.log")], cpu, work / f"{name}.log")


def rotated(contenders: Sequence[T], rnd: int) -> list[T]:
    """The contenders in round ``rnd``'s order: rotated by one each round, so none is always
    measured first (or right after the heaviest)."""
    shift = rnd % len(contenders) if contenders else 0
    return [*contenders[shift:], *contenders[:shift]]


@dataclass
class Sample:
    """One load-generator run against one contender."""

    proxy: str
    body: str
    rps: float
    cpu_us_per_req: float
    requests: int
    errors: int
    round: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


def per_request_us(cpu_s: float, requests: int) -> float:
    return cpu_s / requests * 1e6 if requests > 0 else float("nan")


def summarize(
    samples: Sequence[Sample],
    proxies: Sequence[str],
    sizes: Sequence[str],
    peers: dict[str, str],
    keys: Sequence[str] = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req"),
) -> list[dict[str, Any]]:
    """Per proxy and size: the median over rounds of each of ``keys``, and for each peer
    (label -> contender name) the median and range of the per-round ratios, ``x_LABEL`` for
    req/s and ``cpu_x_LABEL`` for CPU per request (each ratio pairs runs of the same round)."""
    by = {(s.proxy, s.body, s.round): s for s in samples}
    rounds = sorted({s.round for s in samples})
    out = []
    for proxy in proxies:
        for size in sizes:
            runs = [by[(proxy, size, n)] for n in rounds if (proxy, size, n) in by]
            if not runs:
                continue
            row: dict[str, Any] = {"proxy": proxy, "body": size, "rounds": len(runs)}
            for key in keys:
                values = [getattr(r, key) for r in runs if getattr(r, key) == getattr(r, key)]
                row[key] = statistics.median(values) if values else float("nan")
            row["errors"] = sum(r.errors for r in runs)
            row["requests"] = sum(r.requests for r in runs)
            for label, peer in peers.items():
                if not peer or peer == proxy:
                    continue
                for prefix, key in (("x_", "rps"), ("cpu_x_", "cpu_us_per_req")):
                    ratios = []
                    for r in runs:
                        ref = by.get((peer, size, r.round))
                        mine, theirs = getattr(r, key), getattr(ref, key, 0.0)
                        if ref is not None and theirs and theirs == theirs and mine == mine and mine > 0:
                            ratios.append(mine / theirs)
                    if ratios:
                        row[f"{prefix}{label}"] = statistics.median(ratios)
                        row[f"{prefix}{label}_range"] = (min(ratios), max(ratios))
            out.append(row)
    return out


def ratio(row: dict[str, Any], key: str) -> str:
    """``0.64 [0.52-0.66]`` for a ratio ``summarize`` computed, ``-`` where it did not."""
    if key not in row:
        return "-"
    lo, hi = row[f"{key}_range"]
    return f"{row[key]:.2f} [{lo:.2f}-{hi:.2f}]"
