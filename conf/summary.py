"""The short, human summary ``monolaked check`` prints for a valid config.

It reads the schema's types for annotations only, so conf/schema.py can import it (for
``Config.summary``) without an import cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import Config, RouteConfig, ServerConfig, UpstreamConfig


def _upstream(u: UpstreamConfig) -> str:
    e = u.endpoint
    text = f"{e.type}:{e.value}" if e.type in ("builtin", "unix", "srv") else e.value
    return text + (f" (weight {u.weight})" if u.weight != 1 else "")


def _route(r: RouteConfig) -> str:
    where = r.pattern + (f" host={r.host}" if r.host else "")
    ups = ", ".join(_upstream(u) for u in r.upstreams)
    lb = f" [{r.load_balancer}]" if len(r.upstreams) > 1 else ""
    return f"    {where} -> {ups}{lb}"


def _server(key: str, s: ServerConfig) -> list[str]:
    extra = []
    if s.tls:
        extra.append(
            f"tls ({len(s.tls.certificates)} cert{'s' if len(s.tls.certificates) > 1 else ''}, "
            f"min {s.tls.min_version})"
        )
    if s.proxy_protocol:
        extra.append("proxy_protocol")
    if s.proxy_type == "http_thrift":
        extra.append(f"idl {s.idl}, {s.gateway_path}")
    name = key if s.name == key else f"{key} (name {s.name})"
    lines = [
        f"  server {name}: {s.proxy_type} on {s.listener.address}"
        + (f", {', '.join(extra)}" if extra else "")
    ]
    routes = s.routes if s.proxy_type == "http" else s.thrift_routes
    lines += [_route(r) for r in routes]
    return lines


def _resolver(cfg: Config) -> str:
    r = cfg.resolver
    return (
        f"  resolver: {', '.join(r.nameservers) or '/etc/resolv.conf'}, "
        f"ttl {r.min_ttl_sec:g}-{r.max_ttl_sec:g} s, negative {r.negative_ttl_sec:g} s, "
        f"timeout {r.timeout_sec:g} s, stale up to {r.max_stale_sec:g} s"
    )


def summary(cfg: Config) -> str:
    rt, sv = cfg.runtime, cfg.supervisor
    lines = [
        f"config {cfg.source}: ok",
        f"  runtime: {rt.runtime_type}, workers {rt.workers}, entries {rt.entries}, "
        f"cpu_affinity {'on' if rt.cpu_affinity else 'off'}, "
        f"busy_poll {f'{rt.busy_poll_us} µs' if rt.busy_poll_us else 'off'}",
        f"  supervisor: control socket {sv.control_socket}, pid file {sv.pid_file or '(none)'}, "
        f"reload {sv.reload_mode}, log {sv.log_format}/{sv.log_level}"
        + (f" to {sv.error_log}" if sv.error_log else ""),
        f"  admin: {cfg.admin.listen or 'off'}",
        _resolver(cfg),
    ]
    for key, server in cfg.servers.items():
        lines += _server(key, server)
    return "\n".join(lines)
