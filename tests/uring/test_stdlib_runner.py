"""The stdlib-suite runner itself: a hang or a crash is one failed test and the rest still run;
the expected-failure list needs a reason per entry and cannot go stale."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _runner() -> Any:
    """scripts/run_stdlib_asyncio.py as a module (scripts/ is not a package)."""
    name = "run_stdlib_asyncio"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "scripts", "run_stdlib_asyncio.py")
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_hangs_and_crashes_are_failures_not_stuck_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner()
    monkeypatch.setenv("PYTHONPATH", ROOT)
    base = "tests.uring.stdlib_runner_cases.Cases."
    names = [
        "test_a_passes",
        "test_b_hangs",
        "test_c_hangs_hard",
        "test_d_crashes",
        "test_e_fails",
        "test_f_passes_after_all_that",
    ]
    t0 = time.monotonic()
    broken = "tests.uring.stdlib_runner_cases.BrokenSetUp.test_never_runs"
    results = runner.run_all(
        {"cases": [base + n for n in names], "broken": [broken]}, "asyncio", timeout=1.0, jobs=2, grace=2.0
    )
    took = time.monotonic() - t0
    got = {o.id.rsplit(".", 1)[1]: o.outcome for o in results if o.id.startswith(base)}
    assert got == {
        "test_a_passes": "pass",
        "test_b_hangs": "timeout",
        "test_c_hangs_hard": "timeout",
        "test_d_crashes": "crash",
        "test_e_fails": "fail",
        "test_f_passes_after_all_that": "pass",
    }
    others = sorted((o.id, o.outcome) for o in results if not o.id.startswith(base))
    assert others == [
        ("setUpClass (tests.uring.stdlib_runner_cases.BrokenSetUp)", "error"),
        (broken, "error"),
    ]
    assert took < 30, f"the run took {took:.1f} s"
    results = [o for o in results if o.id.startswith(base)]
    summary = runner.summarize(results, {base + "test_e_fails": "known"}, took)
    assert [u["id"] for u in summary["unexpected_failures"]] == [
        base + n for n in ("test_b_hangs", "test_c_hangs_hard", "test_d_crashes")
    ]
    assert summary["expected_failures"] == [base + "test_e_fails"] and not summary["ok"]
    stale = runner.summarize(results, {base + "test_a_passes": "was broken once"}, took)
    assert stale["unexpected_passes"] == [base + "test_a_passes"]


def test_expected_failure_needs_a_reason(tmp_path: Any) -> None:
    runner = _runner()
    good = tmp_path / "good.txt"
    good.write_text("# comment\n\npkg.mod.Case.test_x  # the ring cannot do X\n")
    assert runner.load_xfail(str(good)) == {"pkg.mod.Case.test_x": "the ring cannot do X"}
    bad = tmp_path / "bad.txt"
    bad.write_text("pkg.mod.Case.test_y\n")
    with pytest.raises(SystemExit, match="needs a '# reason'"):
        runner.load_xfail(str(bad))


def test_the_shipped_list_parses() -> None:
    runner = _runner()
    for test_id, reason in runner.load_xfail(runner.DEFAULT_XFAIL).items():
        assert test_id.startswith("test.test_asyncio.") and reason
