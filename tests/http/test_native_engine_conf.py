"""The per-server engine switch (conf/servers.py ``engine``) and when a server asking for the
native engine runs the Python one anyway (native_engine.why_not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monolake.conf import Config, ConfigError, load_config
from monolake.worker.http import native_engine
from tests.conf.conf_samples import HTTP_SERVER, with_keys


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "monolake.toml"
    path.write_text(text)
    return load_config(path)


def test_default_is_python(tmp_path: Path) -> None:
    cfg = _load(tmp_path, HTTP_SERVER)
    assert cfg.servers["web"].engine == "python"


def test_native_is_accepted(tmp_path: Path) -> None:
    cfg = _load(tmp_path, with_keys('engine = "native"'))
    assert cfg.servers["web"].engine == "native"


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, with_keys('engine = "fast"'))
    assert "engine" in str(info.value) and "native" in str(info.value)


def test_engine_is_refused_on_thrift(tmp_path: Path) -> None:
    text = """
[servers.t]
proxy_type = "thrift"
listener = { type = "socket", value = "127.0.0.1:18081" }
engine = "native"
[servers.t.route]
upstreams = [{ endpoint = { type = "uri", value = "tcp://127.0.0.1:9000" } }]
"""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert "engine" in str(info.value)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("proxy_protocol = true", "PROXY"),
        ("access_log = true", "access log"),
        ("via = true", "Via"),
    ],
)
def test_servers_the_native_engine_leaves_to_python(tmp_path: Path, extra: str, why: str) -> None:
    cfg = _load(tmp_path, with_keys('engine = "native"\n' + extra)).servers["web"]
    reason = native_engine.why_not(cfg)
    assert reason is not None
    if native_engine.available():
        assert why in reason
    assert native_engine.why_not(_load(tmp_path, HTTP_SERVER).servers["web"]) in (
        None,
        "the io_uring extension (monolake.uring._native) is not available",
    )
