"""Events a session returns from ``receive_data``, in wire order (the h11 / h2 style).

Headers are ``list[tuple[bytes, bytes]]`` in received order, pseudo-headers first as the peer sent
them (nghttp2 has already validated them: RFC 9113 §8.3 ordering, no connection-specific fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


class Event:
    """Base class: every event has a ``stream_id`` (0 for connection-level ones)."""

    __slots__ = ()
    stream_id: int


@dataclass
class RequestReceived(Event):
    """Server side: a request head opened ``stream_id``."""

    stream_id: int
    headers: Headers
    end_stream: bool = False


@dataclass
class ResponseReceived(Event):
    """Client side: the final (non-1xx) response head."""

    stream_id: int
    headers: Headers
    end_stream: bool = False


@dataclass
class InformationalResponseReceived(Event):
    """Client side: a 1xx head (100-continue, 103); more heads follow."""

    stream_id: int
    headers: Headers


@dataclass
class TrailersReceived(Event):
    """A trailing header block; it always ends the stream (grpc-status lives here)."""

    stream_id: int
    headers: Headers
    end_stream: bool = True


@dataclass
class DataReceived(Event):
    """A DATA chunk. ``flow_controlled_length`` must be given back with
    ``acknowledge_received_data`` once the bytes are used: that is what reopens the peer's window
    (inbound backpressure), and until then at most one window of it is buffered."""

    stream_id: int
    data: bytes
    flow_controlled_length: int
    end_stream: bool = False


@dataclass
class StreamEnded(Event):
    """The peer half-closed ``stream_id`` (END_STREAM seen)."""

    stream_id: int


@dataclass
class StreamReset(Event):
    """The stream is gone before completing: reset by the peer (``remote``) or by us/nghttp2.
    A client whose stream was refused (REFUSED_STREAM, or beyond a GOAWAY's last stream id) may
    retry it elsewhere: ``retryable``."""

    stream_id: int
    error_code: int
    remote: bool = True
    retryable: bool = False


@dataclass
class StreamClosed(Event):
    """The stream completed normally in both directions; its state is released."""

    stream_id: int


@dataclass
class StreamWritable(Event):
    """The stream's send buffer fell below ``send_low_water``: a paused producer may resume."""

    stream_id: int
    buffered: int


@dataclass
class RemoteSettingsChanged(Event):
    """The peer's SETTINGS (by RFC 9113 id: 3 = max concurrent streams, 4 = initial window, …)."""

    changed: dict[int, int] = field(default_factory=dict)
    stream_id: int = 0


@dataclass
class PingAcknowledged(Event):
    opaque: bytes = b""
    stream_id: int = 0


@dataclass
class ConnectionTerminated(Event):
    """GOAWAY received, or the session failed (a flood, a protocol error: ``error`` says which).
    ``last_stream_id`` is the peer's: our streams above it were not processed and are safe to
    retry (``unprocessed_stream_ids``)."""

    error_code: int
    last_stream_id: int = 0
    additional_data: bytes = b""
    unprocessed_stream_ids: list[int] = field(default_factory=list)
    remote: bool = True
    error: str = ""
    stream_id: int = 0
