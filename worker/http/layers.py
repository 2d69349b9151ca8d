"""Ready-made layers for ``[[servers.NAME.layers]]`` (and the worked examples of docs/services.md).

- ``monolake.worker.http.layers:header_rewrite``: set or remove request/response headers.
- ``monolake.worker.http.layers:rate_limit``: a token bucket per client address (or one for
  everybody) answering 429 when empty; its buckets survive reloads (``Stateful``).
"""

from __future__ import annotations

import time
from typing import Any

from monolake.worker.http.message import Request, Response, text_response
from monolake.worker.service.core import Service
from monolake.worker.service.state import FdSource, Stateful, restore_state


def _hdr(name: str) -> bytes:
    return name.strip().lower().encode("latin-1")


class HeaderRewrite:
    """Stateless: edits headers on the way in and on the way out."""

    def __init__(self, inner: Service, opts: dict[str, Any]) -> None:
        self.inner = inner
        self.set_req = [(_hdr(k), str(v).encode("latin-1")) for k, v in opts.get("set_request", {}).items()]
        self.del_req = {_hdr(k) for k in opts.get("remove_request", [])} | {k for k, _ in self.set_req}
        self.set_resp = [(_hdr(k), str(v).encode("latin-1")) for k, v in opts.get("set_response", {}).items()]
        self.del_resp = {_hdr(k) for k in opts.get("remove_response", [])} | {k for k, _ in self.set_resp}

    async def call(self, request: Request, ctx: Any) -> Response:
        if self.del_req:
            request.headers = [(k, v) for k, v in request.headers if k not in self.del_req]
        request.headers.extend(self.set_req)
        response = await self.inner.call(request, ctx)
        if self.del_resp:
            response.headers = [(k, v) for k, v in response.headers if k not in self.del_resp]
        response.headers.extend(self.set_resp)
        return response


class HeaderRewriteFactory:
    key = "header_rewrite"

    def __init__(self, options: dict[str, Any]) -> None:
        for k in options:
            if k not in ("set_request", "remove_request", "set_response", "remove_response"):
                raise ValueError(f"header_rewrite: unknown option {k!r}")
        self.options = options

    def make(self, inner: Service, previous: Any) -> HeaderRewrite:
        return HeaderRewrite(inner, self.options)


def header_rewrite(options: dict[str, Any]) -> HeaderRewriteFactory:
    return HeaderRewriteFactory(options)


class RateLimiter(Stateful):
    """Token buckets: ``rate`` requests per second, bursts of up to ``burst``."""

    state_version = 1

    def __init__(self, inner: Service, rate: float, burst: int, per_client: bool) -> None:
        self.inner = inner
        self.rate = rate
        self.burst = burst
        self.per_client = per_client
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill (monotonic)]
        self.limited = 0

    def _take(self, key: str) -> bool:
        now = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) > 100_000:  # bound the memory a spray of clients can take
                self.buckets.clear()
            bucket = self.buckets[key] = [float(self.burst), now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    async def call(self, request: Request, ctx: Any) -> Response:
        peer = ctx.conn.peer
        key = str(peer[0]) if self.per_client and isinstance(peer, tuple) else "*"
        if not self._take(key):
            self.limited += 1
            if request.body is not None:
                request.body.discard()
            return text_response(429, "rate limited", extra=[(b"retry-after", b"1")])
        return await self.inner.call(request, ctx)

    # what survives a reload: the buckets (as ages, since monotonic clocks are per boot)
    def export_state(self, fds: list[int]) -> dict:
        now = time.monotonic()
        return {"buckets": {k: (b[0], now - b[1]) for k, b in self.buckets.items()}, "limited": self.limited}

    def import_state(self, data: dict, fds: FdSource) -> None:
        now = time.monotonic()
        self.buckets = {
            k: [min(float(tokens), self.burst), now - float(age)]
            for k, (tokens, age) in data.get("buckets", {}).items()
        }
        self.limited = int(data.get("limited", 0))


class RateLimitFactory:
    key = "rate_limit"

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = set(options) - {"rate", "burst", "per_client"}
        if unknown:
            raise ValueError(f"rate_limit: unknown options {sorted(unknown)}")
        self.rate = float(options.get("rate", 10))
        self.burst = int(options.get("burst", max(1, int(self.rate))))
        self.per_client = bool(options.get("per_client", True))
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate_limit: rate must be > 0 and burst >= 1")

    def make(self, inner: Service, previous: Any) -> RateLimiter:
        svc = RateLimiter(inner, self.rate, self.burst, self.per_client)
        restore_state(svc, previous, what="rate_limit")
        return svc


def rate_limit(options: dict[str, Any]) -> RateLimitFactory:
    return RateLimitFactory(options)
