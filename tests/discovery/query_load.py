"""The query load discovery puts on a DNS server: W workers, one discovered name (one A
record, so one A and one AAAA query per refresh), published TTL T, counted over S seconds from
dnsmasq's ``--log-queries``.

Run from the repository root: ``.venv/bin/python -m tests.discovery.query_load 2 1 10``
(docs/architecture.md, "Upstream discovery", has the figures). Not a test: a measurement.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.discovery.backends import Backends
from tests.discovery.conftest import discovery_config, name_upstream
from tests.discovery.dnsmasq import Dnsmasq
from tests.harness import Monolaked, http_get
from tests.support import free_port


def measure(workers: int, ttl: int, seconds: float) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="monolake-dnsload-"))
    d = Dnsmasq(tmp, ["127.0.0.2 app.test"], ttl=ttl)
    backends = Backends()
    m: Monolaked | None = None
    try:
        b2 = backends.add("127.0.0.2", 0, "b2")
        port = free_port()
        cfg = discovery_config(
            tmp,
            port,
            f'nameservers = ["{d.nameserver}"]\nmin_ttl_sec = 0\n',
            name_upstream(b2.port),
            "auto",
        ).replace("workers = 1", f"workers = {workers}")
        m = Monolaked(tmp, cfg)
        m.wait_ready()
        http_get(port, "/x")
        a0, q0 = d.queries_for("app.test", "A"), d.queries_for("app.test", "AAAA")
        time.sleep(seconds)
        a = d.queries_for("app.test", "A") - a0
        q = d.queries_for("app.test", "AAAA") - q0
        rate = (a + q) / seconds
        return (
            f"workers={workers} ttl={ttl}s window={seconds:g}s: A={a} AAAA={q} -> "
            f"{rate:.2f} queries/s, {rate * ttl / workers:.2f} queries per TTL per worker\n"
        )
    finally:
        if m is not None:
            m.close()
        d.close()
        backends.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    workers, ttl, seconds = int(argv[0]), int(argv[1]), float(argv[2])
    sys.stdout.write(measure(workers, ttl, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
