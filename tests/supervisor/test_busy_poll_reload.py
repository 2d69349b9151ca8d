"""``[runtime] busy_poll_us`` through the real master: a reload (generation or in place) that
changes it changes how the worker's loop waits, and an HTTP server serves with it on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import Monolaked, base_config, http_get
from tests.support import free_port


def loop_window(m: Monolaked) -> tuple[int, int]:
    """(pid, busy-poll window in µs) of the ready worker, as its running loop applies it
    (``monolaked debug``). What the loop does with a window is tests/uring/test_busy_poll.py's
    (counted polls, not CPU time, which depends on what else the machine runs)."""
    from monolake.supervisor.control import request

    report = request(str(m.tmp / "control.sock"), {"type": "debug", "slot": 0}, timeout=30)
    assert report["type"] == "debug", report
    return report["pid"], report["busy_poll_us"]


def serves(port: int, n: int = 8) -> bool:
    for _ in range(n):
        status, body, _headers = http_get(port, "/")
        assert status == 200, body
    return True


def ready_pid(m: Monolaked) -> int:
    (worker,) = m.ready_workers()
    return worker["pid"]


@pytest.mark.parametrize("mode", ["generation", "in_place"])
def test_reload_picks_up_a_changed_busy_poll(tmp_path: Path, mode: str) -> None:
    port = free_port()
    text = base_config(
        tmp_path, port, runtime="workers = 1\nbusy_poll_us = 0", supervisor=f'reload_mode = "{mode}"'
    )
    m = Monolaked(tmp_path, text)
    try:
        m.wait_ready(1)
        pid = ready_pid(m)
        assert serves(port) and loop_window(m) == (pid, 0)

        m.config_path.write_text(text.replace("busy_poll_us = 0", "busy_poll_us = 50000"))
        result = m.cli("reload", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        m.wait_ready(1)
        deadline = time.monotonic() + 30
        while len(m.ready_workers()) != 1 or (mode == "generation" and ready_pid(m) == pid):
            assert time.monotonic() < deadline, m.log()[-3000:]
            time.sleep(0.1)
        new_pid = ready_pid(m)
        assert (new_pid != pid) if mode == "generation" else (new_pid == pid)
        assert serves(port) and loop_window(m) == (new_pid, 50000), (
            "busy_poll_us = 50000 after the reload, yet the serving loop does not poll"
        )

        # and back off: the loop sleeps again
        m.config_path.write_text(text)
        result = m.cli("reload", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        deadline = time.monotonic() + 30
        while len(m.ready_workers()) != 1 or (mode == "generation" and ready_pid(m) == new_pid):
            assert time.monotonic() < deadline, m.log()[-3000:]
            time.sleep(0.1)
        assert serves(port) and loop_window(m) == (ready_pid(m), 0), (
            "busy polling off again, yet the serving loop still polls"
        )
    finally:
        m.close()


def test_check_rejects_bad_busy_poll_values(tmp_path: Path) -> None:
    import subprocess

    from tests.harness import MONOLAKED

    for bad, why in (
        ("-1", "found -1"),
        ("100001", "found 100001"),
        ('"300"', "found a string"),
        ("0.5", "found a float"),
        ("true", "found a boolean"),
    ):
        cfg = tmp_path / "bad.toml"
        cfg.write_text(base_config(tmp_path, free_port(), runtime=f"busy_poll_us = {bad}"))
        check = subprocess.run(
            [*MONOLAKED, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 1, (bad, check.stdout)
        assert "runtime.busy_poll_us" in check.stderr and why in check.stderr, (bad, check.stderr)
        assert "an integer of microseconds from 0 to 100000" in check.stderr, check.stderr
    good = tmp_path / "good.toml"
    good.write_text(base_config(tmp_path, free_port(), runtime="busy_poll_us = 300"))
    ok = subprocess.run([*MONOLAKED, "check", "-c", str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "busy_poll 300 µs" in ok.stdout
