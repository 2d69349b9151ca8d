"""Memory per idle keep-alive client connection in a real worker (issue 16 §4): at most
2.5 KiB each after one GET (3.1-3.2 before), and a second burst reuses what the first freed
(before, the protocol/reader/parser cycle kept every closed connection until a full GC)."""

from __future__ import annotations

import resource
import time

import pytest

from tests.http.conftest import LOOPS, Conn, run_worker
from tests.support import free_port

N = 2000


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _settled(pid: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    last = _rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _rss_kib(pid)
        if abs(now - last) <= max(64, last // 100):
            return now
        last = now
    return last


def _burst(port: int) -> list[Conn]:
    conns = []
    for _ in range(N):
        c = Conn(port, timeout=10)
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        conns.append(c)
    return conns


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_connection_memory(tmp_path, loop):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < N + 512:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, N + 512), hard))
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
        _settled(pid)
        conns = _burst(w.port())
        held2 = _settled(pid)
        for c in conns:
            c.close()
        limit = 2.5 if loop == "io_uring" else 2.75
        assert per_conn <= limit, f"{per_conn:.2f} KiB per idle connection"
        # asyncio's selector transport keeps more of a closed connection until a GC (0.6 KiB
        # each measured): a looser bound there; both fail the 2 KiB each of the old cycle
        grow = 0.4 if loop == "io_uring" else 1.0
        assert held2 - held <= N * grow, f"second burst grew RSS by {held2 - held} KiB"
