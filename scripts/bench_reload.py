#!/usr/bin/env python3
"""Reload benchmark: how long from SIGHUP to the new generation fully serving, and how many
requests fail during consecutive reloads under wrk load.

Starts a real master (2 workers by default) on a free loopback port with the builtin hello
route, runs wrk against it for the whole run, sends ``--reloads`` SIGHUPs one after another
(each waits for the previous to finish), and prints per-reload latency (HUP → every slot served
by the new generation) and wrk's error counts. Needs wrk (``apt-get install wrk``).

    python scripts/bench_reload.py --reloads 20 --workers 2 --connections 50
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtools import ensure_commands, hello_master, stop_master


def status(cli: list[str], config: Path) -> dict:
    """Status straight from the control socket (a CLI process per poll would cost more than
    what is measured)."""
    from monolake.supervisor.control import request

    reply = request(str(config.parent / "control.sock"), {"type": "status"}, timeout=30)
    if reply.get("type") != "status":
        raise RuntimeError(str(reply))
    return reply


def wait(predicate, timeout: float, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # polled until ready: any failure means "not yet"
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def parse_wrk(text: str) -> dict:
    out = {"requests": 0, "rps": 0.0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out.update(
            connect=int(m.group(1)), read=int(m.group(2)), write=int(m.group(3)), timeout=int(m.group(4))
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--runtime", default="auto", choices=["auto", "io_uring", "legacy"])
    parser.add_argument("--mode", default="generation", choices=["generation", "in_place"])
    args = parser.parse_args()
    if ensure_commands("wrk"):
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    cli = [sys.executable, "-m", "monolake.supervisor.cli"]
    tmp = Path(tempfile.mkdtemp(prefix="monolake-bench-reload-"))
    master, port = hello_master(
        tmp,
        args.runtime,
        args.workers,
        supervisor=f"""
        reload_mode = "{args.mode}"
        drain_timeout = 10
        """,
    )
    config = master.config_path
    wrk = None
    try:
        wait(
            lambda: len([w for w in status(cli, config)["workers"] if w["state"] == "ready"]) == args.workers,
            30,
        )
        duration = max(10, int(args.reloads * 1.5) + 5)
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2)  # load established before the first HUP
        latencies = []
        for _ in range(args.reloads):
            before = status(cli, config)["master"]["generation"]
            t0 = time.monotonic()
            os.kill(master.proc.pid, signal.SIGHUP)

            def served(gen: int = before + 1) -> bool:
                st = status(cli, config)
                slots = [w for w in st["workers"] if w["state"] == "ready" and w["generation"] == gen]
                return st["master"]["generation"] == gen and len(slots) == args.workers

            wait(served, 60)
            latencies.append(time.monotonic() - t0)
        out, _ = wrk.communicate(timeout=duration + 30)
        result = parse_wrk(out)
        failed = result["connect"] + result["read"] + result["write"] + result["timeout"] + result["non2xx"]
        reloads = status(cli, config)["master"]["reloads"]
        print(f"reloads: {args.reloads} ({args.mode}, {args.workers} workers, runtime {args.runtime})")
        print(
            f"HUP -> new generation serving: median {statistics.median(latencies) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
        print(
            f"master-measured reload duration: median "
            f"{statistics.median(r['duration'] for r in reloads) * 1000:.0f} ms"
        )
        print(
            f"wrk: {result['requests']} requests, {result['rps']:.0f} req/s, failed {failed} "
            f"(connect {result['connect']}, read {result['read']}, write {result['write']}, "
            f"timeout {result['timeout']}, non-2xx {result['non2xx']})"
        )
        return 0 if failed == 0 else 1
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
        stop_master(master)


if __name__ == "__main__":
    sys.exit(main())
