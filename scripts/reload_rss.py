#!/usr/bin/env python3
"""Worker RSS, fds and threads across in-place reloads (issue 17: ~45 KB per reload).

Starts a real master with one worker on a free loopback port (in-place reload mode, one
builtin route and one proxied route to a small upstream in this process), makes a few
requests, then runs ``--reloads`` in-place reloads through the control socket, each followed
by requests on both routes, and samples the worker's RSS (VmRSS), open fds and threads every
``--every`` reloads. Prints the samples and the growth per reload over the second half (the
first reloads warm caches: imports, allocator arenas).

    python scripts/reload_rss.py --reloads 200 --every 20
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchtools import hello_master, stop_master

from monolake.supervisor.control import request
from tests.upstreams import Upstream


def objects(sock: str) -> int:
    """Objects the worker's collector tracks (``monolaked debug``, no collection first)."""
    reply = request(sock, {"type": "debug", "slot": 0}, timeout=30)
    return int(reply.get("objects", -1))


def proc_figures(pid: int) -> tuple[int, int, int]:
    """(VmRSS KiB, open fds, threads) of ``pid``."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--runtime", default="auto", help="runtime_type (auto, io_uring, legacy)")
    args = parser.parse_args()
    up = Upstream("rss")
    tmp = Path(tempfile.mkdtemp(prefix="monolake-rss-"))
    master, port = hello_master(
        tmp,
        args.runtime,
        1,
        supervisor=f"""
        pid_file = "{tmp}/monolaked.pid"
        log_level = "warning"
        reload_mode = "in_place"
        """,
        routes=f"""
        [[servers.web.routes]]
        path = "/up/{{*rest}}"
        upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
        """,
    )
    sock = str(tmp / "control.sock")
    worker_pid = 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st = request(sock, {"type": "status"}, timeout=5)
                ready = [w for w in st["workers"] if w["state"] == "ready"]
                if ready:
                    worker_pid = ready[0]["pid"]
                    master.seen_pids.add(worker_pid)  # killed by stop_master if it is left over
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not worker_pid:
            print("the worker did not get ready", file=sys.stderr)
            return 1
        for _ in range(20):
            get(port, "/")
            get(port, "/up/x")
        samples = [(0, *proc_figures(worker_pid), objects(sock))]
        for i in range(1, args.reloads + 1):
            reply = request(sock, {"type": "reload"}, timeout=60)
            if not reply.get("ok"):
                print(f"reload {i} failed: {reply}", file=sys.stderr)
                return 1
            assert get(port, "/") == 200 and get(port, "/up/x") == 200
            if i % args.every == 0:
                time.sleep(0.6)  # retired stacks close on the worker's next poll
                samples.append((i, *proc_figures(worker_pid), objects(sock)))
        print(f"{'reloads':>8} {'rss KiB':>9} {'fds':>5} {'threads':>8} {'objects':>8}")
        for n, rss, fds, threads, objs in samples:
            print(f"{n:>8} {rss:>9} {fds:>5} {threads:>8} {objs:>8}")
        half = [s for s in samples if s[0] >= args.reloads // 2]
        if len(half) >= 2:
            (n0, r0, *_), (n1, r1, *_) = half[0], half[-1]
            print(f"growth over reloads {n0}..{n1}: {(r1 - r0) / (n1 - n0):.1f} KiB per reload")
        total = (samples[-1][1] - samples[0][1]) / max(1, samples[-1][0])
        print(f"growth over all {samples[-1][0]} reloads: {total:.1f} KiB per reload")
        return 0
    finally:
        stop_master(master)
        up.close()


if __name__ == "__main__":
    sys.exit(main())
