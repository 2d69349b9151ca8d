"""Active HTTP and TCP health checks end to end: a real monolaked, real loopback upstreams
whose check starts failing while a closed-loop client runs, status and /metrics."""

from __future__ import annotations

import time

import pytest

from tests.discovery.backends import Backends
from tests.discovery.conftest import Load
from tests.harness import http_get
from tests.health.conftest import health_config, health_rows, metrics, row_of, uri, wait_health
from tests.http.certs import make_ca, make_cert
from tests.support import free_port, wait_for

INTERVAL, FALL, RISE, JITTER = 0.2, 2, 2, 0.1
CHECK = (
    f'{{ path = "/health", interval_sec = {INTERVAL}, timeout_sec = {INTERVAL}, '
    f"fall = {FALL}, rise = {RISE} }}"
)
# fall (or rise) checks, each interval late at most (x (1 + jitter)), one check's own time, and
# a scheduling margin for a loaded machine
SHIFT_BOUND = FALL * INTERVAL * (1 + JITTER) + INTERVAL + 0.5
RECOVER_BOUND = RISE * INTERVAL * (1 + JITTER) + INTERVAL + 0.5


def quiet_since(b, seconds: float) -> bool:
    return time.monotonic() - b.last_served() > seconds


def test_failing_check_shifts_traffic_and_recovery_brings_it_back(master_factory, tmp_path, backend) -> None:
    b1, b2 = backend("b1"), backend("b2")
    port, admin = free_port(), free_port()
    m = master_factory(health_config(tmp_path, port, admin, [("/", CHECK, [uri(b1), uri(b2)])]))
    m.wait_ready()
    label2 = f"http://127.0.0.1:{b2.port}"
    wait_for(lambda: b1.health_checks and b2.health_checks, timeout=10, what="first checks")
    load = Load(port)
    try:
        wait_for(lambda: b1.requests() > 20 and b2.requests() > 20, timeout=10, what="traffic to both")
        flipped = time.monotonic()
        b2.health_status = 503  # its check fails; its other paths still answer 200
        wait_for(lambda: quiet_since(b2, 1.0), timeout=10, what="traffic to leave b2")
        shift = max(0.0, b2.last_served() - flipped)
        before = b1.requests()
        wait_for(lambda: b1.requests() > before + 20, timeout=5, what="traffic on b1")
        row = wait_health(m, label2, False)
        assert row["checks_failed"] >= FALL and row["held_down"], row
        text = m.cli("status").stdout
        assert f"web /* {label2}  http  DOWN 0/1" in text, text
        assert (
            f'monolake_upstream_healthy{{server="web",route="/*",upstream="{label2}",worker="0"}} 0'
        ) in metrics(admin)

        recovered = time.monotonic()
        b2.health_status = 200
        back = wait_for(
            lambda: b2.first_served_after(recovered), timeout=10, what="traffic to come back to b2"
        )
        recovery = back - recovered
        wait_health(m, label2, True)
    finally:
        load.stop()
    print(
        f"\nhttp check: failure -> traffic shift {shift:.3f}s (bound {SHIFT_BOUND:.2f}s), "
        f"recovery -> traffic {recovery:.3f}s (bound {RECOVER_BOUND:.2f}s)"
    )
    assert load.failures == [], load.failures[:5]
    assert shift < SHIFT_BOUND, shift
    assert recovery < RECOVER_BOUND, recovery
    assert b2.hosts == {f"127.0.0.1:{b2.port}"}  # the Host header defaults to the authority
    body = metrics(admin)
    assert (
        f'monolake_upstream_health_checks_total{{server="web",route="/*",upstream="{label2}",'
        f'worker="0",result="failed"}}'
    ) in body


def test_tcp_check_takes_out_a_closed_port_and_back_when_it_reopens(
    master_factory, tmp_path, backend
) -> None:
    b1, b2 = backend("b1"), backend("b2")
    port, admin = free_port(), free_port()
    check = f'{{ type = "tcp", interval_sec = {INTERVAL}, timeout_sec = {INTERVAL}, fall = 2, rise = 2 }}'
    m = master_factory(
        health_config(
            tmp_path, port, admin, [("/", check, [uri(b1), uri(b2)])], runtime_type="legacy", workers=2
        )
    )
    m.wait_ready()
    label2 = f"http://127.0.0.1:{b2.port}"
    wait_for(lambda: len(health_rows(m)) == 4, timeout=10, interval=0.2, what="both workers' rows")
    wait_health(m, label2, True)
    assert b2.health_checks == 0  # a tcp check sends nothing
    b2.close()
    row = wait_health(m, label2, False)
    assert "Connection" in row["last_error"] or "Errno" in row["last_error"], row
    quiet = time.monotonic()
    statuses = [http_get(port, "/x")[:2] for _ in range(20)]
    assert statuses == [(200, b"b1")] * 20, statuses
    assert b2.first_served_after(quiet) is None
    assert f"web /* {label2}  tcp  DOWN 0/2" in m.cli("status").stdout  # both workers agree
    b2.open()
    wait_health(m, label2, True)
    wait_for(
        lambda: {http_get(port, "/x")[1] for _ in range(4)} == {b"b1", b"b2"},
        timeout=10,
        what="b2 back in the rotation",
    )


def test_all_unhealthy_fail_open_by_default_or_reject(master_factory, tmp_path, backend) -> None:
    b1, b2 = backend("b1"), backend("b2")
    port, admin = free_port(), free_port()
    reject = CHECK.replace("}", ', all_unhealthy = "reject" }')
    m = master_factory(
        health_config(
            tmp_path,
            port,
            admin,
            [("/open", CHECK, [uri(b1), uri(b2)]), ("/reject", reject, [uri(b1), uri(b2)])],
        )
    )
    m.wait_ready()
    wait_for(lambda: b1.health_checks and b2.health_checks, timeout=10, what="first checks")
    b1.health_status = b2.health_status = 500
    for route in ("/open/*", "/reject/*"):
        for b in (b1, b2):
            wait_health(m, f"http://127.0.0.1:{b.port}", False, route=route)
    open_answers = {http_get(port, "/open/x")[:2] for _ in range(6)}
    assert open_answers == {(200, b"b1"), (200, b"b2")}, open_answers  # fail-open: to all
    status, body, _ = http_get(port, "/reject/x")
    assert (status, body.strip()) == (503, b"no healthy upstream"), (status, body)
    assert "ALL UNHEALTHY" in m.cli("status").stdout
    b1.health_status = 200
    for route in ("/open/*", "/reject/*"):
        wait_health(m, f"http://127.0.0.1:{b1.port}", True, route=route)
    assert {http_get(port, "/reject/x")[:2] for _ in range(4)} == {(200, b"b1")}
    row = row_of(m, f"http://127.0.0.1:{b2.port}", "/open/*")
    assert row is not None and row["healthy"] is False and row["panic"] is False, row


@pytest.mark.parametrize("mode", ["generation", "in_place"])
def test_checks_carry_on_after_a_reload(master_factory, tmp_path, backend, mode: str) -> None:
    b1, b2 = backend("b1"), backend("b2")
    port, admin = free_port(), free_port()
    routes = [("/", CHECK, [uri(b1), uri(b2)])]
    m = master_factory(health_config(tmp_path, port, admin, routes, supervisor=f'reload_mode = "{mode}"'))
    m.wait_ready()
    label2 = f"http://127.0.0.1:{b2.port}"
    b2.health_status = 503
    wait_health(m, label2, False)
    generation = m.status()["master"]["generation"]
    result = m.cli("reload")
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: m.status()["master"]["generation"] > generation and m.ready_workers(),
        timeout=20,
        interval=0.2,
        what="the new generation",
    )
    # the new stack checks afresh: b2 is out again after its first failed check, and there is
    # one row per upstream (the new stack's, when an in-place reload keeps the old one alive)
    row = wait_health(m, label2, False)
    assert len([r for r in health_rows(m) if r["upstream"] == label2]) == 1
    assert row["checks_failed"] >= 1
    assert {http_get(port, "/x")[1] for _ in range(6)} == {b"b1"}


def test_https_check_verifies_the_certificate(master_factory, tmp_path, backend) -> None:
    ca, other_ca = make_ca(tmp_path), make_ca(tmp_path, "another-ca")
    good = make_cert(tmp_path, ca, "good", ["127.0.0.1"])
    bad = make_cert(tmp_path, other_ca, "bad", ["127.0.0.1"])
    backends = Backends()
    try:
        b1 = backends.add("127.0.0.1", 0, "b1", tls=(str(good.chain), str(good.key)))
        b2 = backends.add("127.0.0.1", 0, "b2", tls=(str(bad.chain), str(bad.key)))
        port, admin = free_port(), free_port()
        ups = [f'{{ endpoint = {{ type = "uri", value = "https://127.0.0.1:{b.port}" }} }}' for b in (b1, b2)]
        m = master_factory(
            health_config(tmp_path, port, admin, [("/", CHECK, ups)], route_extra=f'tls_ca = "{ca.chain}"')
        )
        m.wait_ready()
        row = wait_health(m, f"https://127.0.0.1:{b2.port}", False)
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"], row
        wait_for(
            lambda: (row_of(m, f"https://127.0.0.1:{b1.port}") or {}).get("checks_ok", 0) >= 2,
            timeout=10,
            interval=0.2,
            what="TLS checks of b1 passing",
        )
        assert [http_get(port, "/x")[:2] for _ in range(6)] == [(200, b"b1")] * 6
    finally:
        backends.close()
