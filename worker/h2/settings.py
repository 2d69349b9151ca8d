"""HTTP/2 settings and defence limits: one typed, validated dataclass per listener/upstream.

Why one dataclass for both: the SETTINGS we advertise and the nghttp2 options that bound what a
peer may make us do are chosen together (a window without a frame cap, or a stream limit without a
reset-rate limit, is half a defence). Defaults are what an operator would pick for an edge proxy
(nginx / Envoy edge guidance); docs/http2.md explains each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

MAX_WINDOW = 2**31 - 1  # RFC 9113 §6.9.1
MIN_FRAME, MAX_FRAME = 2**14, 2**24 - 1  # RFC 9113 §6.5.2


class H2SettingsError(ValueError):
    """A setting out of range or unknown; the message names the key (config errors quote it)."""


@dataclass(frozen=True)
class H2Settings:
    """What we advertise in SETTINGS, and the limits nghttp2 enforces on the peer."""

    # --- advertised SETTINGS ---
    max_concurrent_streams: int = 128  # nginx http2_max_concurrent_streams / Envoy edge: 100-128
    initial_window_size: int = 65_535  # per stream, RFC default, nginx preread / Envoy edge 64 KiB
    connection_window_size: int = 1_048_576  # connection-level receive window (Envoy edge 1 MiB)
    max_frame_size: int = 16_384  # RFC minimum; larger frames only add head-of-line blocking
    max_header_list_size: int = 65_536  # decoded head (Envoy 60 KiB); the HPACK bomb cap
    header_table_size: int = 4_096  # HPACK dynamic table we let the peer use (RFC default)
    # --- defences (nghttp2 options + our own accounting) ---
    max_continuations: int = 8  # CONTINUATION frames after one HEADERS (CVE-2024-28182)
    reset_burst: int = 1_000  # RST_STREAMs received at once before GOAWAY (CVE-2023-44487) ...
    reset_rate: int = 33  # ... and refilled per second
    max_outbound_ack: int = 1_000  # queued PING/SETTINGS ACKs the peer is not reading (flood)
    max_settings: int = 32  # entries in one SETTINGS frame
    max_peer_errors: int = 1_000  # stream-level peer errors (oversized heads, invalid frames) ...
    peer_error_rate: int = 33  # ... refilled per second; empty -> GOAWAY(ENHANCE_YOUR_CALM)
    max_send_header_block: int = 65_536  # our own header blocks (a huge upstream response head)
    send_low_water: int = 65_536  # a stream's send buffer below this raises StreamWritable

    def __post_init__(self) -> None:
        def check(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise H2SettingsError(f"{name} must be an integer, not {value!r}")
            if not lo <= value <= hi:
                raise H2SettingsError(f"{name} = {value} is out of range [{lo}, {hi}]")

        check("max_concurrent_streams", 1, MAX_WINDOW)
        check("initial_window_size", 1, MAX_WINDOW)
        check("connection_window_size", 65_535, MAX_WINDOW)
        check("max_frame_size", MIN_FRAME, MAX_FRAME)
        check("max_header_list_size", 1_024, 2**24)
        check("header_table_size", 0, 65_536)
        check("max_continuations", 1, 1_024)
        check("reset_burst", 1, 1_000_000)
        check("reset_rate", 1, 1_000_000)
        check("max_outbound_ack", 1, 1_000_000)
        check("max_settings", 7, 1_024)  # 7: one of each standard setting must fit
        check("max_peer_errors", 1, 1_000_000)
        check("peer_error_rate", 1, 1_000_000)
        check("max_send_header_block", 1_024, 2**24)
        check("send_low_water", 1, 2**30)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str = "http2") -> H2Settings:
        """Settings from a config table (``[servers.NAME.http2]``); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise H2SettingsError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**dict(table))
        except H2SettingsError as exc:
            raise H2SettingsError(f"{where}.{exc}") from None
