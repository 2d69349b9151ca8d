"""Carried counter totals (supervisor/accounting.py): crashes, reloads, and no dips."""

from __future__ import annotations

from monolake.supervisor.accounting import Totals


def stats(requests: int, open_connections: int = 0, **more: int) -> dict[str, dict[str, int]]:
    return {"web": {"requests": requests, "open_connections": open_connections, **more}}


def test_crashed_worker_totals_carry_into_its_respawned_successor():
    t = Totals()
    assert t.slot_view(0, [(100, stats(7, 3), False)]) == {"web": {"requests": 7, "open_connections": 3}}
    t.worker_exited(0, 100, stats(7, 3))
    # the respawned worker starts from zero; the slot does not; gauges are not carried
    assert t.slot_view(0, [(101, stats(2, 1), False)]) == {"web": {"requests": 9, "open_connections": 1}}
    t.worker_exited(0, 101, stats(2))
    assert t.slot_view(0, []) == {"web": {"requests": 9}}
    assert t.slot_view(1, []) == {}  # slots are separate


def test_reload_with_imported_counters_counts_each_request_once():
    t = Totals()
    old, new = 200, 201
    t.exported(old, stats(50, 4))
    # until the old worker is retired it is the slot's worker: full figures, no dip
    t.committed(old, stats(50))  # the new worker imported 50
    assert t.slot_view(0, [(old, stats(50, 4), False)])["web"]["requests"] == 50
    # retired and draining: only its post-export delta (3) is its own
    view = t.slot_view(0, [(new, stats(55, 2), False), (old, stats(53, 1), True)])
    assert view["web"] == {"requests": 58, "open_connections": 3}
    t.worker_exited(0, old, stats(54))  # final heartbeat after draining
    assert t.slot_view(0, [(new, stats(55), False)])["web"]["requests"] == 59
    assert old not in t.baselines


def test_reload_whose_successor_started_fresh_keeps_the_old_totals():
    t = Totals()
    t.exported(300, stats(40, errors=5))
    t.committed(300, {"web": {"requests": 0, "errors": 5}})  # requests not imported, errors were
    view = t.slot_view(
        0, [(301, {"web": {"requests": 2, "errors": 6}}, False), (300, stats(41, errors=5), True)]
    )
    assert view["web"]["requests"] == 43  # 41 old + 2 new
    assert view["web"]["errors"] == 6  # imported: 5 counted once, +1 new
    t.worker_exited(0, 300, stats(41, errors=5))
    assert t.slot_view(0, [(301, {"web": {"requests": 2, "errors": 6}}, False)])["web"] == {
        "requests": 43,
        "errors": 6,
    }


def test_export_without_commit_leaves_the_old_worker_whole():
    """A reload aborted after the export: no successor took anything over."""
    t = Totals()
    t.exported(400, stats(10))
    t.worker_exited(0, 400, stats(12))
    assert t.slot_view(0, [])["web"]["requests"] == 12


def test_commit_without_reported_stats_assumes_import():
    t = Totals()
    t.exported(500, stats(10))
    t.committed(500, None)
    assert t.slot_view(0, [(501, stats(11), False), (500, stats(10), True)])["web"]["requests"] == 11
