"""Fixtures for the discovery tests: a real DNS server, loopback backends, a closed-loop client."""

from __future__ import annotations

import asyncio
import http.client
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monolake.uring import probe
from tests.config_text import uri_upstream
from tests.discovery.backends import Backends
from tests.discovery.dnsmasq import Dnsmasq
from tests.harness import base_config


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Any]:
    """``dnsmasq(hosts=[...], ttl=1, extra=[...])`` starts a DNS server; all are killed after."""
    started: list[Dnsmasq] = []

    def make(hosts: list[str] | None = None, ttl: int = 1, extra: list[str] | None = None) -> Dnsmasq:
        d = Dnsmasq(tmp_path, hosts, ttl, extra)
        started.append(d)
        return d

    yield make
    for d in started:
        d.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


@pytest.fixture(params=["io_uring", "legacy"])
def runtime_type(request: pytest.FixtureRequest) -> str:
    """Both worker event loops: the resolver's sockets run on each."""
    if request.param == "io_uring" and not probe().available:
        pytest.skip(f"io_uring unavailable: {probe().reason}")
    return str(request.param)


def _uring_factory() -> asyncio.AbstractEventLoop:
    from monolake.uring import new_event_loop

    return new_event_loop(entries=256)


@pytest.fixture(params=["io_uring", "asyncio"])
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """For in-process tests: a fresh loop of each kind."""
    if request.param == "io_uring":
        if not probe().available:
            pytest.skip(f"io_uring unavailable: {probe().reason}")
        return _uring_factory
    return asyncio.SelectorEventLoop


def name_upstream(port: int, name: str = "app.test") -> str:
    """The upstream entry most tests route to: every address DNS gives ``name``, on ``port``."""
    return uri_upstream(f"{name}:{port}")


def discovery_config(
    tmp: Path,
    port: int,
    resolver: str,
    upstreams: str,
    runtime_type: str,
    route: str = "",
    reload_mode: str = "",
) -> str:
    """One worker (so one resolver and one set of log lines), one route to ``upstreams``;
    ``reload_mode`` set in [supervisor] when given."""
    routes = textwrap.dedent("""
        [[servers.web.routes]]
        path_prefix = "/"
        {route}
        upstreams = [{upstreams}]
    """).format(route=route, upstreams=upstreams)
    text = base_config(tmp, port, runtime=f'workers = 1\nruntime_type = "{runtime_type}"', routes=routes)
    text = text.replace('runtime_type = "auto"\n', "", 1)
    if reload_mode:
        text = text.replace("[supervisor]\n", f'[supervisor]\nreload_mode = "{reload_mode}"\n', 1)
    return "[resolver]\n" + textwrap.dedent(resolver) + "\n" + text


class Load:
    """A closed-loop client through the proxy on keep-alive connections: counts answers per
    backend name and every failure, until stopped."""

    def __init__(self, port: int, clients: int = 2) -> None:
        self.port = port
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("GET", "/load")
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                with self._lock:
                    if resp.status == 200:
                        self.counts[body] += 1
                    else:
                        self.failures.append(f"{resp.status} {body}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            # at most ~100 requests/s a client: the backends answer in ~0.2 ms, and a loop
            # at full speed would take a core from the daemon under test on a 2-core machine
            time.sleep(0.01)
        conn.close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def since(self, before: Counter[str]) -> Counter[str]:
        now = self.snapshot()
        return Counter({k: now[k] - before.get(k, 0) for k in now if now[k] - before.get(k, 0)})

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
