"""``health_check`` in the config: the issue's example and defaults, a JSON round trip (how
workers get it), and one clear "expected ..., found ..." line per bad value."""

from __future__ import annotations

import textwrap
from pathlib import Path

from monolake.conf import Config, load_config
from monolake.conf.health import HealthCheckConfig
from tests.harness import monolaked_check


def http_server(check: str) -> str:
    return textwrap.dedent(f"""
        [servers.web]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:18080" }}

        [[servers.web.routes]]
        path_prefix = "/"
        health_check = {check}
        upstreams = [{{ endpoint = {{ type = "uri", value = "http://app.internal:8080" }} }}]
    """)


def thrift_server(check: str) -> str:
    return textwrap.dedent(f"""
        [servers.rpc]
        proxy_type = "thrift"
        listener = {{ type = "socket", value = "127.0.0.1:18081" }}
        route = {{ health_check = {check}, upstreams = [{{ endpoint = {{ type = "socket", value = "127.0.0.1:9090" }} }}] }}
    """)


def test_issue_example_defaults_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "monolake.toml"
    path.write_text(
        http_server('{ path = "/health", interval_sec = 1, timeout_sec = 1, fall = 2, rise = 2 }')
        + thrift_server('{ method = "ping" }')
    )
    cfg = load_config(path)
    hc = cfg.servers["web"].routes[0].health_check
    assert hc == HealthCheckConfig(
        type="http", path="/health", interval_sec=1.0, timeout_sec=1.0, fall=2, rise=2
    )
    assert (hc.method, hc.expected_statuses, hc.all_unhealthy, hc.jitter) == (
        "GET",
        ((200, 399),),
        "fail_open",
        0.1,
    )
    assert hc.expects(204) and hc.expects(399) and not hc.expects(404)
    rpc_route = cfg.servers["rpc"].route
    assert rpc_route is not None
    thrift = rpc_route.health_check
    assert thrift is not None
    assert (thrift.type, thrift.method) == ("thrift", "ping")  # a method name: a thrift call
    assert Config.from_dict(cfg.to_dict()) == cfg
    path.write_text(http_server('{ type = "tcp" }'))
    tcp = load_config(path).servers["web"].routes[0].health_check
    assert tcp is not None and tcp.type == "tcp"
    path.write_text(http_server('{ expected_statuses = [200, "300-302"] }'))
    ranges = load_config(path).servers["web"].routes[0].health_check
    assert ranges is not None and ranges.expected_statuses == (
        (200, 200),
        (300, 302),
    )
    path.write_text(http_server("{}").replace("health_check = {}\n", ""))
    assert load_config(path).servers["web"].routes[0].health_check is None


def test_bad_http_health_check_is_a_clear_error(tmp_path: Path) -> None:
    result = monolaked_check(
        tmp_path,
        http_server(
            '{ type = "thrift", path = "health", interval_sec = 1, timeout_sec = 3, fall = 0, '
            'rise = "2", expected_statuses = [200, "300-2", 700], jitter = 2, method = "get", '
            'all_unhealthy = "503", intervall_sec = 1 }'
        ),
    )
    assert result.returncode == 1, result
    src = f"{tmp_path / 'monolake.toml'}: servers.web.routes[0].health_check"
    lines = set(result.stderr.strip().splitlines()[1:])
    assert lines == {
        f'{src}.type: expected one of "http", "tcp" or "grpc", found "thrift" (thrift checks are for thrift routes)',
        f'{src}.method: expected an HTTP method in capitals, such as "GET" or "HEAD", found "get"',
        f'{src}.path: expected a request path starting with "/", such as "/health", found "health"',
        f'{src}.expected_statuses[1]: expected a status from 100 to 599 or a range "LOW-HIGH" of '
        f'them, found a string "300-2"',
        f'{src}.expected_statuses[2]: expected a status from 100 to 599 or a range "LOW-HIGH" of '
        f"them, found an integer 700",
        f"{src}.timeout_sec: expected a duration <= interval_sec (1), so checks never overlap, found 3",
        f"{src}.fall: expected an integer from 1 to 100, found 0",
        f'{src}.rise: expected an integer from 1 to 100, found a string "2" '
        f"(write the number without quotes)",
        f"{src}.jitter: expected a fraction of the interval from 0 to 0.5, such as 0.1, found 2",
        f'{src}.all_unhealthy: expected "fail_open" or "reject", found "503"',
        f"{src}.intervall_sec: expected one of the known keys (type, method, path, "
        f"expected_statuses, host, interval_sec, timeout_sec, fall, rise, jitter, all_unhealthy, service), "
        f'found unknown key "intervall_sec" (did you mean "interval_sec"?)',
    }, result.stderr


def test_bad_thrift_health_check_is_a_clear_error(tmp_path: Path) -> None:
    result = monolaked_check(tmp_path, thrift_server('{ type = "thrift", path = "/health" }'))
    assert result.returncode == 1, result
    src = f"{tmp_path / 'monolake.toml'}: servers.rpc.route.health_check"
    assert set(result.stderr.strip().splitlines()[1:]) == {
        f"{src}.method: expected a string, found nothing (the key is required)",
        f'{src}.path: expected no path with type = "thrift" (it is for http checks), found "/health"',
    }, result.stderr
    result = monolaked_check(tmp_path, thrift_server('{ type = "http" }'))
    assert f'{src}.type: expected "thrift" or "tcp", found "http"' in result.stderr, result.stderr
    result = monolaked_check(tmp_path, http_server("5"))
    assert "servers.web.routes[0].health_check: expected a table, found an integer 5" in result.stderr, (
        result.stderr
    )
