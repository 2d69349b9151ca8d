"""Proxy one request to an h2 upstream: the router's HTTP/2 branch.

Why a coroutine per request (the HTTP/1.1 path has a callback fast path): a connect, the wait
for the peer's SETTINGS and the GOAWAY retry all await; one stream's head then comes back
through a future. A request the upstream never processed (beyond a GOAWAY's last stream id, or
REFUSED_STREAM) is sent once more on another connection
(RFC 9113 §8.7: such a request is safe to retry whatever its method). Its body goes again
from the refused stream's replay buffer (``REPLAY_LIMIT``); a body that outgrew it is a 502.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from monolake.worker.h2.pool import H2Pool, NotH2, PoolFull
from monolake.worker.h2.translate import request_headers, wants_trailers
from monolake.worker.h2.upstream import REPLAY_LIMIT, H2Stream
from monolake.worker.http.client import UpstreamError, UpstreamTimeout
from monolake.worker.http.headers import request_head, upstream_target
from monolake.worker.http.message import Request, Response, text_response

ATTEMPTS = 2


async def forward(
    pool: H2Pool,
    route: Any,
    req: Request,
    ctx: Any,
    first: Any,
    *,
    preserve_host: bool,
    via: bool,
    stats: Any,
    fallback: Callable[..., Awaitable[Response]] | None = None,
) -> Response:
    """The response of ``first`` (the upstream the balancer picked) over HTTP/2. With
    ``upstream_http_version = "auto"`` (``route.h2 == "auto"``) an https upstream whose ALPN
    picks http/1.1 is served by ``fallback`` (the router's HTTP/1.1 path) instead."""
    if req.upgrade:
        if req.body is not None:
            req.body.discard()
        return text_response(502, "an HTTP/2 upstream cannot take an HTTP/1.1 upgrade")
    up = first
    last: UpstreamError | None = None
    parked: H2Stream | None = None  # a refused stream holding the request body for the retry
    try:
        for _attempt in range(ATTEMPTS):
            if up is None:
                up = route.balancer.pick(None)
                if up is None:
                    break
            ctx.upstream = up.label
            try:
                conn = await pool.acquire(up, route.h2_ssl, stats)
            except NotH2:
                if parked is not None:  # an "auto" endpoint that turned HTTP/1.1: no replay there
                    return text_response(
                        502, "HTTP/2 upstream refused the request; its body cannot be resent"
                    )
                if fallback is None:
                    return text_response(502, f"{up.label} does not speak HTTP/2")
                return await fallback(route, req, ctx, first=up)
            except PoolFull as exc:  # at the connection cap: 503, the upstream is not to blame
                structlog.get_logger().info(
                    "h2_upstream_pool_full", upstream=up.label, error=str(exc), request_id=ctx.request_id
                )
                return _error(exc)
            except UpstreamError as exc:
                up.connect_failed(stats)
                structlog.get_logger().info(
                    "upstream_connect_failed", upstream=up.label, error=str(exc), request_id=ctx.request_id
                )
                return _error(exc)
            up.connect_ok()
            head = request_head(
                req,
                ctx,
                up,
                upstream_target(req, up, route.preserve_path),
                preserve_host=preserve_host,
                via=via,
            )
            headers = request_headers(head, "https" if up.ssl else "http", wants_trailers(req.headers))
            waiter: asyncio.Future = asyncio.get_running_loop().create_future()

            def done(
                resp: Response | None, exc: BaseException | None, waiter: asyncio.Future = waiter
            ) -> None:
                if waiter.done():
                    if resp is not None and not isinstance(resp.body, bytes):
                        resp.body.abandon()
                elif exc is None:
                    waiter.set_result(resp)
                else:
                    waiter.set_exception(exc)

            if parked is not None and not parked.replayable:
                structlog.get_logger().info(
                    "h2_upstream_no_replay",
                    upstream=up.label,
                    sent=parked.replay_size,
                    request_id=ctx.request_id,
                )
                stats.h2_upstream_retry_failures += 1
                return _no_replay()
            st = conn.send(req.method, headers, req.body, via, done, replay_from=parked)
            stats.h2_upstream_requests += 1
            parked = None
            try:
                return await waiter
            except asyncio.CancelledError:
                conn.cancel(st.id)  # the client went away: RST_STREAM(CANCEL), the rest goes on
                raise
            except UpstreamError as exc:
                last = exc
                if exc.retryable and (req.body is None or st.replayable):
                    structlog.get_logger().info(
                        "h2_upstream_retry",
                        upstream=up.label,
                        error=str(exc),
                        replay=st.replay_size if req.body is not None else 0,
                        request_id=ctx.request_id,
                    )
                    parked = st if req.body is not None else None
                    stats.h2_upstream_retries += 1
                    up = None if _attempt else up  # a fresh connection to the same endpoint first
                    continue
                structlog.get_logger().info(
                    "upstream_failed", upstream=up.label, error=str(exc), request_id=ctx.request_id
                )
                replayable = st.replayable
                st.release()
                if exc.retryable and req.body is not None and not replayable:
                    stats.h2_upstream_retry_failures += 1
                    return _no_replay()
                return _error(exc)
        return _error(last) if last is not None else text_response(503, "no healthy upstream")
    finally:
        if parked is not None:
            parked.release()  # no retry took the body: keep reading the client, drop the bytes


def _no_replay() -> Response:
    """A refused request whose body cannot go again (see ``H2Stream.replayable``)."""
    return text_response(
        502,
        f"HTTP/2 upstream refused the request; its body cannot be sent again "
        f"(more than {REPLAY_LIMIT} bytes taken, or broken off)",
    )


def _error(exc: UpstreamError) -> Response:
    if isinstance(exc, UpstreamTimeout):
        return text_response(504, str(exc))
    return text_response(exc.status, str(exc))
