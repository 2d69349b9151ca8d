"""One endpoint's health as this worker's checks see it."""

from __future__ import annotations


class EndpointHealth:
    """Consecutive results against ``rise``/``fall``, and counters for status and metrics.

    An endpoint starts healthy (it was configured, or DNS just published it) and its first
    check runs at once: a failing first check takes it out immediately, without waiting for
    ``fall`` results, so a dead new address costs at most one check timeout."""

    __slots__ = (
        "checked",
        "checks_failed",
        "checks_ok",
        "failures",
        "healthy",
        "in_flight",
        "last_error",
        "next_due",
        "successes",
    )

    def __init__(self, due: float) -> None:
        self.healthy = True
        self.checked = False
        self.successes = 0
        self.failures = 0
        self.checks_ok = 0
        self.checks_failed = 0
        self.last_error = ""
        self.in_flight = False
        self.next_due = due

    def record(self, error: str | None, rise: int, fall: int) -> bool:
        """One check's outcome (``None`` = passed); True when ``healthy`` flipped."""
        first, self.checked = not self.checked, True
        if error is None:
            self.checks_ok += 1
            self.successes += 1
            self.failures = 0
            if not self.healthy and self.successes >= rise:
                self.healthy = True
                return True
            return False
        self.checks_failed += 1
        self.last_error = error
        self.failures += 1
        self.successes = 0
        if self.healthy and (first or self.failures >= fall):
            self.healthy = False
            return True
        return False
