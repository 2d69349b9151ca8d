"""A worker out of file descriptors closes its oldest idle keep-alive connections to make
room for new clients, as nginx does, and logs it once per burst (issue 16 §3).

Before, new clients waited in the accept queue while idle keep-alive connections held every
fd, until the keep-alive timeout (75 s by default) freed some."""

from __future__ import annotations

import time

import pytest

from tests.http.conftest import ENGINE_LOOPS, Conn, proxy_config, run_worker

NOFILE = 96  # the worker's whole fd budget: loop, ring, sockets, logs, and the clients


@pytest.mark.parametrize("loop", ENGINE_LOOPS)
def test_idle_keepalive_connections_make_room_for_new_clients(tmp_path, loop):
    config = proxy_config("""
[servers.px.timeout]
server_keepalive_timeout_sec = 300
[[servers.px.routes]]
path = "/"
upstreams = [{ endpoint = { type = "builtin", value = "hello" } }]
""")
    with run_worker(tmp_path, config, loop, nofile=NOFILE) as w:
        idle: list[Conn] = []
        try:
            # open idle keep-alive connections (each served once) until the worker runs out
            # of fds and starts closing the oldest of them
            for _ in range(NOFILE * 2):
                c = Conn(w.port(), timeout=3.0)
                idle.append(c)
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                try:
                    assert c.read_response().status == 200
                except TimeoutError:
                    pytest.fail(
                        f"client {len(idle)} waited in the accept queue: the idle "
                        "keep-alive connections kept every fd"
                    )
                if _closed_by_peer(idle[0]):
                    break
            else:
                pytest.fail(f"{NOFILE * 2} connections and the worker never ran out of fds")
            assert NOFILE // 2 < len(idle) <= NOFILE
            # more new clients are served at once; the log tells the burst once
            for i in range(5):
                start = time.monotonic()
                with Conn(w.port(), timeout=3.0) as c:
                    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    assert c.read_response().status == 200
                assert time.monotonic() - start < 1.0, f"client {i} waited"
            deadline = time.monotonic() + 5
            while "accept_recovered" not in w.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            log = w.log()
            assert "accept_recovered" in log
            assert 1 <= log.count("accept_out_of_fds") <= 6  # per burst, not per failed accept
        finally:
            for c in idle:
                c.close()


def _closed_by_peer(c: Conn) -> bool:
    c.sock.setblocking(False)
    try:
        return c.sock.recv(1) == b""
    except BlockingIOError:
        return False
    finally:
        c.sock.setblocking(True)
        c.sock.settimeout(3.0)


def test_reclaim_takes_the_oldest_eighth_of_every_servers_idle_connections():
    from monolake.worker.main import Worker

    closed: list[str] = []

    class Handle:
        def __init__(self, name: str, since: list[float]) -> None:
            self.conns = [(t, lambda n=f"{name}{t:g}": closed.append(n)) for t in since]

        def idle_connections(self):
            return self.conns

    w = Worker.__new__(Worker)
    w.slots = {
        "a": type("S", (), {"handle": Handle("a", [5, 1, 9, 3])})(),
        "b": type("S", (), {"handle": object()})(),
    }  # a handle without the method
    w._retired_handles = [Handle("r", [float(t) for t in range(10, 22)] + [0.5])]
    assert w.reclaim_idle() == 2  # 17 idle connections: an eighth, rounded down
    assert closed == ["r0.5", "a1"]
