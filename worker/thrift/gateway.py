"""``proxy_type = "http_thrift"``: an HTTP/JSON front end for a Thrift service.

``POST /{service}/{method}`` (``gateway_path``) with a JSON object of the method's arguments
is encoded with thriftpy2 from the configured IDL, sent to a Thrift upstream through the same
routing and pools as the Thrift proxy, and the reply is returned as JSON:

- ``200 {"result": ...}`` (``null`` for void methods; ``202`` for oneway methods)
- a declared exception: ``exception_status`` with ``{"exception": {"type", "fields"}}``
- unknown service or method: ``404``; other HTTP methods: ``405``
- bad JSON or a value that does not fit the IDL: ``400`` naming the field path
- upstream down, closed or answering garbage / a TApplicationException: ``502``;
  upstream connect or read timeout: ``504``

The HTTP side is the HTTP server's own engine (``monolake.worker.http``): this module only
supplies the terminal service and the ServerHandle around them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from typing import Any

import structlog
import thriftpy2
from thriftpy2.protocol import TBinaryProtocol  # the Cython one when available
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TMemoryBuffer

from monolake.worker.http.body import BodyError
from monolake.worker.http.message import Request, Response
from monolake.worker.http.pool import UpstreamPool
from monolake.worker.http.server import HttpServerHandle, ServerRuntime, inherited_stack, start_if_running
from monolake.worker.http.stats import Stats
from monolake.worker.service import FactoryStack, Stateful, push_config_layers, restore_state
from monolake.worker.service.state import FdSource
from monolake.worker.state import Snapshot

from .errors import UpstreamError
from .framing import FRAMED, KINDS, TTHEADER, UNFRAMED, Frame
from .jsonmap import MappingError, from_struct, from_value, to_struct
from .proxy import RouteError, ThriftProxy
from .ttheader import TTHeader

log = structlog.get_logger()

HANDLE_STATE_VERSION = 1
GATEWAY_KEY = "thrift_gateway"
_JSON = [(b"content-type", b"application/json")]


# -- the IDL -----------------------------------------------------------------------------------


class Method:
    """One callable method: its argument and result structs."""

    __slots__ = ("service", "name", "args_cls", "result_cls", "oneway", "result_spec", "exceptions")

    def __init__(self, service: str, name: str, args_cls: type, result_cls: type) -> None:
        self.service = service
        self.name = name
        self.args_cls = args_cls
        self.result_cls = result_cls
        self.oneway = bool(getattr(result_cls, "oneway", False))
        # field id -> thriftpy2's field tuple (type, name, ...): generated, untyped
        spec: dict[int, tuple[Any, ...]] = getattr(result_cls, "thrift_spec", {}) or {}
        self.result_spec = spec
        self.exceptions = {f[1] for fid, f in spec.items() if fid != 0}


def load_idl(path: str) -> dict[str, dict[str, Method]]:
    """Parse the IDL with thriftpy2: service name -> method name -> ``Method``."""
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    module = thriftpy2.load(path, module_name=f"monolake_gw_{digest}_thrift")
    services: dict[str, dict[str, Method]] = {}
    for svc in module.__thrift_meta__["services"]:
        methods: dict[str, Method] = {}
        for name in svc.thrift_services:
            methods[name] = Method(
                svc.__name__, name, getattr(svc, name + "_args"), getattr(svc, name + "_result")
            )
        services[svc.__name__] = methods
    if not services:
        raise ValueError(f"{path}: the IDL declares no service")
    return services


def compile_path(pattern: str) -> re.Pattern[str]:
    """``/{service}/{method}``-style pattern -> a regex with ``service`` and ``method`` groups."""
    if "{method}" not in pattern:
        raise ValueError(f"gateway_path {pattern!r} has no {{method}}")
    out = ""
    for part in re.split(r"(\{service\}|\{method\})", pattern):
        if part in ("{service}", "{method}"):
            out += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            out += re.escape(part)
    return re.compile(out + r"/?\Z")


# -- the terminal service ----------------------------------------------------------------------


def json_response(status: int, body: Any) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return Response(status, list(_JSON), data)


def error_response(status: int, kind: str, message: str, **extra: Any) -> Response:
    return json_response(status, {"error": {"kind": kind, "message": message, **extra}})


class GatewayService(Stateful):
    """Terminal service: JSON request -> Thrift call upstream -> JSON response."""

    state_version = 1

    def __init__(self, name: str, cfg: Any, stats: Any) -> None:
        if not cfg.idl:
            raise ValueError(f"server {name}: http_thrift needs an idl")
        self.name = name
        self.services = load_idl(cfg.idl)
        self.only_service = next(iter(self.services)) if len(self.services) == 1 else None
        self.path = compile_path(cfg.gateway_path)
        self.exception_status = cfg.exception_status
        kind = KINDS.get(cfg.thrift_transport, FRAMED)
        self.kind = FRAMED if kind not in (FRAMED, TTHEADER, UNFRAMED) else kind  # auto: framed
        self.max_body = cfg.max_body_size or cfg.max_frame_size
        self.proxy = ThriftProxy(cfg, stats)
        self.stats = stats

    def find(self, path: str) -> tuple[Method | None, str]:
        m = self.path.match(path)
        if m is None:
            return None, "no gateway route for this path"
        groups = m.groupdict()
        svc_name = groups.get("service") or self.only_service
        if svc_name is None:
            # no {service} in the path and several services: the method name decides
            for methods in self.services.values():
                if groups["method"] in methods:
                    return methods[groups["method"]], ""
            return None, f"no method {groups['method']!r} in the IDL"
        svc_methods = self.services.get(svc_name)
        if svc_methods is None:
            return None, f"no service {svc_name!r} in the IDL"
        method = svc_methods.get(groups["method"])
        if method is None:
            return None, f"service {svc_name} has no method {groups['method']!r}"
        return method, ""

    async def call(self, req: Request, ctx: Any) -> Response:
        method, why = self.find(req.path)
        if method is None:
            if req.body is not None:
                req.body.discard()
            return error_response(404, "not_found", why)
        if req.method != "POST":
            if req.body is not None:
                req.body.discard()
            resp = error_response(405, "method_not_allowed", "use POST with a JSON body")
            resp.headers.append((b"allow", b"POST"))
            return resp
        try:
            raw = await req.body.read_all(self.max_body) if req.body is not None else b""
        except BodyError as exc:
            status = 413 if "larger than" in str(exc) else 400
            return error_response(status, "bad_body", str(exc))
        try:
            doc = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, "bad_json", f"the body is not JSON: {exc}")
        try:
            args = to_struct(method.args_cls, doc)
        except MappingError as exc:
            return error_response(400, "bad_argument", exc.message, field=exc.path)
        if ctx is not None:
            ctx.extra["thrift_method"] = method.name
        frame = Frame.from_message(
            self.kind, encode_call(method, args), TTHeader() if self.kind == TTHEADER else None
        )
        try:
            reply = await self.proxy.call(frame, ctx)
        except RouteError as exc:
            return error_response(502, "no_route", str(exc))
        except UpstreamError as exc:
            if exc.timeout:
                return error_response(504, "upstream_timeout", str(exc))
            return error_response(502, "upstream_error", str(exc))
        if method.oneway:
            return json_response(202, {"result": None})
        return self.reply_response(method, reply)

    def reply_response(self, method: Method, reply: Frame) -> Response:
        try:
            buf = TMemoryBuffer(reply.message)
            prot = TBinaryProtocol(buf, strict_read=False)
            _name, mtype, _seqid = prot.read_message_begin()
            if mtype == TMessageType.EXCEPTION:
                exc = TApplicationException()
                exc.read(prot)
                return error_response(502, "upstream_exception", str(exc), type=exc.type)
            result = method.result_cls()
            result.read(prot)
        except Exception as exc:  # whatever the upstream sent, it is its fault
            return error_response(502, "bad_upstream_reply", f"cannot decode the reply: {exc}")
        spec = method.result_spec
        for fid, f in spec.items():
            if fid == 0:
                continue
            value = getattr(result, f[1], None)
            if value is not None:
                return json_response(
                    self.exception_status,
                    {
                        "exception": {
                            "type": type(value).__name__,
                            "field": f[1],
                            "fields": from_struct(value),
                        }
                    },
                )
        if 0 in spec:
            value = getattr(result, "success", None)
            if value is None:
                return error_response(502, "missing_result", "the upstream returned no result")
            f = spec[0]
            return json_response(200, {"result": from_value(f[0], f[2] if len(f) == 4 else None, value)})
        return json_response(200, {"result": None})

    # -- state: the pools ------------------------------------------------------------------

    def export_state(self, fds: list[int]) -> dict:
        return self.proxy.export_state(fds)

    def import_state(self, data: Any, fds: FdSource) -> None:
        self.proxy.import_state(data, fds)

    def adopt(self, previous: Any) -> None:
        self.proxy.adopt(previous.proxy)

    async def aclose(self) -> None:
        await self.proxy.aclose()


def encode_call(method: Method, args: Any) -> bytes:
    buf = TMemoryBuffer()
    prot = TBinaryProtocol(buf)
    mtype = TMessageType.ONEWAY if method.oneway else TMessageType.CALL
    prot.write_message_begin(method.name, mtype, 0)
    args.write(prot)
    prot.write_message_end()
    return buf.getvalue()


class GatewayFactory:
    key = GATEWAY_KEY

    def __init__(self, name: str, cfg: Any, stats: Any) -> None:
        self.name = name
        self.cfg = cfg
        self.stats = stats

    def make(self, previous: Any) -> GatewayService:
        svc = GatewayService(self.name, self.cfg, self.stats)
        restore_state(svc, previous, what=f"{self.name}.gateway")
        return svc


# -- the ServerHandle --------------------------------------------------------------------------


class GatewayHandle(HttpServerHandle):
    """ServerHandle of an ``http_thrift`` server: the HTTP engine around ``GatewayService``."""

    def __init__(self, rt: ServerRuntime, gateway: GatewayService) -> None:
        super().__init__(rt)
        self.gateway = gateway

    def on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway.proxy.start(loop)


def build(name: str, cfg: Any, env: Any, previous: object | None) -> GatewayHandle:
    """Builder for ``proxy_type = "http_thrift"`` (monolake.worker.servers.BUILDERS)."""
    live = previous if isinstance(previous, GatewayHandle) else None
    snapshot = previous if isinstance(previous, Snapshot) else None
    stats = live.rt.stats if live is not None else Stats()
    factory = push_config_layers(FactoryStack(GatewayFactory(name, cfg, stats)), cfg.layers)
    prev_stack, fd_source = inherited_stack(live, snapshot, stats, log.bind(server=name))
    stack = factory.make(prev_stack, fd_source)
    gateway = stack.services[GATEWAY_KEY]
    assert isinstance(gateway, GatewayService)
    # the HTTP engine wants an HTTP upstream pool for its sweep; this server never fills it
    http_pool = UpstreamPool(
        parser_kind="h11",
        connect_timeout=cfg.timeout.upstream_connect_timeout_sec,
        read_timeout=cfg.timeout.upstream_read_timeout_sec,
        stats=stats,
        log=log,
    )
    rt = ServerRuntime(name, cfg, env, stack, stats, http_pool)
    handle = GatewayHandle(rt, gateway)
    start_if_running(handle)
    log.info(
        "thrift_gateway_built",
        server=name,
        idl=cfg.idl,
        services=sorted(gateway.services),
        path=cfg.gateway_path,
        inherited=previous is not None,
    )
    return handle
