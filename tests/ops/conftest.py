"""Helpers for the operations tests: masters with an admin listener, scraping /metrics."""

from __future__ import annotations

import http.client

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port


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
