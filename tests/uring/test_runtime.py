"""The runtime choice: legacy/auto/io_uring semantics and the probe's answers."""

from __future__ import annotations

import asyncio

import pytest

from monolake.uring import probe
from monolake.uring.probing import parse_kernel
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


def test_missing_extension_falls_back_with_one_clear_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import structlog

    from monolake.uring import probing as probe_mod
    from monolake.uring import runtime

    monkeypatch.setattr(
        probe_mod,
        "extension_error",
        lambda: "the io_uring extension monolake.uring._uring was not built (simulated)",
    )
    monkeypatch.setattr(probe_mod, "_cache", {})
    monkeypatch.setattr(runtime, "_logged_missing", False)
    with structlog.testing.capture_logs() as logs:
        first = choose_loop("auto", 64)
        second = choose_loop("auto", 64)
    assert first.name == second.name and first.name in ("uvloop", "asyncio")
    lines = [entry for entry in logs if "io_uring unavailable" in entry["event"]]
    assert len(lines) == 1, logs
    assert "liburing-dev" in lines[0]["event"] and "not built" in lines[0]["event"]
    assert lines[0]["fallback"] == first.name
    with pytest.raises(RuntimeUnavailable, match="not built"):
        choose_loop("io_uring", 64)


def test_sysctl_disabled_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from monolake.uring import probing as probe_mod

    monkeypatch.setattr(probe_mod, "io_uring_disabled", lambda: 2)
    monkeypatch.setattr(probe_mod, "_cache", {})
    p = probe_mod.probe()
    assert not p.available and "io_uring_disabled=2" in p.reason
    with pytest.raises(RuntimeUnavailable, match="io_uring_disabled"):
        choose_loop("io_uring", 64)


def test_old_kernel_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from monolake.uring import probing as probe_mod

    monkeypatch.setattr(probe_mod, "kernel_release", lambda: "5.15.0-91-generic")
    monkeypatch.setattr(probe_mod, "_cache", {})
    p = probe_mod.probe()
    assert not p.available and "5.15.0" in p.reason


def test_io_uring_choice_uses_probed_flags_and_entries() -> None:
    p = probe()
    if not p.available:
        pytest.skip(p.reason)
    choice = choose_loop("io_uring", 128)
    loop = choice.factory()
    try:
        assert loop._ring.entries == 128  # type: ignore[attr-defined]
        assert loop._ring.setup_flags == p.setup_flags  # type: ignore[attr-defined]
        assert f"flags={p.setup_flags}" in choice.detail
        assert loop.run_until_complete(asyncio.sleep(0, result=3)) == 3
    finally:
        loop.close()


def test_every_flag_set_the_probe_accepts_makes_a_working_loop() -> None:
    """Ring flags follow kernel support: each fallback flag set must give a working loop too."""
    if not probe().available:
        pytest.skip(probe().reason)
    from monolake.uring import new_event_loop
    from monolake.uring.probing import FLAG_CHOICES

    for flags in FLAG_CHOICES:
        loop = new_event_loop(entries=64, setup_flags=flags)
        try:
            fut = loop.create_future()
            loop.call_later(0.01, fut.set_result, flags)
            assert loop.run_until_complete(fut) == flags
        finally:
            loop.close()


def test_event_loop_policy() -> None:
    if not probe().available:
        pytest.skip(probe().reason)
    from monolake.uring import EventLoopPolicy

    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(EventLoopPolicy())
    try:

        async def which() -> str:
            return type(asyncio.get_running_loop()).__name__

        assert asyncio.run(which()) == "UringEventLoop"
    finally:
        asyncio.set_event_loop_policy(old)
