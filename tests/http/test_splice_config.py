"""The ``splice_threshold`` key (conf/servers.py): its default on http servers, 0 turning it
off, bad values refused with the key's path, and refused where it means nothing."""

from __future__ import annotations

import pytest

from monolake.conf import ConfigError, parse_config
from monolake.conf.schema import SPLICE_THRESHOLD_DEFAULT
from tests.config_text import UPSTREAM_9000, http_server

HTTP = http_server(upstream=UPSTREAM_9000, keys="%s")

THRIFT = """
[servers.rpc]
proxy_type = "thrift"
listener = { type = "socket", value = "127.0.0.1:18081" }
splice_threshold = 1
[servers.rpc.route]
upstreams = [{ endpoint = { type = "socket", value = "127.0.0.1:9001" } }]
"""


def test_default_and_values() -> None:
    assert parse_config(HTTP % "").servers["web"].splice_threshold == SPLICE_THRESHOLD_DEFAULT
    assert parse_config(HTTP % "splice_threshold = 0").servers["web"].splice_threshold == 0
    assert parse_config(HTTP % "splice_threshold = 65536").servers["web"].splice_threshold == 65536


@pytest.mark.parametrize("value, found", [("-1", "found -1"), ('"64KiB"', '"64KiB"'), ("1.5", "1.5")])
def test_bad_values_are_refused(value: str, found: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(HTTP % f"splice_threshold = {value}")
    lines = [p for p in info.value.problems if "servers.web.splice_threshold" in p]
    assert len(lines) == 1 and found in lines[0] and "integer" in lines[0], info.value.problems


def test_refused_on_a_thrift_server() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(THRIFT)
    lines = [p for p in info.value.problems if "servers.rpc.splice_threshold" in p]
    assert len(lines) == 1 and "http" in lines[0], info.value.problems
