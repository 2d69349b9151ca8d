"""gRPC health checking (``grpc.health.v1.Health/Check``) as an upstream's active health probe
(``health_check = { type = "grpc" }``, worker/h2/health.py): real grpcio servers whose health
service flips, a real ``monolaked`` routing gRPC calls to them over h2c."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from monolake.conf.errors import ConfigError
from monolake.conf.loader import load_config
from monolake.worker.h2 import health
from tests.config_text import uri_upstream
from tests.health.conftest import health_config, wait_health
from tests.http.certs import Cert, make_ca, make_cert
from tests.support import free_port, wait_for

grpc = pytest.importorskip("grpc")

# HealthCheckResponse{status} in protobuf's wire format (field 1, varint)
ANSWERS = {"SERVING": b"\x08\x01", "NOT_SERVING": b"\x08\x02", "UNKNOWN": b""}


class HealthServer:
    """A grpcio server with ``test.Echo/Unary`` and a health service whose answer per service
    name the test sets (a service not in ``status`` is NOT_FOUND, as grpcio's own does)."""

    def __init__(self, cert: Cert | None = None) -> None:
        self.tls = cert is not None
        self.status: dict[str, str] = {"": "SERVING", "test.Echo": "SERVING"}
        self.asked: list[str] = []
        self.calls = 0
        self.lock = threading.Lock()
        handlers = [
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(self.check)}
            ),
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(self.unary)}
            ),
        ]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(handlers)
        if cert is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials([(cert.key.read_bytes(), cert.chain.read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def check(self, req: bytes, ctx: Any) -> bytes:
        # HealthCheckRequest{service}: field 1, length-delimited (names here are < 128 bytes)
        service = req[2 : 2 + req[1]].decode() if req[:1] == b"\x0a" else ""
        with self.lock:
            self.asked.append(service)
            answer = self.status.get(service)
        if answer is None:
            ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service}")
            return b""  # not reached: abort raises
        return ANSWERS[answer]

    def unary(self, req: bytes, ctx: Any) -> bytes:
        with self.lock:
            self.calls += 1
        return req[::-1]

    @property
    def label(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


@pytest.fixture
def servers() -> Iterator[list[HealthServer]]:
    made = [HealthServer(), HealthServer()]
    yield made
    for s in made:
        s.server.stop(0)


def test_messages_in_protobuf_wire_format() -> None:
    assert health.request_message("") == b"\x00\x00\x00\x00\x00"
    assert health.request_message("test.Echo") == b"\x00\x00\x00\x00\x0b\x0a\x09test.Echo"
    assert health.serving_status(b"\x00\x00\x00\x00\x02\x08\x01") == health.SERVING
    assert health.serving_status(b"\x00\x00\x00\x00\x02\x08\x02") == 2
    assert health.serving_status(b"\x00\x00\x00\x00\x00") == 0  # proto3: absent = UNKNOWN
    # an unknown length-delimited field is skipped; a wrong length or a compressed one is not a message
    assert health.serving_status(b"\x00\x00\x00\x00\x05\x12\x01x\x08\x01") == health.SERVING
    assert health.serving_status(b"\x00\x00\x00\x00\x03\x08\x01") is None
    assert health.serving_status(b"\x01\x00\x00\x00\x02\x08\x01") is None
    assert health.serving_status(b"\x00\x00\x00\x00\x01\x08") is None  # a cut varint


def test_grpc_health_check_shifts_grpc_traffic(master_factory, tmp_path: Path, servers) -> None:
    a, b = servers
    port, admin = free_port(), free_port()
    check = (
        '{ type = "grpc", service = "test.Echo", interval_sec = 0.2, timeout_sec = 0.2, fall = 2, rise = 2 }'
    )
    ups = [uri_upstream(f"127.0.0.1:{s.port}") for s in servers]
    cfg = health_config(
        tmp_path,
        port,
        admin,
        [("/", check, ups)],
        route_extra='upstream_http_version = "http2"\npreserve_path = true',
    )
    m = master_factory(cfg)
    m.wait_ready()
    wait_for(lambda: a.asked and b.asked, timeout=10, what="first health checks")
    assert set(a.asked) == {"test.Echo"}  # the configured service, by the standard method
    wait_health(m, a.label, True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        unary = ch.unary_unary("/test.Echo/Unary")

        def spread(n: int) -> tuple[int, int]:
            before = (a.calls, b.calls)
            for i in range(n):
                assert unary(b"c%d" % i, timeout=10) == (b"c%d" % i)[::-1]
            return a.calls - before[0], b.calls - before[1]

        assert min(spread(20)) >= 5  # round robin over both
        b.status["test.Echo"] = "NOT_SERVING"  # b's other calls would still succeed
        row = wait_health(m, b.label, False)
        assert row["checks_failed"] >= 2 and "NOT_SERVING" in row["last_error"], row
        assert spread(20) == (20, 0)

        b.status["test.Echo"] = "SERVING"
        wait_health(m, b.label, True)
        assert min(spread(20)) >= 5

        del b.status["test.Echo"]  # the health service no longer knows it: NOT_FOUND
        row = wait_health(m, b.label, False)
        assert "grpc-status 5" in row["last_error"], row
        assert spread(10) == (10, 0)


def test_grpc_health_check_over_tls(master_factory, tmp_path: Path) -> None:
    """An ``https://`` gRPC upstream: the check's TLS handshake offers ALPN h2 on an
    ``upstream_http_version = "http2"`` route and passes; on an HTTP/1.1 route (whose context
    offers only http/1.1, which grpcio refuses) it fails, with the reason in the status."""
    ca = make_ca(tmp_path)
    server = HealthServer(make_cert(tmp_path, ca, "grpc-upstream", ["127.0.0.1"]))
    try:
        check = '{ type = "grpc", interval_sec = 0.2, timeout_sec = 0.2, fall = 1, rise = 1 }'
        up = f'{{ endpoint = {{ type = "uri", value = "{server.label}" }} }}'
        routes = [("/h2/", check, [up]), ("/h1/", check, [up])]
        port, admin = free_port(), free_port()
        cfg = health_config(tmp_path, port, admin, routes, route_extra=f'tls_ca = "{ca.chain}"')
        cfg = cfg.replace('path_prefix = "/h2/"', 'path_prefix = "/h2/"\nupstream_http_version = "http2"', 1)
        m = master_factory(cfg)
        m.wait_ready()
        wait_health(m, server.label, True, route="/h2/*")
        row = wait_health(m, server.label, False, route="/h1/*")
        assert "did not select h2 by ALPN" in row["last_error"], row
        assert "" in server.asked  # the server as a whole, over TLS
    finally:
        server.server.stop(0)


def write(tmp_path: Path, check: str, extra: str = "") -> Path:
    path = tmp_path / "monolake.toml"
    path.write_text(
        health_config(
            tmp_path,
            free_port(),
            free_port(),
            [("/", check, [uri_upstream("127.0.0.1:1")])],
            route_extra=extra,
        )
    )
    return path


def test_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '{ type = "grpc", service = "pkg.Svc" }'))
    hc = cfg.servers["web"].routes[0].health_check
    assert hc is not None and (hc.type, hc.service, hc.host) == ("grpc", "pkg.Svc", "")
    whole = load_config(write(tmp_path, '{ type = "grpc" }')).servers["web"].routes[0].health_check
    assert whole is not None and whole.service == ""  # the server as a whole
    for check, message in [
        ('{ type = "http", service = "x" }', 'no service without type = "grpc"'),
        ('{ type = "grpc", path = "/x" }', 'no path with type = "grpc"'),
        ('{ type = "grpc", method = "Check" }', 'no method with type = "grpc"'),
        ('{ type = "grpc", service = 3 }', "service"),
    ]:
        with pytest.raises(Exception) as err:
            load_config(write(tmp_path, check))
        assert message in str(err.value), (check, str(err.value))


def test_grpc_check_without_the_extension_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    from monolake.worker import h2

    why = "HTTP/2 unavailable: no extension here; " + h2.INSTALL_HINT
    monkeypatch.setattr(h2, "available", lambda: h2.Availability(False, why))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, '{ type = "grpc" }'))
    assert "health_check.type" in str(err.value) and "apt-get install -y libnghttp2-dev" in str(err.value)
    load_config(write(tmp_path, '{ type = "tcp" }'))
