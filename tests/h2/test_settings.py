"""H2Settings: operator defaults, validation with clear messages, and the availability switch."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from monolake.worker import h2
from monolake.worker.h2 import H2Settings, H2SettingsError


def test_defaults_are_what_an_operator_would_pick() -> None:
    s = H2Settings()
    assert s.max_concurrent_streams == 128
    assert s.initial_window_size >= 65_535
    assert s.max_frame_size == 16_384
    assert s.max_header_list_size == 65_536
    # the defences are on and finite
    assert s.max_continuations == 8 and s.reset_burst == 1_000 and s.reset_rate == 33
    assert s.max_outbound_ack == 1_000 and s.max_settings == 32


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("max_concurrent_streams", 0, "max_concurrent_streams = 0 is out of range"),
        ("initial_window_size", 2**31, "initial_window_size"),
        ("max_frame_size", 1000, "max_frame_size = 1000 is out of range [16384, 16777215]"),
        ("max_header_list_size", 10, "max_header_list_size"),
        ("max_continuations", 0, "max_continuations"),
        ("max_concurrent_streams", "128", "must be an integer"),
        ("reset_burst", True, "must be an integer"),
    ],
)
def test_out_of_range_is_a_clear_error(key: str, value: Any, fragment: str) -> None:
    with pytest.raises(H2SettingsError, match=re.escape(fragment)):
        H2Settings(**{key: value})


def test_from_mapping_names_the_config_table() -> None:
    s = H2Settings.from_mapping({"max_concurrent_streams": 64}, where="servers.web.http2")
    assert s.max_concurrent_streams == 64
    with pytest.raises(H2SettingsError, match=r"servers.web.http2: unknown key\(s\) max_streams"):
        H2Settings.from_mapping({"max_streams": 1}, where="servers.web.http2")
    with pytest.raises(H2SettingsError, match=r"servers.web.http2.max_frame_size = 1 is out"):
        H2Settings.from_mapping({"max_frame_size": 1}, where="servers.web.http2")


def test_settings_are_frozen_and_hashable() -> None:
    s = H2Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_frame_size = 20_000  # type: ignore[misc]
    assert hash(s) == hash(H2Settings())


def test_available_reports_the_library() -> None:
    a = h2.available()
    assert a and a.version.startswith("1.") and a.reason == ""
    h2.require("servers.web.http2")  # no raise


def test_unavailable_says_why_and_require_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extension: available() is False with the install hint; require() raises
    the config error naming the key; importing the package still works."""
    import sys

    h2.available.cache_clear()
    monkeypatch.setitem(sys.modules, "monolake.worker.h2._binding", None)  # import -> ImportError
    monkeypatch.delattr(h2, "_binding", raising=False)
    try:
        a = h2.available()
        assert not a and "libnghttp2-dev" in a.reason
        with pytest.raises(h2.H2Unavailable, match=r"^servers.web.http2: HTTP/2 unavailable"):
            h2.require("servers.web.http2")
        from structlog.testing import capture_logs

        monkeypatch.setattr(h2, "_announced", [])
        with capture_logs() as logs:
            h2.announce()
            h2.announce()
        assert [(e["event"], e["log_level"]) for e in logs] == [("h2_unavailable", "warning")]
        assert "libnghttp2-dev" in logs[0]["reason"]
    finally:
        h2.available.cache_clear()
