"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Monolaked


@pytest.fixture
def master_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(config_text, args=(), env=None)`` starts a daemon (``monolaked start``) in this
    test's temp dir; every one started is stopped and reaped after the test."""
    started: list[Monolaked] = []

    def make(config_text: str, args: list[str] = (), env: dict | None = None) -> Monolaked:
        m = Monolaked(tmp_path, config_text, list(args), env)
        started.append(m)
        return m

    yield make
    for m in started:
        m.close()
