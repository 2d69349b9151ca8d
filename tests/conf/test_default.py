"""The embedded default config: it loads, it serves the demo routes, and it round-trips."""

from __future__ import annotations

import json

from monolake.conf import DEFAULT_SOURCE, Config, Router, load_config, parse_config
from monolake.conf.loader import default_config_text


def test_default_config_loads_with_the_demo_server() -> None:
    cfg = load_config(None)
    assert cfg.source == DEFAULT_SOURCE
    assert cfg.runtime.runtime_type == "auto"
    assert cfg.runtime.workers == "auto"
    demo = cfg.servers["demo"]
    assert demo.proxy_type == "http"
    assert (demo.listener.type, demo.listener.host, demo.listener.port) == ("socket", "127.0.0.1", 8080)
    ends = [(r.path, r.upstreams[0].endpoint.type, r.upstreams[0].endpoint.value) for r in demo.routes]
    assert ends == [("/", "builtin", "hello"), ("/echo/{*rest}", "builtin", "echo")]


def test_default_routes_match_as_documented() -> None:
    router = Router(load_config(None).servers["demo"].routes)
    assert router.match("/") == (0, {})
    assert router.match("/echo/a/b") == (1, {"rest": "a/b"})
    assert router.match("/echo/") is None
    assert router.match("/other") is None


def test_round_trip_through_json_is_lossless() -> None:
    cfg = load_config(None)
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.servers["demo"].routes, tuple)
    assert again.servers["demo"].timeout.upstream_connect_timeout_sec == 5.0


def test_summary_names_servers_and_routes() -> None:
    text = load_config(None).summary()
    assert "server demo: http on 127.0.0.1:8080" in text
    assert "/echo/{*rest} -> builtin:echo" in text


def test_default_text_is_the_package_resource_and_parses_alone() -> None:
    cfg = parse_config(default_config_text(), "default.toml")
    assert list(cfg.servers) == ["demo"]
