"""The checks themselves: each opens its own connection (never a request's pooled one), does
one exchange and closes. A probe returns None when the endpoint passed, else why it failed."""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass

from monolake.conf.health import HealthCheckConfig

THRIFT_CALL, THRIFT_REPLY, THRIFT_EXCEPTION = 1, 2, 3
VERSION_1 = 0x80010000


@dataclass(frozen=True)
class Address:
    """Where to probe: ``host:port`` (with TLS when ``ssl`` is set) or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""
    ssl: ssl.SSLContext | None = None
    sni: str | None = None
    authority: str = ""  # the Host header of an http check, unless the check names one


async def _open(addr: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if addr.path:
        return await asyncio.open_unix_connection(addr.path)
    if addr.ssl is not None:
        return await asyncio.open_connection(
            addr.host, addr.port, ssl=addr.ssl, server_hostname=addr.sni or addr.host
        )
    return await asyncio.open_connection(addr.host, addr.port)


def _close(writer: asyncio.StreamWriter) -> None:
    """Abort: a probe needs no orderly close (nor a TLS close_notify), and leaves no TIME_WAIT."""
    writer.transport.abort()


async def probe(cfg: HealthCheckConfig, addr: Address, framed: bool = True) -> str | None:
    """Run ``cfg``'s check against ``addr`` within ``cfg.timeout_sec``."""
    try:
        async with asyncio.timeout(cfg.timeout_sec):
            reader, writer = await _open(addr)
            try:
                if cfg.type == "http":
                    return await _http(cfg, addr, reader, writer)
                if cfg.type == "thrift":
                    return await _thrift(cfg, reader, writer, framed)
                if cfg.type == "grpc":  # grpc.health.v1 over h2 (worker/h2/health.py)
                    from monolake.worker.h2 import health

                    return await health.check(
                        reader, writer, cfg.host or addr.authority or "localhost", cfg.service
                    )
                return None  # tcp: the connect was the check
            finally:
                _close(writer)
    except TimeoutError:
        return f"no answer within {cfg.timeout_sec:g}s"
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _http(
    cfg: HealthCheckConfig, addr: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> str | None:
    host = cfg.host or addr.authority or "localhost"
    writer.write(
        f"{cfg.method} {cfg.path} HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: monolake-health-check\r\nConnection: close\r\n\r\n".encode("latin-1")
    )
    line = await reader.readline()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return f"not an HTTP response: {line[:60]!r}" if line else "connection closed before a response"
    status = int(parts[1])
    return None if cfg.expects(status) else f"status {status}"


def thrift_call(name: str, framed: bool) -> bytes:
    """A strict-binary CALL of ``name`` with no arguments, seqid 1."""
    raw = name.encode()
    msg = struct.pack("!Ii", VERSION_1 | THRIFT_CALL, len(raw)) + raw + struct.pack("!i", 1) + b"\x00"
    return struct.pack("!i", len(msg)) + msg if framed else msg


async def _thrift(
    cfg: HealthCheckConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framed: bool
) -> str | None:
    """Healthy when the reply is a REPLY; an EXCEPTION (a TApplicationException such as an
    unknown method) or anything else is not."""
    writer.write(thrift_call(cfg.method, framed))
    if framed:
        (size,) = struct.unpack("!i", await reader.readexactly(4))
        if size < 4:
            return f"bad frame size {size}"
    (head,) = struct.unpack("!I", await reader.readexactly(4))
    if head & 0x80000000:
        kind = head & 0xFF
    else:  # old non-strict binary: name length first, then the name, then the type byte
        await reader.readexactly(head)
        kind = (await reader.readexactly(1))[0]
    if kind == THRIFT_REPLY:
        return None
    if kind == THRIFT_EXCEPTION:
        return f"TApplicationException calling {cfg.method!r}"
    return f"unexpected thrift message type {kind}"
