"""``monolaked upstreams``: the runtime upstream API against a real daemon and real loopback
upstreams (issue 15 §3): list, drain with a request in flight, disable/enable, weight, the
errors, and overrides kept across a reload and a respawn until the config changes them."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness import base_config, http_get
from tests.support import free_port, pid_alive, wait_for


class Backend:
    """Answers its name; a request with ``slow`` in its target (the query is forwarded) waits for ``gate`` first. Counts the requests it served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.gate = threading.Event()
        self.slow_started = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # head and body in one send: written apart, Nagle holds the body back until the
            # proxy's delayed ACK (~40 ms a request, a closed-loop client at ~20 requests/s)
            wbufsize = 1 << 16

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits += 1
                if "slow" in self.path:  # whatever prefix the proxy maps the path to
                    outer.slow_started.set()
                    outer.gate.wait(20)
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self._lock:
            return self.hits

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    made = [Backend("b1"), Backend("b2")]
    yield made
    for b in made:
        b.close()


def config(
    tmp: Path,
    port: int,
    bs: list[Backend],
    balancer: str = "round_robin",
    weights: tuple[int, int] = (1, 1),
    workers: int = 2,
    supervisor: str = "",
) -> str:
    ups = ", ".join(
        f'{{ endpoint = {{ type = "uri", value = "http://{b.address}" }}, weight = {w} }}'
        for b, w in zip(bs, weights, strict=True)
    )
    routes = textwrap.dedent(f"""
        [[servers.web.routes]]
        path_prefix = "/"
        load_balancer = "{balancer}"
        upstreams = [{ups}]
    """)
    return base_config(tmp, port, runtime=f"workers = {workers}", routes=routes, supervisor=supervisor)


def upstreams(m, *args: str, ok: bool = True) -> dict:
    """``monolaked upstreams ARGS --json``; asserts the exit code."""
    r = m.cli("upstreams", *args, "--json", timeout=30)
    assert (r.returncode == 0) == ok, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr}


def row(listing: dict, address: str) -> dict:
    return next(r for r in listing["upstreams"] if r["address"] == address)


def hits(port: int, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        status, body, _ = http_get(port, "/x")
        assert status == 200, (status, body)
        out.append(body)
    return out


def wait_state(m, address: str, state: str, timeout: float = 15) -> dict:
    """The listing row of ``address`` once every worker reports ``state``."""

    def settled() -> dict | None:
        r = row(upstreams(m), address)
        workers = m.status()["master"]["workers"]
        return r if r["state"] == state and len(r["per_worker"]) == workers else None

    return wait_for(settled, timeout=timeout, what=f"{address} {state} in every worker")  # type: ignore[arg-type,return-value]


def test_list_text_and_json(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, backends, weights=(3, 1)))
    m.wait_ready()
    hits(port, 6)
    listing = upstreams(m)
    assert listing["ok"] and listing["op"] == "list"
    assert len(listing["workers"]) == 2 and all(w["ok"] for w in listing["workers"])
    r1 = row(listing, b1.address)
    assert r1["server"] == "web" and r1["route"] == "/*" and r1["weight"] == 3
    assert r1["state"] == "up" and r1["balancer"] == "round_robin"
    assert {"active", "idle", "requests", "per_worker", "upstream"} <= set(r1)
    assert len(r1["per_worker"]) == 2
    total = sum(row(listing, b.address)["requests"] for b in backends)
    assert total == b1.count() + b2.count() == 6
    text = m.cli("upstreams").stdout
    assert "ADDRESS" in text and b1.address in text and b2.address in text, text
    assert "2 of 2 workers answered" in text, text


def test_drain_lets_in_flight_finish_then_no_new_requests(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, backends, balancer="first", workers=1))
    m.wait_ready()
    hits(port, 3)
    assert b1.count() == 3 and b2.count() == 0  # "first": b1 takes everything
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.update(r=http_get(port, "/?slow=1", timeout=30)))
    t.start()
    assert b1.slow_started.wait(10)
    out = upstreams(m, "drain", "web", b1.address)
    assert out["ok"] and out["workers"][0]["applied"] == 1, out
    r1 = row(upstreams(m), b1.address)
    assert r1["state"] == "draining" and r1["active"] == 1, r1
    before = b1.count()
    assert set(hits(port, 5)) == {b"b2"}  # new requests go to b2 while b1's one is in flight
    b1.gate.set()
    t.join(20)
    assert slow["r"][0] == 200 and slow["r"][1] == b"b1"  # the in-flight one finished
    hits(port, 5)
    assert b1.count() == before
    wait_for(lambda: row(upstreams(m), b1.address)["idle"] == 0, timeout=10, what="b1 idle closed")
    assert upstreams(m, "enable", "web", b1.address)["ok"]
    assert set(hits(port, 3)) == {b"b1"}


def test_disable_enable_shift_traffic(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, backends))
    m.wait_ready()
    hits(port, 10)
    assert b1.count() and b2.count()
    assert upstreams(m, "disable", "web", b2.address)["ok"]
    assert row(upstreams(m), b2.address)["state"] == "disabled"
    n2 = b2.count()
    assert set(hits(port, 20)) == {b"b1"} and b2.count() == n2
    assert upstreams(m, "enable", "web", b2.address)["ok"]
    assert row(upstreams(m), b2.address)["state"] == "up"
    hits(port, 20)
    assert b2.count() > n2


def test_weight_shifts_the_ratio(master_factory, tmp_path, backends) -> None:
    b2 = backends[1]
    port = free_port()
    m = master_factory(config(tmp_path, port, backends, balancer="weighted_random", workers=1))
    m.wait_ready()
    out = upstreams(m, "weight", "web", b2.address, "20")
    assert out["ok"], out
    assert row(upstreams(m), b2.address)["weight"] == 20
    got = hits(port, 210)
    share = got.count(b"b2") / len(got)
    assert share > 0.8, share  # 20:1 expects ~0.95; 1:1 would be ~0.5


def test_unknown_server_address_and_bad_weight_fail_clearly(master_factory, tmp_path, backends) -> None:
    port = free_port()
    m = master_factory(config(tmp_path, port, backends, workers=1))
    m.wait_ready()
    for args, needle in (
        (("drain", "nope", backends[0].address), "unknown server 'nope'"),
        (("disable", "web", "127.0.0.1:1"), "has no upstream 127.0.0.1:1"),
        (("drain", "web", "garbage"), "is not ADDRESS:PORT"),
        (("weight", "web", backends[0].address, "0"), "weight: expected 1 to"),
    ):
        r = m.cli("upstreams", *args)
        assert r.returncode == 1 and needle in r.stderr, (args, r.returncode, r.stderr)
    r = m.cli("upstreams", "weight", "web", backends[0].address)
    assert r.returncode == 1 and "usage" in r.stderr


def test_overrides_survive_reload_and_respawn_until_the_config_changes(
    master_factory, tmp_path, backends
) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, backends))
    m.wait_ready()
    assert upstreams(m, "disable", "web", b2.address)["ok"]
    assert upstreams(m, "weight", "web", b1.address, "7")["ok"]
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    listing = upstreams(m)
    assert listing["generation"] == 2
    assert row(listing, b2.address)["state"] == "disabled"
    assert row(listing, b1.address)["weight"] == 7
    n2 = b2.count()
    assert set(hits(port, 10)) == {b"b1"} and b2.count() == n2

    victim = m.status()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: not pid_alive(victim) and victim not in m.worker_pids() and len(m.ready_workers()) == 2,
        timeout=20,
        what="respawn",
    )
    r2 = wait_state(m, b2.address, "disabled")
    assert all(w["state"] == "disabled" for w in r2["per_worker"]), r2
    assert set(hits(port, 10)) == {b"b1"}

    # the config changes b2's entry (its weight): its override goes; b1's entry is unchanged
    m.config_path.write_text(config(tmp_path, port, backends, weights=(1, 2)))
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    listing = upstreams(m)
    assert row(listing, b2.address)["state"] == "up" and row(listing, b2.address)["weight"] == 2
    assert row(listing, b1.address)["weight"] == 7
    assert [o["address"] for o in listing["overrides"]] == [b1.address]
    hits(port, 10)
    assert b2.count() > n2


def test_override_survives_an_in_place_reload(master_factory, tmp_path, backends) -> None:
    b2 = backends[1]
    port = free_port()
    m = master_factory(config(tmp_path, port, backends, workers=1, supervisor='reload_mode = "in_place"'))
    m.wait_ready()
    assert upstreams(m, "disable", "web", b2.address)["ok"]
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    listing = upstreams(m)
    assert listing["ok"] and listing["generation"] == 2, listing
    assert row(listing, b2.address)["state"] == "disabled"
    n2 = b2.count()
    assert set(hits(port, 10)) == {b"b1"} and b2.count() == n2
