"""In-process endpoints (``endpoint = { type = "builtin", value = ... }``): ``hello`` and ``echo``.

They exist so that the default config answers something useful without an upstream, and so
that tests can exercise the whole server path without one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from monolake.worker.http.body import BodyError
from monolake.worker.http.message import Request, Response, text_response

ECHO_BODY_LIMIT = 16 * 1024 * 1024

Handler = Callable[[Request, Any], Awaitable[Response]]


def make_hello(server: str, slot: int) -> Handler:
    pid = os.getpid()
    body = f"Hello from monolake! server={server} worker={slot} pid={pid}\n".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]

    async def hello(req: Request, ctx: Any) -> Response:
        if req.body is not None:
            req.body.discard()
        return Response(200, list(headers), body)

    return hello


def make_echo(server: str, slot: int) -> Handler:
    pid = os.getpid()

    async def echo(req: Request, ctx: Any) -> Response:
        data = b""
        if req.body is not None:
            try:
                data = await req.body.read_all(ECHO_BODY_LIMIT)
            except BodyError as exc:
                return text_response(413 if "larger" in str(exc) else 400, str(exc), close=True)
        doc = {
            "method": req.method,
            "target": req.target,
            "path": req.path,
            "query": req.query,
            "version": req.version,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
            "body": data.decode("utf-8", "replace"),
            "body_length": len(data),
            "server": server,
            "worker": slot,
            "pid": pid,
            "peer": _addr(ctx.conn.peer),
            "tls": ctx.conn.tls.version if ctx.conn.tls else None,
            "request_id": ctx.request_id,
        }
        return Response(200, [(b"content-type", b"application/json")], json.dumps(doc).encode())

    return echo


def _addr(addr: Any) -> str | None:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr) if addr else None


BUILTINS: dict[str, Callable[[str, int], Handler]] = {"hello": make_hello, "echo": make_echo}
