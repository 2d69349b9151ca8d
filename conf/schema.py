"""The resolved configuration: a frozen dataclass tree.

Field names are the canonical TOML key names. Sequences are tuples (the tree is immutable, so a
worker can share it freely); ``to_dict`` / ``from_dict`` give a JSON-safe round trip, which is how
the master ships the config to fresh worker interpreters.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from .health import HealthCheckConfig
from .http2 import Http2Config
from .resolver import ResolverConfig

DEFAULT_SOURCE = "<embedded default config>"


def default_control_socket() -> str:
    """``$XDG_RUNTIME_DIR/monolaked.sock``, else ``/run/monolaked.sock`` for root, else
    ``/tmp/monolaked-<uid>.sock``: where a user can write without configuring anything."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "monolaked.sock")
    uid = os.getuid()
    if uid == 0:
        return "/run/monolaked.sock"
    return f"/tmp/monolaked-{uid}.sock"


@dataclass(frozen=True)
class RuntimeConfig:
    runtime_type: str = "auto"  # "io_uring" | "legacy" | "auto"
    workers: int | str = "auto"  # "auto" (the master counts its affinity mask) or >= 1
    entries: int = 1024
    cpu_affinity: bool = True
    busy_poll_us: int = 0  # event loop polls this long after events; 0 = off


@dataclass(frozen=True)
class SupervisorConfig:
    pid_file: str = ""
    control_socket: str = field(default_factory=default_control_socket)
    graceful_timeout: float = 30.0
    drain_timeout: float = 30.0
    reload_timeout: float = 30.0
    reload_mode: str = "generation"  # "generation" | "in_place"
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    respawn_backoff_initial: float = 0.1
    respawn_backoff_max: float = 30.0
    flapping_threshold: int = 5
    flapping_window: float = 60.0
    log_format: str = "auto"  # "auto" | "json" | "console"
    log_level: str = "info"  # "debug" | "info" | "warning" | "error"
    error_log: str = ""  # "" = stderr


@dataclass(frozen=True)
class AdminConfig:
    listen: str = ""  # "" = off; else as written ("127.0.0.1:9901")
    host: str = ""  # parsed from listen (IPv6 without brackets)
    port: int = 0


@dataclass(frozen=True)
class ListenerConfig:
    type: str  # "socket" | "unix"
    value: str  # as written (unix: the resolved path)
    host: str = ""  # socket: IP or name, IPv6 without brackets
    port: int = 0  # socket
    path: str = ""  # unix: absolute path

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``) or the unix path, for logs and status."""
        if self.type == "unix":
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CertificateConfig:
    chain: str  # PEM certificate chain, absolute path
    key: str  # PEM private key, absolute path


@dataclass(frozen=True)
class TlsConfig:
    certificates: tuple[CertificateConfig, ...]  # the first is the default (no SNI match)
    min_version: str = "1.2"  # "1.2" | "1.3"
    stack: str = ""  # Monolake's rustls/native_tls switch: accepted, ignored

    @property
    def chain(self) -> str:
        return self.certificates[0].chain

    @property
    def key(self) -> str:
        return self.certificates[0].key


@dataclass(frozen=True)
class TimeoutConfig:
    server_keepalive_timeout_sec: float = 75.0
    server_read_header_timeout_sec: float = 60.0
    server_read_body_timeout_sec: float = 60.0
    server_message_timeout_sec: float = 60.0
    upstream_connect_timeout_sec: float = 5.0
    upstream_read_timeout_sec: float = 60.0


@dataclass(frozen=True)
class EndpointConfig:
    """One upstream address. ``type``: ``uri`` (http/https), ``socket`` (thrift host:port),
    ``unix`` (a socket path), ``builtin`` (``hello``/``echo``, served in-process) or ``srv``
    (``_service._proto.name``: targets and ports from DNS SRV records; ``host`` is the name
    after the labels, the Host header and TLS name)."""

    type: str
    value: str  # as written (unix: the resolved path)
    scheme: str = ""  # uri: "http" | "https"
    host: str = ""  # uri, socket: IPv6 without brackets
    port: int = 0  # uri (default 80/443), socket
    path: str = ""  # uri: the URI's path ("/" when absent); unix: the socket path
    query: str = ""  # uri: the URI's query, without "?"

    @property
    def authority(self) -> str:
        """``host[:port]`` as a Host header carries it (the port only when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}.get(self.scheme)
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class UpstreamConfig:
    endpoint: EndpointConfig
    weight: int = 1


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[servers.NAME.routes]]`` entry, or a thrift server's ``route`` table.

    http routes use ``path``/``path_prefix``/``host``; thrift routes use ``methods``
    (``None`` = the default route). Validation rejects keys that do not fit the server's proxy_type.
    """

    upstreams: tuple[UpstreamConfig, ...]
    path: str | None = None
    path_prefix: str | None = None
    host: str | None = None
    methods: tuple[str, ...] | None = None
    load_balancer: str = "random"
    preserve_path: bool = False
    tls_verify: bool = True
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_sni: str | None = None
    upstream_http_version: str | None = None  # None: the server's; "http2" | "http11" | "auto"
    max_idle_per_upstream: int = 32
    # http routes with an h2 upstream: multiplexed connections per upstream endpoint per worker
    max_h2_connections_per_upstream: int = 16
    idle_timeout_sec: float = 60.0
    eject_after_failures: int = 3
    eject_duration_sec: float = 10.0
    health_check: HealthCheckConfig | None = None  # active checks (conf/health.py)

    @property
    def pattern(self) -> str:
        """The path pattern for logs: ``path``, or ``path_prefix`` followed by ``*``."""
        if self.path is not None:
            return self.path
        if self.path_prefix is not None:
            return self.path_prefix.rstrip("/") + "/*" if self.path_prefix != "/" else "/*"
        return "methods=" + ",".join(self.methods) if self.methods else "(default)"


@dataclass(frozen=True)
class LayerConfig:
    factory: str  # "package.module:attr"
    options: dict[str, Any] = field(default_factory=dict)


# the default splice_threshold, chosen from scripts/bench_proxy.py (see docs/http.md)
SPLICE_THRESHOLD_DEFAULT = 16777216


@dataclass(frozen=True)
class ServerConfig:
    name: str
    proxy_type: str  # "http" | "thrift" | "http_thrift"
    listener: ListenerConfig
    backlog: int = 1024
    tls: TlsConfig | None = None
    proxy_protocol: bool = False
    timeout: TimeoutConfig = field(default_factory=TimeoutConfig)
    upstream_http_version: str = "auto"  # "http2" | "http11" | "auto"
    http_parser: str = "auto"  # "auto" | "native" | "httptools" | "h11"
    # http: who serves keep-alive requests: "python" (the reference) or "native" (the C
    # exchange on io_uring for what it accepts, the Python engine for the rest; docs/http.md);
    # thrift: the same choice for framed messages (the C relay, docs/thrift.md)
    engine: str = "python"
    max_body_size: int = 0
    # http: request / response bodies with a Content-Length of at least this many bytes are
    # spliced socket to socket on io_uring (docs/http.md, *Spliced bodies*); 0: never
    splice_threshold: int = SPLICE_THRESHOLD_DEFAULT
    max_header_size: int = 65536
    max_uri_size: int = 8192
    max_header_line_size: int = 8192  # one header field line, requests and responses
    max_headers: int = 100  # header fields per head, requests and responses
    max_response_header_size: int = 65536  # an upstream response head (default: max_header_size)
    preserve_host: bool = False
    via: bool = False
    access_log: bool | str = False  # false, true (the log stream) or a file path
    max_frame_size: int = 16777216
    thrift_transport: str = "auto"  # "auto" | "framed" | "ttheader" | "unframed"
    idl: str | None = None
    gateway_path: str = "/{service}/{method}"
    exception_status: int = 500
    routes: tuple[RouteConfig, ...] = ()
    route: RouteConfig | None = None
    layers: tuple[LayerConfig, ...] = ()
    http2: Http2Config = field(default_factory=Http2Config)  # downstream h2 (conf/http2.py)

    @property
    def thrift_routes(self) -> tuple[RouteConfig, ...]:
        """thrift/http_thrift: the method routes, then the default one (``route`` or the
        ``routes`` entry without ``methods``), so a first-match scan is correct."""
        with_methods = tuple(r for r in self.routes if r.methods is not None)
        default = [r for r in self.routes if r.methods is None]
        if self.route is not None:
            default.insert(0, self.route)
        return with_methods + tuple(default)


@dataclass(frozen=True)
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    source: str = DEFAULT_SOURCE

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars only: ``json.dumps`` works on the result."""
        return typing.cast("dict[str, Any]", _to_plain(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Rebuild the tree from :meth:`to_dict` output (trusted input: no validation)."""
        return typing.cast("Config", _from_plain(cls, data))

    def summary(self) -> str:
        return _summary(self)


# -- generic (de)serialisation -------------------------------------------------------------------


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _from_plain(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:
            return _from_plain(concrete[0], value)
        for arg in concrete:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _from_plain(arg, value)
        return value  # unions of scalars (int | str, bool | str): as is
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        return tuple(_from_plain(item, v) for v in value)
    if origin is dict:
        _key, item = typing.get_args(tp)
        return {k: _from_plain(item, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {
            f.name: _from_plain(hints[f.name], value[f.name])
            for f in dataclasses.fields(tp)
            if f.name in value
        }
        return tp(**kwargs)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# -- the short, human summary `monolaked check` prints for a valid config (Config.summary) ------


def _summary_upstream(u: UpstreamConfig) -> str:
    e = u.endpoint
    text = f"{e.type}:{e.value}" if e.type in ("builtin", "unix", "srv") else e.value
    return text + (f" (weight {u.weight})" if u.weight != 1 else "")


def _summary_route(r: RouteConfig) -> str:
    where = r.pattern + (f" host={r.host}" if r.host else "")
    ups = ", ".join(_summary_upstream(u) for u in r.upstreams)
    lb = f" [{r.load_balancer}]" if len(r.upstreams) > 1 else ""
    return f"    {where} -> {ups}{lb}"


def _summary_server(key: str, s: ServerConfig) -> list[str]:
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
    lines += [_summary_route(r) for r in routes]
    return lines


def _summary_resolver(cfg: Config) -> str:
    r = cfg.resolver
    return (
        f"  resolver: {', '.join(r.nameservers) or '/etc/resolv.conf'}, "
        f"ttl {r.min_ttl_sec:g}-{r.max_ttl_sec:g} s, negative {r.negative_ttl_sec:g} s, "
        f"timeout {r.timeout_sec:g} s, stale up to {r.max_stale_sec:g} s"
    )


def _summary(cfg: Config) -> str:
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
        _summary_resolver(cfg),
    ]
    for key, server in cfg.servers.items():
        lines += _summary_server(key, server)
    return "\n".join(lines)
