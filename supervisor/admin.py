"""The master's admin HTTP listener (``[admin] listen``): ``/metrics``, ``/status``, ``/healthz``.

A deliberately tiny HTTP/1.1 responder on the master's event loop: GET and HEAD only, no
request bodies, keep-alive, bounded heads and connection count. It imports no service code
(the master never loads ``monolake.worker``) and answers from state the master already holds,
so a scrape never waits on a worker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import TYPE_CHECKING

import structlog

from monolake.supervisor import metrics
from monolake.supervisor.sockets import bind_tcp

if TYPE_CHECKING:
    from monolake.supervisor.master import Master

log = structlog.get_logger()

MAX_HEAD = 8192
MAX_CONNECTIONS = 128
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
ENDPOINTS = "/metrics  Prometheus metrics\n/status   monolaked status --json\n/healthz  liveness\n"


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def health(master: Master) -> tuple[int, str]:
    """200 while the master serves with at least one ready worker, else 503 with the reason."""
    from monolake.supervisor.workers import READY

    total = len(master.slots)
    ready = sum(1 for s in master.slots if s.worker is not None and s.worker.state == READY)
    if master.stopping:
        return 503, "stopping\n"
    if ready == 0:
        return 503, f"unhealthy: 0 of {total} workers ready\n"
    return 200, (f"ok: {ready} of {total} workers ready, generation {master.state.generation}\n")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminServer:
    """Binds ``[admin] listen`` and follows it across reloads."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.listen = ""
        self._server: asyncio.AbstractServer | None = None
        self._watch: asyncio.Task[None] | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return self.listen if self._server is not None else ""

    async def start(self) -> None:
        """Bind the configured address (OSError if it cannot), then follow reloads."""
        admin = self.master.config.admin
        if admin.listen:
            await self._bind(admin.listen, admin.host, admin.port)
        self._watch = asyncio.get_running_loop().create_task(self._follow_config())

    async def _bind(self, listen: str, host: str, port: int) -> None:
        try:
            sock = bind_tcp(host, port, 64, reuseport=False)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {listen} (admin): {exc.strerror or exc}") from None
        server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD * 2)
        old, self._server, self.listen = self._server, server, listen
        if old is not None:
            old.close()
        if not is_loopback(host):
            log.warning(
                "admin listener on a non-loopback address: status and metrics are "
                "readable by anyone who can reach it",
                listen=listen,
            )
        log.info("admin listener started", listen=listen)

    async def _follow_config(self) -> None:
        """A reload may change ``[admin] listen``: bind the new address, then drop the old one."""
        wanted = self.master.config.admin.listen
        while True:
            await asyncio.sleep(0.5)
            admin = self.master.config.admin
            if admin.listen == wanted:
                continue
            wanted = admin.listen  # acted upon once: a failed bind is not retried in a loop
            if not admin.listen:
                self._stop_listening()
                log.info("admin listener closed by the new configuration")
                continue
            try:
                await self._bind(admin.listen, admin.host, admin.port)
            except OSError as exc:
                log.error(
                    "admin listener not moved; it keeps its old address",
                    old=self.listen or "off",
                    error=str(exc),
                )

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.listen = ""

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._stop_listening()
        for writer in list(self._connections):
            writer.close()

    # ----- HTTP --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(writer)
        try:
            first = True
            while True:
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT if first else IDLE_TIMEOUT
                    )
                except asyncio.IncompleteReadError:
                    return
                except TimeoutError:
                    if first:
                        await self._respond(writer, "GET", 408, "request head timeout\n", close=True)
                    return
                except asyncio.LimitOverrunError:
                    await self._respond(writer, "GET", 431, "request head too large\n", close=True)
                    return
                first = False
                if not await self._one(reader, writer, head):
                    return
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        """Answer one request; False when the connection must close."""
        started = time.monotonic()
        method, path = "GET", "?"
        try:
            method, path, keep_alive, length = parse_head(head)
            if length:
                if length > 65536:
                    raise BadRequest(413, "request bodies are not accepted\n")
                await asyncio.wait_for(reader.readexactly(length), HEAD_TIMEOUT)
            status, ctype, body = self.route(method, path)
        except BadRequest as exc:
            status, ctype, body, keep_alive = exc.status, "text/plain; charset=utf-8", str(exc), False
        except TimeoutError:
            return False
        except Exception as exc:
            log.exception("admin request failed", path=path)
            status, ctype, body, keep_alive = 500, "text/plain; charset=utf-8", f"{exc!r}\n", False
        await self._respond(writer, method, status, body, ctype, close=not keep_alive)
        log.debug(
            "admin request",
            method=method,
            path=path,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 3),
        )
        return keep_alive

    def route(self, method: str, target: str) -> tuple[int, str, str]:
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/status", "/healthz", "/"):
            return 404, "text/plain; charset=utf-8", "not found; try:\n" + ENDPOINTS
        if method not in ("GET", "HEAD"):
            raise BadRequest(405, "only GET and HEAD\n")
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, metrics.render(self.master)
        if path == "/status":
            return 200, "application/json", json.dumps(self.master.status(), indent=2, sort_keys=True) + "\n"
        if path == "/healthz":
            status, text = health(self.master)
            return status, "text/plain; charset=utf-8", text
        return 200, "text/plain; charset=utf-8", "monolake admin\n" + ENDPOINTS

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        status: int,
        body: str,
        ctype: str = "text/plain; charset=utf-8",
        close: bool = False,
    ) -> None:
        data = body.encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            f"Cache-Control: no-store\r\n"
            + ("Allow: GET, HEAD\r\n" if status == 405 else "")
            + f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        ).encode("latin-1")
        writer.write(head if method == "HEAD" else head + data)
        await writer.drain()


def parse_head(head: bytes) -> tuple[str, str, bool, int]:
    """``(method, target, keep_alive, content_length)`` of a request head, or BadRequest."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest(400, "undecodable head\n") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line\n")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line\n")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest(400, "request bodies are not accepted\n")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad Content-Length\n") from None
    if length < 0:
        raise BadRequest(400, "bad Content-Length\n")
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
    return method, target, keep_alive, length
