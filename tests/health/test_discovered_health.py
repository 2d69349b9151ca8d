"""Health checks of DNS-discovered endpoints: every address of a name is checked, one that
fails its check loses its traffic, an address DNS adds starts being checked and one it
removes stops (a real dnsmasq, backends on 127.0.0.2-4)."""

from __future__ import annotations

import time

from tests.discovery.conftest import Load
from tests.health.backends import free_shared_port
from tests.health.conftest import health_config, health_rows, wait_health
from tests.support import free_port, wait_for

CHECK = '{ path = "/health", interval_sec = 0.2, timeout_sec = 0.2, fall = 2, rise = 2 }'


def test_discovered_address_that_fails_checks_loses_traffic(
    master_factory, tmp_path, dnsmasq, backend
) -> None:
    up = free_shared_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    b2, b3, b4 = (backend(f"b{i}", f"127.0.0.{i}", up) for i in (2, 3, 4))
    d = dnsmasq(["127.0.0.2 app.test", "127.0.0.3 app.test"], ttl=1)
    port, admin = free_port(), free_port()
    resolver = f'[resolver]\nnameservers = ["{d.nameserver}"]\n'
    ups = [f'{{ endpoint = {{ type = "uri", value = "http://app.test:{up}" }} }}']
    m = master_factory(health_config(tmp_path, port, admin, [("/", CHECK, ups)], resolver=resolver))
    m.wait_ready()
    load = Load(port)
    try:
        wait_for(
            lambda: b2.requests() > 10 and b3.requests() > 10 and b3.health_checks > 0,
            timeout=10,
            what="traffic to both addresses, and a check of 127.0.0.3",
        )
        assert b3.hosts == {f"app.test:{up}"}  # the check's Host is the name, as for requests

        flipped = time.monotonic()
        b3.health_status = 503
        wait_for(
            lambda: time.monotonic() - b3.last_served() > 1.0, timeout=10, what="traffic to leave 127.0.0.3"
        )
        shift = max(0.0, b3.last_served() - flipped)
        wait_health(m, f"http://127.0.0.3:{up}", False)

        # DNS adds 127.0.0.4: checked at once, and it takes traffic; drops 127.0.0.3: its
        # checks stop and status no longer lists it
        d.set_hosts(["127.0.0.2 app.test", "127.0.0.4 app.test"], {"app.test": {"127.0.0.2", "127.0.0.4"}})
        wait_for(
            lambda: b4.health_checks > 0 and b4.requests() > 10,
            timeout=10,
            what="the new address to be checked and to get traffic",
        )
        wait_for(
            lambda: (
                {r["upstream"] for r in health_rows(m)}
                == {f"http://127.0.0.2:{up}", f"http://127.0.0.4:{up}"}
            ),
            timeout=10,
            interval=0.2,
            what="status to follow DNS",
        )
        checks = b3.health_checks
        time.sleep(0.6)  # three check intervals: none may reach the removed address
        assert b3.health_checks == checks
    finally:
        load.stop()
    print(f"\ndiscovered endpoint: failure -> traffic shift {shift:.3f}s")
    assert load.failures == [], load.failures[:5]
    assert shift < 2 * 0.2 * 1.1 + 0.2 + 0.5, shift
