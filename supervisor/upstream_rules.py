"""The runtime upstream API's shared rules (master and workers import this; it imports no
service code): what an ``ADDRESS:PORT`` names, and the *fingerprint* that decides whether an
override outlives a reload.

Rule (docs/operations.md "Runtime API"): an override on ``SERVER ADDRESS:PORT`` is kept across
reloads, respawns and new generations while the fingerprint is unchanged, i.e. while every
upstream entry of that server naming that address (its route pattern, endpoint and weight)
reads the same in the new config. An address no entry names (a DNS-discovered one) is
fingerprinted by the server's whole upstream lists. Any change drops the override.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

OPS = ("list", "drain", "disable", "enable", "weight")
STATES = ("draining", "disabled")
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


def endpoint_address(endpoint: Any) -> str:
    """The ADDRESS:PORT of a configured ``uri`` endpoint (default port by scheme), or ""."""
    if getattr(endpoint, "type", "") != "uri" or not endpoint.host:
        return ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return join(endpoint.host, int(port))


def matching(server_cfg: Any, address: str) -> list[tuple[str, Any]]:
    """(route pattern, upstream config) of every entry of the server naming ``address``."""
    found = []
    for route in _routes(server_cfg):
        for up in route.upstreams:
            if endpoint_address(up.endpoint) == address:
                found.append((route.pattern, up))
    return found


def fingerprint(server_cfg: Any | None, address: str) -> str:
    """What an override on ``address`` depends on in this server's config ("" = no server)."""
    if server_cfg is None:
        return ""
    entries = matching(server_cfg, address)
    if not entries:  # discovered: any change to the server's upstreams counts
        entries = [(r.pattern, u) for r in _routes(server_cfg) for u in r.upstreams]
    blob = json.dumps([[p, dataclasses.asdict(u)] for p, u in entries], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _routes(server_cfg: Any) -> list[Any]:
    routes = list(getattr(server_cfg, "routes", ()) or ())
    single = getattr(server_cfg, "route", None)
    if single is not None and single not in routes:
        routes.append(single)
    return routes
