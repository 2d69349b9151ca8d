"""Typed reads from one raw TOML table, recording a problem (and falling back to the default)
instead of raising, so that validation can go on and report everything at once."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .errors import Problems, describe, quote

MISSING: Any = object()
# The type of a typed read's `default`: a read returns the value it checked, or that default.
D = TypeVar("D")


# What a value is called in an error message, in the order isinstance must test them (bool is
# an int): (type, its TOML name, its JSON name). The config's errors speak TOML; the Thrift
# gateway's JSON mapping (worker/thrift/jsonmap.py) speaks JSON.
_TYPE_NAMES: tuple[tuple[type, str, str], ...] = (
    (bool, "a boolean", "a boolean"),
    (int, "an integer", "an integer"),
    (float, "a float", "a number"),
    (str, "a string", "a string"),
    (dict, "a table", "an object"),
    (list, "an array", "an array"),
)


def type_name(value: Any, *, json: bool = False) -> str:
    """The TOML (or, with ``json``, the JSON) type of a value, for "found a string" style wording."""
    if json and value is None:
        return "null"
    for kind, toml_name, json_name in _TYPE_NAMES:
        if isinstance(value, kind):
            return json_name if json else toml_name
    return type(value).__name__ if json else "a date/time"


def found_with_type(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return describe(value)
    return f"{type_name(value)} {describe(value)}"


def suggest(key: str, known: Iterable[str]) -> str:
    """``did you mean "x"?`` for the closest known key, or an empty string."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"did you mean {quote(close[0])}?" if close else ""


def one_of(choices: Iterable[str]) -> str:
    items = [quote(c) for c in choices]
    if len(items) <= 2:
        return " or ".join(items)
    return "one of " + ", ".join(items[:-1]) + " or " + items[-1]


class Table:
    """A raw table with its key path; call :meth:`done` last to report unknown keys."""

    def __init__(
        self,
        problems: Problems,
        path: str,
        raw: Mapping[str, Any],
        *,
        known: Iterable[str],
        aliases: Mapping[str, str] | None = None,
        rejected: Mapping[str, str] | None = None,
        base_dir: str = ".",
    ) -> None:
        self.problems = problems
        self.rejected = dict(rejected or {})
        self.path = path
        self.raw = raw
        self.known = tuple(known)
        self.aliases = dict(aliases or {})
        self.base_dir = base_dir

    # -- key bookkeeping -------------------------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def expected(self, name: str, expected: str, found: Any, *, raw: bool = False, hint: str = "") -> None:
        self.problems.expected(self.key(name), expected, found, raw=raw, hint=hint)

    def lookup(self, name: str) -> tuple[str, Any]:
        """(the key actually used, its value) for ``name`` or one of its aliases; MISSING if none.

        Giving an alias together with the canonical key (or two aliases) is a problem: which one
        should win is exactly the kind of guess a config loader must not make.
        """
        if name in self.rejected:
            return name, MISSING
        given = [k for k in (name, *[a for a, c in self.aliases.items() if c == name]) if k in self.raw]
        if not given:
            return name, MISSING
        if len(given) > 1:
            self.problems.add(
                self.key(given[1]),
                f"expected either {quote(given[0])} or its alias {quote(given[1])}, found both"
                if given[0] == name
                else f"expected one of {quote(name)}'s aliases {' / '.join(quote(g) for g in given)}, "
                f"found both",
            )
        return given[0], self.raw[given[0]]

    def done(self) -> None:
        """Report every key that is neither known nor an alias, with the closest known key."""
        names = list(self.known) + list(self.aliases)
        for name, value in self.raw.items():
            if name in self.rejected:
                self.problems.add(
                    self.key(name),
                    f"expected no {quote(name)} key here ({self.rejected[name]}), found {describe(value)}",
                )
                continue
            if name in self.known or name in self.aliases:
                continue
            hint = suggest(name, names)
            self.problems.add(
                self.key(name),
                f"expected one of the known keys ({', '.join(self.known)}), "
                f"found unknown key {quote(name)}" + (f" ({hint})" if hint else ""),
            )

    # -- typed reads -----------------------------------------------------------------------------
    def _read(self, name: str, what: str, *, required: bool = False) -> tuple[str, Any]:
        """``lookup``, reporting a key that is ``required`` but missing (expected ``what``)."""
        used, value = self.lookup(name)
        if value is MISSING and required:
            self.problems.add(self.key(name), f"expected {what}, found nothing (the key is required)")
        return used, value

    def _read_as(self, name: str, kind: type, what: str, *, required: bool = False) -> tuple[str, Any]:
        """``_read``; a value that is not a ``kind`` is reported (expected ``what``) and read as
        MISSING."""
        used, value = self._read(name, what, required=required)
        if value is not MISSING and not isinstance(value, kind):
            self.expected(used, what, found_with_type(value), raw=True)
            return used, MISSING
        return used, value

    def get(self, name: str, default: Any = MISSING, *, required: bool = False, what: str = "a value") -> Any:
        _, value = self._read(name, what, required=required)
        return default if value is MISSING else value

    def string(
        self, name: str, default: D = MISSING, *, required: bool = False, allow_empty: bool = True
    ) -> str | D:
        used, value = self._read_as(name, str, "a string", required=required)
        if value is MISSING:
            return default
        if not allow_empty and not value:
            self.expected(used, "a non-empty string", value)
            return default
        text: str = value  # _read_as checked it
        return text

    def boolean(self, name: str, default: bool) -> bool:
        used, value = self.lookup(name)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            hint = "write true or false without quotes" if value in ("true", "false") else ""
            self.expected(used, "true or false", found_with_type(value), raw=True, hint=hint)
            return default
        return value

    def integer(
        self, name: str, default: int, *, lo: int | None = None, hi: int | None = None, unit: str = ""
    ) -> int:
        used, value = self.lookup(name)
        if value is MISSING:
            return default
        expected = _int_range(lo, hi, unit)
        if isinstance(value, bool) or not isinstance(value, int):
            hint = (
                "write the number without quotes"
                if isinstance(value, str) and value.strip().isdigit()
                else ""
            )
            self.expected(used, expected, found_with_type(value), raw=True, hint=hint)
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.expected(used, expected, value)
            return default
        return value

    def duration(self, name: str, default: float, *, table: Table | None = None) -> float:
        """A duration in seconds: an int or float, finite and > 0."""
        used, value = self.lookup(name)
        if value is MISSING:
            return float(default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = (
                "durations are plain numbers of seconds, without unit or quotes"
                if isinstance(value, str)
                else ""
            )
            self.expected(
                used, "a duration in seconds (a number > 0)", found_with_type(value), raw=True, hint=hint
            )
            return float(default)
        if not math.isfinite(value) or value <= 0:
            self.expected(used, "a duration in seconds (a number > 0)", value)
            return float(default)
        return float(value)

    def enum(
        self,
        name: str,
        default: D,
        choices: Iterable[str],
        *,
        required: bool = False,
        hints: Mapping[str, str] | None = None,
    ) -> str | D:
        choices = tuple(choices)
        used, value = self._read(name, one_of(choices), required=required)
        if value is MISSING:
            return default
        if not isinstance(value, str) or value not in choices:
            hint = (hints or {}).get(value, "") if isinstance(value, str) else ""
            if not isinstance(value, (str, bool, dict, list)) and str(value) in choices:
                hint = f"quote it: {quote(str(value))}"
            if not hint and isinstance(value, str):
                close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
                hint = f"did you mean {quote(close[0])}?" if close else ""
            shown = describe(value) if isinstance(value, str) else found_with_type(value)
            self.expected(used, one_of(choices), shown, raw=True, hint=hint)
            return default
        return value

    def path_value(
        self,
        name: str,
        default: D = MISSING,
        *,
        required: bool = False,
        allow_empty: bool = False,
        check: str = "",
    ) -> str | D:
        """A filesystem path, resolved from the config file's folder.

        ``check``: ``"file"`` (must be an existing readable file), ``"parent"`` (its folder must
        exist: the file is created later), or ``""``.
        """
        used, value = self._read(name, "a path", required=required)
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self.expected(used, "a path (a string)", found_with_type(value), raw=True)
            return default
        if value == "":
            if allow_empty:
                return ""
            self.expected(used, "a non-empty path", value)
            return default
        resolved = resolve_path(value, self.base_dir)
        if check == "file" and not check_file(self.problems, self.key(used), value, resolved):
            return resolved
        if check == "parent":
            check_parent(self.problems, self.key(used), value, resolved)
        return resolved

    def subtable(
        self,
        name: str,
        *,
        known: Iterable[str],
        aliases: Mapping[str, str] | None = None,
        rejected: Mapping[str, str] | None = None,
        required: bool = False,
    ) -> Table | None:
        used, value = self._read_as(name, dict, "a table", required=required)
        if value is MISSING:
            return None
        return Table(
            self.problems,
            self.key(used),
            value,
            known=known,
            aliases=aliases,
            rejected=rejected,
            base_dir=self.base_dir,
        )

    def array_tables(
        self, used: str, value: list[Any], what: str, *, known: Iterable[str]
    ) -> Iterator[Table]:
        """The items of the array ``value`` (at key ``used``) as tables with ``known`` keys, in
        order; an item that is not a table is reported (expected ``what``) and skipped."""
        for i, item in enumerate(value):
            path = f"{self.key(used)}[{i}]"
            if not isinstance(item, dict):
                self.problems.expected(path, what, found_with_type(item), raw=True)
                continue
            yield self.child(path, item, known=known)

    def child(
        self,
        path: str,
        raw: Mapping[str, Any],
        *,
        known: Iterable[str],
        aliases: Mapping[str, str] | None = None,
        rejected: Mapping[str, str] | None = None,
    ) -> Table:
        """A table found elsewhere (an array item), sharing problems and base folder."""
        return Table(
            self.problems, path, raw, known=known, aliases=aliases, rejected=rejected, base_dir=self.base_dir
        )


def _int_range(lo: int | None, hi: int | None, unit: str) -> str:
    unit = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        return f"an integer{unit} from {lo} to {hi}"
    if lo is not None:
        return f"an integer{unit} >= {lo}"
    if hi is not None:
        return f"an integer{unit} <= {hi}"
    return f"an integer{unit}"


def resolve_path(value: str, base_dir: str) -> str:
    """``~`` expanded, then relative paths joined to the config file's folder, normalised."""
    expanded = os.path.expanduser(value)
    if not os.path.isabs(expanded):
        expanded = os.path.join(base_dir, expanded)
    return os.path.normpath(expanded)


def shown_path(value: str, resolved: str) -> str:
    return describe(value) if value == resolved else f"{describe(value)} (= {resolved})"


def check_file(problems: Problems, key: str, value: str, resolved: str) -> bool:
    """True when ``resolved`` is an existing, readable regular file; else record why not."""
    try:
        with open(resolved, "rb"):
            pass
    except FileNotFoundError:
        problems.expected(
            key, "an existing file", f"{shown_path(value, resolved)}, which does not exist", raw=True
        )
        return False
    except IsADirectoryError:
        problems.expected(key, "a file", f"{shown_path(value, resolved)}, which is a directory", raw=True)
        return False
    except OSError as exc:
        problems.expected(
            key, "a readable file", f"{shown_path(value, resolved)} ({exc.strerror or exc})", raw=True
        )
        return False
    if not os.path.isfile(resolved):
        problems.expected(key, "a regular file", f"{shown_path(value, resolved)}", raw=True)
        return False
    return True


def check_parent(problems: Problems, key: str, value: str, resolved: str) -> bool:
    """True when the folder that will hold ``resolved`` exists."""
    parent = os.path.dirname(resolved) or "."
    if not os.path.isdir(parent):
        problems.expected(
            key,
            "a path in an existing folder",
            f"{shown_path(value, resolved)}, whose folder {parent} does not exist",
            raw=True,
        )
        return False
    return True
