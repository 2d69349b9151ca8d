"""Structured logging for the master and the workers (structlog).

JSON lines when the output is not a terminal (production, systemd, tests), readable console
lines on a terminal. Every line names its process: ``proc="master"`` or ``proc="worker"`` with
``slot`` and ``pid``. The level can change at run time (``monolaked log-level``) and the
output file can be reopened (SIGUSR1, for logrotate).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Output:
    """The stream log lines go to; a file path can be reopened in place."""

    def __init__(self) -> None:
        self.path: str = ""
        self.stream: IO[str] = sys.stderr

    def open(self, path: str) -> None:
        self.path = path
        self.reopen()

    def reopen(self) -> None:
        if not self.path:
            self.stream = sys.stderr
            return
        old = self.stream
        # held for the process's life (until the next reopen): no context manager
        self.stream = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        if old is not sys.stderr:
            old.close()

    def write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or a closed stream must never take a server down


_output = _Output()
_level = [logging.INFO]


class _Printer:
    """structlog's final stage: writes the rendered line to the current output."""

    def msg(self, line: str) -> None:
        _output.write(line)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _filter_level(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if LEVELS.get(method if method != "warn" else "warning", logging.CRITICAL) < _level[0] and method not in (
        "critical",
        "exception",
        "fatal",
    ):
        raise structlog.DropEvent
    return event


def configure(fmt: str = "auto", level: str = "info", path: str = "", **context: Any) -> None:
    """Set up structlog for this process; ``context`` (proc, slot, pid...) goes on every line."""
    set_level(level)
    _output.open(path)
    if fmt == "auto":
        fmt = "console" if (not path and sys.stderr.isatty()) else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty() and not path)
    structlog.configure(
        processors=[
            _filter_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=lambda *a: _Printer(),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)


def set_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    _level[0] = LEVELS[level]


def reopen() -> None:
    """Reopen the log file (after logrotate moved it)."""
    _output.reopen()


def output_fd() -> int:
    """The fd log lines go to (for faulthandler's stack dumps)."""
    try:
        return _output.stream.fileno()
    except (OSError, ValueError, AttributeError):
        return 2


def bind(**context: Any) -> None:
    structlog.contextvars.bind_contextvars(**context)
