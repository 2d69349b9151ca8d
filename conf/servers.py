"""Validation of one ``[servers.NAME]`` table: listener, TLS, timeouts, limits, routes, layers."""

from __future__ import annotations

import datetime
import re
from typing import Any

from . import addresses
from .addresses import AddressError
from .errors import describe
from .fields import MISSING, Table, found_with_type, resolve_path
from .http2 import Http2Config, parse_http2
from .routes import CATCHALL, PatternError, parse_pattern
from .schema import (
    SPLICE_THRESHOLD_DEFAULT,
    CertificateConfig,
    LayerConfig,
    ListenerConfig,
    RouteConfig,
    ServerConfig,
    TimeoutConfig,
    TlsConfig,
)
from .tlsfiles import check_cert_pair
from .upstreams import parse_http_routes, parse_thrift_routes, upstream_http_version

PROXY_TYPES = ("http", "thrift", "http_thrift")
# the native parsers keep a head's header spans on the stack (uring/mu_http.c MAX_HEADERS)
MAX_HEADERS_LIMIT = 256

SERVER_KEYS = (
    "name",
    "proxy_type",
    "listener",
    "backlog",
    "tls",
    "proxy_protocol",
    "timeout",
    "upstream_http_version",
    "http_parser",
    "engine",
    "max_body_size",
    "splice_threshold",
    "max_header_size",
    "max_uri_size",
    "max_header_line_size",
    "max_headers",
    "max_response_header_size",
    "preserve_host",
    "via",
    "access_log",
    "max_frame_size",
    "thrift_transport",
    "idl",
    "gateway_path",
    "exception_status",
    "routes",
    "route",
    "layers",
    "http2",
)
TIMEOUT_ALIASES = {"http_timeout": "timeout", "thrift_timeout": "timeout"}

# keys that only mean something for some proxy types: elsewhere they are refused, not ignored
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "upstream_http_version": ("http",),
    "preserve_host": ("http",),
    "via": ("http",),
    "http_parser": ("http", "http_thrift"),
    "engine": ("http", "thrift"),
    "max_body_size": ("http", "http_thrift"),
    "splice_threshold": ("http",),
    "max_header_size": ("http", "http_thrift"),
    "max_uri_size": ("http", "http_thrift"),
    "max_header_line_size": ("http", "http_thrift"),
    "max_headers": ("http", "http_thrift"),
    "max_response_header_size": ("http",),
    "max_frame_size": ("thrift", "http_thrift"),
    "thrift_transport": ("thrift", "http_thrift"),
    "idl": ("http_thrift",),
    "gateway_path": ("http_thrift",),
    "exception_status": ("http_thrift",),
    "route": ("thrift", "http_thrift"),
    "http2": ("http", "http_thrift"),
}
# Monolake keys we know and do not support: say so instead of "unknown key"
MONOLAKE_UNSUPPORTED = {
    "http_opt_handlers": "Monolake's content_handler/openid options are not supported by monolake-python",
}

TIMEOUT_KEYS = tuple(f.name for f in TimeoutConfig.__dataclass_fields__.values())
_FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$")


def _rejected_for(proxy_type: str | None) -> dict[str, str]:
    rejected = dict(MONOLAKE_UNSUPPORTED)
    if proxy_type in PROXY_TYPES:
        for key, types in APPLIES_TO.items():
            if proxy_type not in types:
                rejected[key] = (
                    f"it applies to proxy_type {' / '.join(describe(t) for t in types)}, "
                    f"not {describe(proxy_type)}"
                )
    return rejected


def parse_server(table_name: str, t: Table) -> ServerConfig | None:
    proxy_type = t.enum("proxy_type", None, PROXY_TYPES, required=True)
    t.rejected.update(_rejected_for(proxy_type))
    name = t.string("name", table_name, allow_empty=False)
    listener = parse_listener(t)
    backlog = t.integer("backlog", 1024, lo=1, hi=65535)
    tls = parse_tls(t)
    proxy_protocol = t.boolean("proxy_protocol", False)
    timeout = parse_timeout(t)
    version = upstream_http_version(t) or "auto"
    http_parser = t.enum("http_parser", "auto", ("auto", "native", "httptools", "h11"))
    engine = t.enum("engine", "python", ("python", "native"))
    max_body_size = t.integer("max_body_size", 0, lo=0, unit="of bytes")
    # http_thrift / thrift answer from the gateway or relay frames: nothing to splice there
    splice_default = SPLICE_THRESHOLD_DEFAULT if proxy_type == "http" else 0
    splice_threshold = t.integer("splice_threshold", splice_default, lo=0, unit="of bytes")
    max_header_size = t.integer("max_header_size", 65536, lo=1024, unit="of bytes")
    max_uri_size = t.integer("max_uri_size", 8192, lo=16, unit="of bytes")
    max_header_line_size = t.integer("max_header_line_size", 8192, lo=256, unit="of bytes")
    max_headers = t.integer("max_headers", 100, lo=1, hi=MAX_HEADERS_LIMIT)
    max_response_header_size = t.integer(
        "max_response_header_size", max_header_size, lo=1024, unit="of bytes"
    )
    preserve_host = t.boolean("preserve_host", False)
    via = t.boolean("via", False)
    access_log = parse_access_log(t)
    max_frame_size = t.integer("max_frame_size", 16777216, lo=1024, hi=2**31 - 1, unit="of bytes")
    thrift_transport = t.enum("thrift_transport", "auto", ("auto", "framed", "ttheader", "unframed"))
    idl = t.path_value("idl", None, required=proxy_type == "http_thrift", check="file")
    gateway_path = parse_gateway_path(t)
    exception_status = t.integer("exception_status", 500, lo=400, hi=599)
    layers = parse_layers(t)
    http2 = (
        parse_http2(t, tls=tls is not None, keepalive=timeout.server_keepalive_timeout_sec)
        if proxy_type in ("http", "http_thrift")
        else Http2Config(enabled=False)
    )
    route = None
    routes: tuple[RouteConfig, ...] = ()
    if proxy_type == "http":
        routes = parse_http_routes(t)
    elif proxy_type in ("thrift", "http_thrift"):
        route, routes = parse_thrift_routes(t)
    t.done()
    if proxy_type is None or listener is None or name is None:
        return None
    return ServerConfig(
        name=name,
        proxy_type=proxy_type,
        listener=listener,
        backlog=backlog,
        tls=tls,
        proxy_protocol=proxy_protocol,
        timeout=timeout,
        upstream_http_version=version,
        http_parser=http_parser,
        engine=engine,
        max_body_size=max_body_size,
        splice_threshold=splice_threshold,
        max_header_size=max_header_size,
        max_uri_size=max_uri_size,
        max_header_line_size=max_header_line_size,
        max_headers=max_headers,
        max_response_header_size=max_response_header_size,
        preserve_host=preserve_host,
        via=via,
        access_log=access_log,
        max_frame_size=max_frame_size,
        thrift_transport=thrift_transport,
        idl=idl,
        gateway_path=gateway_path,
        exception_status=exception_status,
        routes=routes,
        route=route,
        layers=layers,
        http2=http2,
    )


def parse_listener(t: Table) -> ListenerConfig | None:
    lt = t.subtable("listener", known=("type", "value"), required=True)
    if lt is None:
        return None
    ltype = lt.enum(
        "type", None, ("socket", "unix"), required=True, hints={"tcp": 'TCP listeners are type = "socket"'}
    )
    value = lt.string("value", None, required=True, allow_empty=False)
    lt.done()
    if ltype is None or value is None:
        return None
    try:
        if ltype == "socket":
            hp = addresses.parse_host_port(value)
            return ListenerConfig("socket", value, host=hp.host, port=hp.port)
        path = resolve_path(value, lt.base_dir)
        addresses.check_unix_path(path, parent_must_exist=True)
        return ListenerConfig("unix", path, path=path)
    except AddressError as exc:
        lt.expected("value", str(exc), value)
        return None


def parse_tls(t: Table) -> TlsConfig | None:
    tt = t.subtable("tls", known=("chain", "key", "certificates", "min_version", "stack"))
    if tt is None:
        return None
    min_version = tt.enum("min_version", "1.2", ("1.2", "1.3"))
    stack = tt.string("stack", "")
    certs: list[CertificateConfig] = []
    has_pair = "chain" in tt.raw or "key" in tt.raw
    if has_pair and "certificates" in tt.raw:
        tt.problems.add(tt.key("certificates"), "expected either chain/key or certificates, found both")
    elif has_pair:
        cert = _cert_pair(tt)
        if cert is not None:
            certs.append(cert)
    elif "certificates" in tt.raw:
        value = tt.raw["certificates"]
        if not isinstance(value, list) or not value:
            tt.expected(
                "certificates", "a non-empty array of { chain, key } tables", found_with_type(value), raw=True
            )
        else:
            for ct in tt.array_tables(
                "certificates", value, "a { chain, key } table", known=("chain", "key")
            ):
                cert = _cert_pair(ct)
                ct.done()
                if cert is not None:
                    certs.append(cert)
    else:
        tt.problems.add(
            tt.key("chain"), "expected chain and key (PEM file paths) or certificates, found neither"
        )
    tt.done()
    if not certs:
        return None
    return TlsConfig(certificates=tuple(certs), min_version=min_version, stack=stack)


def _cert_pair(ct: Table) -> CertificateConfig | None:
    before = len(ct.problems.lines)
    chain = ct.path_value("chain", None, required=True, check="file")
    key = ct.path_value("key", None, required=True, check="file")
    if chain is None or key is None or len(ct.problems.lines) != before:
        return None
    if not check_cert_pair(ct.problems, ct.key("chain"), chain, key):
        return None
    return CertificateConfig(chain=chain, key=key)


def parse_timeout(t: Table) -> TimeoutConfig:
    tt = t.subtable("timeout", known=TIMEOUT_KEYS)  # t carries the http_/thrift_timeout aliases
    if tt is None:
        return TimeoutConfig()
    defaults = TimeoutConfig()
    values = {k: tt.duration(k, getattr(defaults, k)) for k in TIMEOUT_KEYS}
    tt.done()
    return TimeoutConfig(**values)


def parse_access_log(t: Table) -> bool | str:
    used, value = t.lookup("access_log")
    if value is MISSING:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value:
        return t.path_value("access_log", False, check="parent")
    t.expected(used, "true, false or a log file path", found_with_type(value), raw=True)
    return False


def parse_gateway_path(t: Table) -> str:
    value = t.string("gateway_path", "/{service}/{method}", allow_empty=False)
    if "gateway_path" not in t.raw or not isinstance(t.raw.get("gateway_path"), str):
        return value
    try:
        segs = parse_pattern(value)
    except PatternError as exc:
        t.expected("gateway_path", str(exc), value)
        return "/{service}/{method}"
    names = {name for kind, name in segs if kind != 0}
    if (
        any(kind == CATCHALL for kind, _ in segs)
        or not names <= {"service", "method"}
        or "method" not in names
    ):
        t.expected(
            "gateway_path",
            "a path with {method} and optionally {service} as its only "
            'parameters, such as "/{service}/{method}"',
            value,
        )
        return "/{service}/{method}"
    return value


def parse_layers(t: Table) -> tuple[LayerConfig, ...]:
    used, value = t.lookup("layers")
    if value is MISSING:
        return ()
    if not isinstance(value, list):
        t.expected(used, "an array of tables ([[servers.NAME.layers]])", found_with_type(value), raw=True)
        return ()
    layers = []
    for lt in t.array_tables(used, value, "a layer table { factory, options }", known=("factory", "options")):
        factory = lt.string("factory", None, required=True, allow_empty=False)
        if factory is not None and not _FACTORY.match(factory):
            lt.expected("factory", 'an import path "package.module:attr"', factory)
            factory = None
        options = lt.get("options", {})
        if not isinstance(options, dict):
            lt.expected("options", "a table", found_with_type(options), raw=True)
            options = {}
        else:
            bad = _first_datetime(options, lt.key("options"))
            if bad:
                lt.problems.expected(
                    bad[0],
                    "a string, number, boolean, array or table (options travel to the workers as JSON)",
                    bad[1],
                )
                options = {}
        lt.done()
        if factory is not None:
            layers.append(LayerConfig(factory=factory, options=options))
    return tuple(layers)


def _first_datetime(value: Any, path: str) -> tuple[str, datetime.date | datetime.time] | None:
    if isinstance(value, (datetime.date, datetime.time)):
        return path, value
    if isinstance(value, dict):
        for k, v in value.items():
            found = _first_datetime(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _first_datetime(v, f"{path}[{i}]")
            if found:
                return found
    return None
