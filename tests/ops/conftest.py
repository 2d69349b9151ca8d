"""Helpers for the operations tests: masters with an admin listener, scraping /metrics, the
loopback backends of the runtime upstream API tests."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import QuietHandler, free_port


def admin_section(port: int) -> str:
    return f'\n[admin]\nlisten = "127.0.0.1:{port}"\n'


def admin_get(
    port: int, path: str, method: str = "GET", timeout: float = 10, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


class Scrape:
    """One /metrics page, parsed by prometheus_client (any format error fails the test)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def values(self, family: str, sample: str | None = None, **labels: str) -> list[float]:
        fam = self.families.get(family)
        if fam is None:
            return []
        return [
            s.value
            for s in fam.samples
            if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def total(self, family: str, sample: str | None = None, **labels: str) -> float:
        return sum(self.values(family, sample, **labels))

    def one(self, family: str, sample: str | None = None, **labels: str) -> float:
        found = self.values(family, sample, **labels)
        assert len(found) == 1, (family, labels, found)
        return found[0]


def scrape(port: int) -> Scrape:
    status, headers, body = admin_get(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(body.decode())


@pytest.fixture
def admin_port() -> int:
    return free_port()


class Backend:
    """Answers its name; a request with ``slow`` in its target (the query is forwarded) waits for ``gate`` first. Counts the requests it served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.gate = threading.Event()
        self.slow_started = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits += 1
                if "slow" in self.path:  # whatever prefix the proxy maps the path to
                    outer.slow_started.set()
                    outer.gate.wait(20)
                self.reply(outer.name.encode())

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
