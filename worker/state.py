"""State snapshots that cross the process boundary on a generation reload.

A server's ``export_state(fds)`` returns a picklable dict and may append file descriptors
(for example idle upstream keep-alive connections) to ``fds``; the dict refers to them by
index. The master carries both to the successor worker, whose builder receives them as a
``Snapshot`` in ``previous``: its fds are claimed with ``take_fd`` (the kit's ``FdList``,
worker/upstream/fds.py) and the rest closed with ``close_untaken``.
"""

from __future__ import annotations

from typing import Any

from monolake.worker.upstream.fds import FdList


class Snapshot(FdList):
    """One server's exported state, as received by the next generation."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any], fds: list[int] | None = None) -> None:
        super().__init__(fds)
        self.data = data
