"""Header rules of the proxy: hop-by-hop removal, X-Forwarded-* / Forwarded, Via, Host.

Both functions run once per proxied request, so they make one pass over the header list.
"""

from __future__ import annotations

from typing import Any

from monolake.worker.http.message import Headers, Request, header_tokens
from monolake.worker.http.parser import native

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)
# request headers the proxy regenerates itself
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


def _split_headers_py(headers: Headers, names: tuple[bytes, ...]) -> tuple[bytes, Headers]:
    """``name: value`` lines of the pairs not in ``names``, and the pairs in ``names``."""
    lines: list[bytes] = []
    picked: Headers = []
    for k, v in headers:
        if k in names:
            picked.append((k, v))
        else:
            lines.append(k + b": " + v + b"\r\n")
    return b"".join(lines), picked


# one C pass when the extension is built (serialising heads is per request)
split_headers = native.split_headers if native is not None else _split_headers_py
_forward_head = getattr(native, "forward_head", None)


def is_idempotent(method: str) -> bool:
    return method in _IDEMPOTENT


def _client_ip(peer: Any) -> str:
    if isinstance(peer, tuple):
        return str(peer[0])
    return "unknown"


def _forwarded_node(ip: str) -> str:
    if ":" in ip:
        return f'"[{ip}]"'
    return ip


def upstream_target(req: Request, up: Any, preserve_path: bool) -> str:
    """The request target sent upstream (Monolake: the upstream URI's path replaces the
    request path and the request query is kept; ``preserve_path`` appends the request path)."""
    if up.kind == "uri":
        base = up.path or "/"
        path = base
        if preserve_path and req.path.startswith("/"):
            path = base.rstrip("/") + req.path
        query = up.query
        if req.query:
            query = f"{query}&{req.query}" if query else req.query
    else:
        path = req.path if req.path.startswith("/") else "/"
        query = req.query
    return f"{path}?{query}" if query else path


_REQUEST_SPECIAL = _REQUEST_DROP | {b"x-forwarded-for", b"forwarded", b"via"}
_REQUEST_SPECIAL_T = tuple(sorted(_REQUEST_SPECIAL))


def _forward_facts(conn: Any) -> tuple[bytes, bytes, bytes]:
    """Per-connection constants of the forwarding headers, computed once per connection."""
    cached = conn.forward_cache
    if cached is None:
        ip = _client_ip(conn.peer)
        cached = conn.forward_cache = (
            ip.encode(),
            conn.scheme.encode(),
            f"for={_forwarded_node(ip)};proto={conn.scheme}".encode(),
        )
    return cached


def request_head(req: Request, ctx: Any, up: Any, target: str, *, preserve_host: bool, via: bool) -> bytes:
    """Serialise the request head sent upstream (framing headers included): hop-by-hop
    headers and those Connection names go, X-Forwarded-* / Forwarded / Via are extended, Host
    is the upstream's unless ``preserve_host``. One C call (``forward_head``) when the native
    module is built; ``_request_head_py`` is the reference, and the fallback."""
    if _forward_head is not None:
        ipb, scheme, node = _forward_facts(ctx.conn)
        head = _forward_head(
            req.method,
            target,
            req.headers,
            req.upgrade,
            None if preserve_host or up.kind != "uri" else up.host_header,
            ipb,
            scheme,
            node,
            via,
            _framing(req),
        )
        if head is not NotImplemented:
            return head
    return _request_head_py(req, ctx, up, target, preserve_host=preserve_host, via=via)


def _framing(req: Request) -> bytes:
    """The end of the upstream request head: how its body is delimited, and the blank line."""
    body = req.body
    if body is not None:
        if body.length is not None:
            return b"content-length: %d\r\n\r\n" % body.length
        return b"transfer-encoding: chunked\r\n\r\n"
    if req.content_length == 0 or req.method in _BODY_METHODS:
        return b"content-length: 0\r\n\r\n"
    return b"\r\n"


def _request_head_py(
    req: Request, ctx: Any, up: Any, target: str, *, preserve_host: bool, via: bool
) -> bytes:
    block, picked = split_headers(req.headers, _REQUEST_SPECIAL_T)
    xff: bytes | None = None
    fwd: bytes | None = None
    via_in: bytes | None = None
    host_in: bytes | None = None
    upgrade_value: bytes | None = None
    for k, v in picked:
        if k == b"host":
            host_in = v
        elif k == b"x-forwarded-for":
            xff = v if xff is None else xff + b", " + v
        elif k == b"forwarded":
            fwd = v if fwd is None else fwd + b", " + v
        elif k == b"via":
            via_in = v if via_in is None else via_in + b", " + v
        elif k == b"upgrade":
            upgrade_value = v
        elif k == b"connection":
            named = header_tokens(req.headers, b"connection")
            drop = named - {b"upgrade"} if req.upgrade else named
            if drop:  # headers named by Connection are hop-by-hop too
                block = split_headers(req.headers, _REQUEST_SPECIAL_T + tuple(drop))[0]
    out = [f"{req.method} {target} HTTP/1.1\r\n".encode("latin-1"), block]
    ipb, scheme, node = _forward_facts(ctx.conn)
    if preserve_host or up.kind != "uri":
        host_out = host_in if host_in is not None else b"localhost"
    else:
        host_out = up.host_header
    tail = [
        b"host: ",
        host_out,
        b"\r\nx-forwarded-for: ",
        (xff + b", " + ipb) if xff else ipb,
        b"\r\nx-forwarded-proto: ",
        scheme,
        b"\r\n",
    ]
    if host_in is not None:
        tail += [b"x-forwarded-host: ", host_in, b"\r\n"]
        if b'"' not in host_in:
            node = node + b';host="' + host_in + b'"'
    tail += [b"forwarded: ", (fwd + b", " + node) if fwd else node, b"\r\n"]
    if via:
        tag = b"1.1 monolake"
        tail += [b"via: ", (via_in + b", " + tag) if via_in else tag, b"\r\n"]
    elif via_in is not None:
        tail += [b"via: ", via_in, b"\r\n"]
    if req.upgrade and upgrade_value is not None:
        tail += [b"connection: upgrade\r\nupgrade: ", upgrade_value, b"\r\n"]
    tail.append(_framing(req))
    out += tail
    return b"".join(out)


_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


def split_response_headers(headers: Headers, status: int, via: bool) -> tuple[Headers, int | None, bool]:
    """One pass over an upstream response head: the headers passed to the client (hop-by-hop
    removed, kept for a 101), the Content-Length (None if absent or invalid) and chunked."""
    length: int | None = None
    chunked = False
    out: Headers = []
    named: set[bytes] | None = None
    upgrade = status == 101
    for k, v in headers:
        if k == b"content-length":
            try:
                length = int(v)
            except ValueError:
                length = None
            out.append((k, v))
        elif k in HOP_BY_HOP:
            if k == b"transfer-encoding":
                chunked = True
            elif upgrade:
                out.append((k, v))
            elif k == b"connection":
                named = header_tokens(headers, b"connection")
        else:
            out.append((k, v))
    if named:
        out = [(k, v) for k, v in out if k not in named]
    if via:
        out = with_via(out)
    return out, length, chunked


def with_via(headers: Headers) -> Headers:
    """The response headers with every Via merged into one that ends with ours."""
    existing = [v for k, v in headers if k == b"via"]
    out = [(k, v) for k, v in headers if k != b"via"]
    out.append((b"via", b", ".join([*existing, b"1.1 monolake"])))
    return out
