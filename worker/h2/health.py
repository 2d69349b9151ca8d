"""The gRPC health probe (``grpc.health.v1.Health/Check``) of an active health check with
``type = "grpc"`` (worker/health/probes.py calls :func:`check` on the probe's own connection).

Why a probe of its own: a gRPC server answers every call with HTTP 200, so an ``http`` check
cannot see it failing; the standard health service (grpc/grpc doc/health-checking.md) says
``SERVING`` or ``NOT_SERVING`` per service, and it is what Envoy's ``grpc_health_check`` and
Kubernetes' gRPC probes call. The call is one unary request over h2 (prior knowledge, or TLS
with ALPN ``h2``) through our own :class:`H2ClientSession`; the two protobuf messages are
encoded here by hand (one string field out, one enum field back), so no protobuf runtime is
needed.
"""

from __future__ import annotations

import asyncio

from monolake.worker.h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from monolake.worker.h2.session import H2ClientSession
from monolake.worker.h2.settings import H2Settings

PATH = "/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
MAX_ANSWER = 64 * 1024  # a HealthCheckResponse is a few bytes; more is not a health server


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def request_message(service: str) -> bytes:
    """``HealthCheckRequest{service}`` as one gRPC length-prefixed message (uncompressed);
    ``""`` (the server as a whole) is the empty message."""
    raw = service.encode()
    msg = b"\x0a" + _varint(len(raw)) + raw if raw else b""
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def serving_status(body: bytes) -> int | None:
    """The ``status`` (field 1) of a gRPC-framed ``HealthCheckResponse``; 0 (UNKNOWN, proto3's
    default) when the field is absent; None when ``body`` is not one uncompressed message."""
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        return None
    msg, i, status = body[5:], 0, 0
    while i < len(msg):
        key, i = _read_varint(msg, i)
        if key is None:
            return None
        kind = key & 7
        if kind == 0:
            value, i = _read_varint(msg, i)
            if value is None:
                return None
            if key >> 3 == 1:
                status = value
        elif kind == 2:
            size, i = _read_varint(msg, i)
            if size is None or i + size > len(msg):
                return None
            i += size
        else:
            return None  # fixed32/64 and groups: not in this message
    return status


def _read_varint(buf: bytes, i: int) -> tuple[int | None, int]:
    value = shift = 0
    while i < len(buf) and shift < 64:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return None, i


async def check(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, service: str
) -> str | None:
    """One ``Health/Check`` call for ``service`` on this fresh connection: None when the
    answer is grpc-status 0 with ``SERVING``, else why not (the caller bounds the time)."""
    ssl_obj = writer.get_extra_info("ssl_object")
    if ssl_obj is not None and ssl_obj.selected_alpn_protocol() != "h2":
        return f"TLS upstream did not select h2 by ALPN ({ssl_obj.selected_alpn_protocol()!r})"
    s = H2ClientSession(H2Settings())
    try:
        sid = s.send_request(
            [
                (":method", "POST"),
                (":scheme", "https" if ssl_obj is not None else "http"),
                (":authority", authority),
                (":path", PATH),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", "monolake-health-check"),
            ]
        )
        s.send_data(sid, request_message(service), end_stream=True)
        head: dict[bytes, bytes] = {}
        status_fields: dict[bytes, bytes] = {}
        body = bytearray()
        ended = False
        while not ended:
            out = s.data_to_send()
            if out:
                writer.write(out)
            data = await reader.read(65536)
            if not data:
                return "connection closed before the answer"
            for ev in s.receive_data(data):
                if ev.stream_id not in (0, sid):
                    continue
                if isinstance(ev, ResponseReceived):
                    head = dict(ev.headers)
                    status_fields = head  # a trailers-only answer carries grpc-status here
                    ended = ended or ev.end_stream
                elif isinstance(ev, TrailersReceived):
                    status_fields = dict(ev.headers)
                    ended = True
                elif isinstance(ev, DataReceived):
                    body += ev.data
                    s.acknowledge_received_data(sid, ev.flow_controlled_length)
                    if len(body) > MAX_ANSWER:
                        return f"answer over {MAX_ANSWER} bytes"
                elif isinstance(ev, StreamReset):
                    return f"stream reset (HTTP/2 error {ev.error_code})"
                elif isinstance(ev, ConnectionTerminated) and (
                    not ev.remote or sid in ev.unprocessed_stream_ids
                ):
                    return f"connection ended ({ev.error or f'GOAWAY, error {ev.error_code}'})"
                elif isinstance(ev, StreamEnded):
                    ended = True
        http_status = head.get(b":status", b"")
        if http_status != b"200":
            return f"HTTP status {http_status.decode('latin-1') or 'missing'}"
        code = status_fields.get(b"grpc-status")
        if code != b"0":
            message = status_fields.get(b"grpc-message", b"").decode("latin-1")
            return f"grpc-status {(code or b'missing').decode('latin-1')}" + (
                f": {message}" if message else ""
            )
        serving = serving_status(bytes(body))
        if serving is None:
            return "not a HealthCheckResponse"
        return None if serving == SERVING else f"health status {STATUS_NAMES.get(serving, serving)}"
    finally:
        s.release()
