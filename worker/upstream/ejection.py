"""Passive health: an endpoint whose connects keep failing is skipped for a while.

Callers log and count (their event names differ per protocol); these functions only move
the ``Health`` fields and say whether the endpoint was newly ejected."""

from __future__ import annotations

from .endpoint import Health


def record_failure(h: Health, now: float, after: int, duration: float) -> bool:
    """One failed connect; eject after ``after`` in a row (0 turns ejection off)."""
    h.failures += 1
    if after > 0 and h.failures >= after and h.ejected_until <= now:
        h.ejected_until = now + duration
        return True
    return False


def eject_now(h: Health, now: float, duration: float, enabled: bool = True) -> bool:
    """One address of a name failed while the name has others: out at once."""
    h.failures += 1
    if enabled and h.ejected_until <= now:
        h.ejected_until = now + duration
        return True
    return False


def record_success(h: Health, readmit: bool = False) -> None:
    """A connect worked: the failure run ends (``readmit`` also ends an ejection)."""
    if h.failures:
        h.failures = 0
    if readmit:
        h.ejected_until = 0.0
