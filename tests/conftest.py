"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Monolaked


def pytest_sessionstart(session: pytest.Session) -> None:
    """Where the extensions are required (CI sets MONOLAKE_REQUIRE_EXTENSIONS=1), a missing one
    or an io_uring that cannot start ends the run at once: otherwise hundreds of tests would
    skip quietly and the run would still pass (seen once in a sanitizer run)."""
    if not os.environ.get("MONOLAKE_REQUIRE_EXTENSIONS"):
        return
    from monolake.uring import probe
    from monolake.worker import h2

    problems = []
    if not (uring := probe()).available:
        problems.append(f"io_uring: {uring.reason}")
    if not (engine := h2.available()):
        problems.append(f"HTTP/2: {engine.reason}")
    if problems:
        pytest.exit("MONOLAKE_REQUIRE_EXTENSIONS is set but " + "; ".join(problems), returncode=3)


@pytest.fixture
def master_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(config_text, args=(), env=None)`` starts a daemon (``monolaked start``) in this
    test's temp dir; every one started is stopped and reaped after the test."""
    started: list[Monolaked] = []

    def make(config_text: str, args: Sequence[str] = (), env: dict | None = None) -> Monolaked:
        m = Monolaked(tmp_path, config_text, list(args), env)
        started.append(m)
        return m

    yield make
    for m in started:
        m.close()
