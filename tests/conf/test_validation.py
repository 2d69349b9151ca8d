"""Validation: every problem names the file and the key path, says what was expected and what
was found, and all problems of a file are reported together."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monolake.conf import Config, ConfigError, load_config, parse_config, schema

from .conf_samples import HTTP_SERVER, Load, Problems, only, with_keys


def test_minimal_http_server_is_valid(load: Load) -> None:
    cfg = load(HTTP_SERVER)
    up = cfg.servers["web"].routes[0].upstreams[0].endpoint
    assert (up.scheme, up.host, up.port, up.path, up.authority) == (
        "http",
        "127.0.0.1",
        9000,
        "/",
        "127.0.0.1:9000",
    )
    assert cfg.servers["web"].name == "web"


def test_unknown_key_suggests_the_closest_known_one(problems: Problems) -> None:
    lines = problems(with_keys("backlg = 10") + "[runtime]\nworker = 2\n")
    line = only(lines, "servers.web.backlg")
    assert 'unknown key "backlg"' in line and 'did you mean "backlog"?' in line
    assert 'did you mean "workers"?' in only(lines, "runtime.worker")


def test_unknown_top_level_table(problems: Problems) -> None:
    line = only(problems(HTTP_SERVER + "[supervsor]\nlog_level = 'info'\n"), "supervsor")
    assert 'did you mean "supervisor"?' in line


@pytest.mark.parametrize(
    "snippet, key, expected, found",
    [
        (
            "[runtime]\nentries = '1024'",
            "runtime.entries",
            "expected an integer from 8 to 32768",
            'found a string "1024" (write the number without quotes)',
        ),
        (
            "[runtime]\ncpu_affinity = 'yes'",
            "runtime.cpu_affinity",
            "expected true or false",
            'found a string "yes"',
        ),
        ("[runtime]\nentries = 1000", "runtime.entries", "expected a power of two", "found 1000"),
        ("[runtime]\nworkers = 0", "runtime.workers", 'expected "auto" or an integer', "found an integer 0"),
        (
            "[runtime]\nworkers = true",
            "runtime.workers",
            'expected "auto" or an integer',
            "found a boolean true",
        ),
        (
            "[runtime]\nruntime_type = 'uring'",
            "runtime.runtime_type",
            'expected one of "io_uring", "legacy" or "auto"',
            'found "uring"',
        ),
        (
            "[supervisor]\ngraceful_timeout = '30s'",
            "supervisor.graceful_timeout",
            "expected a duration in seconds",
            'found a string "30s"',
        ),
        (
            "[supervisor]\ndrain_timeout = -1",
            "supervisor.drain_timeout",
            "expected a duration in seconds",
            "found -1",
        ),
        ("[supervisor]\nlog_level = 'warn'", "supervisor.log_level", "expected one of", 'spelled "warning"'),
        (
            "[supervisor]\nreload_mode = 'hot'",
            "supervisor.reload_mode",
            'expected "generation" or "in_place"',
            'found "hot"',
        ),
        ("[admin]\nlisten = 9901", "admin.listen", "expected a string", "found an integer 9901"),
        ("[admin]\nlisten = 'localhost'", "admin.listen", 'expected "HOST:PORT"', 'found "localhost"'),
    ],
)
def test_type_and_enum_problems(
    problems: Problems, snippet: str, key: str, expected: str, found: str
) -> None:
    line = only(problems(HTTP_SERVER + snippet + "\n"), key)
    assert expected in line and found in line, line


def test_server_key_problems(problems: Problems) -> None:
    text = HTTP_SERVER.replace(
        'proxy_type = "http"',
        'proxy_type = "http"\nbacklog = 0\n'
        'load_balancer = "random"\nmax_body_size = -1\nvia = "yes"\n'
        'upstream_http_version = "h2"\nhttp_parser = "llhttp"',
    )
    lines = problems(text)
    assert "expected an integer from 1 to 65535, found 0" in only(lines, "servers.web.backlog")
    assert "unknown key" in only(lines, "servers.web.load_balancer")
    assert "found -1" in only(lines, "servers.web.max_body_size")
    assert "expected true or false" in only(lines, "servers.web.via")
    http2 = only(lines, "servers.web.upstream_http_version")
    assert 'found "h2"' in http2 and 'did you mean "http2"?' in http2
    assert 'expected one of "auto", "native", "httptools" or "h11"' in only(lines, "servers.web.http_parser")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("8080", '"HOST:PORT"'),
        (":8080", "a host before the port"),
        ("127.0.0.1:0", "a port from 1 to 65535"),
        ("127.0.0.1:65536", "a port from 1 to 65535"),
        ("127.0.0.1:http", "a port from 1 to 65535"),
        ("::1:8080", "an IPv6 address in brackets"),
        ("[::1:8080", '"[IPV6]:PORT"'),
        ("[fe80::zz]:8080", "a valid IPv6 address"),
        ("300.1.1.1:8080", "a valid IPv4 address"),
        ("bad host:8080", "an IP address or a host name"),
    ],
)
def test_bad_socket_addresses(problems: Problems, value: str, expected: str) -> None:
    text = HTTP_SERVER.replace("127.0.0.1:18080", value)
    line = only(problems(text), "servers.web.listener.value")
    assert f"expected {expected}" in line and f'found "{value}"' in line


@pytest.mark.parametrize(
    "value, host, port",
    [
        ("[::1]:8080", "::1", 8080),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("localhost:65535", "localhost", 65535),
        ("[::]:8443", "::", 8443),
    ],
)
def test_good_socket_addresses(load: Load, value: str, host: str, port: int) -> None:
    lst = load(HTTP_SERVER.replace("127.0.0.1:18080", value)).servers["web"].listener
    assert (lst.type, lst.host, lst.port) == ("socket", host, port)
    assert lst.address == (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def test_unix_listener_resolved_from_the_config_folder(load: Load, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    text = HTTP_SERVER.replace(
        '{ type = "socket", value = "127.0.0.1:18080" }', '{ type = "unix", value = "run/web.sock" }'
    )
    lst = load(text).servers["web"].listener
    assert lst.type == "unix" and lst.path == str(tmp_path / "run" / "web.sock")


def test_unix_listener_folder_must_exist_and_path_fit(problems: Problems, tmp_path: Path) -> None:
    text = HTTP_SERVER.replace(
        '{ type = "socket", value = "127.0.0.1:18080" }', '{ type = "unix", value = "nowhere/web.sock" }'
    )
    line = only(problems(text), "servers.web.listener.value")
    assert "in an existing folder" in line and str(tmp_path / "nowhere") in line
    long_name = "x" * 120 + ".sock"
    text = HTTP_SERVER.replace(
        '{ type = "socket", value = "127.0.0.1:18080" }', f'{{ type = "unix", value = "/tmp/{long_name}" }}'
    )
    assert "at most 107 bytes" in only(problems(text), "servers.web.listener.value")


def test_listener_type_and_value_required(problems: Problems) -> None:
    text = HTTP_SERVER.replace('{ type = "socket", value = "127.0.0.1:18080" }', '{ type = "tcp" }')
    lines = problems(text)
    assert 'TCP listeners are type = "socket"' in only(lines, "servers.web.listener.type")
    assert "the key is required" in only(lines, "servers.web.listener.value")
    lines = problems(HTTP_SERVER.replace('listener = { type = "socket", value = "127.0.0.1:18080" }', ""))
    assert "expected a table, found nothing" in only(lines, "servers.web.listener")


def second_server(address: str, name: str = "api") -> str:
    return HTTP_SERVER.replace("servers.web", f"servers.{name}").replace("127.0.0.1:18080", address)


def test_duplicate_listeners(problems: Problems) -> None:
    line = only(problems(HTTP_SERVER + second_server("127.0.0.1:18080")), "servers.api.listener.value")
    assert "no other listener uses" in line and "servers.web.listener.value" in line
    line = only(problems(HTTP_SERVER + second_server("0.0.0.0:18080")), "servers.api.listener.value")
    assert "overlaps servers.web.listener.value (127.0.0.1:18080)" in line
    line = only(problems(HTTP_SERVER + '[admin]\nlisten = "127.0.0.1:18080"\n'), "servers.web.listener.value")
    assert "admin.listen" in line


def test_distinct_listeners_are_fine(load: Load) -> None:
    cfg = load(
        HTTP_SERVER
        + second_server("127.0.0.1:18081")
        + second_server("[::1]:18080", "v6")
        + '[admin]\nlisten = "127.0.0.1:9901"\n'
    )
    assert list(cfg.servers) == ["web", "api", "v6"]
    assert (cfg.admin.host, cfg.admin.port) == ("127.0.0.1", 9901)


def test_duplicate_unix_listeners(problems: Problems) -> None:
    unix = '{ type = "unix", value = "/tmp/monolake-conf-test.sock" }'
    web = HTTP_SERVER.replace('{ type = "socket", value = "127.0.0.1:18080" }', unix)
    api = web.replace("servers.web", "servers.api")
    assert "no other listener uses" in only(problems(web + api), "servers.api.listener.value")


def test_server_names_must_differ(problems: Problems) -> None:
    text = HTTP_SERVER + second_server("127.0.0.1:18081").replace("proxy_type", 'name = "web"\nproxy_type')
    assert "servers.web" in only(problems(text), "servers.api.name")


def test_servers_required(problems: Problems) -> None:
    assert "found none" in only(problems("[runtime]\nworkers = 1\n"), "servers")
    assert "found an integer 3" in only(problems("servers = 3\n"), "servers")


def test_proxy_type_required_and_keys_checked_per_type(problems: Problems) -> None:
    lines = problems(HTTP_SERVER.replace('proxy_type = "http"', ""))
    assert "the key is required" in only(lines, "servers.web.proxy_type")
    lines = problems(with_keys('idl = "svc.thrift"\nmax_frame_size = 1048576'))
    line = only(lines, "servers.web.idl")
    assert 'it applies to proxy_type "http_thrift", not "http"' in line
    assert '"thrift" / "http_thrift"' in only(lines, "servers.web.max_frame_size")


def test_monolake_keys_we_do_not_support_are_named(problems: Problems) -> None:
    lines = problems(
        with_keys("http_opt_handlers = { content_handler = true }") + "[runtime]\nthread_pool = 4\n"
    )
    assert "not supported" in only(lines, "servers.web.http_opt_handlers")
    assert "not used" in only(lines, "runtime.thread_pool")


# -- aliases -------------------------------------------------------------------------------------


def test_worker_threads_is_an_alias_of_workers(load: Load) -> None:
    assert load(HTTP_SERVER + "[runtime]\nworker_threads = 3\n").runtime.workers == 3
    assert load(HTTP_SERVER + "[runtime]\nworkers = 'auto'\n").runtime.workers == "auto"


@pytest.mark.parametrize("alias", ["http_timeout", "thrift_timeout"])
def test_timeout_aliases(load: Load, alias: str) -> None:
    text = HTTP_SERVER.replace(
        'proxy_type = "http"', f'proxy_type = "http"\n{alias} = {{ upstream_read_timeout_sec = 2.5 }}'
    )
    timeout = load(text).servers["web"].timeout
    assert timeout.upstream_read_timeout_sec == 2.5
    assert timeout.server_keepalive_timeout_sec == 75.0


def test_alias_and_canonical_key_together_is_an_error(problems: Problems) -> None:
    lines = problems(
        with_keys("http_timeout = {}\ntimeout = {}") + "[runtime]\nworkers = 2\nworker_threads = 2\n"
    )
    assert 'either "timeout" or its alias "http_timeout", found both' in only(
        lines, "servers.web.http_timeout"
    )
    assert 'alias "worker_threads", found both' in only(lines, "runtime.worker_threads")


def test_timeout_table_keys_checked(problems: Problems) -> None:
    lines = problems(
        with_keys("http_timeout = { upstream_read_timeout = 1, server_keepalive_timeout_sec = 0 }")
    )
    assert 'did you mean "upstream_read_timeout_sec"?' in only(
        lines, "servers.web.http_timeout.upstream_read_timeout"
    )
    assert "found 0" in only(lines, "servers.web.http_timeout.server_keepalive_timeout_sec")


# -- supervisor ----------------------------------------------------------------------------------


def test_control_socket_default(monkeypatch: pytest.MonkeyPatch, load: Load) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert load(HTTP_SERVER).supervisor.control_socket == "/run/user/1000/monolaked.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert schema.default_control_socket() == "/run/monolaked.sock"
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    assert schema.default_control_socket() == "/tmp/monolaked-1234.sock"
    assert load(HTTP_SERVER).supervisor.control_socket == "/tmp/monolaked-1234.sock"


def test_supervisor_paths_resolved_and_checked(load: Load, problems: Problems, tmp_path: Path) -> None:
    cfg = load(
        HTTP_SERVER + '[supervisor]\npid_file = "m.pid"\ncontrol_socket = "m.sock"\nerror_log = "error.log"\n'
    )
    sv = cfg.supervisor
    assert (sv.pid_file, sv.control_socket, sv.error_log) == (
        str(tmp_path / "m.pid"),
        str(tmp_path / "m.sock"),
        str(tmp_path / "error.log"),
    )
    lines = problems(
        HTTP_SERVER + '[supervisor]\npid_file = "/nonexistent-dir/m.pid"\n'
        "respawn_backoff_initial = 5\nrespawn_backoff_max = 1\n"
        "heartbeat_interval = 2\nheartbeat_timeout = 1\n"
    )
    assert "whose folder /nonexistent-dir does not exist" in only(lines, "supervisor.pid_file")
    assert ">= respawn_backoff_initial (5)" in only(lines, "supervisor.respawn_backoff_max")
    assert "> heartbeat_interval (2)" in only(lines, "supervisor.heartbeat_timeout")


def test_supervisor_durations_are_floats(load: Load) -> None:
    sv = load(HTTP_SERVER + "[supervisor]\ngraceful_timeout = 5\ndrain_timeout = 0.5\n").supervisor
    assert sv.graceful_timeout == 5.0 and isinstance(sv.graceful_timeout, float)
    assert sv.drain_timeout == 0.5 and sv.reload_timeout == 30.0


# -- collection, syntax, files -------------------------------------------------------------------


def test_all_problems_are_collected(problems: Problems) -> None:
    lines = problems(
        with_keys("bogus = 1").replace("http://127.0.0.1:9000", "ftp://x")
        + "[runtime]\nentries = 3\n[supervisor]\nlog_format = 'xml'\n"
    )
    keys = {line.split(": ")[1] for line in lines}
    assert {
        "servers.web.routes[0].upstreams[0].endpoint.value",
        "servers.web.bogus",
        "runtime.entries",
        "supervisor.log_format",
    } <= keys
    assert len(lines) == 4


def test_toml_syntax_error_names_line_and_column(problems: Problems) -> None:
    (line,) = problems("[runtime]\nworkers = \n")
    assert "line 2, column 11: expected valid TOML" in line


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/monolake.toml")
    assert str(info.value).startswith("/nonexistent/monolake.toml: expected a readable config file")


def test_parse_config_resolves_paths_from_the_source_folder(tmp_path: Path) -> None:
    (tmp_path / "svc.thrift").write_text("service S { void ping() }\n")
    text = """
[servers.gw]
proxy_type = "http_thrift"
listener = { type = "socket", value = "127.0.0.1:18090" }
idl = "svc.thrift"
route = { upstreams = [{ endpoint = { type = "socket", value = "127.0.0.1:9090" } }] }
"""
    cfg = parse_config(text, source=str(tmp_path / "x.toml"))
    assert cfg.servers["gw"].idl == str(tmp_path / "svc.thrift")
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="/elsewhere/x.toml")
    assert "(= /elsewhere/svc.thrift), which does not exist" in str(info.value)
    assert parse_config(text, "<test>", base_dir=str(tmp_path)).servers["gw"].idl == str(
        tmp_path / "svc.thrift"
    )


# -- layers, access_log --------------------------------------------------------------------------


def test_layers(load: Load, problems: Problems) -> None:
    text = (
        HTTP_SERVER
        + """
[[servers.web.layers]]
factory = "mypkg.limits:RateLimit"
options = { per_second = 100, burst = [1, 2] }
"""
    )
    (layer,) = load(text).servers["web"].layers
    assert layer.factory == "mypkg.limits:RateLimit" and layer.options == {"per_second": 100, "burst": [1, 2]}
    lines = problems(
        HTTP_SERVER
        + """
[[servers.web.layers]]
factory = "not a path"
[[servers.web.layers]]
factory = "a.b:c"
options = { since = 1979-05-27 }
"""
    )
    assert 'expected an import path "package.module:attr"' in only(lines, "servers.web.layers[0].factory")
    assert "travel to the workers as JSON" in only(lines, "servers.web.layers[1].options.since")


def test_access_log_bool_or_path(load: Load, tmp_path: Path, problems: Problems) -> None:
    assert load(with_keys("access_log = true")).servers["web"].access_log is True
    assert load(with_keys("access_log = 'access.log'")).servers["web"].access_log == str(
        tmp_path / "access.log"
    )
    assert "true, false or a log file path" in only(
        problems(with_keys("access_log = 1")), "servers.web.access_log"
    )


def test_round_trip_of_a_rich_config(load: Load, tmp_path: Path) -> None:
    (tmp_path / "svc.thrift").write_text("service S { void ping() }\n")
    text = (
        with_keys('access_log = "access.log"\nhttp_timeout = { upstream_read_timeout_sec = 3 }')
        + """
[[servers.web.routes]]
path_prefix = "/static/"
host = "Example.COM"
load_balancer = "weighted_random"
upstreams = [
  { endpoint = { type = "uri", value = "https://[::1]:8443/base?x=1" }, weight = 3 },
  { endpoint = { type = "unix", value = "up.sock" } },
]
[[servers.web.layers]]
factory = "m:f"
options = { a = { b = [1.5, "x"] } }

[servers.th]
proxy_type = "thrift"
listener = { type = "socket", value = "127.0.0.1:19090" }
thrift_transport = "framed"
route = { upstreams = [{ endpoint = { type = "socket", value = "127.0.0.1:9090" } }] }
[[servers.th.routes]]
methods = ["ping", "get"]
load_balancer = "round_robin"
upstreams = [{ endpoint = { type = "unix", value = "/tmp/th.sock" } }]

[servers.gw]
proxy_type = "http_thrift"
listener = { type = "socket", value = "127.0.0.1:19091" }
idl = "svc.thrift"
gateway_path = "/rpc/{method}"
[[servers.gw.routes]]
upstreams = [{ endpoint = { type = "socket", value = "localhost:9090" } }]

[runtime]
workers = 2
[admin]
listen = "[::1]:9901"
"""
    )
    cfg = load(text)
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    route = again.servers["web"].routes[1]
    assert route.host == "example.com" and route.path_prefix == "/static/"
    ep = route.upstreams[0].endpoint
    assert (ep.scheme, ep.host, ep.port, ep.path, ep.query, ep.authority) == (
        "https",
        "::1",
        8443,
        "/base",
        "x=1",
        "[::1]:8443",
    )
    assert route.upstreams[1].endpoint.path == str(tmp_path / "up.sock")
    th = again.servers["th"]
    assert th.routes[0].methods == ("ping", "get")
    assert [r.methods for r in th.thrift_routes] == [("ping", "get"), None]
    assert again.servers["gw"].thrift_routes[0].upstreams[0].endpoint.host == "localhost"
    assert "server th: thrift on 127.0.0.1:19090" in cfg.summary()


def test_to_dict_is_plain_json(load: Load) -> None:
    d = load(HTTP_SERVER).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["servers"]["web"]["routes"][0]["upstreams"][0]["endpoint"]["value"] == "http://127.0.0.1:9000"
    assert os.path.isabs(d["supervisor"]["control_socket"])
