"""Config snippets and helpers shared by the conf tests."""

from __future__ import annotations

from collections.abc import Callable

from monolake.conf import Config
from tests.config_text import UPSTREAM_9000, http_server

Problems = Callable[[str], list[str]]  # the ``problems`` fixture: a config's problem lines
Load = Callable[[str], Config]  # the ``load`` fixture

HTTP_SERVER = http_server(upstream=UPSTREAM_9000)


def with_keys(extra: str) -> str:
    """HTTP_SERVER with ``extra`` lines in the [servers.web] table itself."""
    return HTTP_SERVER.replace('proxy_type = "http"\n', 'proxy_type = "http"\n' + extra + "\n", 1)


def only(lines: list[str], key: str) -> str:
    """The single problem line about ``key`` (as ``: key:``)."""
    hits = [line for line in lines if f": {key}: " in line]
    assert len(hits) == 1, (key, lines)
    return hits[0]
