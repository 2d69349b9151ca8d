"""HTTP upstreams found by DNS, end to end: a real monolaked, a real dnsmasq whose answers
change while a closed-loop client runs, backends on 127.0.0.2-5. No reload anywhere."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

import pytest

from tests.discovery.conftest import Load, discovery_config, name_upstream
from tests.discovery.dnsmasq import Dnsmasq
from tests.harness import Monolaked, http_get
from tests.http.certs import make_ca, make_cert
from tests.support import free_port, wait_for


@pytest.fixture(params=["generation", "in_place"])
def reload_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(master_factory, tmp_path) -> Callable[..., tuple[Monolaked, int]]:
    """``start(dnsmasq, upstreams, runtime_type, resolver="", route="")``: a ready monolaked
    resolving through that dnsmasq, and its port."""

    def run(
        d, upstreams: str, runtime_type: str, resolver: str = "", route: str = ""
    ) -> tuple[Monolaked, int]:
        port = free_port()
        resolver = f'nameservers = ["{d.nameserver}"]\n' + resolver
        m = master_factory(discovery_config(tmp_path, port, resolver, upstreams, runtime_type, route))
        m.wait_ready()
        return m, port

    return run


def test_addresses_join_and_leave_without_reload(start, dnsmasq, backends, runtime_type) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    b3 = backends.add("127.0.0.3", b2.port, "b3")
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    m, port = start(d, name_upstream(b2.port), runtime_type, route='load_balancer = "round_robin"')
    load = Load(port)
    try:
        wait_for(lambda: load.snapshot()["b2"] > 20, timeout=10, what="traffic to b2")
        assert b3.requests == 0
        assert b2.hosts == {f"app.test:{b2.port}"}  # the Host header names the name, not the address

        # a second address joins: traffic spreads to it within one TTL + one refresh
        changed = time.monotonic()
        d.set_hosts(["127.0.0.2 app.test", "127.0.0.3 app.test"], {"app.test": {"127.0.0.2", "127.0.0.3"}})
        wait_for(lambda: b3.requests > 0, timeout=5, what="the new address to get requests")
        joined_after = time.monotonic() - changed
        before = load.snapshot()
        wait_for(
            lambda: min(load.since(before)["b2"], load.since(before)["b3"]) > 20,
            timeout=10,
            what="requests on both addresses",
        )
        assert joined_after < 1 + 1 + 0.5, joined_after  # TTL 1 s, refresh at 0.9 x TTL
        assert b2.open_connections >= 1

        # the first one leaves: it drains, its pooled idle connections close, no new requests
        changed = time.monotonic()
        d.set_hosts(["127.0.0.3 app.test"], {"app.test": {"127.0.0.3"}})
        wait_for(
            lambda: b2.open_connections == 0,
            timeout=5,
            what="the removed address's pooled connections to close",
        )
        drained_after = time.monotonic() - changed
        gone = b2.requests
        before = load.snapshot()
        wait_for(lambda: load.since(before)["b3"] > 50, timeout=10, what="traffic to b3")
        assert b2.requests == gone
        assert drained_after < 1 + 1 + 1.5, drained_after  # + one pool sweep
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    events = [e for e in m.log_events() if e.get("event") == "dns_records_changed"]
    assert [e["records"] for e in events] == [["127.0.0.2"], ["127.0.0.2", "127.0.0.3"], ["127.0.0.3"]]


def test_ttl_floor_and_ceiling_are_respected(start, dnsmasq, backends, runtime_type) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    # published TTL 1 s under a 3 s floor: dnsmasq sees about one query per 2.7 s, not one a second
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    m, port = start(d, name_upstream(b2.port), runtime_type, resolver="min_ttl_sec = 3\nmax_ttl_sec = 30\n")
    assert http_get(port, "/x")[1] == b"b2"
    first = d.queries_for("app.test")
    time.sleep(6)
    sent = d.queries_for("app.test") - first
    assert 1 <= sent <= 3, sent  # 6 s / 2.7 s; a 1 s TTL would have been 6
    (event,) = [e for e in m.log_events() if e.get("event") == "dns_records_changed"]
    assert event["ttl"] == 3.0 and event["published_ttl"] == 1.0
    m.stop()

    # published TTL 600 s over a 1 s ceiling: a change shows within about a second
    d.restart(ttl=600)
    b3 = backends.add("127.0.0.3", b2.port, "b3")
    m, port = start(d, name_upstream(b2.port), runtime_type, resolver="min_ttl_sec = 0\nmax_ttl_sec = 1\n")
    assert http_get(port, "/x")[1] == b"b2"
    d.set_hosts(["127.0.0.3 app.test"], {"app.test": {"127.0.0.3"}})
    wait_for(lambda: http_get(port, "/x")[1] == b"b3", timeout=3, what="the change within 1 s TTL")
    assert b3.requests >= 1


def test_dns_server_killed_keeps_serving_and_logs_once(start, dnsmasq, backends, runtime_type) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    m, port = start(
        d, name_upstream(b2.port), runtime_type, resolver="timeout_sec = 0.5\nnegative_ttl_sec = 1\n"
    )
    load = Load(port)
    try:
        wait_for(lambda: load.snapshot()["b2"] > 20, timeout=10, what="traffic")
        d.stop()
        failed = lambda: [e for e in m.log_events() if e.get("event") == "dns_lookup_failed"]  # noqa: E731
        wait_for(failed, timeout=5, what="the resolver failure to be logged")
        before = load.snapshot()
        time.sleep(4)  # four TTLs and several retries with the name server gone
        assert load.since(before)["b2"] > 100
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    (line,) = failed()
    assert line["serving"] == "last good answer" and line["dns_name"] == "app.test"
    # the name server comes back: one recovery line, and the answer is used again
    d.start()
    wait_for(
        lambda: [e for e in m.log_events() if e.get("event") == "dns_lookup_recovered"],
        timeout=5,
        what="recovery to be logged",
    )
    assert len(failed()) == 1


def test_srv_priorities_and_weights(start, dnsmasq, backends, runtime_type) -> None:
    a = backends.add("127.0.0.2", 0, "a")
    b = backends.add("127.0.0.3", 0, "b")
    c = backends.add("127.0.0.4", 0, "c")
    hosts = ["127.0.0.2 a.test", "127.0.0.3 b.test", "127.0.0.4 c.test"]
    srv = [
        f"--srv-host=_http._tcp.app.test,a.test,{a.port},10,3",
        f"--srv-host=_http._tcp.app.test,b.test,{b.port},10,1",
        f"--srv-host=_http._tcp.app.test,c.test,{c.port},20,1",
    ]
    d = dnsmasq(hosts, ttl=1, extra=srv)
    m, port = start(
        d,
        '{ endpoint = { type = "srv", value = "_http._tcp.app.test" } }',
        runtime_type,
        route='load_balancer = "weighted_random"\neject_after_failures = 1\neject_duration_sec = 30',
    )
    changes = lambda: [e for e in m.log_events() if e.get("event") == "dns_records_changed"]  # noqa: E731
    load = Load(port, clients=4)  # 800 picks in ~2 s, not ~4 s: each client is paced at ~100/s
    try:
        wait_for(lambda: sum(load.snapshot().values()) > 800, timeout=30, what="800 requests")
        got = load.snapshot()
        assert got["c"] == 0  # priority 20 is unused while priority 10 is healthy
        assert 2.0 < got["a"] / max(1, got["b"]) < 4.5, (
            got
        )  # weights 3:1 (800 picks: the bounds are >= 4 standard deviations away; at 400 one CI run saw 4.6)
        assert a.hosts == {"app.test"}  # the Host header is the service's name

        # SRV weights change (new records, same port): the split follows within a TTL or two
        seen = len(changes())
        d.restart(
            extra=[
                f"--srv-host=_http._tcp.app.test,a.test,{a.port},10,1",
                f"--srv-host=_http._tcp.app.test,b.test,{b.port},10,3",
                f"--srv-host=_http._tcp.app.test,c.test,{c.port},20,1",
            ]
        )
        # the new weights are in the balancer once the worker logged the change (it updates
        # the balancer as it logs): picks counted from then on, not after a fixed 2.5 s
        wait_for(lambda: len(changes()) > seen, timeout=10, what="the new SRV weights to be resolved")
        before = load.snapshot()
        wait_for(lambda: sum(load.since(before).values()) > 800, timeout=30, what="800 more")
        got = load.since(before)
        assert 2.0 < got["b"] / max(1, got["a"]) < 4.5, got

        # the whole priority-10 group fails its connects (passive ejection): priority 20 takes over
        load.stop()
        a.close()
        b.close()
        wait_for(lambda: http_get(port, "/x")[1] == b"c", timeout=10, what="failover to c")
        answers = [http_get(port, "/x") for _ in range(20)]
        assert {(s, body) for s, body, _ in answers} == {(200, b"c")}
    finally:
        load.stop()


def test_name_without_addresses_is_503_and_recovers(start, dnsmasq, backends, runtime_type) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    d = dnsmasq([], ttl=1)
    _m, port = start(d, name_upstream(b2.port), runtime_type, resolver="negative_ttl_sec = 1\n")
    status, body, _ = http_get(port, "/x")
    assert status == 503, body
    d.set_hosts(["127.0.0.2 app.test"], {"app.test": {"127.0.0.2"}})
    wait_for(lambda: http_get(port, "/x")[1] == b"b2", timeout=4, what="the name to appear")


def test_request_in_flight_to_a_removed_address_finishes(start, dnsmasq, backends, runtime_type) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    backends.add("127.0.0.3", b2.port, "b3")
    b2.slow = 4.0
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    _m, port = start(d, name_upstream(b2.port), runtime_type, route="preserve_path = true")
    result: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: result.append(http_get(port, "/slow")[:2]))
    slow.start()
    wait_for(lambda: b2.requests == 1, timeout=5, what="the slow request to reach b2")
    d.set_hosts(["127.0.0.3 app.test"], {"app.test": {"127.0.0.3"}})
    wait_for(lambda: http_get(port, "/x")[1] == b"b3", timeout=4, what="b3 to take over")
    served = b2.requests  # the slow one, and quick ones until the change was seen
    # idle pooled connections to b2 close; the exchange in flight keeps its own
    wait_for(lambda: b2.open_connections == 1, timeout=2, what="only the busy connection left")
    assert slow.is_alive()
    slow.join(timeout=10)
    assert result == [(200, b"b2")]
    # its connection is not pooled: it closes once the response is through
    wait_for(lambda: b2.open_connections == 0, timeout=3, what="the drained connection to close")
    for _ in range(10):
        assert http_get(port, "/x")[1] == b"b3"
    assert b2.requests == served


def test_reload_keeps_discovered_upstreams(master_factory, tmp_path, dnsmasq, backends, reload_mode) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    backends.add("127.0.0.3", b2.port, "b3")
    d = dnsmasq(["127.0.0.2 app.test", "127.0.0.3 app.test"], ttl=1)
    port = free_port()
    resolver = f'nameservers = ["{d.nameserver}"]\n'
    text = discovery_config(
        tmp_path,
        port,
        resolver,
        name_upstream(b2.port),
        "auto",
        route='load_balancer = "round_robin"',
        reload_mode=reload_mode,
    )
    m = master_factory(text)
    m.wait_ready()
    load = Load(port)
    try:
        wait_for(
            lambda: min(load.snapshot()["b2"], load.snapshot()["b3"]) > 10,
            timeout=10,
            what="traffic to both addresses",
        )
        result = m.cli("reload")
        assert result.returncode == 0, result.stdout + result.stderr
        before = load.snapshot()
        wait_for(
            lambda: min(load.since(before)["b2"], load.since(before)["b3"]) > 10,
            timeout=10,
            what="traffic to both addresses after the reload",
        )
        # and DNS changes still apply to the new stacks
        d.set_hosts(["127.0.0.3 app.test"], {"app.test": {"127.0.0.3"}})
        wait_for(lambda: b2.open_connections == 0, timeout=5, what="b2 to drain")
        gone = b2.requests
        before = load.snapshot()
        wait_for(lambda: load.since(before)["b3"] > 20, timeout=10, what="traffic to b3")
        assert b2.requests == gone
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]


def test_aaaa_addresses_are_endpoints_too(start, dnsmasq, backends, runtime_type) -> None:
    v4 = backends.add("127.0.0.2", 0, "v4")
    v6 = backends.add("::1", v4.port, "v6")
    d = dnsmasq(["127.0.0.2 app.test", "::1 app.test"], ttl=1)
    _m, port = start(d, name_upstream(v4.port), runtime_type, route='load_balancer = "round_robin"')
    bodies = {http_get(port, "/x")[1] for _ in range(6)}
    assert bodies == {b"v4", b"v6"}
    assert v6.hosts == {f"app.test:{v4.port}"}


def test_a_dead_address_of_a_name_costs_no_request(start, dnsmasq, backends, runtime_type) -> None:
    """A connect to a name used to try each of its addresses; it still does: a refused
    connect to one address moves even a POST (nothing was sent) to another, and ejects the
    dead one."""
    b2 = backends.add("127.0.0.2", 0, "b2")
    d = dnsmasq(["127.0.0.2 app.test", "127.0.0.3 app.test"], ttl=1)  # nothing on 127.0.0.3
    m, port = start(d, name_upstream(b2.port), runtime_type, route='load_balancer = "round_robin"')
    statuses = []
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/p", body=b"x" * 10)
        resp = conn.getresponse()
        statuses.append((resp.status, resp.read()))
        conn.close()
    assert statuses == [(200, b"b2")] * 20
    ejected = [e for e in m.log_events() if e.get("event") == "upstream_ejected"]
    assert [e["upstream"] for e in ejected] == [f"http://127.0.0.3:{b2.port}"]


def test_without_resolver_section_hosts_file_names_work(
    master_factory, tmp_path, backends, runtime_type
) -> None:
    """No [resolver]: /etc/resolv.conf's servers, and /etc/hosts first, as getaddrinfo would
    (``localhost`` keeps working with no DNS server at all)."""
    b = backends.add("127.0.0.1", 0, "local")
    port = free_port()
    text = discovery_config(
        tmp_path,
        port,
        "",
        name_upstream(b.port, "localhost"),
        runtime_type,
    ).replace("[resolver]\n", "", 1)
    m = master_factory(text)
    m.wait_ready()
    assert [http_get(port, "/x")[:2] for _ in range(5)] == [(200, b"local")] * 5
    assert b.hosts == {f"localhost:{b.port}"}


def test_reload_applies_a_new_resolver_section(
    master_factory, tmp_path, dnsmasq, backends, reload_mode
) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    backends.add("127.0.0.3", b2.port, "b3")
    first = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    (tmp_path / "second").mkdir()
    second = Dnsmasq(tmp_path / "second", ["127.0.0.3 app.test"], ttl=1)
    try:
        port = free_port()

        def text(ns: str) -> str:
            return discovery_config(
                tmp_path,
                port,
                f'nameservers = ["{ns}"]\n',
                name_upstream(b2.port),
                "auto",
                reload_mode=reload_mode,
            )

        m = master_factory(text(first.nameserver))
        m.wait_ready()
        assert {http_get(port, "/x")[1] for _ in range(5)} == {b"b2"}
        m.config_path.write_text(text(second.nameserver))
        result = m.cli("reload")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: http_get(port, "/x")[1] == b"b3", timeout=5, what="the new name server's answer")
        assert {http_get(port, "/x")[1] for _ in range(5)} == {b"b3"}
    finally:
        second.close()


def test_https_srv_upstream_verifies_the_service_name(
    start, tmp_path, dnsmasq, backends, runtime_type
) -> None:
    """scheme = "https": TLS to each target, the certificate checked against the service's
    name (the SRV name after _https._tcp.), which is also the Host header."""
    ca = make_ca(tmp_path)
    cert = make_cert(tmp_path, ca, "app.test", ["app.test"])
    b = backends.add("127.0.0.2", 0, "tls", tls=(str(cert.chain), str(cert.key)))
    d = dnsmasq(["127.0.0.2 a.test"], ttl=1, extra=[f"--srv-host=_https._tcp.app.test,a.test,{b.port},10,1"])
    _m, port = start(
        d,
        '{ endpoint = { type = "srv", value = "_https._tcp.app.test", scheme = "https" } }',
        runtime_type,
        route=f'tls_ca = "{ca.chain}"',
    )
    assert [http_get(port, "/x")[:2] for _ in range(3)] == [(200, b"tls")] * 3
    assert b.hosts == {"app.test"}


def test_generation_reload_hands_over_idle_connections_to_discovered_addresses(
    start, dnsmasq, backends, runtime_type
) -> None:
    b2 = backends.add("127.0.0.2", 0, "b2")
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    m, port = start(d, name_upstream(b2.port), runtime_type)
    for _ in range(3):
        assert http_get(port, "/x")[1] == b"b2"
    before = set(b2.client_ports)
    assert len(before) == 1  # one pooled connection, reused
    result = m.cli("reload")
    assert result.returncode == 0, result.stdout + result.stderr
    n = len(b2.client_ports)
    for _ in range(3):
        assert http_get(port, "/x")[1] == b"b2"
    assert set(b2.client_ports[n:]) == before  # the new worker goes on on the same connection
