"""Validation of routes and upstreams: http ``[[routes]]`` and thrift ``route`` / ``routes``."""

from __future__ import annotations

from typing import Any, TypedDict

from . import addresses
from .addresses import AddressError
from .errors import describe, quote
from .fields import MISSING, Table, found_with_type, resolve_path
from .health import parse_health_check
from .routes import Router, RouteSpec
from .schema import EndpointConfig, RouteConfig, UpstreamConfig
from .tlsfiles import check_ca_bundle, check_cert_pair

LOAD_BALANCERS = ("random", "weighted_random", "round_robin", "first", "least_conn")
BUILTINS = ("hello", "echo")

POOL_KEYS = (
    "max_idle_per_upstream",
    "idle_timeout_sec",
    "eject_after_failures",
    "eject_duration_sec",
    "health_check",
)
HTTP_ROUTE_KEYS = (
    "path",
    "path_prefix",
    "host",
    "load_balancer",
    "preserve_path",
    "upstreams",
    "tls_verify",
    "tls_ca",
    "tls_client_cert",
    "tls_client_key",
    "tls_sni",
    "upstream_http_version",
    "max_h2_connections_per_upstream",
    *POOL_KEYS,
)
THRIFT_ROUTE_KEYS = ("methods", "load_balancer", "upstreams", *POOL_KEYS)

_HTTP_ONLY = "it applies to http routes only; thrift routes are chosen by methods"
_THRIFT_ONLY = "it applies to thrift routes only; http routes are chosen by path"

ENDPOINT_TYPES = {
    "http": ("uri", "unix", "builtin", "srv"),
    "thrift": ("socket", "unix", "srv"),
}
ENDPOINT_HINTS = {
    "http": {"socket": 'http routes take type = "uri", value = "http://HOST:PORT/"'},
    "thrift": {
        "uri": 'thrift upstreams take type = "socket", value = "HOST:PORT"',
        "builtin": "builtin endpoints serve http routes only",
    },
}


def parse_upstreams(t: Table, kind: str) -> tuple[UpstreamConfig, ...]:
    """``upstreams``: a non-empty array of ``{ endpoint = { type, value }, weight }``."""
    used, value = t.lookup("upstreams")
    if value is MISSING:
        t.problems.add(
            t.key("upstreams"), "expected a non-empty array of upstreams, found nothing (the key is required)"
        )
        return ()
    if not isinstance(value, list):
        t.expected(used, "an array of upstream tables", found_with_type(value), raw=True)
        return ()
    if not value:
        t.expected(used, "at least one upstream", "an empty array", raw=True)
        return ()
    result = []
    what = "an upstream table { endpoint = { type, value }, weight = 1 }"
    for u in t.array_tables(used, value, what, known=("endpoint", "weight")):
        weight = u.integer("weight", 1, lo=1, hi=65535)
        endpoint = parse_endpoint(u, kind)
        u.done()
        if endpoint is not None:
            result.append(UpstreamConfig(endpoint=endpoint, weight=weight))
    return tuple(result)


def parse_endpoint(u: Table, kind: str) -> EndpointConfig | None:
    e = u.subtable("endpoint", known=("type", "value", "scheme"), required=True)
    if e is None:
        return None
    etype = e.enum("type", None, ENDPOINT_TYPES[kind], required=True, hints=ENDPOINT_HINTS[kind])
    value = e.string("value", None, required=True, allow_empty=False)
    scheme = "http" if kind == "http" else ""
    if etype == "srv" and kind == "http":
        scheme = e.enum("scheme", "http", ("http", "https"))
    elif etype is not None:
        e.rejected["scheme"] = (
            "it applies to srv endpoints; a uri carries its own scheme"
            if kind == "http"
            else "thrift upstreams have no scheme"
        )
    e.done()
    if etype is None or value is None:
        return None
    try:
        if etype == "uri":
            uri = addresses.parse_http_uri(value)
            return EndpointConfig(
                "uri", value, scheme=uri.scheme, host=uri.host, port=uri.port, path=uri.path, query=uri.query
            )
        if etype == "socket":
            hp = addresses.parse_host_port(value)
            return EndpointConfig("socket", value, host=hp.host, port=hp.port)
        if etype == "srv":
            target = parse_srv_name(value)
            return EndpointConfig(
                "srv",
                value.rstrip(".").lower(),
                scheme=scheme,
                host=target,
                port={"http": 80, "https": 443}.get(scheme, 0),
                path="/" if scheme else "",
            )
        if etype == "unix":
            path = resolve_path(value, e.base_dir)
            addresses.check_unix_path(path, parent_must_exist=False)
            return EndpointConfig("unix", path, path=path)
        if value not in BUILTINS:
            raise AddressError(" or ".join(quote(b) for b in BUILTINS))
        return EndpointConfig("builtin", value)
    except AddressError as exc:
        e.expected("value", str(exc), value)
        return None


class _PoolSettings(TypedDict):
    """The keys shared by every route kind, passed on to :class:`RouteConfig` as keywords."""

    load_balancer: str
    max_idle_per_upstream: int
    idle_timeout_sec: float
    eject_after_failures: int
    eject_duration_sec: float


def parse_srv_name(value: str) -> str:
    """``_service._tcp.name`` -> ``name`` (the Host header and TLS name of its targets)."""
    labels = value.rstrip(".").split(".")
    if len(labels) < 3 or not labels[0].startswith("_") or len(labels[0]) < 2 or labels[1].lower() != "_tcp":
        raise AddressError('an SRV name "_service._tcp.name", such as "_http._tcp.app.internal"')
    name = ".".join(labels[2:])
    try:
        host = addresses.check_host(name)
    except AddressError:
        raise AddressError(f'a host name after "{labels[0]}._tcp." in the SRV name') from None
    if host != name.lower() or name.replace(".", "").isdigit():
        raise AddressError(f'a host name (not an address) after "{labels[0]}._tcp." in the SRV name')
    return host


def _pool_settings(t: Table) -> _PoolSettings:
    return {
        "load_balancer": t.enum("load_balancer", "random", LOAD_BALANCERS),
        "max_idle_per_upstream": t.integer("max_idle_per_upstream", 32, lo=0),
        "idle_timeout_sec": t.duration("idle_timeout_sec", 60.0),
        "eject_after_failures": t.integer("eject_after_failures", 3, lo=0),
        "eject_duration_sec": t.duration("eject_duration_sec", 10.0),
    }


def _route_tables(t: Table, key: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``[[routes]]`` array as (key path, raw table) pairs."""
    used, value = t.lookup(key)
    if value is MISSING:
        return []
    if not isinstance(value, list):
        t.expected(used, "an array of tables ([[servers.NAME.routes]])", found_with_type(value), raw=True)
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            out.append((f"{t.key(used)}[{i}]", item))
        else:
            t.problems.expected(f"{t.key(used)}[{i}]", "a route table", found_with_type(item), raw=True)
    return out


# -- http ----------------------------------------------------------------------------------------


def parse_http_routes(server: Table) -> tuple[RouteConfig, ...]:
    """Every ``[[routes]]`` of an http server, checked one by one and then against each other."""
    entries = _route_tables(server, "routes")
    if server.raw.get("routes", []) == []:
        server.problems.add(
            server.key("routes"),
            "expected at least one [[routes]] entry with a path and upstreams, found none",
        )
    routes: list[RouteConfig] = []
    specs: list[RouteSpec] = []  # every route with a usable path, even if other keys are wrong
    paths: list[str] = []
    for path, raw in entries:
        r = server.child(path, raw, known=HTTP_ROUTE_KEYS, rejected={"methods": _THRIFT_ONLY})
        route = _http_route(r)
        r.done()
        if route is not None:
            routes.append(route)
        spec = RouteSpec(
            path=_str_or_none(raw.get("path")),
            path_prefix=None if "path" in raw else _str_or_none(raw.get("path_prefix")),
            host=route.host if route is not None else _str_or_none(raw.get("host")),
        )
        if spec.path is not None or spec.path_prefix is not None:
            specs.append(spec)
            paths.append(path)
    _, problems = Router.compile(specs, label=lambda i: paths[i])
    for p in problems:
        server.problems.add(f"{paths[p.index]}.{p.key}", p.message)
    return tuple(routes)


def _http_route(r: Table) -> RouteConfig | None:
    path = r.string("path", None, allow_empty=False)
    prefix = r.string("path_prefix", None, allow_empty=False)
    if "path" in r.raw and "path_prefix" in r.raw:
        r.problems.add(
            r.key("path_prefix"), "expected either path or path_prefix, found both (a route has one of them)"
        )
    elif "path" not in r.raw and "path_prefix" not in r.raw:
        r.problems.add(
            r.key("path"), 'expected a path such as "/" or "/api/{*rest}" (or a path_prefix), found neither'
        )
    host = r.string("host", None, allow_empty=False)
    if host is not None:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            host = addresses.check_host(bare)
        except AddressError:
            r.expected("host", 'a host name or IP address without port, such as "example.com"', host)
            host = None
    pool = _pool_settings(r)
    tls_verify = r.boolean("tls_verify", True)
    tls_ca = r.path_value("tls_ca", None, check="file")
    if tls_ca is not None and "tls_ca" in r.raw and _readable(r, "tls_ca"):
        check_ca_bundle(r.problems, r.key("tls_ca"), tls_ca)
    cert = r.path_value("tls_client_cert", None, check="file")
    key = r.path_value("tls_client_key", None, check="file")
    if (cert is None) != (key is None):
        missing = "tls_client_key" if key is None else "tls_client_cert"
        given = "tls_client_cert" if key is None else "tls_client_key"
        if missing not in r.raw:
            r.problems.add(r.key(missing), f"expected a path (it goes with {given}), found nothing")
    elif (
        cert is not None
        and key is not None
        and _readable(r, "tls_client_cert")
        and _readable(r, "tls_client_key")
    ):
        check_cert_pair(r.problems, r.key("tls_client_cert"), cert, key)
    tls_sni = r.string("tls_sni", None, allow_empty=False)
    preserve_path = r.boolean("preserve_path", False)
    health_check = parse_health_check(r, "http")
    version = upstream_http_version(r, None) if "upstream_http_version" in r.raw else None
    # Envoy's circuit breaker max_connections, nginx's max_conns; at the cap requests wait for
    # a stream slot (docs/http2.md, *Connection cap*)
    max_h2 = r.integer("max_h2_connections_per_upstream", 16, lo=1, hi=1024)
    upstreams = parse_upstreams(r, "http")
    if not upstreams or (path is None and prefix is None):
        return None
    return RouteConfig(
        upstreams=upstreams,
        path=path,
        path_prefix=prefix,
        host=host,
        preserve_path=preserve_path,
        tls_verify=tls_verify,
        tls_ca=tls_ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_sni=tls_sni,
        health_check=health_check,
        upstream_http_version=version,
        max_h2_connections_per_upstream=max_h2,
        **pool,
    )


UPSTREAM_HTTP_VERSIONS = ("http2", "http11", "auto")


def upstream_http_version(t: Table, default: str | None = "auto") -> str | None:
    """``upstream_http_version`` of a server or a route (Monolake's values; per route is ours).
    ``"http2"`` on a build without the libnghttp2 extension is a config error that says how
    to get it, not a worker that silently speaks HTTP/1.1."""
    value = t.enum(
        "upstream_http_version",
        default,
        UPSTREAM_HTTP_VERSIONS,
        hints={
            "h2": 'did you mean "http2"?',
            "http1.1": 'did you mean "http11"?',
            "h2c": '"http2" is h2c (prior knowledge) on http:// upstreams',
        },
    )
    if value == "http2":
        from monolake.worker import h2

        avail = h2.available()
        if not avail:
            t.problems.add(t.key("upstream_http_version"), avail.reason)
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _readable(t: Table, name: str) -> bool:
    """No earlier problem was recorded for this key (a missing file is reported once)."""
    prefix = f"{t.problems.source}: {t.key(name)}:"
    return not any(line.startswith(prefix) for line in t.problems.lines)


# -- thrift --------------------------------------------------------------------------------------


def parse_thrift_routes(server: Table) -> tuple[RouteConfig | None, tuple[RouteConfig, ...]]:
    """``route`` (the default) and ``[[routes]]`` with ``methods``.

    At most one default route (``route``, or a ``routes`` entry without ``methods``); a method
    named by two routes is a conflict; at least one route overall.
    """
    default: RouteConfig | None = None
    default_key = ""
    used, value = server.lookup("route")
    if value is not MISSING:
        if isinstance(value, dict):
            rt = server.child(
                server.key(used),
                value,
                known=THRIFT_ROUTE_KEYS,
                rejected={k: _HTTP_ONLY for k in HTTP_ROUTE_KEYS if k not in THRIFT_ROUTE_KEYS},
            )
            if "methods" in value:
                rt.rejected["methods"] = "route is the default route; put method routes in [[routes]]"
            default = _thrift_route(rt, methods=None)
            rt.done()
            default_key = server.key(used)
        else:
            server.expected(
                used, "a table { load_balancer, upstreams = [...] }", found_with_type(value), raw=True
            )
    routes: list[RouteConfig] = []
    owners: dict[str, str] = {}
    for path, raw in _route_tables(server, "routes"):
        rt = server.child(
            path,
            raw,
            known=THRIFT_ROUTE_KEYS,
            rejected={k: _HTTP_ONLY for k in HTTP_ROUTE_KEYS if k not in THRIFT_ROUTE_KEYS},
        )
        methods = _methods(rt)
        if methods is None and "methods" not in raw:
            if default_key:
                rt.problems.add(
                    rt.key("methods"),
                    f"expected a methods list (only one default route "
                    f"without methods is allowed, and {default_key} is one), found none",
                )
            default_key = default_key or path
        for m in methods or ():
            if m in owners:
                rt.problems.add(
                    rt.key("methods"),
                    f'expected each method in one route only, found "{m}", also routed by {owners[m]}',
                )
            else:
                owners[m] = f"{path}.methods"
        route = _thrift_route(rt, methods=methods)
        rt.done()
        if route is not None:
            routes.append(route)
    if value is MISSING and "routes" not in server.raw:
        server.problems.add(
            server.key("route"),
            "expected a route = { upstreams = [...] } table (or [[routes]] with methods), found nothing",
        )
    return default, tuple(routes)


def _methods(rt: Table) -> tuple[str, ...] | None:
    used, value = rt.lookup("methods")
    if value is MISSING:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m for m in value):
        rt.expected(
            used,
            'a non-empty array of method names, such as ["ping", "get_user"]',
            found_with_type(value) if not isinstance(value, list) else describe(value),
            raw=True,
        )
        return None
    if len(set(value)) != len(value):
        dup = next(m for m in value if value.count(m) > 1)
        rt.expected(used, "distinct method names", f'"{dup}" twice', raw=True)
    return tuple(value)


def _thrift_route(rt: Table, methods: tuple[str, ...] | None) -> RouteConfig | None:
    pool = _pool_settings(rt)
    health_check = parse_health_check(rt, "thrift")
    upstreams = parse_upstreams(rt, "thrift")
    if not upstreams:
        return None
    return RouteConfig(upstreams=upstreams, methods=methods, health_check=health_check, **pool)
