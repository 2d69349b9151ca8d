"""The runtime upstream API's shared rules (master and workers import this; it imports no
service code): what an ``ADDRESS:PORT`` and a ``ROUTE`` name, what ``add`` accepts, and the
*fingerprint* that decides whether a runtime change outlives a reload.

Rule (docs/operations.md "Runtime API"): a change is kept across reloads, respawns and new
generations while its fingerprint is unchanged in the new config, then dropped (the config's
values hold again). An *override* (drain, disable, weight) on ``SERVER ADDRESS:PORT`` depends
on every upstream entry of that server naming that address (its route pattern, endpoint and
weight); an address no entry names (found by DNS, or added at runtime) on the server's whole
upstream lists. An *edit* (add, remove) on ``SERVER ROUTE`` depends on that route's pattern
and upstream list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from typing import Any

from monolake.conf import addresses
from monolake.conf.schema import EndpointConfig, RouteConfig, ServerConfig, UpstreamConfig

OPS = ("list", "drain", "disable", "enable", "weight", "add", "remove")
EDITS = ("add", "remove")
MAX_WEIGHT = 65535  # as the config's ``weight``


def normalize_address(text: str) -> str:
    """``HOST:PORT`` as the API compares it (``[v6]:port``); ValueError when malformed."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDRESS:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return join(host, int(port))


def join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint_address(endpoint: EndpointConfig) -> str:
    """The ADDRESS:PORT of a configured ``uri`` or ``socket`` endpoint (default port by
    scheme), or "" (unix, builtin, srv)."""
    kind = endpoint.type
    if kind not in ("uri", "socket") or not endpoint.host:
        return ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return join(endpoint.host, int(port))


def routes_of(server_cfg: ServerConfig) -> list[RouteConfig]:
    """Every route of a server: http ``routes``, thrift ``routes`` and ``route``."""
    routes = list(server_cfg.routes)
    single = server_cfg.route
    if single is not None and single not in routes:
        routes.append(single)
    return routes


def matching(server_cfg: ServerConfig, address: str) -> list[tuple[str, UpstreamConfig]]:
    """(route pattern, upstream config) of every entry of the server naming ``address``."""
    found = []
    for route in routes_of(server_cfg):
        for up in route.upstreams:
            if endpoint_address(up.endpoint) == address:
                found.append((route.pattern, up))
    return found


def _digest(entries: list[tuple[str, UpstreamConfig]]) -> str:
    blob = json.dumps([[p, dataclasses.asdict(u)] for p, u in entries], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(server_cfg: ServerConfig | None, address: str) -> str:
    """What an override on ``address`` depends on in this server's config ("" = no server)."""
    if server_cfg is None:
        return ""
    entries = matching(server_cfg, address)
    if not entries:  # discovered or added at runtime: any change to the server's upstreams counts
        entries = [(r.pattern, u) for r in routes_of(server_cfg) for u in r.upstreams]
    return _digest(entries)


def route_fingerprint(server_cfg: ServerConfig | None, route: str) -> str:
    """What an add or remove on route ``route`` (its pattern) depends on ("" = no such route)."""
    if server_cfg is None:
        return ""
    entries = [(r.pattern, u) for r in routes_of(server_cfg) if r.pattern == route for u in r.upstreams]
    return _digest(entries) if entries else ""


def fingerprint_of(server_cfg: ServerConfig | None, held: dict[str, Any]) -> str:
    """The fingerprint a held change (override or edit) has under ``server_cfg``."""
    if held.get("edit"):
        return route_fingerprint(server_cfg, str(held.get("route", "")))
    return fingerprint(server_cfg, str(held.get("address", "")))


def find_route(server_cfg: ServerConfig, text: str) -> tuple[RouteConfig | None, str]:
    """The route ``text`` names: its pattern as listed (``/*``, ``/api/*``, ``(default)``,
    ``methods=a,b``), its ``path`` or its ``path_prefix``; or None and why not."""
    want = text.strip()
    routes = routes_of(server_cfg)
    found = [r for r in routes if want and want in (r.pattern, r.path, r.path_prefix)]
    if not found and want == "default":
        found = [r for r in routes if r.pattern == "(default)"]
    patterns = ", ".join(r.pattern for r in routes)
    if not found:
        return None, f"server {server_cfg.name!r} has no route {want!r} (routes: {patterns})"
    if len({id(r) for r in found}) > 1 or len({r.pattern for r in found}) > 1:
        return None, f"route {want!r} is ambiguous on server {server_cfg.name!r} (routes: {patterns})"
    if len([r for r in routes if r.pattern == found[0].pattern]) > 1:
        return None, f"route {want!r}: several routes of server {server_cfg.name!r} share its pattern"
    return found[0], ""


def parse_target(proxy_type: str, text: str) -> tuple[str, str]:
    """What ``add``/``remove`` accept for a server of ``proxy_type``: an ``http://`` or
    ``https://`` URI (http) or ``ADDRESS:PORT`` (thrift), with an IP address (names belong in
    the config, where DNS discovery follows them). Returns (canonical URI, ADDRESS:PORT);
    ValueError says what was expected."""
    text = text.strip()
    try:
        if proxy_type == "http":
            if "://" not in text:
                raise addresses.AddressError('an http:// or https:// URI, such as "http://10.0.0.7:8080"')
            uri = addresses.parse_http_uri(text)
            host, port = uri.host, uri.port
            canonical = f"{uri.scheme}://{join(host, port)}" + (uri.path if uri.path != "/" else "")
            canonical += f"?{uri.query}" if uri.query else ""
        else:
            hp = addresses.parse_host_port(text.removeprefix("tcp://"))
            host, port = hp.host, hp.port
            canonical = join(host, port)
    except addresses.AddressError as exc:
        raise ValueError(f"{text!r}: expected {exc}") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: expected an IP address (a name is discovered by DNS: put it in the config)"
        ) from None
    return canonical, join(host, port)
