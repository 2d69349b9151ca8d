"""``[servers.NAME.http2]``: defaults, validation with clear errors, the ALPN list, and a build
without libnghttp2 (h2 off by default, a config error when asked for)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from monolake.conf import ConfigError, load_config
from monolake.worker import h2
from tests.http.certs import make_ca, make_cert


def write(tmp_path: Path, http2: str | None = "", tls: bool = False, extra: str = "") -> Path:
    tls_table = ""
    if tls:
        ca = make_ca(tmp_path)
        cert = make_cert(tmp_path, ca, "web", ["127.0.0.1"])
        tls_table = f'[servers.web.tls]\nchain = "{cert.chain}"\nkey = "{cert.key}"\n'
    path = tmp_path / "monolake.toml"
    path.write_text(
        textwrap.dedent(f"""
        [servers.web]
        proxy_type = "http"
        listener = {{ type = "socket", value = "127.0.0.1:8080" }}
        {extra}
    """)
        + tls_table
        + (f"[servers.web.http2]\n{http2}\n" if http2 is not None else "")
        + textwrap.dedent("""
        [[servers.web.routes]]
        path = "/"
        upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:8081" } }]
    """)
    )
    return path


def errors(tmp_path: Path, http2: str, tls: bool = False) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, http2, tls))
    return str(err.value)


def test_defaults_follow_nginx_and_envoy(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "", extra="timeout = { server_keepalive_timeout_sec = 30 }"))
    h = cfg.servers["web"].http2
    assert h.enabled and h.max_concurrent_streams == 128 and h.initial_window_size == 65535
    assert h.max_header_list_size == 65536 and h.max_frame_size == 16384
    assert h.idle_timeout_sec == 30.0  # the keep-alive timeout, as nginx
    assert h.alpn == ("h2", "http/1.1")
    # the resolved tree survives the master -> worker round trip
    assert type(cfg).from_dict(cfg.to_dict()).servers["web"].http2 == h


def test_values_and_alpn(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path, 'max_concurrent_streams = 16\nidle_timeout_sec = 5\nalpn = ["http/1.1", "h2"]', tls=True
        )
    )
    h = cfg.servers["web"].http2
    assert h.max_concurrent_streams == 16 and h.idle_timeout_sec == 5.0
    assert h.alpn == ("http/1.1", "h2")
    assert load_config(write(tmp_path, "enabled = false")).servers["web"].http2.enabled is False


@pytest.mark.parametrize(
    "line,message",
    [
        ("max_concurrent_streams = 0", "servers.web.http2.max_concurrent_streams: expected an integer"),
        ("initial_window_size = 2147483648", "servers.web.http2.initial_window_size"),
        ("max_frame_size = 1000", "servers.web.http2.max_frame_size"),
        ("max_header_list_size = 100", "servers.web.http2.max_header_list_size"),
        ('idle_timeout_sec = "5s"', "servers.web.http2.idle_timeout_sec"),
        ("send_timeout_sec = -1", "servers.web.http2.send_timeout_sec"),
        ("max_concurrent_streams = 2147483648", "servers.web.http2.max_concurrent_streams"),
        ("max_frame_size = 16777216", "servers.web.http2.max_frame_size"),
        ("max_streams = 4", 'unknown key "max_streams"'),
        ('alpn = ["h2"]', "no alpn on a listener without tls"),
        ("enabled = 1", "servers.web.http2.enabled: expected true or false"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    assert message in errors(tmp_path, line)


@pytest.mark.parametrize(
    "alpn,message",
    [
        ("[]", "an empty array"),
        ('["h3"]', 'a non-empty array of "h2" and/or "http/1.1"'),
        ('["h2", "h2"]', "each at most once"),
    ],
)
def test_bad_alpn(tmp_path: Path, alpn: str, message: str) -> None:
    assert message in errors(tmp_path, f"alpn = {alpn}", tls=True)


def test_h2_alpn_with_h2_disabled_is_an_error(tmp_path: Path) -> None:
    assert 'no "h2" with enabled = false' in errors(tmp_path, 'enabled = false\nalpn = ["h2"]', tls=True)


def test_http2_refused_on_thrift_servers(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        textwrap.dedent("""
        [servers.t]
        proxy_type = "thrift"
        listener = { type = "socket", value = "127.0.0.1:9090" }
        route = { upstreams = [{ endpoint = { type = "socket", value = "127.0.0.1:9091" } }] }
        [servers.t.http2]
        enabled = true
    """)
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "servers.t.http2" in str(err.value) and "proxy_type" in str(err.value)


def test_without_the_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No libnghttp2: h2 is off for a config that does not ask (HTTP/1.1 only, ALPN too), and a
    config that asks for it is an error saying how to get it."""
    why = "HTTP/2 unavailable: no extension here; " + h2.INSTALL_HINT
    monkeypatch.setattr(h2, "available", lambda: h2.Availability(False, why))
    cfg = load_config(write(tmp_path, None, tls=True))
    assert cfg.servers["web"].http2.enabled is False
    assert cfg.servers["web"].http2.alpn == ("http/1.1",)
    text = errors(tmp_path, "max_concurrent_streams = 10")
    assert "servers.web.http2.enabled" in text and "apt-get install -y libnghttp2-dev" in text
    assert load_config(write(tmp_path, "enabled = false")).servers["web"].http2.enabled is False


def test_worker_without_the_extension_serves_http11_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker does per http server at build: no libnghttp2 -> no h2 listener and one
    ``h2_unavailable`` warning for the whole worker; with it, an ``H2Listener`` carrying the
    configured SETTINGS."""
    from structlog.testing import capture_logs

    cfg = load_config(write(tmp_path, "max_concurrent_streams = 9")).servers["web"]
    lst = h2.downstream_listener(cfg)
    assert lst is not None and lst.settings.max_concurrent_streams == 9
    assert h2.downstream_listener(load_config(write(tmp_path, "enabled = false")).servers["web"]) is None
    why = "HTTP/2 unavailable: no extension here; " + h2.INSTALL_HINT
    monkeypatch.setattr(h2, "available", lambda: h2.Availability(False, why))
    monkeypatch.setattr(h2, "_announced", [])
    with capture_logs() as logs:
        assert h2.downstream_listener(cfg) is None
        assert h2.downstream_listener(cfg) is None  # a second server: no second line
    lines = [entry for entry in logs if entry["event"] == "h2_unavailable"]
    assert len(lines) == 1 and lines[0]["reason"] == why and lines[0]["log_level"] == "warning"
