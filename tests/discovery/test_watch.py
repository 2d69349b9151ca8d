"""The per-worker DNS cache against a real dnsmasq, in-process, on both event loops: TTL
floor and ceiling, negative answers, background refresh, stale-while-error and its bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from structlog.testing import capture_logs

from monolake.conf.resolver import ResolverConfig
from monolake.worker.discovery.dns import DnsClient, SrvRecord
from monolake.worker.discovery.watch import FAILING, OK, REFRESH_AHEAD, Watch


def run(factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


def client(ns: str, **kw: float) -> DnsClient:
    return DnsClient(ResolverConfig(nameservers=(ns,), **kw))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_addresses_and_ttl_floor(dnsmasq, loop_factory) -> None:
    d = dnsmasq(["127.0.0.3 app.test", "127.0.0.2 app.test", "::1 app.test"], ttl=1)

    async def main() -> None:
        w = Watch(client(d.nameserver, min_ttl_sec=3, max_ttl_sec=10), "addr", "app.test")
        delay = await w.refresh()
        assert w.state == OK
        assert w.records == ("127.0.0.2", "127.0.0.3", "::1")  # v4 first, sorted
        assert w.ttl == 3.0  # published 1, floor 3
        assert delay == pytest.approx(3 * REFRESH_AHEAD)

    run(loop_factory, main())


def test_ttl_ceiling(dnsmasq, loop_factory) -> None:
    d = dnsmasq(["127.0.0.2 app.test"], ttl=600)

    async def main() -> None:
        w = Watch(client(d.nameserver, min_ttl_sec=0, max_ttl_sec=2), "addr", "app.test")
        delay = await w.refresh()
        assert w.ttl == 2.0 and delay == pytest.approx(2 * REFRESH_AHEAD)

    run(loop_factory, main())


def test_negative_answer_cached_for_negative_ttl(dnsmasq, loop_factory) -> None:
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)

    async def main() -> None:
        w = Watch(client(d.nameserver, negative_ttl_sec=4), "addr", "nothere.test")
        delay = await w.refresh()
        assert w.state == OK and w.records == () and w.ttl == 4.0 and delay == 4.0

    run(loop_factory, main())


def test_background_refresh_tells_listeners(dnsmasq, loop_factory) -> None:
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    seen: list[tuple[str, ...]] = []

    class Listener:
        def records_changed(self, watch: Watch) -> None:
            seen.append(watch.records)

    async def main() -> None:
        w = Watch(client(d.nameserver, min_ttl_sec=1), "addr", "app.test")
        listener = Listener()
        w.subscribe(listener)
        assert await w.wait_settled(5)
        assert seen == [("127.0.0.2",)]
        d.set_hosts(["127.0.0.2 app.test", "127.0.0.4 app.test"], {"app.test": {"127.0.0.2", "127.0.0.4"}})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(seen) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert seen[-1] == ("127.0.0.2", "127.0.0.4")
        queries = w.queries
        del listener  # the last listener gone: the loop stops at its next wake
        await asyncio.sleep(2.5)
        assert w.queries <= queries + 1
        w.stop()

    run(loop_factory, main())


def test_stale_while_error_is_logged_once_and_bounded(dnsmasq, loop_factory) -> None:
    d = dnsmasq(["127.0.0.2 app.test"], ttl=1)
    clock = Clock()

    async def main() -> None:
        w = Watch(
            client(d.nameserver, timeout_sec=0.3, max_stale_sec=60, negative_ttl_sec=1),
            "addr",
            "app.test",
            clock=clock,
        )
        await w.refresh()
        assert w.records == ("127.0.0.2",)
        d.stop()
        with capture_logs() as logs:
            for _ in range(3):
                clock.now += 5
                await w.refresh()
                assert w.state == FAILING and w.records == ("127.0.0.2",)
            clock.now += 60  # now past TTL + max_stale_sec
            await w.refresh()
            assert w.records == ()
            await w.refresh()
        events = [e["event"] for e in logs]
        assert events.count("dns_lookup_failed") == 1, events
        assert events.count("dns_stale_answer_dropped") == 1, events
        d.start()
        with capture_logs() as logs:
            await w.refresh()
        assert w.state == OK and w.records == ("127.0.0.2",)
        assert [e["event"] for e in logs] == ["dns_lookup_recovered", "dns_records_changed"]

    run(loop_factory, main())


def test_srv_records(dnsmasq, loop_factory) -> None:
    d = dnsmasq(
        [],
        ttl=1,
        extra=[
            "--srv-host=_http._tcp.app.test,a.test,8080,10,5",
            "--srv-host=_http._tcp.app.test,b.test,8081,20,0",
        ],
    )

    async def main() -> None:
        w = Watch(client(d.nameserver), "srv", "_http._tcp.app.test")
        await w.refresh()
        assert w.records == (SrvRecord(10, 5, 8080, "a.test"), SrvRecord(20, 0, 8081, "b.test"))

    run(loop_factory, main())
