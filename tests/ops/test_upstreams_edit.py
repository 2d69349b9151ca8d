"""``monolaked upstreams add|remove SERVER ROUTE URI``: endpoints added to and removed from an
HTTP route at runtime against a real daemon (issue 15 §3): applied to every worker without a
reload and answered per worker, kept across a reload of the same config and a respawn until
the config changes that route, removal drains, and refusals change nothing."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

from tests.harness import base_config, http_get
from tests.ops.conftest import Backend
from tests.ops.test_upstreams_api import hits, row, upstreams
from tests.support import free_port, wait_for


def config(
    tmp: Path,
    port: int,
    entries: list[tuple[Backend, int]],
    balancer: str = "round_robin",
    workers: int = 2,
    extra_route: str = "",
) -> str:
    ups = ", ".join(
        f'{{ endpoint = {{ type = "uri", value = "http://{b.address}" }}, weight = {w} }}' for b, w in entries
    )
    routes = (
        textwrap.dedent(f"""
        [[servers.web.routes]]
        path_prefix = "/"
        load_balancer = "{balancer}"
        upstreams = [{ups}]

        [[servers.web.routes]]
        path = "/hello"
        upstreams = [{{ endpoint = {{ type = "builtin", value = "hello" }} }}]
    """)
        + extra_route
    )
    return base_config(tmp, port, runtime=f"workers = {workers}", routes=routes)


def addresses(m) -> list[str]:
    return sorted(r["address"] for r in upstreams(m)["upstreams"] if r["route"] == "/*")


def test_add_reaches_every_worker_and_survives_reload_and_respawn(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, [(b1, 1)]))
    m.wait_ready()
    assert set(hits(port, 4)) == {b"b1"}
    out = upstreams(m, "add", "web", "/", f"http://{b2.address}", "--weight", "3")
    assert out["ok"] and out["op"] == "add", out
    assert [(w["ok"], w["applied"]) for w in out["workers"]] == [(True, 1), (True, 1)], out
    assert [e["address"] for e in out["edits"]] == [b2.address]
    r2 = row(upstreams(m), b2.address)
    assert r2["weight"] == 3 and r2["state"] == "up" and len(r2["per_worker"]) == 2, r2
    got = hits(port, 20)
    assert got.count(b"b2") >= 8 and got.count(b"b1") >= 8, got  # round robin over both
    text = m.cli("upstreams", "add", "web", "/", f"http://{b2.address}")
    assert text.returncode == 1 and "already an endpoint" in text.stderr, text.stderr

    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    listing = upstreams(m)
    assert listing["generation"] == 2 and row(listing, b2.address)["weight"] == 3
    n2 = b2.count()
    hits(port, 10)
    assert b2.count() > n2

    m.kill_worker_and_await_respawn(workers=2)
    wait_for(
        lambda: len(row(upstreams(m), b2.address)["per_worker"]) == 2,
        timeout=10,
        what="the added endpoint in the respawned worker",
    )

    # the config changes the route's upstreams: the runtime addition goes, the config holds
    m.config_path.write_text(config(tmp_path, port, [(b1, 2)]))
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    listing = upstreams(m)
    assert addresses(m) == [b1.address] and listing["edits"] == [], listing["edits"]
    n2 = b2.count()
    assert set(hits(port, 6)) == {b"b1"} and b2.count() == n2


def test_remove_drains_in_flight_then_no_new_requests(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, [(b1, 1), (b2, 1)], balancer="first", workers=1))
    m.wait_ready()
    hits(port, 3)
    assert b1.count() == 3
    wait_for(lambda: row(upstreams(m), b1.address)["idle"] >= 1, timeout=5, what="an idle connection to b1")
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.update(r=http_get(port, "/?slow=1", timeout=30)))
    t.start()
    assert b1.slow_started.wait(10)
    out = upstreams(m, "remove", "web", "/*", f"http://{b1.address}")
    assert out["ok"] and out["workers"][0]["applied"] == 1, out
    assert addresses(m) == [b2.address]
    before = b1.count()
    assert set(hits(port, 5)) == {b"b2"}  # no new request to b1 while its one is in flight
    b1.gate.set()
    t.join(20)
    assert slow["r"][0] == 200 and slow["r"][1] == b"b1"  # the in-flight one finished
    assert set(hits(port, 5)) == {b"b2"} and b1.count() == before

    # kept across a reload of the same config; add undoes it
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    assert addresses(m) == [b2.address]
    assert set(hits(port, 4)) == {b"b2"} and b1.count() == before
    out = upstreams(m, "add", "web", "/", f"http://{b1.address}")
    assert out["ok"] and out["edits"] == [], out
    assert addresses(m) == sorted([b1.address, b2.address])


def test_refusals_are_clear_and_change_nothing(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, [(b1, 1)], workers=2))
    m.wait_ready()
    before = upstreams(m)["upstreams"]
    for args, needle in (
        (("add", "nope", "/", f"http://{b2.address}"), "unknown server 'nope'"),
        (("add", "web", "/api", f"http://{b2.address}"), "has no route '/api'"),
        (("add", "web", "/", f"http://{b1.address}"), "already an endpoint"),
        (("add", "web", "/", "http://app.internal:8080"), "expected an IP address"),
        (("add", "web", "/", "ftp://127.0.0.1:21"), "expected an http:// or https:// URI"),
        (("add", "web", "/", b2.address), "expected an http:// or https:// URI"),
        (("add", "web", "/", "http://127.0.0.1:99999"), "port from 1 to 65535"),
        (("add", "web", "/", f"http://{b2.address}", "--weight", "0"), "weight: expected 1 to"),
        (("add", "web", "/hello", f"http://{b2.address}"), "serves a builtin"),
        (("remove", "web", "/", f"http://{b1.address}"), "is the last endpoint"),
        (("remove", "web", "/", f"http://{b2.address}"), f"has no endpoint {b2.address}"),
        (("remove", "web", "/", "garbage"), "expected"),
    ):
        r = m.cli("upstreams", *args)
        assert r.returncode == 1 and needle in r.stderr, (args, r.returncode, r.stderr)
    r = m.cli("upstreams", "add", "web", "/")
    assert r.returncode == 1 and "usage: monolaked upstreams add SERVER ROUTE URI" in r.stderr, r.stderr
    after = upstreams(m)
    assert [(x["address"], x["weight"], x["state"]) for x in after["upstreams"]] == [
        (x["address"], x["weight"], x["state"]) for x in before
    ]
    assert after["edits"] == [] and after["overrides"] == []
    assert set(hits(port, 4)) == {b"b1"}


def test_operator_state_on_an_added_endpoint_is_kept(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, [(b1, 1)], workers=1))
    m.wait_ready()
    assert upstreams(m, "add", "web", "/", f"http://{b2.address}")["ok"]
    assert upstreams(m, "disable", "web", b2.address)["ok"]
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    assert row(upstreams(m), b2.address)["state"] == "disabled"
    n2 = b2.count()
    assert set(hits(port, 6)) == {b"b1"} and b2.count() == n2
    assert upstreams(m, "remove", "web", "/", f"http://{b2.address}")["ok"]
    assert addresses(m) == [b1.address]


def test_no_failed_request_while_endpoints_are_added_and_removed_under_load(
    master_factory, tmp_path, backends
) -> None:
    """A closed-loop client runs while b2 is added and b1 removed (and back, three rounds):
    every request answers 200, the added endpoint takes traffic as soon as the command returns,
    the removed one none after it."""
    import time

    from tests.discovery.conftest import Load

    b1, b2 = backends
    port = free_port()
    m = master_factory(config(tmp_path, port, [(b1, 1)]))
    m.wait_ready()
    load = Load(port, clients=4)
    joins: list[float] = []
    leaves: list[float] = []

    def more(n: int) -> None:
        before = load.snapshot()
        wait_for(lambda: sum(load.since(before).values()) > n, timeout=10, what=f"{n} more requests")

    def grows(b: Backend, seen: int) -> None:
        wait_for(lambda: b.count() > seen, timeout=5, what=f"traffic to {b.name}")

    try:
        grows(b1, 20)
        for old, new in ((b1, b2), (b2, b1), (b1, b2)):
            t0 = time.monotonic()
            seen = new.count()
            assert upstreams(m, "add", "web", "/", f"http://{new.address}")["ok"]
            done = time.monotonic()
            grows(new, seen)
            joins.append(time.monotonic() - t0)
            assert time.monotonic() - done < 2.0
            t0 = time.monotonic()
            assert upstreams(m, "remove", "web", "/", f"http://{old.address}")["ok"]
            leaves.append(time.monotonic() - t0)
            more(20)  # a request dispatched just before the command may still land
            gone = old.count()
            more(50)
            assert old.count() == gone  # nothing reaches the removed endpoint any more
    finally:
        load.stop()
    total = sum(load.snapshot().values())
    print(
        f"\nadd -> first request: {[round(x, 3) for x in joins]} s; remove applied in "
        f"{[round(x, 3) for x in leaves]} s; {len(load.failures)} failed of {total + len(load.failures)}"
    )
    assert load.failures == [], load.failures[:5]


def test_remove_closes_the_pooled_idle_connections(master_factory, tmp_path) -> None:
    from tests.discovery.backends import Backends

    bs = Backends()
    try:
        c1, c2 = bs.add("127.0.0.1", 0, "c1"), bs.add("127.0.0.1", 0, "c2")
        port = free_port()
        ups = ", ".join(
            f'{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:{c.port}" }} }}' for c in (c1, c2)
        )
        routes = (
            f'[[servers.web.routes]]\npath_prefix = "/"\nload_balancer = "round_robin"\nupstreams = [{ups}]\n'
        )
        m = master_factory(base_config(tmp_path, port, runtime="workers = 1", routes=routes))
        m.wait_ready()
        for _ in range(6):
            assert http_get(port, "/x")[0] == 200
        assert c1.open_connections >= 1 and c2.open_connections >= 1  # pooled, idle
        assert upstreams(m, "remove", "web", "/", f"http://127.0.0.1:{c1.port}")["ok"]
        wait_for(lambda: c1.open_connections == 0, timeout=5, what="c1's idle connections closed")
        assert c2.open_connections >= 1
        n1 = c1.requests
        for _ in range(4):
            assert http_get(port, "/x")[1] == b"c2"
        assert c1.requests == n1
    finally:
        bs.close()


def test_add_and_remove_survive_an_in_place_reload(master_factory, tmp_path, backends) -> None:
    b1, b2 = backends
    port = free_port()
    text = config(tmp_path, port, [(b1, 1)], workers=1).replace(
        "[supervisor]\n", '[supervisor]\nreload_mode = "in_place"\n', 1
    )
    m = master_factory(text)
    m.wait_ready()
    assert upstreams(m, "add", "web", "/", f"http://{b2.address}")["ok"]
    assert upstreams(m, "remove", "web", "/", f"http://{b1.address}")["ok"]
    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    assert m.status()["master"]["reloads"][-1]["mode"] == "in_place"
    listing = upstreams(m)
    assert listing["generation"] == 2 and addresses(m) == [b2.address], listing
    n1 = b1.count()
    assert set(hits(port, 5)) == {b"b2"} and b1.count() == n1
