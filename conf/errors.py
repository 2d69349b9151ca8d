"""The validation error type and the problem collector.

Validation never stops at the first problem: a user fixing a config file wants the whole list at
once, so every check records into a :class:`Problems` and the loader raises one
:class:`ConfigError` at the end.
"""

from __future__ import annotations

import datetime
import math
from typing import Any


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one ready-to-print line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def describe(value: Any) -> str:
    """How a found value is shown in a message: TOML-like, so the user recognises their own text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    if isinstance(value, list):
        return f"an array of {len(value)}" if value else "an empty array"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return f"a date/time {value.isoformat()}"
    return repr(value)


def quote(text: str) -> str:
    """A string as shown inside a message."""
    return describe(text)


class Problems:
    """Collects ``"<source>: <key.path>: <message>"`` lines for one config source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    def expected(self, path: str, expected: str, found: Any, *, raw: bool = False, hint: str = "") -> None:
        """Record ``expected X, found Y``; ``raw`` means ``found`` is already worded."""
        shown = found if raw else describe(found)
        self.add(path, f"expected {expected}, found {shown}" + (f" ({hint})" if hint else ""))

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)
