"""Registry of server builders, one per ``proxy_type``.

Builders are named by import path so the worker imports only the protocols it serves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

BUILDERS: dict[str, str] = {
    "http": "monolake.worker.http.server:build",
    "thrift": "monolake.worker.thrift.server:build",
    "http_thrift": "monolake.worker.thrift.gateway:build",
}


def builder_for(proxy_type: str) -> Callable[..., Any]:
    """The ``build(name, cfg, env, previous)`` function serving ``proxy_type``."""
    try:
        target = BUILDERS[proxy_type]
    except KeyError:
        raise ValueError(f"no server builder for proxy_type {proxy_type!r}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
