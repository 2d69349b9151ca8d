"""What a server builder knows about the worker process it runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog


@dataclass(frozen=True)
class WorkerEnv:
    slot: int
    cpu: int | None
    generation: int
    pid: int
    runtime: str
    logger: Any = field(default_factory=structlog.get_logger, compare=False, repr=False)
