"""The runtime choice: legacy/auto/io_uring semantics and the probe's answers."""

from __future__ import annotations

import asyncio

import pytest

from monolake.uring import probe
from monolake.uring.probe import parse_kernel
from monolake.uring.runtime import LoopChoice, RuntimeUnavailable, choose_loop


def test_parse_kernel() -> None:
    assert parse_kernel("6.18.44-fc-v657") == (6, 18)
    assert parse_kernel("5.15.0-91-generic") == (5, 15)
    assert parse_kernel("6.1-rc2") == (6, 1)
    assert parse_kernel("garbage") == (0, 0)


def test_legacy_is_uvloop_or_asyncio() -> None:
    choice = choose_loop("legacy", 1024)
    assert isinstance(choice, LoopChoice)
    assert choice.name in ("uvloop", "asyncio")
    loop = choice.factory()
    try:
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()


def test_unknown_runtime_type_rejected() -> None:
    with pytest.raises(ValueError):
        choose_loop("epoll", 1024)


def test_auto_follows_probe() -> None:
    p = probe()
    choice = choose_loop("auto", 256)
    if p.available:
        assert choice.name == "io_uring", choice.detail
    else:
        assert choice.name in ("uvloop", "asyncio")
        assert "io_uring unavailable" in choice.detail


def test_explicit_io_uring_is_error_or_io_uring() -> None:
    p = probe()
    if p.available:
        assert choose_loop("io_uring", 256).name == "io_uring"
    else:
        with pytest.raises(RuntimeUnavailable) as info:
            choose_loop("io_uring", 256)
        assert p.reason in str(info.value)


def test_probe_reports_kernel() -> None:
    p = probe()
    assert p.kernel
    assert p.available or p.reason
