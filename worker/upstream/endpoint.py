"""What every upstream endpoint is to the kit: an address, a weight, a state and counters.

``Health`` holds the state inputs of one endpoint and decides, in one place (``available``),
whether a balancer may pick it. Passive ejection (ejection.py) and an active health checker
(``set_checked``) feed it; nothing else decides eligibility.
"""

from __future__ import annotations

from typing import Protocol

UP = "up"  # eligible
DRAINING = "draining"  # DNS dropped it: in-flight work finishes, nothing new
EJECTED = "ejected"  # passive: too many failed connects, out until ``ejected_until``
UNHEALTHY = "unhealthy"  # active check: reachable but failing its check
DOWN = "down"  # active check: unreachable
DISABLED = "disabled"  # the runtime API (worker/upstream_admin.py): nothing new, operator's call
STATES = (UP, DRAINING, DISABLED, EJECTED, UNHEALTHY, DOWN)
ADMIN_STATES = ("", DRAINING, DISABLED)  # ``Health.admin``: "" = no operator override


class Endpoint(Protocol):
    """The interface balancers and operators use (HTTP ``Upstream``, Thrift ``EndpointPool``
    and ``Target``); ``priority`` (SRV, lower first) is optional."""

    weight: int

    def available(self, now: float) -> bool: ...

    def load(self) -> int: ...


class Health:
    """Failures, passive ejection, draining, active-check verdict and operator override of one
    endpoint.

    ``checked`` is None while no active checker owns the endpoint, else the checker's last
    verdict (UP, UNHEALTHY or DOWN). ``admin`` is the runtime API's state (ADMIN_STATES)."""

    __slots__ = ("admin", "checked", "draining", "ejected_until", "failures")

    def __init__(self) -> None:
        self.failures = 0
        self.ejected_until = 0.0
        self.draining = False
        self.checked: str | None = None
        self.admin = ""

    def available(self, now: float) -> bool:
        """May a balancer pick this endpoint now? The single eligibility decision."""
        return (
            self.ejected_until <= now
            and not self.draining
            and not self.admin
            and (self.checked is None or self.checked == UP)
        )

    def state(self, now: float) -> str:
        """The endpoint's state for status and logs (most severe first)."""
        if self.admin:
            return self.admin
        if self.draining:
            return DRAINING
        if self.checked is not None and self.checked != UP:
            return self.checked
        if self.ejected_until > now:
            return EJECTED
        return UP

    def set_checked(self, verdict: str | None) -> None:
        """For an active health checker: UP, UNHEALTHY, DOWN, or None to hand back."""
        if verdict not in (None, UP, UNHEALTHY, DOWN):
            raise ValueError(f"not a health verdict: {verdict!r}")
        self.checked = verdict
