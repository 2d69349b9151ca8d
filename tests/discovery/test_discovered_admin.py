"""Addresses found by DNS in the runtime API, ``monolaked status`` and ``/metrics``, and what
an operator's change to one does when the name re-resolves (docs/operations.md, "Runtime API":
it stays with the address while the config holds, also when the address leaves the answer and
comes back, and in a respawned worker once DNS has answered). Real monolaked, real dnsmasq."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from tests.harness import base_config, http_get
from tests.support import free_port, wait_for


def upstreams(m: Any, *args: str, ok: bool = True) -> dict:
    r = m.cli("upstreams", *args, "--json", timeout=30)
    assert (r.returncode == 0) == ok, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def states(m: Any) -> dict[str, tuple[str, int]]:
    """address -> (state, workers reporting it) for every row of the route."""
    return {r["address"]: (r["state"], len(r["per_worker"])) for r in upstreams(m)["upstreams"]}


def bodies(port: int, n: int) -> set[bytes]:
    out = set()
    for _ in range(n):
        status, body, _ = http_get(port, "/x")
        assert status == 200, (status, body)
        out.add(body)
    return out


def test_discovered_addresses_listed_shown_and_kept_disabled_across_re_resolution(
    master_factory, tmp_path, dnsmasq, backends
) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    b3 = backends.add("127.0.0.3", b2.port, "b3")
    both = ["127.0.0.2 app.test", "127.0.0.3 app.test"]
    d = dnsmasq(both, ttl=1)
    port, admin = free_port(), free_port()
    routes = textwrap.dedent(f"""
        [[servers.web.routes]]
        path_prefix = "/"
        load_balancer = "round_robin"
        upstreams = [{{ endpoint = {{ type = "uri", value = "http://app.test:{b2.port}" }} }}]
    """)
    text = base_config(
        tmp_path,
        port,
        runtime="workers = 2",
        routes=routes,
        extra=f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n',
    )
    m = master_factory(f'[resolver]\nnameservers = ["{d.nameserver}"]\n' + text)
    m.wait_ready()
    a2, a3 = f"127.0.0.2:{b2.port}", f"127.0.0.3:{b2.port}"
    wait_for(lambda: states(m) == {a2: ("up", 2), a3: ("up", 2)}, timeout=10, what="both addresses listed")
    assert {r["found_by"] for r in upstreams(m)["upstreams"]} == {"app.test"}
    assert bodies(port, 10) == {b"b2", b"b3"}

    # status (JSON and text) and /metrics show each address and its state
    def shown() -> bool:
        rows = [r for w in m.status()["workers"] for r in w.get("upstreams", [])]
        return sorted((r["address"], r["state"]) for r in rows) == sorted([(a2, "up"), (a3, "up")] * 2)

    wait_for(shown, timeout=5, what="the heartbeat's rows in status")
    text_status = m.cli("status").stdout
    assert f"web /* {a3}  up" in text_status and "found by DNS: app.test" in text_status, text_status
    assert upstreams(m, "disable", "web", a3)["ok"]

    def metric(address: str, state: str) -> bool:
        _, body, _ = http_get(admin, "/metrics")
        return all(
            f'monolake_upstream_state{{server="web",route="/*",address="{address}",worker="{w}",state="{state}"}} 1'
            in body.decode()
            for w in (0, 1)
        )

    wait_for(lambda: metric(a3, "disabled") and metric(a2, "up"), timeout=5, what="states in /metrics")
    n3 = b3.requests
    assert bodies(port, 8) == {b"b2"} and b3.requests == n3

    # the address leaves the answer and comes back: still disabled (the override is held)
    d.set_hosts(["127.0.0.2 app.test"], {"app.test": {"127.0.0.2"}})
    wait_for(lambda: a3 not in states(m), timeout=5, what="127.0.0.3 gone from the route")
    assert [(o["address"], o["state"]) for o in upstreams(m)["overrides"]] == [(a3, "disabled")]
    d.set_hosts(both, {"app.test": {"127.0.0.2", "127.0.0.3"}})
    wait_for(lambda: states(m).get(a3) == ("disabled", 2), timeout=5, what="127.0.0.3 back, disabled")
    assert bodies(port, 8) == {b"b2"} and b3.requests == n3

    # a respawned worker gets it too, once its own resolver has answered
    m.kill_worker_and_await_respawn(workers=2)
    wait_for(lambda: states(m).get(a3) == ("disabled", 2), timeout=10, what="disabled in the new worker")
    assert bodies(port, 8) == {b"b2"} and b3.requests == n3

    # remove is refused for an address DNS gives (it would come back); drain + enable work
    r = m.cli("upstreams", "remove", "web", "/", f"http://{a3}")
    assert r.returncode == 1 and "is found by DNS (app.test)" in r.stderr, r.stderr
    assert upstreams(m, "enable", "web", a3)["ok"]
    assert upstreams(m, "drain", "web", a2)["ok"]
    assert states(m)[a2] == ("draining", 2)
    n2 = b2.requests
    assert bodies(port, 8) == {b"b3"} and b2.requests == n2
    wait_for(lambda: b2.open_connections == 0, timeout=5, what="the drained address's connections closed")
    assert upstreams(m, "enable", "web", a2)["ok"]
    assert states(m) == {a2: ("up", 2), a3: ("up", 2)}
    assert bodies(port, 10) == {b"b2", b"b3"}
    assert upstreams(m)["overrides"] == []


def test_thrift_discovered_address_disabled_stays_disabled_when_it_returns(
    master_factory, tmp_path, dnsmasq
) -> None:
    from tests.discovery.test_thrift_dns import both_backends, name_socket, shared_port, start
    from tests.thrift.thrift_support import whoami

    up = shared_port()
    both = ["127.0.0.2 app.test", "127.0.0.3 app.test"]
    d = dnsmasq(both, ttl=1)
    with both_backends(up):
        m, port = start(master_factory, tmp_path, d, name_socket(up), "auto")
        a2, a3 = f"127.0.0.2:{up}", f"127.0.0.3:{up}"
        wait_for(lambda: set(whoami(port, 6)) == {"t2", "t3"}, timeout=10, what="both addresses in use")
        listing = upstreams(m)
        assert {(r["address"], r["found_by"], r["proxy"]) for r in listing["upstreams"]} == {
            (a2, "app.test", "thrift"),
            (a3, "app.test", "thrift"),
        }
        assert upstreams(m, "disable", "rpc", a3)["ok"]
        assert set(whoami(port, 6)) == {"t2"}
        d.set_hosts(["127.0.0.2 app.test"], {"app.test": {"127.0.0.2"}})
        wait_for(lambda: a3 not in states(m), timeout=5, what="127.0.0.3 gone")
        d.set_hosts(both, {"app.test": {"127.0.0.2", "127.0.0.3"}})
        wait_for(lambda: states(m).get(a3) == ("disabled", 1), timeout=5, what="127.0.0.3 back, disabled")
        assert set(whoami(port, 8)) == {"t2"}
        r = m.cli("upstreams", "remove", "rpc", "(default)", a3)
        assert r.returncode == 1 and "is found by DNS (app.test)" in r.stderr, r.stderr
        assert upstreams(m, "enable", "rpc", a3)["ok"]
        assert set(whoami(port, 8)) == {"t2", "t3"}
