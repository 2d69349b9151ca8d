"""The ``[servers.NAME.http2]`` table: HTTP/2 served to clients (issue 14 §2).

h2 shares the server's port with HTTP/1.1: on a plain listener a client that opens with the
24-byte connection preface speaks h2 (prior knowledge), on a TLS listener ALPN decides between
the protocols in ``alpn``. Absent, h2 is on when this build has the libnghttp2 extension (off
with one log line in the worker when not); present with ``enabled = true`` (its default) on a
build without the extension, it is a config error that says how to get it.

Defaults are what nginx and Envoy's edge guidance pick: 128 concurrent streams (nginx
``http2_max_concurrent_streams``; Envoy edge 100), a 64 KiB stream window (the RFC default;
Envoy edge 64 KiB), a 64 KiB decoded header list (Envoy 60 KiB; nginx's 4 KiB field limit is
per field), 16 KiB frames (the RFC minimum), and the server's keep-alive timeout as the idle
timeout (nginx does the same with ``keepalive_timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import MISSING, Table, found_with_type

HTTP2_KEYS = (
    "enabled",
    "max_concurrent_streams",
    "initial_window_size",
    "max_header_list_size",
    "max_frame_size",
    "idle_timeout_sec",
    "send_timeout_sec",
    "alpn",
)
ALPN_PROTOCOLS = ("h2", "http/1.1")
MAX_WINDOW = 2**31 - 1  # RFC 9113 §6.9.1
MIN_FRAME, MAX_FRAME = 2**14, 2**24 - 1  # RFC 9113 §6.5.2


@dataclass(frozen=True)
class Http2Config:
    enabled: bool = True  # resolved: False also when the build has no libnghttp2 (table absent)
    max_concurrent_streams: int = 128
    initial_window_size: int = 65_535
    max_header_list_size: int = 65_536
    max_frame_size: int = 16_384
    idle_timeout_sec: float = 75.0  # default: the server's server_keepalive_timeout_sec
    send_timeout_sec: float = 60.0  # a response that makes no progress (zero window) is reset
    alpn: tuple[str, ...] = ALPN_PROTOCOLS  # TLS listeners: offered in this order of preference


def _h2_available() -> tuple[bool, str]:
    from monolake.worker import h2  # lazily: conf must import without the worker's extension

    a = h2.available()
    return bool(a), a.reason


def parse_http2(server: Table, *, tls: bool, keepalive: float) -> Http2Config:
    """Read ``http2`` of an http server; problems are recorded on the server's table."""
    available, reason = _h2_available()
    t = server.subtable("http2", known=HTTP2_KEYS)
    if t is None:
        alpn: tuple[str, ...] = ALPN_PROTOCOLS if available else ("http/1.1",)
        return Http2Config(enabled=available, idle_timeout_sec=keepalive, alpn=alpn)
    d = Http2Config()
    enabled = t.boolean("enabled", True)
    if enabled and not available:
        server.problems.add(t.key("enabled"), reason)
    streams = t.integer("max_concurrent_streams", d.max_concurrent_streams, lo=1, hi=MAX_WINDOW)
    window = t.integer("initial_window_size", d.initial_window_size, lo=1, hi=MAX_WINDOW, unit="of bytes")
    header_list = t.integer(
        "max_header_list_size", d.max_header_list_size, lo=1024, hi=2**24, unit="of bytes"
    )
    frame = t.integer("max_frame_size", d.max_frame_size, lo=MIN_FRAME, hi=MAX_FRAME, unit="of bytes")
    idle = t.duration("idle_timeout_sec", keepalive)
    send = t.duration("send_timeout_sec", d.send_timeout_sec)
    alpn = _alpn(t, enabled, tls)
    t.done()
    return Http2Config(
        enabled=enabled and available,
        max_concurrent_streams=streams,
        initial_window_size=window,
        max_header_list_size=header_list,
        max_frame_size=frame,
        idle_timeout_sec=idle,
        send_timeout_sec=send,
        alpn=alpn if enabled and available else ("http/1.1",),
    )


def _alpn(t: Table, enabled: bool, tls: bool) -> tuple[str, ...]:
    used, value = t.lookup("alpn")
    if value is MISSING:
        return ALPN_PROTOCOLS
    expected = 'a non-empty array of "h2" and/or "http/1.1", such as ["h2", "http/1.1"]'
    if not tls:
        t.expected(used, "no alpn on a listener without tls (h2 is detected by its preface)", value)
        return ALPN_PROTOCOLS
    if not isinstance(value, list) or not value:
        t.expected(used, expected, found_with_type(value) if value else "an empty array", raw=True)
        return ALPN_PROTOCOLS
    if any(v not in ALPN_PROTOCOLS for v in value) or len(set(value)) != len(value):
        t.expected(used, expected + ", each at most once", value)
        return ALPN_PROTOCOLS
    if "h2" in value and not enabled:
        t.expected(used, 'no "h2" with enabled = false', value)
    return tuple(value)
