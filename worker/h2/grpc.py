"""gRPC facts the downstream h2 side needs: is a request gRPC, its ``grpc-timeout``, and the
trailers-only response the proxy answers with when it fails a call itself.

Why here: a gRPC client reads only ``grpc-status`` (an HTTP 502 page becomes "UNKNOWN" or
"UNAVAILABLE: 502" without the reason), so the proxy's own refusals (no route, upstream down,
upstream timeout) are re-shaped into the status a gRPC client acts on: UNIMPLEMENTED,
UNAVAILABLE, DEADLINE_EXCEEDED (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
"""

from __future__ import annotations

from monolake.worker.h2.events import Headers

OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED = 0, 1, 2, 4, 7
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 8, 12, 13, 14, 16

# the HTTP status of a proxy-made (or non-gRPC upstream) response -> the gRPC status; the
# gRPC spec's own mapping (doc/http-grpc-status-mapping.md) except that a timeout (504, 408)
# is DEADLINE_EXCEEDED: the proxy knows it timed out, the client should not retry blindly
_FROM_HTTP = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    405: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: UNAVAILABLE,
    431: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(headers: Headers) -> bool:
    """``content-type: application/grpc`` (or ``application/grpc+proto`` ...)."""
    for k, v in headers:
        if k == b"content-type":
            return v.startswith(b"application/grpc")
    return False


def timeout_of(headers: Headers) -> float | None:
    """``grpc-timeout`` in seconds (``TimeoutValue TimeoutUnit``: up to 8 digits, one of
    H M S m u n); None when absent or malformed (a malformed one is ignored, as grpc-go does)."""
    for k, v in headers:
        if k == b"grpc-timeout":
            digits, unit = v[:-1], v[-1:]
            if 1 <= len(digits) <= 8 and digits.isdigit() and unit in _UNITS:
                return int(digits) * _UNITS[unit]
            return None
    return None


def status_for_http(status: int) -> int:
    return _FROM_HTTP.get(status, UNKNOWN)


def trailers_only(code: int, message: str) -> Headers:
    """A complete gRPC response in one HEADERS frame: HTTP 200 with the status fields."""
    head: Headers = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(code).encode()),
    ]
    if message:
        head.append((b"grpc-message", percent_encode(message)))
    return head


def percent_encode(message: str) -> bytes:
    """grpc-message's encoding: UTF-8, then every byte outside 0x20-0x7E and ``%`` as %XX."""
    return b"".join(
        b"%%%02X" % c if c < 0x20 or c > 0x7E or c == 0x25 else bytes((c,)) for c in message.encode()
    )
