"""The h2 counters in ``/metrics``: typed counter families (``monolake_h2_*_total``) per server
and worker, scraped from a real daemon's admin listener after real h2 traffic: an h2 client
(the ``h2`` library) and HTTP/1.1 clients through ``monolaked`` to an h2c upstream (the
``h2``-library peer), one request of which the upstream refuses with GOAWAY (a retry)."""

from __future__ import annotations

from pathlib import Path

from monolake.supervisor import metrics
from monolake.worker.http.stats import COUNTERS
from tests.h2.peer import H2LibClient
from tests.h2.test_upstream_h2 import daemon_config, get, start_peer
from tests.ops.conftest import admin_section, scrape
from tests.support import free_port, kill_pids, wait_for

FAMILIES = (
    "monolake_h2_connections",
    "monolake_h2_requests",
    "monolake_h2_upstream_requests",
    "monolake_h2_upstream_retries",
    "monolake_h2_upstream_retry_failures",
    "monolake_h2_upstream_cap_waits",
    "monolake_h2_upstream_cap_timeouts",
)


def test_h2_counters_scraped_from_metrics(master_factory, tmp_path: Path) -> None:
    peer = start_peer(tmp_path)
    try:
        port, admin = free_port(), free_port()
        m = master_factory(daemon_config(tmp_path, port, peer.port, extra=admin_section(admin)))
        m.wait_ready()
        c = H2LibClient(port, timeout=20)
        try:
            assert c.request("/one").status == 200
            assert c.request("/two").status == 200
        finally:
            c.close()
        status, _, headers = get(port, "/goaway")  # HTTP/1.1 client; refused on conn 1, retried
        assert status == 200 and headers["x-conn"] == "2", headers

        def h2_requests() -> float:
            return scrape(admin).total("monolake_h2_requests", server="web")

        wait_for(lambda: h2_requests() == 2, timeout=15, what="h2 requests in /metrics")
        wait_for(
            lambda: scrape(admin).total("monolake_h2_upstream_retries", server="web") == 1,
            timeout=15,
            what="the retry in /metrics",
        )
        page = scrape(admin)
        for family in FAMILIES:
            assert page.families[family].type == "counter", family
            assert page.families[family].documentation, family
        labels = {"server": "web", "worker": "0"}
        assert page.one("monolake_h2_connections", "monolake_h2_connections_total", **labels) == 1
        assert page.one("monolake_h2_requests", "monolake_h2_requests_total", **labels) == 2
        # /one, /two, and /goaway twice (the refused stream and its retry)
        assert page.one("monolake_h2_upstream_requests", "monolake_h2_upstream_requests_total", **labels) == 4
        assert page.one("monolake_h2_upstream_retry_failures", **labels) == 0
        assert page.one("monolake_h2_upstream_cap_waits", **labels) == 0
        # the same counters are no longer shown as untyped monolake_server_h2_* stats
        assert "monolake_server_h2_" not in page.text
        # h2 streams are in the protocol-independent totals too
        assert page.total("monolake_requests", server="web") >= 3
    finally:
        kill_pids([peer.proc.pid])


def test_servers_without_h2_keys_get_no_h2_series() -> None:
    """A thrift server reports no h2 counters: no h2 series for it (zeros would read as "no
    HTTP/2 traffic"); an HTTP server's are typed counters, none left to the untyped fallback."""
    reg = metrics.Registry()
    metrics.add_server_series(reg, {"server": "rpc", "worker": "0"}, {"requests": 5})
    assert not any(name.startswith("monolake_h2_") for name in reg.families)
    reg = metrics.Registry()
    stats = {key: 3 for key in metrics.H2_COUNTERS} | {"requests": 5}
    metrics.add_server_series(reg, {"server": "web", "worker": "0"}, stats)
    for name, _help in metrics.H2_COUNTERS.values():
        fam = reg.families[name]
        assert fam.kind == "counter" and [s[2] for s in fam.samples] == [3], name
    assert not any(name.startswith("monolake_server_h2") for name in reg.families)
    assert set(metrics.H2_COUNTERS) <= set(COUNTERS)  # every family has its stats key
