"""What a health group checks for each balancer family: which endpoints, at which address.

The balancers' only knowledge of health is the kit's verdict on each endpoint
(``set_checked``, worker/upstream/endpoint.py: eligibility next to passive ejection) and
``Balancer.health.rejecting`` (every endpoint down and all_unhealthy = "reject"). Placeholders of names DNS has not
answered yet and builtin endpoints are not checked."""

from __future__ import annotations

from typing import Any

from monolake.conf.health import HealthCheckConfig
from monolake.worker.health.group import HealthGroup, Member
from monolake.worker.health.probes import Address


def http_members(balancer: Any) -> list[Member]:
    out: list[Member] = []
    for up in balancer.upstreams:
        if up.discovered is not None or up.kind not in ("uri", "unix"):
            continue
        if up.kind == "unix":
            addr = Address(path=up.unix_path, authority="localhost")
        else:
            addr = Address(host=up.connect_host, port=up.port, ssl=up.ssl, sni=up.sni, authority=up.authority)
        out.append((up, up.label, addr))
    return out


def thrift_members(targets: Any) -> list[Member]:
    out: list[Member] = []
    for t in targets.balancer.items:
        ep = t.endpoint
        if ep.discovered is not None:
            continue
        addr = Address(path=ep.path) if ep.kind == "unix" else Address(host=ep.host, port=ep.port)
        out.append((t, ep.label, addr))
    return out


def watch_http(balancer: Any, cfg: HealthCheckConfig, server: str, route: str) -> HealthGroup:
    """Check an http route's upstreams; the balancer keeps the group alive."""
    group = HealthGroup(cfg, server, route, balancer, http_members)
    balancer.health = group
    group.start()
    return group


def watch_thrift(targets: Any, cfg: HealthCheckConfig, server: str, route: str, framed: bool) -> HealthGroup:
    """Check a thrift route's upstreams (``targets``: its RouteTargets)."""
    group = HealthGroup(cfg, server, route, targets, thrift_members, framed)
    targets.balancer.health = group
    group.start()
    return group
