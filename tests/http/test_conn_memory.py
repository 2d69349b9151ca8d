"""Memory per idle keep-alive client connection in a real worker (issue 16 §4), and memory
given back once they close.

At most 2.5 KiB each after one GET (3.1-3.2 before). After the burst closes, the worker's RSS
comes back to within ``KEPT_KIB`` of where it started: measured -0.4 to -0.2 MiB for 3000
connections (the tables and allocator are emptier than after the warm-up); before, 5.7 MiB of
5.9 stayed (pymalloc arenas pinned by a few survivors, tables sized for the burst, and on
asyncio's loop every closed transport waiting for a full GC). The worker runs as a master
spawns it, with ``PYTHONMALLOC=malloc`` (supervisor/workers.py)."""

from __future__ import annotations

import resource
import time

import pytest

from tests.http.conftest import ENGINE_LOOPS, Conn, run_worker
from tests.procfs import settled
from tests.support import free_port

N = 2000
# RSS kept after the N close, KiB: measured <= 0 for N = 3000; the bound leaves room for a
# shared machine's noise and stays far below what was kept before (~3800 for N = 2000)
KEPT_KIB = 1024


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _settled(pid: int) -> int:
    return settled(lambda: _rss_kib(pid))


def _returned(pid: int, limit: int, timeout: float = 8.0) -> int:
    """RSS once it is at or below ``limit`` (the trim runs a moment after the closes stop, at
    most every 2 s), or the last reading at the deadline."""
    deadline = time.monotonic() + timeout
    rss = _rss_kib(pid)
    while rss > limit and time.monotonic() < deadline:
        time.sleep(0.1)
        rss = _rss_kib(pid)
    return rss


def _burst(port: int) -> list[Conn]:
    conns = []
    for _ in range(N):
        c = Conn(port, timeout=10)
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        conns.append(c)
    return conns


@pytest.mark.parametrize("loop", ENGINE_LOOPS)
def test_idle_connection_memory(tmp_path, loop, monkeypatch):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < N + 512:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, N + 512), hard))
    monkeypatch.setenv("PYTHONMALLOC", "malloc")  # what spawn_worker gives a worker
    monkeypatch.delenv("MONOLAKE_MALLOC_TRIM", raising=False)
    config = f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
backlog = 4096
[[servers.px.routes]]
path = "/"
upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
"""
    with run_worker(tmp_path, config, loop) as w:
        pid = w.proc.pid
        for _ in range(20):
            with Conn(w.port()) as c:
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                c.read_response()
        before = _settled(pid)
        conns = _burst(w.port())
        held = _settled(pid)
        per_conn = (held - before) / N
        for c in conns:
            c.close()
        after = _returned(pid, before + KEPT_KIB)
        conns = _burst(w.port())
        held2 = _settled(pid)
        for c in conns:
            c.close()
        after2 = _returned(pid, before + KEPT_KIB)
        limit = 2.5 if loop == "io_uring" else 2.75
        assert per_conn <= limit, f"{per_conn:.2f} KiB per idle connection"
        assert after - before <= KEPT_KIB, f"{after - before} KiB of {held - before} kept after the close"
        assert after2 - before <= KEPT_KIB, f"{after2 - before} KiB kept after a second burst"
        # the second burst reuses what the first gave back: no more than a burst's worth
        assert held2 - held <= N * 0.4, f"second burst grew RSS by {held2 - held} KiB"
