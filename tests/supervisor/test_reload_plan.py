"""The generation reload's plan (supervisor/reload.py): made from slot counts alone, so what a
reload will do can be read, and checked, without starting a process."""

from __future__ import annotations

from monolake.supervisor.reload import AwaitReady, Migrate, Retire, Settle, Spawn, Switch, plan_generation


def test_same_count_spawns_all_then_migrates_slot_by_slot():
    assert plan_generation(2, 2) == [
        Spawn(0),
        Spawn(1),
        AwaitReady(),
        Switch(),
        Migrate(0),
        Migrate(1),
        Settle(()),
    ]


def test_growing_migrates_the_new_slots_too():
    assert plan_generation(1, 3) == [
        Spawn(0),
        Spawn(1),
        Spawn(2),
        AwaitReady(),
        Switch(),
        Migrate(0),
        Migrate(1),
        Migrate(2),
        Settle(()),
    ]


def test_shrinking_retires_the_dropped_slots_after_the_migration():
    plan = plan_generation(3, 1)
    assert plan == [Spawn(0), AwaitReady(), Switch(), Migrate(0), Retire(1), Retire(2), Settle((1, 2))]


def test_nothing_serves_from_the_new_generation_before_every_worker_is_ready():
    for current, wanted in [(1, 1), (2, 5), (4, 2)]:
        plan = plan_generation(current, wanted)
        ready, switch = plan.index(AwaitReady()), plan.index(Switch())
        assert all(isinstance(s, Spawn) for s in plan[:ready])
        assert switch == ready + 1
        assert not any(isinstance(s, (Spawn, AwaitReady)) for s in plan[switch:])
        assert isinstance(plan[-1], Settle)
