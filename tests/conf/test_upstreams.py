"""Upstreams of http routes, and thrift route/routes rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conf_samples import HTTP_SERVER, Load, Problems, only

KEY = "servers.web.routes[0].upstreams[0].endpoint"


def endpoint(etype: str, value: str) -> str:
    return HTTP_SERVER.replace(
        '{ type = "uri", value = "http://127.0.0.1:9000" }', f'{{ type = "{etype}", value = "{value}" }}'
    )


@pytest.mark.parametrize(
    "etype, value, expected",
    [
        ("uri", "ftp://host/", "an http:// or https:// URI"),
        ("uri", "127.0.0.1:9000", "an http:// or https:// URI"),
        ("uri", "https:///path", "a https:// URI with a host"),
        ("uri", "http://h:99999/", "a URI with a port from 1 to 65535"),
        ("uri", "http://user:pw@h/", "a URI without user information"),
        ("uri", "http://h/#frag", "a URI without a #fragment"),
        ("builtin", "hi", '"hello" or "echo"'),
        ("unix", "/tmp/" + "x" * 120, "a unix socket path of at most 107 bytes"),
    ],
)
def test_bad_endpoint_values(problems: Problems, etype: str, value: str, expected: str) -> None:
    line = only(problems(endpoint(etype, value)), f"{KEY}.value")
    assert f"expected {expected}" in line and f'found "{value}"' in line


def test_socket_endpoints_are_for_thrift(problems: Problems) -> None:
    line = only(problems(endpoint("socket", "127.0.0.1:9000")), f"{KEY}.type")
    assert 'http routes take type = "uri"' in line


@pytest.mark.parametrize(
    "value, scheme, host, port, path",
    [
        ("http://example.com", "http", "example.com", 80, "/"),
        ("https://Example.com/x/y", "https", "example.com", 443, "/x/y"),
        ("http://[::1]:9000/", "http", "::1", 9000, "/"),
    ],
)
def test_uri_endpoints_parsed(load: Load, value: str, scheme: str, host: str, port: int, path: str) -> None:
    ep = load(endpoint("uri", value)).servers["web"].routes[0].upstreams[0].endpoint
    assert (ep.type, ep.value, ep.scheme, ep.host, ep.port, ep.path) == (
        "uri",
        value,
        scheme,
        host,
        port,
        path,
    )


def test_unix_endpoint_resolved(load: Load, tmp_path: Path) -> None:
    ep = load(endpoint("unix", "sock/up.sock")).servers["web"].routes[0].upstreams[0].endpoint
    assert ep.type == "unix" and ep.path == ep.value == str(tmp_path / "sock" / "up.sock")


def test_upstream_list_problems(problems: Problems) -> None:
    text = HTTP_SERVER.replace(
        'upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:9000" } }]',
        'upstreams = [{ endpoint = { type = "uri", value = "http://a" }, weight = 0 },'
        ' { endpoint = "http://b" }, { weight = 2 }, "x"]',
    )
    lines = problems(text)
    assert "from 1 to 65535, found 0" in only(lines, "servers.web.routes[0].upstreams[0].weight")
    assert "expected a table" in only(lines, "servers.web.routes[0].upstreams[1].endpoint")
    assert "the key is required" in only(lines, "servers.web.routes[0].upstreams[2].endpoint")
    assert "expected an upstream table" in only(lines, "servers.web.routes[0].upstreams[3]")
    missing = HTTP_SERVER.replace(
        'upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:9000" } }]', ""
    )
    assert "the key is required" in only(problems(missing), "servers.web.routes[0].upstreams")


def test_route_pool_keys(load: Load, problems: Problems) -> None:
    extra = (
        'load_balancer = "least_conn"\nmax_idle_per_upstream = 0\nidle_timeout_sec = 5\n'
        'eject_after_failures = 5\neject_duration_sec = 2.5\npreserve_path = true\ntls_sni = "x.example"\n'
        "tls_verify = false\n"
    )
    r = load(HTTP_SERVER.replace('path = "/"', 'path = "/"\n' + extra)).servers["web"].routes[0]
    assert (
        r.load_balancer,
        r.max_idle_per_upstream,
        r.idle_timeout_sec,
        r.eject_after_failures,
        r.eject_duration_sec,
        r.preserve_path,
        r.tls_sni,
        r.tls_verify,
    ) == ("least_conn", 0, 5.0, 5, 2.5, True, "x.example", False)
    lines = problems(HTTP_SERVER.replace('path = "/"', 'path = "/"\nload_balancer = "round-robin"\n'))
    assert 'did you mean "round_robin"?' in only(lines, "servers.web.routes[0].load_balancer")


# -- thrift --------------------------------------------------------------------------------------

THRIFT = """
[servers.th]
proxy_type = "thrift"
listener = { type = "socket", value = "127.0.0.1:19090" }
"""
UP = 'upstreams = [{ endpoint = { type = "socket", value = "127.0.0.1:9090" } }]'


def test_thrift_route_and_method_routes(load: Load) -> None:
    text = THRIFT + f"route = {{ {UP} }}\n[[servers.th.routes]]\nmethods = ['a']\n{UP}\n"
    server = load(text).servers["th"]
    assert server.route is not None and server.route.methods is None
    assert [r.methods for r in server.thrift_routes] == [("a",), None]
    ep = server.route.upstreams[0].endpoint
    assert (ep.type, ep.host, ep.port) == ("socket", "127.0.0.1", 9090)


def test_thrift_two_default_routes(problems: Problems) -> None:
    text = THRIFT + f"route = {{ {UP} }}\n[[servers.th.routes]]\n{UP}\n"
    assert "only one default route" in only(problems(text), "servers.th.routes[0].methods")
    text = THRIFT + f"[[servers.th.routes]]\n{UP}\n[[servers.th.routes]]\n{UP}\n"
    line = only(problems(text), "servers.th.routes[1].methods")
    assert "servers.th.routes[0] is one" in line


def test_thrift_method_in_two_routes(problems: Problems) -> None:
    text = THRIFT + (
        f"[[servers.th.routes]]\nmethods = ['a', 'b']\n{UP}\n"
        f"[[servers.th.routes]]\nmethods = ['c', 'b']\n{UP}\n"
    )
    line = only(problems(text), "servers.th.routes[1].methods")
    assert 'found "b", also routed by servers.th.routes[0].methods' in line


def test_thrift_route_problems(problems: Problems) -> None:
    assert "found nothing" in only(problems(THRIFT), "servers.th.route")
    lines = problems(
        THRIFT + 'route = { path = "/", upstreams = [{ endpoint = { type = "uri", '
        'value = "http://a" } }] }\n[[servers.th.routes]]\nmethods = []\n' + UP + "\n"
    )
    assert "http routes only" in only(lines, "servers.th.route.path")
    assert 'thrift upstreams take type = "socket"' in only(
        lines, "servers.th.route.upstreams[0].endpoint.type"
    )
    assert "non-empty array of method names" in only(lines, "servers.th.routes[0].methods")
    lines = problems(THRIFT + f'route = {{ methods = ["x"], {UP} }}\n')
    assert "put method routes in [[routes]]" in only(lines, "servers.th.route.methods")


def test_thrift_keys(load: Load, problems: Problems) -> None:
    text = (
        THRIFT.replace(
            'proxy_type = "thrift"',
            'proxy_type = "thrift"\nthrift_transport = "ttheader"\n'
            "max_frame_size = 1048576\nthrift_timeout = { server_message_timeout_sec = 3 }",
        )
        + f"route = {{ {UP} }}\n"
    )
    s = load(text).servers["th"]
    assert (s.thrift_transport, s.max_frame_size, s.timeout.server_message_timeout_sec) == (
        "ttheader",
        1048576,
        3.0,
    )
    lines = problems(
        THRIFT.replace('proxy_type = "thrift"', 'proxy_type = "thrift"\nvia = true') + f"route = {{ {UP} }}\n"
    )
    assert 'it applies to proxy_type "http"' in only(lines, "servers.th.via")


# -- http_thrift ---------------------------------------------------------------------------------

GATEWAY = """
[servers.gw]
proxy_type = "http_thrift"
listener = { type = "socket", value = "127.0.0.1:19091" }
"""


def test_gateway_needs_an_existing_idl(problems: Problems, load: Load, tmp_path: Path) -> None:
    assert "the key is required" in only(problems(GATEWAY + f"route = {{ {UP} }}\n"), "servers.gw.idl")
    line = only(problems(GATEWAY + f'idl = "svc.thrift"\nroute = {{ {UP} }}\n'), "servers.gw.idl")
    assert f"(= {tmp_path / 'svc.thrift'}), which does not exist" in line
    (tmp_path / "svc.thrift").write_text("service S { void ping() }\n")
    s = load(GATEWAY + f'idl = "svc.thrift"\nexception_status = 409\nroute = {{ {UP} }}\n').servers["gw"]
    assert (s.idl, s.exception_status, s.gateway_path) == (
        str(tmp_path / "svc.thrift"),
        409,
        "/{service}/{method}",
    )


@pytest.mark.parametrize(
    "path, ok",
    [
        ("/rpc/{method}", True),
        ("/{service}/{method}", True),
        ("/{service}", False),
        ("/{x}/{method}", False),
        ("rpc", False),
        ("/{*method}", False),
    ],
)
def test_gateway_path(problems: Problems, load: Load, tmp_path: Path, path: str, ok: bool) -> None:
    (tmp_path / "svc.thrift").write_text("service S { void ping() }\n")
    text = GATEWAY + f'idl = "svc.thrift"\ngateway_path = "{path}"\nroute = {{ {UP} }}\n'
    if ok:
        assert load(text).servers["gw"].gateway_path == path
    else:
        assert f'found "{path}"' in only(problems(text), "servers.gw.gateway_path")
