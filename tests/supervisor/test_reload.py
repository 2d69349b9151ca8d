"""Zero-downtime reload, as the acceptance criteria of the reload issue state them."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from monolake.supervisor.cli import STATE_NOT_MIGRATED
from tests.harness import Monolaked, base_config, http_get
from tests.support import children_of, free_port, listening_inodes, pid_alive, wait_for
from tests.upstreams import Upstream, pattern, proxy_routes

SOAK = os.environ.get("MONOLAKE_SOAK") == "1"
MODES = ["generation", "in_place"]


@pytest.fixture
def upstream():
    up = Upstream("a")
    yield up
    up.close()


def reload_cli(m: Monolaked) -> subprocess.CompletedProcess:
    return m.cli("reload", timeout=120)


class ClosedLoop(threading.Thread):
    """New connections and keep-alive requests in a closed loop; every failure recorded."""

    def __init__(self, port: int, keepalive: bool) -> None:
        super().__init__(daemon=True)
        self.port, self.keepalive = port, keepalive
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("GET", "/", headers={} if self.keepalive else {"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or b"monolake" not in body.lower():
                    self.errors.append(f"bad response {resp.status} {body[:60]!r}")
                else:
                    self.ok += 1
                if not self.keepalive or resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                # A keep-alive connection closed by a draining worker *between* requests is
                # normal HTTP (the client retries on a new connection, as browsers do) —
                # unless the request had been answered partially, which read() would raise.
                if self.keepalive and isinstance(exc, http.client.RemoteDisconnected):
                    conn = None
                    continue
                self.errors.append(f"keepalive={self.keepalive}: {exc!r}")
                conn = None
            except OSError as exc:
                self.errors.append(f"keepalive={self.keepalive}: {exc!r}")
                conn = None
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_reloads_under_load_lose_nothing(master_factory, tmp_path, upstream, mode):
    """(a) closed-loop load + one long streaming response during consecutive reloads."""
    reloads = 20 if SOAK else 8
    port = free_port()
    cfg = base_config(tmp_path, port, supervisor=f'reload_mode = "{mode}"', routes=proxy_routes(upstream))
    m = master_factory(cfg)
    m.wait_ready()
    loads = [ClosedLoop(port, keepalive=False), ClosedLoop(port, keepalive=True)]
    for t in loads:
        t.start()
    chunks, size = 25, 4096
    stream: list = []
    streamer = threading.Thread(
        target=lambda: stream.append(
            http_get(port, f"/up/stream?chunks={chunks}&delay=0.1&size={size}", timeout=60)
        )
    )
    streamer.start()
    try:
        wait_for(lambda: all(t.ok > 5 for t in loads), 15, what="load running")
        for _i in range(reloads):
            result = reload_cli(m)
            assert result.returncode == 0, result.stderr
        before = [t.ok for t in loads]
        wait_for(
            lambda: all(t.ok > b + 5 for t, b in zip(loads, before, strict=False)),
            15,
            what="load after reloads",
        )
    finally:
        for t in loads:
            t.stop.set()
        for t in loads:
            t.join(20)
        streamer.join(60)
    for t in loads:
        assert t.errors == [], t.errors[:5]
    assert len(stream) == 1
    status, body, _ = stream[0]
    assert status == 200 and body == pattern(size) * chunks
    st = m.status()
    assert st["master"]["generation"] == 1 + reloads
    assert all(r["ok"] for r in st["master"]["reloads"])


def test_stopped_worker_queue_is_served_by_its_successor(master_factory, tmp_path):
    """(b) a SIGSTOPped worker whose accept queue filled is retired by a reload."""
    port = free_port()
    # drain_timeout 3: the stopped worker is killed at drain_timeout + 2 s (10 + 2 before)
    m = master_factory(
        base_config(tmp_path, port)
        .replace("heartbeat_timeout = 5", "heartbeat_timeout = 120")
        .replace("drain_timeout = 10", "drain_timeout = 3")
    )
    status = m.wait_ready()
    victim = status["workers"][0]
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        clients = []
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            clients.append(s)
        # some of these now wait in the stopped worker's accept queue
        result = reload_cli(m)
        # the stopped worker cannot export: the new one serves, and the reload says so
        assert result.returncode == STATE_NOT_MIGRATED, result.stderr
        assert "state not migrated" in result.stderr and "no answer within" in result.stderr
        answers = []
        for s in clients:
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            answers.append(data)
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [
            a[:40] for a in answers if not a.startswith(b"HTTP/1.1 200")
        ]
        # asked to drain, it never answers: the drain deadline (drain_timeout + 2 s) kills it
        wait_for(lambda: not pid_alive(victim["pid"]), 15, what="stopped worker retired")
    finally:
        try:
            os.kill(victim["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("mode", MODES)
def test_failed_reloads_keep_the_old_generation(master_factory, tmp_path, mode):
    """(c) a broken config, and a config whose service fails at start."""
    port = free_port()
    good = base_config(tmp_path, port, supervisor=f'reload_mode = "{mode}"')
    m = master_factory(good, env={"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
    m.wait_ready()
    pids = sorted(m.worker_pids())
    m.config_path.write_text(good.replace('proxy_type = "http"', 'proxy_type = "gopher"'))
    result = reload_cli(m)
    assert result.returncode != 0
    assert "proxy_type" in result.stderr
    assert http_get(port)[0] == 200
    failing_layer = tmp_path / "failing_layer.py"
    failing_layer.write_text("raise RuntimeError('this service cannot start')\n")
    m.config_path.write_text(
        good
        + """
        [[servers.web.layers]]
        factory = "failing_layer:Layer"
    """
    )
    result = reload_cli(m)
    assert result.returncode != 0
    assert "this service cannot start" in result.stderr
    assert http_get(port)[0] == 200
    st = m.status()
    assert sorted(w["pid"] for w in st["workers"]) == pids
    assert st["master"]["generation"] == 1
    assert [r["ok"] for r in st["master"]["reloads"]] == [False, False]
    assert all(w["state"] == "ready" for w in st["workers"])


_children = children_of


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"


def test_hup_storm_is_coalesced_and_bounded(master_factory, tmp_path):
    """(d) 10 HUPs within a second: at most two generations, the last config wins."""
    port = free_port()

    def config(k: int) -> str:
        return base_config(
            tmp_path,
            port,
            routes=f"""
            [[servers.web.routes]]
            path = "/v{k}"
            upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
        """,
        )

    m = master_factory(config(0))
    m.wait_ready()
    nslots = m.status()["master"]["workers"]
    master_pid = m.proc.pid
    fds_before = len(os.listdir(f"/proc/{master_pid}/fd"))
    max_generations = 0
    sent: list[float] = []
    storm_start = time.monotonic()
    for k in range(1, 11):
        m.config_path.write_text(config(k))
        os.kill(master_pid, signal.SIGHUP)
        sent.append(time.monotonic())
        live = [p for p in _children(master_pid) if _proc_state(p) not in ("Z", "gone")]
        max_generations = max(max_generations, -(-len(live) // nslots))
        # paced on a schedule (one HUP every 80 ms), not by sleeps that add up under load
        time.sleep(max(0.0, storm_start + 0.08 * k - time.monotonic()))
    assert sent[-1] - sent[0] < 1.0, f"the 10 HUPs took {sent[-1] - sent[0]:.2f}s, not within 1 s"

    def settled():
        st = m.status()
        return (
            not st["master"]["reloading"]
            and http_get(port, "/v10")[0] == 200
            and all(w["state"] == "ready" for w in st["workers"])
            and st
        )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = [p for p in _children(master_pid) if _proc_state(p) not in ("Z", "gone")]
        # each live child is a worker; two generations at most means at most 2 per slot
        max_generations = max(max_generations, -(-len(live) // nslots))
        try:
            if settled():
                break
        except (OSError, AssertionError):
            pass
        time.sleep(0.05)
    st = settled()
    assert st, "did not settle on the last config"
    assert max_generations <= 2
    assert all(http_get(port, f"/v{k}")[0] == 404 for k in range(10))  # only the last config
    reloads = st["master"]["reloads"]
    assert 1 <= len(reloads) <= 10 and all(r["ok"] for r in reloads)
    assert len(reloads) < 10, "HUPs during a reload should be coalesced"
    wait_for(lambda: all(_proc_state(p) != "Z" for p in _children(master_pid)), 10, what="no zombies")
    assert len(_children(master_pid)) == nslots
    assert len(os.listdir(f"/proc/{master_pid}/fd")) <= fds_before + 2
    status = Path(f"/proc/{master_pid}/status").read_text().splitlines()
    threads = int(next(line for line in status if line.startswith("Threads:")).split()[1])
    assert threads <= 2


@pytest.mark.parametrize("mode", MODES)
def test_state_carries_over(master_factory, tmp_path, mode):
    """(e) request counters, the round-robin position and the upstream pool survive."""
    a, b = Upstream("a"), Upstream("b")
    try:
        port = free_port()
        cfg = base_config(
            tmp_path, port, supervisor=f'reload_mode = "{mode}"', routes=proxy_routes(a, b, lb="round_robin")
        )
        m = master_factory(cfg, args=["--workers", "1"])
        m.wait_ready(1)
        first = http_get(port, "/up/id")[1].decode().split()
        for _ in range(4):
            http_get(port, "/")
        requests_before = wait_for(
            lambda: m.status()["workers"][0]["requests"] >= 5 and m.status()["workers"][0]["requests"],
            10,
            what="requests counted",
        )
        pid_before = m.worker_pids()[0]
        assert reload_cli(m).returncode == 0
        if mode == "generation":
            assert m.worker_pids()[0] != pid_before
        second = http_get(port, "/up/id")[1].decode().split()
        # round robin continues where it was: the other upstream
        assert second[0] != first[0]
        third = http_get(port, "/up/id")[1].decode().split()
        assert third[0] == first[0]
        # the idle keep-alive connection to the first upstream was handed over (same port)
        assert third[1] == first[1]
        wait_for(
            lambda: m.status()["workers"][0]["requests"] >= requests_before + 2,
            10,
            what="counters carried over",
        )
    finally:
        a.close()
        b.close()


def test_drain_closes_idle_keepalive_and_finishes_big_response(master_factory, tmp_path, upstream):
    """(f) an idle keep-alive connection is closed; an in-flight 50 MB response completes."""
    port = free_port()
    m = master_factory(base_config(tmp_path, port, routes=proxy_routes(upstream)), args=["--workers", "1"])
    m.wait_ready(1)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/")
    assert idle.getresponse().read()
    size = 50 * 1024 * 1024
    big = socket.create_connection(("127.0.0.1", port), timeout=30)
    big.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    big.sendall(f"GET /up/bytes?n={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += big.recv(1)
    assert head.startswith(b"HTTP/1.1 200")
    # the response is in flight (we read slowly); reload now
    assert reload_cli(m).returncode == 0
    received = 0
    digest_ok = True
    expected = pattern(size)
    while received < size:
        chunk = big.recv(1 << 20)
        if not chunk:
            break
        digest_ok = digest_ok and chunk == expected[received : received + len(chunk)]
        received += len(chunk)
    big.close()
    assert received == size and digest_ok
    # the idle keep-alive connection was closed by the draining worker
    sock = idle.sock
    sock.settimeout(10)
    assert sock.recv(1) == b""
    idle.close()


def test_listeners_and_worker_count_follow_the_config(master_factory, tmp_path):
    """Unchanged listeners keep their sockets, added ones serve, removed ones close; the
    worker count can change."""
    port, extra_port = free_port(), free_port()
    plain = base_config(tmp_path, port)
    m = master_factory(plain)
    m.wait_ready()
    nslots = m.status()["master"]["workers"]
    sockets_before = listening_inodes(port)
    assert len(sockets_before) == nslots  # one SO_REUSEPORT socket per slot
    added = base_config(
        tmp_path,
        port,
        runtime="workers = 1",
        extra=f"""
        [servers.extra]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:{extra_port}" }}

        [[servers.extra.routes]]
        path = "/"
        upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
    """,
    )
    m.config_path.write_text(added)
    result = reload_cli(m)
    assert result.returncode == 0, result.stderr
    assert http_get(extra_port)[0] == 200
    assert http_get(port)[0] == 200
    st = m.status()
    assert st["master"]["workers"] == 1
    wait_for(lambda: len(m.status()["workers"]) == 1, 15, what="extra slot retired")
    # slot 0's socket is the same socket; the retired slot's socket closed after its drain
    wait_for(
        lambda: listening_inodes(port) < sockets_before or nslots == 1, 15, what="retired slot socket closed"
    )
    assert listening_inodes(port) <= sockets_before
    m.config_path.write_text(plain)
    result = reload_cli(m)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not listening_inodes(extra_port), 15, what="removed listener closed")
    assert http_get(port)[0] == 200
    assert m.status()["master"]["workers"] == nslots


FRAGILE = """
class Fragile:
    key = "fragile"

    def __init__(self, options):
        pass

    def make(self, inner, previous):
        if previous is not None:
            raise RuntimeError("cannot import fragile state")
        return FragileService(inner)


class FragileService:
    state_version = 1

    def __init__(self, inner):
        self.inner = inner

    async def call(self, request, ctx):
        return await self.inner.call(request, ctx)

    def export_state(self, fds):
        return {"seen": 1}
"""


@pytest.mark.parametrize("mode", MODES)
def test_failed_state_import_is_reported(master_factory, tmp_path, mode):
    """A state import that fails makes ``reload`` fail with the reason; requests go on."""
    (tmp_path / "fragile_layer.py").write_text(FRAGILE)
    port = free_port()
    cfg = base_config(
        tmp_path,
        port,
        supervisor=f'reload_mode = "{mode}"',
        extra="""
        [[servers.web.layers]]
        factory = "fragile_layer:Fragile"
    """,
    )
    m = master_factory(cfg, env={"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
    m.wait_ready()
    result = reload_cli(m)
    assert result.returncode != 0
    assert "cannot import fragile state" in result.stderr
    assert http_get(port)[0] == 200
    st = m.status()
    assert st["master"]["reloads"][-1]["ok"] is False
    # polled: right after a failed generation reload a slot may still be settling (failed
    # once at load average 5 with the assertion taken at once)
    wait_for(
        lambda: all(w["state"] == "ready" for w in m.status()["workers"]),
        10,
        what="every worker ready after the failed import",
    )


def test_sigterm_during_a_reload_stops_everything(master_factory, tmp_path):
    """A stop that arrives while a new generation is being prepared wins: nothing is left."""
    port = free_port()
    m = master_factory(base_config(tmp_path, port))
    m.wait_ready()
    master_pid = m.proc.pid
    os.kill(master_pid, signal.SIGHUP)
    wait_for(
        lambda: len(_children(master_pid)) > m.status()["master"]["workers"],
        10,
        interval=0.005,
        what="new generation spawned",
    )
    children = _children(master_pid)
    assert m.stop(signal.SIGTERM, timeout=30) == 0
    wait_for(lambda: not any(pid_alive(p) for p in children), 5, what="every worker gone")
    assert not listening_inodes(port)
