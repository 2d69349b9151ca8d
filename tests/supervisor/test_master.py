"""The master and its workers, as real processes: start, status, respawn, stop, master death."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from tests.harness import MONOLAKED, base_config, cpus_allowed, http_get
from tests.support import QuietHandler, free_port, listening_on, pid_alive, wait_for

NCPU = len(os.sched_getaffinity(0))


def test_serves_and_reports_one_pinned_worker_per_cpu(master_factory, tmp_path):
    port = free_port()
    m = master_factory(base_config(tmp_path, port))
    status = m.wait_ready()
    assert http_get(port)[0] == 200
    workers = status["workers"]
    assert len(workers) == NCPU == status["master"]["workers"]
    assert sorted(w["cpu"] for w in workers) == sorted(os.sched_getaffinity(0))
    assert len({w["pid"] for w in workers}) == NCPU
    for w in workers:
        assert cpus_allowed(w["pid"]) == str(w["cpu"])
        assert w["generation"] == 1 and w["runtime"]
    # the human table names every worker
    table = m.cli("status").stdout
    for w in workers:
        assert str(w["pid"]) in table
    # control socket is private
    mode = stat.S_IMODE(os.stat(tmp_path / "control.sock").st_mode)
    assert mode == 0o600
    assert (tmp_path / "monolaked.pid").read_text().strip() == str(m.proc.pid)


class _Load(threading.Thread):
    """Light closed-loop load of new connections; records every failure."""

    def __init__(self, port: int, path: str = "/") -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path, headers={"Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.errors.append(f"status {resp.status}")
            except OSError as exc:
                self.errors.append(repr(exc))
            time.sleep(0.005)


def test_killed_worker_is_respawned_on_its_slot_and_queue_is_kept(master_factory, tmp_path):
    port = free_port()
    m = master_factory(base_config(tmp_path, port))
    status = m.wait_ready()
    victim = status["workers"][0]
    load = _Load(port)
    load.start()
    try:
        wait_for(lambda: load.ok > 20, 10, what="load running")
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced():
            for w in m.status()["workers"]:
                if (
                    w["slot"] == victim["slot"]
                    and w["pid"] not in (None, victim["pid"])
                    and w["state"] == "ready"
                ):
                    return w
            return None

        new = wait_for(replaced, 30, what="respawned worker")
        # the first crash is respawned after respawn_backoff_initial (0.1 s, +-20 % jitter):
        # the master's decision, read from its log rather than timed on a shared machine
        (died,) = [e for e in m.log_events() if e.get("event") == "worker died; respawning"]
        assert died["pid"] == victim["pid"] and died["delay"] <= 0.1 * 1.2, died
        assert new["cpu"] == victim["cpu"]
        assert cpus_allowed(new["pid"]) == str(victim["cpu"])
        assert new["restarts"] == 1
        before = load.ok
        wait_for(lambda: load.ok > before + 20, 10, what="load after respawn")
    finally:
        load.stop.set()
        load.join(15)
    assert load.errors == []


def test_crashing_slot_backs_off_and_flaps_while_others_serve(master_factory, tmp_path):
    if NCPU < 2:
        pytest.skip("needs two CPUs: one slot crashes, the other serves")
    # A custom layer module that kills the worker pinned to CPU 1 at import time.
    crashy = tmp_path / "crashy_layer.py"
    cpus = sorted(os.sched_getaffinity(0))
    crashy.write_text(
        "import os\n"
        f"if os.sched_getaffinity(0) == {{{cpus[1]}}}:\n"
        "    os._exit(7)\n"
        "class Passthrough:\n"
        "    key = 'crashy'\n"
        "    def __init__(self, options):\n"
        "        pass\n"
        "    def make(self, inner, previous):\n"
        "        return inner\n"
    )
    port = free_port()
    config = base_config(
        tmp_path,
        port,
        supervisor="""
        respawn_backoff_initial = 0.05
        respawn_backoff_max = 0.8
        flapping_threshold = 3
        flapping_window = 60
    """,
        extra="""
        [[servers.web.layers]]
        factory = "crashy_layer:Passthrough"
    """,
    )
    m = master_factory(config, env={"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})

    def flapping():
        rows = m.status()["workers"]
        bad = [w for w in rows if w["cpu"] == cpus[1]]
        return bad and bad[0]["state"] == "flapping" and bad[0]["restarts"] >= 3 and rows

    rows = wait_for(flapping, 30, interval=0.1, what="slot flapping")
    good = [w for w in rows if w["cpu"] != cpus[1]]
    assert good and all(w["state"] == "ready" for w in good)
    for _ in range(20):
        assert http_get(port)[0] == 200
    # backoff grows: the delays between respawns logged by the master increase
    delays = [e["delay"] for e in m.log_events() if e.get("event") == "worker died; respawning"]
    assert len(delays) >= 3
    assert max(delays) > delays[0]
    assert m.proc.poll() is None


class _SlowUpstream:
    """An upstream that answers after a delay, to keep requests in flight; ``received``
    counts the requests that reached it."""

    def __init__(self, delay: float) -> None:
        delay_ = delay
        self.received = 0
        lock = threading.Lock()
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with lock:
                    outer.received += 1
                time.sleep(delay_)
                self.reply(b"slow ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GRACEFUL = 10  # graceful_timeout in base_config: how long a stop lets requests finish
SLOW = 2.0  # each in-flight request's upstream delay: well within it


@pytest.mark.parametrize("how", ["SIGTERM", "stop command"])
def test_stop_drains_in_flight_requests_and_cleans_up(master_factory, tmp_path, how):
    """A graceful stop (SIGTERM, or ``monolaked stop``) with slow requests in flight: each
    completes, the master exits once they have (not at graceful_timeout), and nothing is
    left behind."""
    upstream = _SlowUpstream(SLOW)
    port = free_port()
    unix_path = tmp_path / "web.sock"
    config = base_config(
        tmp_path,
        port,
        routes=f"""
        [[servers.web.routes]]
        path = "/slow"
        upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{upstream.port}/" }} }}]

        [servers.unixweb]
        proxy_type = "http"
        listener = {{ type = "unix", value = "{unix_path}" }}

        [[servers.unixweb.routes]]
        path = "/"
        upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
    """,
    )
    try:
        m = master_factory(config)
        m.wait_ready()
        pids = m.worker_pids()
        results: list[tuple[int, bytes] | str] = []

        def call() -> None:
            try:
                status, body, _ = http_get(port, "/slow", timeout=15)
                results.append((status, body))
            except OSError as exc:
                results.append(repr(exc))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        # every request is at the upstream (so in flight in a worker) when the stop comes
        wait_for(lambda: upstream.received == len(threads), SLOW, interval=0.005, what="requests in flight")
        t0 = time.monotonic()
        if how == "SIGTERM":
            assert m.stop(signal.SIGTERM, timeout=30) == 0
        else:
            stop = m.cli("stop", timeout=30)
            assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
            assert m.proc.wait(timeout=5) == 0
        took = time.monotonic() - t0
        for t in threads:
            t.join(15)
        assert len(results) == len(threads) and all(r == (200, b"slow ok") for r in results), results
        # answered in full, and the stop ended once they were, not at graceful_timeout
        assert took < GRACEFUL - 2, f"the stop took {took:.1f}s: it waited for graceful_timeout"
        wait_for(lambda: not any(pid_alive(p) for p in pids), 5, what="workers gone")
        assert not (tmp_path / "monolaked.pid").exists()
        assert not unix_path.exists()
        assert not (tmp_path / "control.sock").exists()
    finally:
        upstream.close()


def test_master_sigkill_takes_the_workers_down(master_factory, tmp_path):
    port = free_port()
    m = master_factory(base_config(tmp_path, port))
    m.wait_ready()
    pids = m.worker_pids()
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(5)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 2.0, what="workers gone after master death")
    wait_for(lambda: not listening_on(port), 2.0, what="listening socket released")


def test_bad_config_is_refused_by_check_and_start(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        base_config(tmp_path, free_port()).replace('runtime_type = "auto"', 'runtime_type = "turbo"')
    )
    check = subprocess.run([*MONOLAKED, "check", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    assert "runtime.runtime_type" in check.stderr and str(bad) in check.stderr
    start = subprocess.run([*MONOLAKED, "start", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert start.returncode == 1
    assert "runtime.runtime_type" in start.stderr
    good = tmp_path / "good.toml"
    good.write_text(base_config(tmp_path, free_port()))
    ok = subprocess.run([*MONOLAKED, "check", "-c", str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "web" in ok.stdout


def test_port_in_use_is_a_clear_start_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "m.toml"
        cfg.write_text(base_config(tmp_path, port))
        start = subprocess.run(
            [*MONOLAKED, "start", "-c", str(cfg)], capture_output=True, text=True, timeout=30
        )
    assert start.returncode == 1
    assert f"127.0.0.1:{port}" in start.stdout + start.stderr


BLOCKER = """
import time


class Blocker:
    key = "blocker"

    def __init__(self, options):
        pass

    def make(self, inner, previous):
        return BlockingService(inner)


class BlockingService:
    def __init__(self, inner):
        self.inner = inner

    async def call(self, request, ctx):
        if request.path == "/block":
            time.sleep(600)  # blocks the worker's event loop
        return await self.inner.call(request, ctx)
"""


def test_blocked_event_loop_is_dumped_killed_and_replaced(master_factory, tmp_path):
    (tmp_path / "blocker_layer.py").write_text(BLOCKER)
    port = free_port()
    config = base_config(
        tmp_path,
        port,
        supervisor="",
        extra="""
        [[servers.web.layers]]
        factory = "blocker_layer:Blocker"
    """,
    ).replace("heartbeat_timeout = 5", "heartbeat_timeout = 2")
    m = master_factory(
        config, args=["--workers", "1"], env={"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
    )
    status = m.wait_ready(1)
    victim = status["workers"][0]
    blocked = socket.create_connection(("127.0.0.1", port), timeout=30)
    blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")

    def replaced():
        rows = m.status()["workers"]
        return rows[0]["pid"] not in (None, victim["pid"]) and rows[0]["state"] == "ready" and rows

    wait_for(replaced, 20, interval=0.1, what="blocked worker replaced")
    blocked.close()
    log = m.log()
    assert "heartbeat missed" in log
    assert "blocker_layer.py" in log and "in call" in log  # faulthandler's stack dump
    assert http_get(port)[0] == 200


def test_embedded_default_config_serves_out_of_the_box(tmp_path):
    """`monolaked start` with no config: the demo server answers on 127.0.0.1:8080."""
    if listening_on(8080):
        pytest.skip("127.0.0.1:8080 is taken on this machine")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}  # the default control socket goes here
    log = open(tmp_path / "master.log", "wb")  # noqa: SIM115 - the master's, closed in finally
    master = subprocess.Popen([*MONOLAKED, "start"], stdout=log, stderr=subprocess.STDOUT, env=env)
    pids = [master.pid]
    try:

        def ready():
            out = subprocess.run(
                [*MONOLAKED, "status", "--json"], capture_output=True, text=True, env=env, timeout=30
            )
            if out.returncode != 0:
                return None
            import json

            st = json.loads(out.stdout)
            pids.extend(w["pid"] for w in st["workers"] if w.get("pid"))
            return all(w["state"] == "ready" for w in st["workers"]) and st

        st = wait_for(ready, 30, interval=0.1, what="default config ready")
        assert st["master"]["config"] == "(embedded default)"
        assert len(st["workers"]) == NCPU
        status, body, _ = http_get(8080)
        assert status == 200 and b"monolake" in body.lower()
        status, body, _ = http_get(8080, "/echo/hi")
        assert status == 200 and b"/echo/hi" in body
        stop = subprocess.run([*MONOLAKED, "stop"], capture_output=True, text=True, env=env, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert master.wait(30) == 0
        assert not (tmp_path / "monolaked.sock").exists()
    finally:
        from tests.support import kill_pids

        kill_pids([p for p in pids if pid_alive(p)])
        log.close()


def test_control_socket_precedence_flag_env_config_default(tmp_path, monkeypatch):
    """--control-socket, then $MONOLAKE_CONTROL_SOCKET, then the config's, then the default."""
    from monolake.supervisor import cli

    config = tmp_path / "monolake.toml"
    config.write_text(base_config(tmp_path, free_port()))
    monkeypatch.delenv("MONOLAKE_CONTROL_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))

    def resolved(*argv: str) -> str:
        return cli._control_path(cli.build_parser().parse_args(["status", *argv]))

    assert resolved() == str(tmp_path / "xdg" / "monolaked.sock")
    assert resolved("-c", str(config)) == str(tmp_path / "control.sock")
    monkeypatch.setenv("MONOLAKE_CONTROL_SOCKET", str(tmp_path / "env.sock"))
    assert resolved() == resolved("-c", str(config)) == str(tmp_path / "env.sock")
    assert resolved("-c", str(config), "--control-socket", str(tmp_path / "flag.sock")) == str(
        tmp_path / "flag.sock"
    )
    monkeypatch.setenv("MONOLAKE_CONTROL_SOCKET", "")  # empty: as if unset
    assert resolved("-c", str(config)) == str(tmp_path / "control.sock")
    help_text = subprocess.run(
        [*MONOLAKED, "status", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "MONOLAKE_CONTROL_SOCKET" in help_text


def test_control_socket_from_the_environment_for_start_and_commands(master_factory, tmp_path):
    """One variable in the environment of the master and of the commands: they meet on it,
    whatever the config says, and no -c is needed to reach the master."""
    port = free_port()
    env_sock = tmp_path / "env.sock"
    env = {"MONOLAKE_CONTROL_SOCKET": str(env_sock), "XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    m = master_factory(base_config(tmp_path, port), env=env)
    cli_env = {**os.environ, **env}

    def ready():
        out = subprocess.run(
            [*MONOLAKED, "status", "--json"], capture_output=True, text=True, env=cli_env, timeout=30
        )
        assert m.proc.poll() is None, m.log()
        if out.returncode != 0:
            return None
        import json

        st = json.loads(out.stdout)
        m.seen_pids.update(w["pid"] for w in st["workers"] if w.get("pid"))
        return all(w["state"] == "ready" for w in st["workers"]) and st

    wait_for(ready, 30, interval=0.1, what="workers ready, found through the environment")
    assert env_sock.exists() and not (tmp_path / "control.sock").exists()
    assert http_get(port)[0] == 200
    stop = subprocess.run(
        [*MONOLAKED, "stop", "-c", str(m.config_path)],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    assert m.proc.wait(timeout=30) == 0
    assert not env_sock.exists()


def test_status_marks_a_silent_worker_unresponsive_and_its_lag_grows(master_factory, tmp_path):
    """A worker under SIGSTOP used to show `ready` with a frozen lag until the watchdog fired.
    After three missed heartbeats it is `unresponsive`, with the age of its last heartbeat, and
    its lag grows while it is silent; it is `ready` again once it answers."""
    port = free_port()
    cfg = base_config(tmp_path, port).replace("heartbeat_timeout = 5", "heartbeat_timeout = 60")
    assert "heartbeat_timeout = 60" in cfg  # the watchdog stays out of this test
    m = master_factory(cfg)
    victim = m.wait_ready()["workers"][0]
    beat = 0.5  # heartbeat_interval in base_config

    def row() -> dict:
        return next(w for w in m.status()["workers"] if w["slot"] == victim["slot"])

    # polled: a single sample could catch the worker starved of CPU on a shared machine
    wait_for(
        lambda: row()["state"] == "ready" and row()["heartbeat_age"] < 3 * beat,
        10,
        what="ready with a fresh heartbeat",
    )
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        wait_for(lambda: row()["state"] == "unresponsive", 3 * beat + 5, what="unresponsive")
        first = row()
        assert first["heartbeat_age"] > 3 * beat and first["lag"] > 1.5 * beat
        wait_for(lambda: row()["lag"] > first["lag"] + 0.5, 5, what="lag growing while silent")
        text = m.cli("status").stdout
        assert "unresponsive" in text and "BEAT" in text
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    wait_for(lambda: row()["state"] == "ready" and row()["lag"] < 1.0, 10, what="ready again")
