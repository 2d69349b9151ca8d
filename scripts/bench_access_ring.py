#!/usr/bin/env python3
"""CPU per access-log line: today's ``log_access`` against the access-log ring (not a test).

The question (issue 13 §2): does moving the Python engine's access log to the C ring
(worker/http/native_logring.py) cut CPU per request? Three figures per output mode, each the
median of ``--reps`` runs of ``--lines`` lines, process CPU time per line:

- today: ``ServerRuntime.log_access`` as the server calls it (dict, then a file line or a
  structlog event through the worker's processors: supervisor/logs.py, JSON into a file);
- ring, request path: what the Python engine would pay per request (``record_of`` + ``pack``
  + ``mu_log_append_raw``);
- ring, total: the request path plus the batched drain and emission (``AccessRing.flush``);
- C append: ``mu_log_append_raw`` alone on a packed record, through cffi (an upper bound for
  what the native exchange pays: it appends from C with no cffi call).

    python scripts/bench_access_ring.py --lines 100000 --reps 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import structlog

from monolake.supervisor import logs
from monolake.worker.http import native_logring as nl
from monolake.worker.http.server import ServerRuntime


def per_line(fn: Callable[[], None], lines: int, reps: int) -> float:
    """Median process CPU µs per line of ``fn`` (which emits ``lines`` lines)."""
    runs = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        runs.append((time.process_time() - t) / lines * 1e6)
    return statistics.median(runs)


def measure(mode: str, work: str, n: int, reps: int) -> dict[str, float]:
    req = SimpleNamespace(method="GET", path="/100B", query="", version="1.1", body=None)
    ctx = SimpleNamespace(upstream="http://127.0.0.1:8080", request_id="1f-12345")
    ex = SimpleNamespace(request=req, ctx=ctx, status=200, bytes_out=321, started=time.monotonic())
    conn = SimpleNamespace(peer=("127.0.0.1", 45678))
    file: Any = open(os.path.join(work, "access.log"), "a", buffering=1) if mode == "file" else None  # noqa: SIM115
    logger = structlog.get_logger("monolake.access")
    rt = SimpleNamespace(name="bench", slot=0, _access_file=file, _access=logger)
    ring = nl.AccessRing(nslots=4096)
    sid = ring.register("bench", 0, file, logger)
    r = ring.ring
    half = r.nslots // 2
    sink = nl.ffi.new("char[]", r.nslots * nl.SLOT)
    cring = r._r

    def discard() -> None:  # empty the ring without decoding (the drain is measured apart)
        nl.lib.mu_log_take(cring, sink, r.nslots * nl.SLOT, nl.ffi.NULL)

    def today() -> None:
        for _ in range(n):
            ServerRuntime.log_access(rt, ex, conn)  # type: ignore[arg-type]

    def ring_path() -> None:
        for _ in range(n):
            r.append(nl.record_of(sid, ex, conn))
            if r.used >= half:
                discard()

    def ring_total() -> None:
        for _ in range(n):
            r.append(nl.record_of(sid, ex, conn))
            if r.used >= half:
                ring.flush()
        ring.flush()

    packed = nl.pack(nl.record_of(sid, ex, conn))
    raw = nl.lib.mu_log_append_raw

    def c_append() -> None:
        for _ in range(n):
            if raw(cring, packed, len(packed)) != 0:
                discard()

    fns = {"today": today, "ring, request path": ring_path, "ring, total": ring_total}
    fns["C append (cffi)"] = c_append
    res = {name: per_line(fn, n, reps) for name, fn in fns.items()}
    if file is not None:
        file.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="monolake-access-ring-")
    logs.configure("json", "info", os.path.join(work, "worker.log"), proc="worker", slot=0, pid=os.getpid())
    for mode in ("file", "structlog"):
        res = measure(mode, work, args.lines, args.reps)
        print(f"{mode:9} " + "  ".join(f"{k}: {v:6.2f} µs" for k, v in res.items()))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
