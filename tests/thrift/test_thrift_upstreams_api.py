"""``monolaked upstreams`` on a Thrift proxy against a real daemon and real thriftpy2 backends
(issue 15 §3): list, drain with a call in flight, disable/enable, weight, add and remove, the
refusals, and what is kept across a reload."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, wait_for
from tests.thrift.thrift_support import backend, client, endpoint, whoami


@pytest.fixture
def three() -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(backend("framed", name=f"t{i}"))[0] for i in (1, 2, 3)]


def config(tmp: Path, port: int, addrs: list[str], balancer: str = "round_robin", workers: int = 2) -> str:
    ups = ", ".join(f"{{ endpoint = {endpoint(a)} }}" for a in addrs)
    return f"""
[runtime]
workers = {workers}

[supervisor]
control_socket = "{tmp}/control.sock"
log_format = "json"
heartbeat_interval = 0.5
graceful_timeout = 5
drain_timeout = 5
reload_timeout = 20

[servers.rpc]
proxy_type = "thrift"
listener = {{ type = "socket", value = "127.0.0.1:{port}" }}
route = {{ load_balancer = "{balancer}", upstreams = [{ups}] }}
"""


def upstreams(m: Any, *args: str, ok: bool = True) -> dict:
    r = m.cli("upstreams", *args, "--json", timeout=30)
    assert (r.returncode == 0) == ok, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def row(listing: dict, address: str) -> dict:
    return next(r for r in listing["upstreams"] if r["address"] == address)


def test_list_disable_enable_weight(master_factory, tmp_path, three) -> None:
    a1, a2, _ = three
    port = free_port()
    m = master_factory(config(tmp_path, port, [a1, a2], balancer="weighted_random"))
    m.wait_ready()
    whoami(port, 6)
    listing = upstreams(m)
    r1 = row(listing, a1)
    assert r1["server"] == "rpc" and r1["route"] == "(default)" and r1["proxy"] == "thrift", r1
    assert r1["state"] == "up" and r1["balancer"] == "weighted_random" and len(r1["per_worker"]) == 2
    assert sum(row(listing, a)["requests"] for a in (a1, a2)) == 6
    assert upstreams(m, "disable", "rpc", a1)["ok"]
    assert row(upstreams(m), a1)["state"] == "disabled"
    assert set(whoami(port, 12)) == {"t2"}
    assert upstreams(m, "enable", "rpc", a1)["ok"]
    assert upstreams(m, "weight", "rpc", a2, "30")["ok"]
    got = whoami(port, 150)
    assert got.count("t2") / len(got) > 0.85, got.count("t2")  # 30:1 expects ~0.97


def test_drain_and_remove_let_calls_in_flight_finish(master_factory, tmp_path, three) -> None:
    a1, a2, a3 = three
    port = free_port()
    m = master_factory(config(tmp_path, port, [a1, a2], balancer="first", workers=1))
    m.wait_ready()
    assert set(whoami(port, 3)) == {"t1"}
    slow: dict = {}

    def call() -> None:
        c = client(f"127.0.0.1:{port}", timeout=20)
        try:
            slow["r"] = c.slow(1.5, "late")
        finally:
            c.close()

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: row(upstreams(m), a1)["active"] == 1, timeout=10, what="the slow call on t1")
    out = upstreams(m, "remove", "rpc", "(default)", a1)
    assert out["ok"] and out["workers"][0]["applied"] == 1, out
    assert [r["address"] for r in upstreams(m)["upstreams"]] == [a2]
    assert set(whoami(port, 4)) == {"t2"}
    t.join(20)
    assert slow["r"] == "late"  # the call in flight on the removed upstream finished

    out = upstreams(m, "add", "rpc", "default", a3, "--weight", "2")
    assert out["ok"], out
    assert row(upstreams(m), a3)["weight"] == 2
    assert upstreams(m, "drain", "rpc", a2)["ok"]
    assert set(whoami(port, 4)) == {"t3"}
    wait_for(lambda: row(upstreams(m), a2)["idle"] == 0, timeout=5, what="t2's idle connections closed")
    assert upstreams(m, "enable", "rpc", a2)["ok"]
    assert set(whoami(port, 3)) == {"t2"}  # "first": t2 leads the list again

    r = m.cli("reload", timeout=60)
    assert r.returncode == 0, r.stderr
    m.wait_ready()
    listing = upstreams(m)
    assert listing["generation"] == 2
    assert sorted(r["address"] for r in listing["upstreams"]) == sorted([a2, a3])
    assert row(listing, a3)["weight"] == 2


def test_refusals_change_nothing(master_factory, tmp_path, three) -> None:
    a1, a2, _ = three
    port = free_port()
    m = master_factory(config(tmp_path, port, [a1], workers=1))
    m.wait_ready()
    for args, needle in (
        (("add", "rpc", "/", a2), "has no route '/'"),
        (("add", "rpc", "(default)", a1), "already an endpoint"),
        (("add", "rpc", "(default)", f"http://{a2}"), "expected"),
        (("add", "rpc", "(default)", "backend.internal:9090"), "expected an IP address"),
        (("remove", "rpc", "(default)", a1), "is the last endpoint"),
        (("remove", "rpc", "(default)", a2), f"has no endpoint {a2}"),
        (("drain", "rpc", a2), f"has no upstream {a2}"),
    ):
        r = m.cli("upstreams", *args)
        assert r.returncode == 1 and needle in r.stderr, (args, r.returncode, r.stderr)
    listing = upstreams(m)
    assert [(r["address"], r["state"]) for r in listing["upstreams"]] == [(a1, "up")]
    assert listing["edits"] == [] and listing["overrides"] == []
    assert set(whoami(port, 3)) == {"t1"}
