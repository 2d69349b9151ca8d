"""How fast traffic follows DNS, and what it costs: a closed-loop client runs through one
worker while the name's only address moves between 127.0.0.2 and 127.0.0.3, ROUNDS times.

- join: from dnsmasq answering the new address to its first request;
- leave: from dnsmasq dropping the old address to no more requests and no open connection
  to it (its idle pooled connections closed);
- the failed requests over the whole run.

Run from the repository root: ``.venv/bin/python -m tests.discovery.shift_times TTL ROUNDS RUNTIME``
(RUNTIME: io_uring or legacy; docs/architecture.md has the figures). Not a test: a measurement.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.discovery.backends import Backend, Backends
from tests.discovery.conftest import Load, discovery_config, name_upstream
from tests.discovery.dnsmasq import Dnsmasq
from tests.harness import Monolaked
from tests.support import free_port, wait_for


def measure(ttl: int, rounds: int, runtime: str) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="monolake-dnsshift-"))
    d = Dnsmasq(tmp, ["127.0.0.2 app.test"], ttl=ttl)
    backends = Backends()
    m: Monolaked | None = None
    load: Load | None = None
    try:
        b2 = backends.add("127.0.0.2", 0, "b2")
        b3 = backends.add("127.0.0.3", b2.port, "b3")
        port = free_port()
        m = Monolaked(
            tmp,
            discovery_config(
                tmp,
                port,
                f'nameservers = ["{d.nameserver}"]\nmin_ttl_sec = 0\n',
                name_upstream(b2.port),
                runtime,
            ),
        )
        m.wait_ready()
        load = Load(port)
        wait_for(lambda: load is not None and load.snapshot()["b2"] > 10, timeout=10)
        joins: list[float] = []
        leaves: list[float] = []
        cur, new = b2, b3
        for _ in range(rounds):
            both = {cur.address, new.address}
            d.set_hosts([f"{a} app.test" for a in sorted(both)], {"app.test": both})
            t, seen = time.monotonic(), new.requests
            wait_for(lambda: new.requests > seen, timeout=ttl + 5, what="join")  # noqa: B023 - called within this iteration
            joins.append(time.monotonic() - t)
            d.set_hosts([f"{new.address} app.test"], {"app.test": {new.address}})
            t = time.monotonic()
            wait_for(lambda: _quiet(load, cur), timeout=ttl + 5, what="leave")  # noqa: B023 - called within this iteration
            leaves.append(time.monotonic() - t)
            cur, new = new, cur
        load.stop()
        total = sum(load.snapshot().values())
        return (
            f"runtime={runtime} ttl={ttl}s rounds={rounds}: join -> traffic mean "
            f"{sum(joins) / len(joins):.2f}s max {max(joins):.2f}s; leave -> no traffic and "
            f"no connection mean {sum(leaves) / len(leaves):.2f}s max {max(leaves):.2f}s; "
            f"{total} requests, {len(load.failures)} failed\n"
        )
    finally:
        if load is not None:
            load.stop()
        if m is not None:
            m.close()
        d.close()
        backends.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _quiet(load: Load | None, backend: Backend) -> bool:
    """No request reached ``backend`` for 50 ms and it has no open connection."""
    assert load is not None
    before = load.snapshot()[backend.name]
    time.sleep(0.05)
    return load.snapshot()[backend.name] == before and backend.open_connections == 0


def main(argv: list[str]) -> int:
    sys.stdout.write(measure(int(argv[0]), int(argv[1]), argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
