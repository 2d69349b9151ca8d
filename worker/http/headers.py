"""Header rules of the proxy: hop-by-hop removal, X-Forwarded-* / Forwarded, Via, Host.

Both functions run once per proxied request, so they make one pass over the header list.
"""

from __future__ import annotations

from typing import Any

from monolake.worker.http.message import Headers, Request

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"))
# request headers the proxy regenerates itself
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-proto",
                              b"x-forwarded-host"}
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


def is_idempotent(method: str) -> bool:
    return method in _IDEMPOTENT


def _named_by_connection(headers: Headers) -> frozenset[bytes]:
    out = set()
    for k, v in headers:
        if k == b"connection":
            for tok in v.split(b","):
                tok = tok.strip().lower()
                if tok:
                    out.add(tok)
    return frozenset(out)


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
        if preserve_path:
            path = (base.rstrip("/") + req.path) if req.path.startswith("/") else base
        else:
            path = base
        query = up.query
        if req.query:
            query = f"{query}&{req.query}" if query else req.query
    else:
        path = req.path if req.path.startswith("/") else "/"
        query = req.query
    return f"{path}?{query}" if query else path


def request_head(req: Request, ctx: Any, up: Any, target: str, *, preserve_host: bool,
                 via: bool) -> bytes:
    """Serialise the request head sent upstream (framing headers included)."""
    headers = req.headers
    named = _named_by_connection(headers) if any(k == b"connection" for k, _ in headers) else frozenset()
    upgrade = req.upgrade
    out = [f"{req.method} {target} HTTP/1.1\r\n".encode("latin-1")]
    xff: bytes | None = None
    fwd: bytes | None = None
    via_in: bytes | None = None
    host_in: bytes | None = None
    upgrade_value: bytes | None = None
    for k, v in headers:
        if k in _REQUEST_DROP or k in named:
            if k == b"host":
                host_in = v
            elif k == b"upgrade":
                upgrade_value = v
            continue
        if k == b"x-forwarded-for":
            xff = v if xff is None else xff + b", " + v
            continue
        if k == b"forwarded":
            fwd = v if fwd is None else fwd + b", " + v
            continue
        if k == b"via":
            via_in = v if via_in is None else via_in + b", " + v
            continue
        out.append(k + b": " + v + b"\r\n")
    conn = ctx.conn
    ip = _client_ip(conn.peer)
    ipb = ip.encode()
    if preserve_host or up.kind != "uri":
        host_out = host_in if host_in is not None else b"localhost"
    else:
        host_out = up.authority.encode("latin-1")
    out.append(b"host: " + host_out + b"\r\n")
    out.append(b"x-forwarded-for: " + (xff + b", " + ipb if xff else ipb) + b"\r\n")
    scheme = conn.scheme.encode()
    out.append(b"x-forwarded-proto: " + scheme + b"\r\n")
    if host_in is not None:
        out.append(b"x-forwarded-host: " + host_in + b"\r\n")
    node = f"for={_forwarded_node(ip)};proto={conn.scheme}".encode()
    if host_in is not None and b'"' not in host_in:
        node += b';host="' + host_in + b'"'
    out.append(b"forwarded: " + (fwd + b", " + node if fwd else node) + b"\r\n")
    if via:
        tag = b"1.1 monolake"
        out.append(b"via: " + (via_in + b", " + tag if via_in else tag) + b"\r\n")
    elif via_in is not None:
        out.append(b"via: " + via_in + b"\r\n")
    if upgrade and upgrade_value is not None:
        out.append(b"connection: upgrade\r\nupgrade: " + upgrade_value + b"\r\n")
    body = req.body
    if body is not None:
        if body.length is not None:
            out.append(b"content-length: %d\r\n" % body.length)
        else:
            out.append(b"transfer-encoding: chunked\r\n")
    elif req.content_length == 0 or req.method in ("POST", "PUT", "PATCH"):
        out.append(b"content-length: 0\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def response_headers(headers: Headers, status: int, via: bool) -> Headers:
    """Response headers passed to the client: hop-by-hop removed (kept for a 101)."""
    if status == 101:
        out = [(k, v) for k, v in headers if k not in (b"content-length", b"transfer-encoding")]
    else:
        named = _named_by_connection(headers) if any(k == b"connection" for k, _ in headers) else ()
        out = [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]
    if via:
        existing = [v for k, v in out if k == b"via"]
        out = [(k, v) for k, v in out if k != b"via"]
        tag = b"1.1 monolake"
        out.append((b"via", b", ".join(existing + [tag])))
    return out
