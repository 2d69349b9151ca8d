#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, monolake next to nginx (not a timed test).

Issue 16 §4. nginx serves the bodies (the upstream); nginx ``proxy_pass`` and one standalone
monolake worker per runtime (and allocator) proxy to it. For each proxy: its RSS, then N client
connections that each make one GET and stay open (idle keep-alive), its RSS again, then all
closed and its RSS once more (a moment after the last close: the worker trims 0.25 s after the
closes stop, worker/memtrim.py). Prints KiB per idle connection, what is kept after they close,
and the ratio to nginx (same run, same machine).

The workers run with ``PYTHONMALLOC=malloc`` as a master spawns them; ``--allocators
malloc,pymalloc`` adds CPython's own allocator for comparison.

    python scripts/bench_conn_memory.py                  # N = 5000, both runtimes
    python scripts/bench_conn_memory.py -n 2000 --runtimes io_uring --allocators malloc,pymalloc
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_proxy import (
    Proc,
    free_port,
    start_monolake,
    start_nginx_proxy,
    start_upstream,
    tree_pids,
    wait_port,
)
from benchtools import ensure_commands

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procfs import settled  # the memory tests' reading

AFTER_CLOSE = 1.0  # seconds after the last close before "after" is read (the trim's delay, and some)


@contextmanager
def allocator_env(name: str) -> Iterator[None]:
    """PYTHONMALLOC for the processes started inside (they inherit this environment)."""
    old = os.environ.get("PYTHONMALLOC")
    os.environ["PYTHONMALLOC"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONMALLOC"]
        else:
            os.environ["PYTHONMALLOC"] = old


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def settled_rss(pids: list[int]) -> int:
    """RSS once two readings 200 ms apart agree within 1 % (frees and closes settle)."""
    return settled(lambda: rss_kib(pids))


def one_get(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /100B HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 100:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} bytes")
        data += chunk
    return s


def measure(name: str, port: int, pids: list[int], n: int) -> dict[str, Any]:
    for _ in range(20):  # warm: the pools, the first allocations
        one_get(port).close()
    before = settled_rss(pids)
    conns = [one_get(port) for _ in range(n)]
    held = settled_rss(pids)
    for c in conns:
        c.close()
    time.sleep(AFTER_CLOSE)
    after = settled_rss(pids)
    row: dict[str, Any] = {  # one JSON result row
        "proxy": name,
        "before_kib": before,
        "held_kib": held,
        "after_kib": after,
        "per_conn_kib": (held - before) / n,
        "kept_kib": after - before,
    }
    print(
        f"  {name:28} RSS {before / 1024:7.1f} MiB -> {held / 1024:7.1f} MiB with {n} idle "
        f"-> {after / 1024:7.1f} MiB after: {row['per_conn_kib']:5.2f} KiB per connection, "
        f"{row['kept_kib'] / 1024:6.1f} MiB kept",
        flush=True,
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="idle connections per proxy (default 5000)")
    ap.add_argument("--runtimes", default="io_uring,legacy")
    ap.add_argument("--parser", default="auto")
    ap.add_argument("--allocators", default="malloc", help="PYTHONMALLOC values, e.g. malloc,pymalloc")
    args = ap.parse_args()
    missing = ensure_commands("nginx", "taskset")
    if missing:
        print(f"{', '.join(missing)} required (apt-get install nginx util-linux)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n * 2 + 256  # this process's client sockets; the proxies inherit the limit
    if hard != resource.RLIM_INFINITY and hard < want:
        print(f"RLIMIT_NOFILE hard limit {hard} < {want}: lower -n", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    work = Path(tempfile.mkdtemp(prefix="monolake-connmem-"))
    work.chmod(0o755)
    procs: list[Proc] = []
    rows = []
    try:
        up_port = free_port()
        procs.append(start_upstream(work, up_port))
        wait_port(up_port)
        port = free_port()
        nginx = start_nginx_proxy(work, port, up_port)
        procs.append(nginx)
        wait_port(port)
        # the nginx worker, not its master: the one that holds the connections
        rows.append(measure("nginx", port, tree_pids(nginx.p.pid)[1:] or [nginx.p.pid], args.n))
        for runtime in filter(None, args.runtimes.split(",")):
            for alloc in filter(None, args.allocators.split(",")):
                port = free_port()
                with allocator_env(alloc):
                    proc = start_monolake(work, port, up_port, runtime, args.parser)
                procs.append(proc)
                wait_port(port)
                name = f"monolake/{runtime}" + ("" if alloc == "malloc" else f"/{alloc}")
                rows.append(measure(name, port, [proc.p.pid], args.n))
    finally:
        for p in reversed(procs):
            p.stop()
    base = rows[0]["per_conn_kib"] or 1e-9
    print(f"\n{'proxy':28} {'KiB/conn':>9} {'x nginx':>8} {'kept MiB':>9}")
    for r in rows:
        print(
            f"{r['proxy']:28} {r['per_conn_kib']:9.2f} {r['per_conn_kib'] / base:8.1f} "
            f"{r['kept_kib'] / 1024:9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
