"""``[resolver]`` and ``srv`` endpoints in the config: defaults, round trip, and a clear error
from ``monolaked check`` for every bad value (the master never starts on one)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from monolake.conf import Config, load_config
from monolake.conf.resolver import ResolverConfig
from tests.harness import MONOLAKED, hermetic_env, monolaked_check


def web_server(upstreams: str) -> str:
    """An HTTP server ``web`` with one route to ``upstreams`` (the TOML list's items)."""
    return (
        textwrap.dedent("""
        [servers.web]
        proxy_type = "http"
        listener = { type = "socket", value = "127.0.0.1:18080" }

        [[servers.web.routes]]
        path_prefix = "/"
    """)
        + f"upstreams = [{upstreams}]\n"
    )


SERVER = web_server(
    '{ endpoint = { type = "uri", value = "http://app.internal:8080" } },\n'
    '{ endpoint = { type = "srv", value = "_http._tcp.app.internal", scheme = "https" } }'
)


def test_resolver_section_is_optional_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "monolake.toml"
    path.write_text(SERVER)
    cfg = load_config(path)
    assert cfg.resolver == ResolverConfig()
    assert cfg.resolver.nameservers == ()  # /etc/resolv.conf
    path.write_text(
        textwrap.dedent("""
        [resolver]
        nameservers = ["127.0.0.1:5353", "::1", "[::1]:54"]
        min_ttl_sec = 1
        max_ttl_sec = 300
        negative_ttl_sec = 5
        timeout_sec = 2
        max_stale_sec = 0
    """)
        + SERVER
    )
    cfg = load_config(path)
    assert cfg.resolver.nameservers == ("127.0.0.1:5353", "[::1]:53", "[::1]:54")
    assert cfg.resolver.servers() == [("127.0.0.1", 5353), ("::1", 53), ("::1", 54)]
    assert Config.from_dict(cfg.to_dict()) == cfg
    srv = cfg.servers["web"].routes[0].upstreams[1].endpoint
    assert (srv.type, srv.value, srv.scheme, srv.host) == (
        "srv",
        "_http._tcp.app.internal",
        "https",
        "app.internal",
    )


def test_bad_resolver_config_is_a_clear_error(tmp_path: Path) -> None:
    result = monolaked_check(
        tmp_path,
        textwrap.dedent("""
        [resolver]
        nameservers = ["dns.example:53", "127.0.0.1:99999", 53]
        min_ttl_sec = 10
        max_ttl_sec = 5
        negative_ttl_sec = 0
        timeout_sec = "2s"
        max_stale_sec = -1
        nameserver = []
    """)
        + SERVER,
    )
    assert result.returncode != 0
    err = result.stderr
    for expected in (
        "resolver.nameservers[0]: expected an IP address with an optional port",
        "a name server is given by address, not by name",
        'resolver.nameservers[1]: expected a port from 1 to 65535 after the address, found "127.0.0.1:99999"',
        "resolver.nameservers[2]: expected a string, found an integer 53",
        "resolver.max_ttl_sec: expected a duration >= min_ttl_sec (10), found 5",
        "resolver.negative_ttl_sec: expected a duration in seconds (a number > 0), found 0",
        "resolver.timeout_sec: expected a duration in seconds",
        "resolver.max_stale_sec: expected a number of seconds >= 0, found -1",
        "resolver.nameserver: expected one of the known keys",
        'did you mean "nameservers"',
    ):
        assert expected in err, f"{expected!r} not in:\n{err}"
    assert "Traceback" not in err


def test_bad_srv_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = monolaked_check(
        tmp_path,
        web_server(
            '{ endpoint = { type = "srv", value = "app.internal" } },\n'
            '{ endpoint = { type = "srv", value = "_http._udp.app.internal" } },\n'
            '{ endpoint = { type = "srv", value = "_http._tcp.app.internal", scheme = "ftp" } },\n'
            '{ endpoint = { type = "uri", value = "http://a:1", scheme = "http" } }'
        ),
    )
    assert result.returncode != 0
    err = result.stderr
    assert 'upstreams[0].endpoint.value: expected an SRV name "_service._tcp.name"' in err
    assert "upstreams[1].endpoint.value: expected an SRV name" in err
    assert 'upstreams[2].endpoint.scheme: expected "http" or "https", found "ftp"' in err
    assert 'upstreams[3].endpoint.scheme: expected no "scheme" key here' in err


def test_good_config_checks(tmp_path: Path) -> None:
    result = monolaked_check(tmp_path, '[resolver]\nnameservers = ["127.0.0.1:5353"]\n' + SERVER)
    assert result.returncode == 0, result.stderr
    assert (
        "resolver: 127.0.0.1:5353, ttl 1-300 s, negative 5 s, timeout 2 s, stale up to 3600 s"
        in result.stdout
    ), result.stdout
    assert "srv:_http._tcp.app.internal" in result.stdout, result.stdout


def test_thrift_srv_endpoint_takes_no_scheme(tmp_path: Path) -> None:
    head = textwrap.dedent("""
        [servers.rpc]
        proxy_type = "thrift"
        listener = { type = "socket", value = "127.0.0.1:18081" }
    """)
    ok = monolaked_check(
        tmp_path,
        head + 'route = { upstreams = [{ endpoint = { type = "srv", '
        'value = "_thrift._tcp.app.internal" } }] }\n',
    )
    assert ok.returncode == 0, ok.stderr
    bad = monolaked_check(
        tmp_path,
        head + 'route = { upstreams = [{ endpoint = { type = "srv", '
        'value = "_thrift._tcp.app.internal", scheme = "http" } }] }\n',
    )
    assert bad.returncode != 0
    assert 'endpoint.scheme: expected no "scheme" key here (thrift upstreams have no scheme)' in bad.stderr


ISSUE_15_SECTION_4 = textwrap.dedent("""
    [resolver]                      # optional; default: /etc/resolv.conf
    nameservers = ["127.0.0.1:5353"]
    min_ttl_sec = 1                 # floor under a published TTL (default at most 1)
    max_ttl_sec = 300
    negative_ttl_sec = 5
    timeout_sec = 2

    [servers.web]
    proxy_type = "http"
    listener = { type = "socket", value = "127.0.0.1:18080" }

    [[servers.web.routes]]
    path_prefix = "/"
    health_check = { path = "/health", interval_sec = 1, timeout_sec = 1, fall = 2, rise = 2 }  # type = "http" default; "tcp"
    upstreams = [{ endpoint = { type = "uri", value = "http://app.internal:8080" } },      # every A/AAAA address
                 { endpoint = { type = "srv", value = "_http._tcp.app.internal", scheme = "http" } }]
""")


def test_issue_section_4_config_names_as_written(tmp_path: Path) -> None:
    """The config block of issue 15 §4, verbatim: operators' configs keep working."""
    path = tmp_path / "monolake.toml"
    path.write_text(ISSUE_15_SECTION_4)
    cfg = load_config(path)
    r = cfg.resolver
    assert (r.nameservers, r.min_ttl_sec, r.max_ttl_sec, r.negative_ttl_sec, r.timeout_sec) == (
        ("127.0.0.1:5353",),
        1,
        300,
        5,
        2,
    )
    route = cfg.servers["web"].routes[0]
    hc = route.health_check
    assert hc is not None
    assert (hc.type, hc.path, hc.interval_sec, hc.timeout_sec, hc.fall, hc.rise) == (
        "http",
        "/health",
        1,
        1,
        2,
        2,
    )
    assert [(u.endpoint.type, u.endpoint.scheme) for u in route.upstreams] == [
        ("uri", "http"),
        ("srv", "http"),
    ]
    assert monolaked_check(tmp_path, ISSUE_15_SECTION_4).returncode == 0


def test_issue_section_4_cli_names_as_written(tmp_path: Path) -> None:
    """Every ``monolaked upstreams`` form of issue 15 §4 parses, with ``--control-socket`` and
    with ``-c`` (the config naming the socket), like ``status``: exit 2 (no master here), never
    a usage error; a wrong arity is one (exit 1)."""
    sock = str(tmp_path / "none.sock")
    path = tmp_path / "monolake.toml"
    path.write_text(f'[supervisor]\ncontrol_socket = "{sock}"\n' + SERVER)
    forms = [
        [],
        ["--json"],
        ["drain", "web", "10.0.0.7:8080"],
        ["enable", "web", "10.0.0.7:8080"],
        ["disable", "web", "10.0.0.7:8080"],
        ["weight", "web", "10.0.0.7:8080", "5"],
        ["add", "web", "/", "http://10.0.0.9:8080"],
        ["add", "web", "/", "http://10.0.0.9:8080", "--weight", "2"],
        ["remove", "web", "/", "http://10.0.0.9:8080"],
    ]
    for form in forms:
        for where in (["--control-socket", sock], ["-c", str(path)]):
            r = subprocess.run(
                [*MONOLAKED, "upstreams", *form, *where],
                capture_output=True,
                text=True,
                timeout=60,
                env=hermetic_env(),
            )
            assert r.returncode == 2 and "no master is running" in r.stderr, (form, where, r.stderr)
    for form in (
        ["drain", "web"],
        ["weight", "web", "10.0.0.7:8080"],
        ["add", "web", "/"],
        ["remove", "web", "/", "http://10.0.0.9:8080", "extra"],
        ["drain", "web", "10.0.0.7:8080", "--weight", "2"],
    ):
        r = subprocess.run(
            [*MONOLAKED, "upstreams", *form, "--control-socket", sock],
            capture_output=True,
            text=True,
            timeout=60,
            env=hermetic_env(),
        )
        assert r.returncode == 1 and "usage: monolaked upstreams" in r.stderr, (form, r.stderr)
