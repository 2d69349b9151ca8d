"""The control socket: a unix socket (mode 0600) on which ``monolaked status / stop / reload /
log-level / debug`` talk to the master, one request and one reply per connection, framed like the
worker control channel (``monolake.supervisor.channel``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from monolake.supervisor import channel, messages
from monolake.supervisor.sockets import bind_unix

if TYPE_CHECKING:
    from monolake.supervisor.master import Master

log = structlog.get_logger()

# pending control connections the kernel queues while the master is busy (a script may run
# many commands at once); the client waits for room beyond that (see _connect)
CONTROL_BACKLOG = 128


class ControlServer:
    def __init__(self, path: str, master: Master) -> None:
        self.path = path
        self.master = master
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for other users
        try:
            sock = bind_unix(self.path, CONTROL_BACKLOG)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, backlog=CONTROL_BACKLOG)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await asyncio.wait_for(reader.readexactly(channel.HEADER.size), 10)
            (size,) = channel.HEADER.unpack(header)
            if size > 1024 * 1024:
                raise channel.ChannelError("control request too large")
            frames = channel.FrameReader()
            frames.feed(header + await asyncio.wait_for(reader.readexactly(size), 10))
            got = frames.next_message()
            request = got[0] if got else {}
            reply = await self.handle(request)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except channel.ChannelError as exc:
            reply = {"type": "error", "error": str(exc)}
        except Exception as exc:  # a bug in a handler: answered and logged, the master goes on
            log.exception("control request failed", error=repr(exc))
            reply = {"type": "error", "error": f"internal error: {exc!r}"}
        try:
            writer.write(channel.encode(reply))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Through the master's event queue (``Master.command``), answered by ``run_command``."""
        reply: dict[str, Any] = await self.master.command(request)
        return reply


# ----- the commands: one function each, registered by name --------------------------------

Command = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Register a control command (``monolaked <name>`` sends ``{"type": name, ...}``)."""

    def add(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return add


async def run_command(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    kind = request.get("type")
    handler = COMMANDS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        return {"type": "error", "error": f"unknown request {kind!r}"}
    return await handler(master, request)


@command("status")
async def _status(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    return {"type": "status", **master.status()}


@command("reload")
async def _reload(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    if master.reloader is None:  # the master makes it before it opens this socket
        return {"type": "reload", "ok": False, "reason": "the master is not running yet"}
    result = await master.reloader.reload(wait=True)
    return {"type": "reload", **result}


@command("stop")
async def _stop(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    master.request_stop(not request.get("fast", False))
    return {"type": "ok"}


@command("debug")
async def _debug(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    try:
        report = await master.debug_worker(int(request.get("slot", 0)), bool(request.get("collect", False)))
    except (TimeoutError, TypeError, ValueError, LookupError, RuntimeError) as exc:
        return {"type": "error", "error": f"debug: {exc or 'no answer in time'}"}
    return {"type": "debug", **report}


@command("upstreams")
async def _upstreams(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    """The runtime upstream API (supervisor/upstreams_api.py)."""
    from monolake.supervisor import upstreams_api

    return await upstreams_api.for_master(master).handle(request)


@command("log_level")
async def _log_level(master: Master, request: dict[str, Any]) -> dict[str, Any]:
    from monolake.supervisor import logs

    level = str(request.get("level", ""))
    try:
        logs.set_level(level)
    except ValueError as exc:
        return {"type": "error", "error": str(exc)}
    master.broadcast(messages.LogLevel(level=level))
    log.info("log level changed", new_level=level)
    return {"type": "ok"}


def request(path: str, message: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Client side: send one request to the master and wait for its reply."""
    deadline = time.monotonic() + timeout
    with _connect(path, deadline) as sock:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(channel.encode(message))
        reader = channel.FrameReader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the master closed the control connection without a reply")
            reader.feed(data)
            got = reader.next_message()
            if got is not None:
                return got[0]


def _connect(path: str, deadline: float) -> socket.socket:
    """A connection to the control socket. A unix-socket connect with a timeout fails at once
    (EAGAIN) while the master's accept queue is full, i.e. while it is busy: wait for room
    within the request's deadline, as for a master that is slow to answer."""
    pause = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() + pause >= deadline:
                raise TimeoutError(f"the master's control socket {path} stayed busy") from None
        except BaseException:
            sock.close()
            raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
