"""State snapshots that cross the process boundary on a generation reload.

A server's ``export_state(fds)`` returns a picklable dict and may append file descriptors
(for example idle upstream keep-alive connections) to ``fds``; the dict refers to them by
index. The master carries both to the successor worker, whose builder receives them as a
``Snapshot`` in ``previous``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Snapshot:
    """One server's exported state, as received by the next generation."""

    data: dict
    fds: list[int] = field(default_factory=list)

    def take_fd(self, index: int) -> int:
        """Hand over ownership of one received fd (-1 if already taken or out of range)."""
        if 0 <= index < len(self.fds):
            fd, self.fds[index] = self.fds[index], -1
            return fd
        return -1

    def close_untaken(self) -> None:
        """Close every fd no importer claimed, so none leaks."""
        import os

        for i, fd in enumerate(self.fds):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                self.fds[i] = -1
