"""Versioned state migration for services (Monolake's ``make_via_ref(old)`` across processes).

A service that wants something to survive a reload subclasses ``Stateful``: it names a
``state_version`` and implements ``export_state`` (picklable data; it may append dup'ed file
descriptors and refer to them by index) and ``import_state``. In-process reloads hand the live
previous instance to ``adopt`` instead, which by default round-trips through export/import.

``restore_state`` is what a factory calls in ``make(previous)``: it dispatches on what
``previous`` is and enforces the version rule (different version -> fresh start, warned).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from monolake.worker.upstream.fds import NO_FDS, FdList, FdSource

__all__ = ["NO_FDS", "Exported", "FdSource", "Stateful", "restore_state"]


@dataclass
class Exported:
    """One service's state as exported by the previous worker generation."""

    version: int
    data: Any
    fds: FdSource = NO_FDS

    def take_fd(self, index: int) -> int:
        """Claim fd ``index`` of the export (docs/services.md): the ``fds`` source decides."""
        return self.fds.take_fd(index)


class Stateful:
    """Mixin for services whose state outlives a reload. Override the three hooks."""

    state_version: ClassVar[int] = 1

    def export_state(self, fds: list[int]) -> Any:
        """Picklable state; may append dup'ed fds to ``fds`` and refer to them by index."""
        return None

    def import_state(self, data: Any, fds: FdSource) -> None:
        """Take over state exported by a previous generation (same ``state_version``)."""

    def adopt(self, previous: Any) -> None:
        """Take over the live previous instance (in-place reload); default: export + import."""
        fds = FdList()
        data = previous.export_state(fds.fds)
        try:
            self.import_state(data, fds)
        finally:
            fds.close_untaken()


def restore_state(service: Stateful, previous: Any, *, what: str = "") -> bool:
    """Let ``service`` inherit from ``previous``; returns whether anything was inherited.

    ``previous`` is None (fresh start), an ``Exported`` record (previous generation) or the
    live previous instance (in-place reload). A version or type mismatch starts fresh with a
    logged warning; an exception raised by the import itself propagates (a failed import
    must fail the reload rather than silently lose state).
    """
    if previous is None:
        return False
    log = structlog.get_logger()
    name = what or type(service).__name__
    if isinstance(previous, Exported):
        if previous.version != service.state_version:
            log.warning(
                "state_version_mismatch",
                service=name,
                exported=previous.version,
                expected=service.state_version,
                action="starting fresh",
            )
            return False
        service.import_state(previous.data, previous.fds)
        return True
    if type(previous) is not type(service):
        log.warning(
            "state_type_mismatch", service=name, previous=type(previous).__name__, action="starting fresh"
        )
        return False
    if getattr(previous, "state_version", None) != service.state_version:
        log.warning(
            "state_version_mismatch",
            service=name,
            exported=getattr(previous, "state_version", None),
            expected=service.state_version,
            action="starting fresh",
        )
        return False
    service.adopt(previous)
    return True
