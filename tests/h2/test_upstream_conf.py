"""``upstream_http_version`` in the config: values, the per-route override, and the error a
build without the libnghttp2 extension gives for "http2"."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from monolake.conf import ConfigError, load_config
from monolake.worker import h2

SERVER = textwrap.dedent("""
    [servers.web]
    proxy_type = "http"
    listener = { type = "socket", value = "127.0.0.1:8080" }
    SERVER_LINE

    [[servers.web.routes]]
    path = "/grpc/{*rest}"
    ROUTE_LINE
    upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:50051" } }]

    [[servers.web.routes]]
    path = "/"
    upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:8081" } }]
""")


def write(tmp_path: Path, server: str = "", route: str = "") -> Path:
    path = tmp_path / "monolake.toml"
    path.write_text(SERVER.replace("SERVER_LINE", server).replace("ROUTE_LINE", route))
    return path


def test_server_value_and_route_override(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'upstream_http_version = "http11"', 'upstream_http_version = "http2"'))
    web = cfg.servers["web"]
    assert web.upstream_http_version == "http11"
    assert [r.upstream_http_version for r in web.routes] == ["http2", None]
    cfg = load_config(write(tmp_path))
    assert cfg.servers["web"].upstream_http_version == "auto"


def test_unknown_value_names_the_route_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, route='upstream_http_version = "h2"'))
    text = str(err.value)
    assert "servers.web.routes[0].upstream_http_version" in text
    assert 'expected one of "http2", "http11" or "auto", found "h2"' in text


def test_http2_without_the_extension_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    why = "HTTP/2 unavailable: no extension here; " + h2.INSTALL_HINT
    monkeypatch.setattr(h2, "available", lambda: h2.Availability(False, why))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, 'upstream_http_version = "http2"'))
    assert "servers.web.upstream_http_version" in str(err.value)
    assert "apt-get install -y libnghttp2-dev" in str(err.value)
    load_config(write(tmp_path, 'upstream_http_version = "auto"'))  # auto stays HTTP/1.1
