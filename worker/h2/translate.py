"""HTTP/1.1 <-> HTTP/2 head translation for an h2 upstream (RFC 9113 §8.2.2, §8.3).

Why from the serialised HTTP/1.1 head: ``request_head`` already applies every forwarding rule
(hop-by-hop and Connection-named fields dropped, Host, X-Forwarded-*, Forwarded, Via), in C
when the native module is built. Re-parsing its lines keeps one implementation of those rules;
this module only maps the request line and Host onto pseudo-headers and drops what HTTP/2
forbids.
"""

from __future__ import annotations

from monolake.worker.h2.events import Headers
from monolake.worker.http.headers import with_via
from monolake.worker.http.message import header_tokens

# connection-specific fields, which never cross into HTTP/2 (RFC 9113 §8.2.2); both directions
# of translation drop them (downstream.py for responses to an h2 client)
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)
# and, towards an h2 upstream, Host (it becomes :authority) and what the proxy answers itself
# (Expect: the HTTP/1.1 side sends 100 Continue when the body is first read, as nginx does)
_DROP = CONNECTION_SPECIFIC | {b"host", b"expect", b"http2-settings"}


def wants_trailers(headers: Headers) -> bool:
    """The client said ``TE: trailers``: it reads trailer fields (gRPC needs them)."""
    return b"trailers" in header_tokens(headers, b"te")


def announces_trailers(headers: Headers) -> bool:
    """The request names its trailer fields (``Trailer``, RFC 9110 §6.6.2): towards HTTP/1.1
    its body goes chunked even with a content-length, because only a chunked message has a
    trailer section (without the announcement a content-length body loses them, as in Envoy)."""
    return any(k == b"trailer" for k, _ in headers)


def request_headers(head: bytes, scheme: str, te_trailers: bool) -> Headers:
    """The h2 request header list for an HTTP/1.1 head built by ``request_head``:
    ``:method``, ``:scheme``, ``:authority`` (from Host), ``:path``, then the fields HTTP/2
    allows. ``te: trailers`` is the one TE value that may cross (gRPC servers require it)."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" ")[0] or b"/"
    authority = b""
    fields: Headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"host":
            authority = value
        elif name not in _DROP:
            fields.append((name, value))
    if te_trailers:
        fields.append((b"te", b"trailers"))
    pseudo: Headers = [
        (b":method", method),
        (b":scheme", scheme.encode()),
        (b":authority", authority or b"localhost"),
        (b":path", target),
    ]
    return pseudo + fields


def response_fields(headers: Headers, via: bool) -> tuple[int, Headers, int | None]:
    """An h2 response head as (status, HTTP/1.1 header fields, content-length or None).
    nghttp2 has refused connection-specific fields already; the rest pass unchanged."""
    status = 502
    out: Headers = []
    length: int | None = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":status":
                status = int(value)
            continue
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        out.append((name, value))
    if via:
        out = with_via(out)
    return status, out, length


def trailer_fields(headers: Headers) -> Headers:
    """Trailer fields without pseudo-headers (nghttp2 refuses those in trailers anyway)."""
    return [(k, v) for k, v in headers if k[:1] != b":"]
