#!/usr/bin/env python3
"""The HTTP proxy's Python path per request, in process: no sockets, no kernel, no load generator.

Not a test. ``bench_proxy.py`` measures the whole proxy against nginx, but on a shared 2-core
machine its numbers drift by 20 % from run to run, which hides the 0.5-2 µs a hot-path change
is worth. This drives the real objects instead: a server built from a config
(``monolake.worker.http.server.build``), a ``HttpServerProtocol`` and a pooled
``UpstreamConnection`` on fake transports that record writes. Each round feeds one client
request and one upstream response (nginx-like, 8 headers, a 100-byte body) through the fast
path; the result is the best round's CPU time per request, per parser, interleaved so that
noise spreads evenly.

    python scripts/bench_http_path.py                    # native, httptools, h11
    python scripts/bench_http_path.py --parsers native --rounds 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
from types import SimpleNamespace
from typing import Any, cast

REQUEST = b"GET /100B HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 05:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b"Last-Modified: Mon, 30 Nov 2026 04:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6a5c-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100
)

CONFIG = """
[servers.bench]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:1" }}
http_parser = "{parser}"
[[servers.bench.routes]]
path = "/{{*rest}}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "http://127.0.0.1:2" }} }}]
"""


class FakeTransport:
    """Just enough of an asyncio transport for the protocols: writes are kept, not sent."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.out: list[bytes] = []
        self.write = self.out.append
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 1)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def writelines(self, parts: Any) -> None:
        self.out.extend(parts)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        raise AssertionError("the proxy closed a keep-alive connection")

    abort = close


class Setup:
    """One server, one client connection, one idle pooled upstream connection."""

    def __init__(self, parser: str, workdir: str) -> None:
        from monolake.conf import load_config
        from monolake.worker.http.client import UpstreamConnection
        from monolake.worker.http.proxy import RouterService
        from monolake.worker.http.server import build

        path = os.path.join(workdir, f"{parser}.toml")
        with open(path, "w") as f:
            f.write(textwrap.dedent(CONFIG.format(parser=parser)))
        cfg = load_config(path).servers["bench"]
        self.handle = build("bench", cfg, SimpleNamespace(slot=0, logger=None), None)
        self.proto = self.handle.protocol_factory()
        self.client = FakeTransport(("127.0.0.1", 50000))
        self.proto.connection_made(self.client)
        router = cast(RouterService, self.handle.stack.entry)  # no layers in CONFIG: the router
        up = router.routes[0].balancer.upstreams[0]
        self.conn = UpstreamConnection(self.handle.pool, up)
        self.upstream = FakeTransport(("127.0.0.1", 2))
        self.conn.connection_made(self.upstream)
        self.handle.pool.busy.add(self.conn)  # as if checked out: release() refuses a stranger
        self.handle.pool.release(self.conn)

    def run(self, n: int) -> float:
        """CPU seconds for n request/response pairs."""
        feed_request, feed_response = self.proto.data_received, self.conn.data_received
        self.client.out.clear()
        self.upstream.out.clear()
        t0 = time.process_time()
        for _ in range(n):
            feed_request(REQUEST)
            feed_response(RESPONSE)
        elapsed = time.process_time() - t0
        if not self.client.out or b"HTTP/1.1 200 OK" not in b"".join(self.client.out[-2:]):
            raise RuntimeError(f"unexpected answer: {self.client.out[-1:]!r}")
        return elapsed


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parsers", default="native,httptools,h11")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=3000)
    args = ap.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # warnings off
    from monolake.worker.http.parser import native

    parsers = [p for p in args.parsers.split(",") if p and (p != "native" or native is not None)]
    with tempfile.TemporaryDirectory() as work:
        setups = {p: Setup(p, work) for p in parsers}
        best = {p: float("inf") for p in parsers}
        for s in setups.values():
            s.run(500)  # warm up
        for _ in range(args.rounds):
            for p, s in setups.items():
                best[p] = min(best[p], s.run(args.per_round) / args.per_round)
    base = best[parsers[0]]
    print(
        f"{'parser':10} {'µs/request':>11} {'ratio':>7}   (best of {args.rounds} rounds of {args.per_round})"
    )
    for p in parsers:
        print(f"{p:10} {best[p] * 1e6:11.2f} {best[p] / base:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
