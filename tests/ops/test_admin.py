"""The admin listener of a real master: /metrics, /status, /healthz, and counters that survive
worker restarts and reloads."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

from tests.harness import base_config, http_get
from tests.ops.conftest import admin_get, admin_section, scrape
from tests.support import free_port, wait_for


def web_requests(admin_port: int) -> float:
    return scrape(admin_port).total("monolake_requests", server="web")


def test_endpoints(master_factory, tmp_path, admin_port):
    port = free_port()
    m = master_factory(base_config(tmp_path, port, extra=admin_section(admin_port)))
    status = m.wait_ready()
    assert status["master"]["admin"] == f"127.0.0.1:{admin_port}"
    nworkers = status["master"]["workers"]

    code, headers, body = admin_get(admin_port, "/healthz")
    assert code == 200 and body.decode().startswith(f"ok: {nworkers} of {nworkers} workers ready")

    # /status is the JSON of `monolaked status --json`
    code, headers, body = admin_get(admin_port, "/status")
    assert code == 200 and headers["content-type"] == "application/json"
    over_http = json.loads(body)
    over_cli = m.status()
    assert over_http.keys() == over_cli.keys() == {"master", "workers"}
    assert over_http["master"].keys() == over_cli["master"].keys()
    assert [(w["slot"], w["pid"], w["state"]) for w in over_http["workers"]] == [
        (w["slot"], w["pid"], w["state"]) for w in over_cli["workers"]
    ]
    assert over_http["workers"][0].keys() == over_cli["workers"][0].keys()

    # traffic shows up per server and per worker, with the status classes and the histogram
    for _ in range(12):
        assert http_get(port, "/")[0] == 200
    assert http_get(port, "/no/such/route")[0] == 404
    wait_for(lambda: web_requests(admin_port) >= 13, 10, 0.1, "requests in /metrics")
    page = scrape(admin_port)
    assert page.total("monolake_requests", server="web") == 13
    assert page.total("monolake_responses", server="web", code="2xx") == 12
    assert page.total("monolake_responses", server="web", code="4xx") == 1
    assert page.total("monolake_connections", server="web") == 13
    assert page.total("monolake_received_bytes", server="web") > 0
    assert page.total("monolake_sent_bytes", server="web") > 0
    assert page.total("monolake_open_connections", server="web") == 0
    assert page.total("monolake_active_requests", server="web") == 0
    workers = {s.labels["worker"] for s in page.families["monolake_requests"].samples}
    assert workers == {str(i) for i in range(nworkers)}
    assert page.total("monolake_worker_up") == nworkers
    assert all(v < 1.0 for v in page.values("monolake_event_loop_lag_seconds"))
    assert page.one("monolake_generation") == 1
    h = "monolake_request_duration_seconds"
    assert page.total(h, h + "_count", server="web") == 13
    assert page.total(h, h + "_bucket", server="web", le="+Inf") == 13
    assert page.total(h, h + "_bucket", server="web", le="5.0") == 13  # builtin hello: fast
    assert 0 < page.total(h, h + "_sum", server="web") < 13 * 5.0

    # plain HTTP behaviour: 404, 405, HEAD, keep-alive
    assert admin_get(admin_port, "/nope")[0] == 404
    code, headers, _ = admin_get(admin_port, "/metrics", method="POST")
    assert code == 405 and headers["allow"] == "GET, HEAD"
    code, headers, body = admin_get(admin_port, "/metrics", method="HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 100
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        for path in ("/healthz", "/status", "/metrics?x=1"):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
    finally:
        conn.close()


def test_admin_is_off_by_default(master_factory, tmp_path):
    m = master_factory(base_config(tmp_path, free_port()))
    assert m.wait_ready()["master"]["admin"] == ""
    assert "admin listener started" not in m.log()


def test_admin_address_in_use_fails_the_start(master_factory, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        m = master_factory(base_config(tmp_path, free_port(), extra=admin_section(taken)))
        assert m.proc.wait(timeout=30) == 1
        assert f"cannot listen on 127.0.0.1:{taken} (admin)" in m.log()


class Watcher(threading.Thread):
    """Scrapes /metrics in a loop and records every time a counter went backwards."""

    def __init__(self, admin_port: int) -> None:
        super().__init__(daemon=True)
        self.admin_port = admin_port
        self.stop = threading.Event()
        self.backwards: list[tuple[float, float]] = []
        self.scrapes = 0

    def run(self) -> None:
        last = 0.0
        while not self.stop.is_set():
            try:
                value = web_requests(self.admin_port)
            except (OSError, AssertionError):
                continue
            self.scrapes += 1
            if value < last:
                self.backwards.append((last, value))
            last = max(last, value)
            time.sleep(0.01)


def test_totals_survive_worker_restart_and_reload(master_factory, tmp_path, admin_port):
    port = free_port()
    m = master_factory(
        base_config(
            tmp_path, port, extra=admin_section(admin_port), supervisor="respawn_backoff_initial = 0.05"
        )
    )
    status = m.wait_ready()
    n = status["master"]["workers"]
    watcher = Watcher(admin_port)
    watcher.start()
    try:
        sent = 0
        for _ in range(10):
            sent += http_get(port)[0] == 200
        wait_for(lambda: web_requests(admin_port) == sent, 10, 0.1, "requests counted")

        # a worker killed outright: its slot keeps its totals, the restart is counted
        victim = status["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(
            lambda: any(
                w["slot"] == 0 and w["state"] == "ready" and w["pid"] != victim["pid"]
                for w in m.status()["workers"]
            ),
            20,
            0.1,
            "slot 0 respawned",
        )
        page = scrape(admin_port)
        assert page.one("monolake_worker_restarts", worker="0") == 1
        assert page.total("monolake_requests", server="web") == sent
        for _ in range(10):
            sent += http_get(port)[0] == 200
        wait_for(lambda: web_requests(admin_port) == sent, 10, 0.1, "requests after restart")

        # a generation reload: the new workers import the counters, nothing is counted twice
        result = m.cli("reload")
        assert result.returncode == 0, result.stderr
        page = scrape(admin_port)
        assert page.one("monolake_generation") == 2
        assert page.one("monolake_reloads", result="ok") == 1
        assert page.one("monolake_last_reload_success") == 1
        for _ in range(10):
            sent += http_get(port)[0] == 200
        wait_for(lambda: web_requests(admin_port) == sent, 10, 0.1, "requests after reload")
        wait_for(
            lambda: not [w for w in m.status()["workers"] if w["state"] == "draining"],
            20,
            0.1,
            "old generation gone",
        )
        assert web_requests(admin_port) == sent == 30
        page = scrape(admin_port)
        assert page.total("monolake_responses", server="web", code="2xx") == 30
        h = "monolake_request_duration_seconds"
        assert page.total(h, h + "_count", server="web") == 30  # the histogram carries over too

        # a failed reload is counted and changes nothing
        good = m.config_path.read_text()
        m.config_path.write_text(good + "\n[bogus]\n")
        failed = m.cli("reload", "--control-socket", str(tmp_path / "control.sock"))
        assert failed.returncode == 1 and "invalid config" in failed.stderr
        m.config_path.write_text(good)
        page = scrape(admin_port)
        assert page.one("monolake_reloads", result="failed") == 1
        assert page.one("monolake_last_reload_success") == 0
        assert page.one("monolake_generation") == 2
        assert page.total("monolake_worker_up") == n
    finally:
        watcher.stop.set()
        watcher.join(5)
    assert watcher.scrapes > 10
    assert watcher.backwards == [], "a counter went backwards during restart/reload"


def test_reload_moves_and_removes_the_admin_listener(master_factory, tmp_path, admin_port):
    port, moved = free_port(), free_port()
    config = base_config(tmp_path, port, supervisor='reload_mode = "in_place"')
    m = master_factory(config + admin_section(admin_port))
    m.wait_ready()
    assert admin_get(admin_port, "/healthz")[0] == 200

    def refused(p: int) -> bool:
        try:
            admin_get(p, "/healthz", timeout=2)
        except ConnectionRefusedError:
            return True
        return False

    m.config_path.write_text(config + admin_section(moved))
    assert m.cli("reload").returncode == 0
    wait_for(lambda: admin_get(moved, "/healthz")[0] == 200, 10, 0.1, "admin on the new port")
    assert refused(admin_port)
    assert m.status()["master"]["admin"] == f"127.0.0.1:{moved}"
    m.config_path.write_text(config)
    assert m.cli("reload").returncode == 0
    wait_for(lambda: refused(moved), 10, 0.1, "admin listener closed")
    assert m.status()["master"]["admin"] == ""
