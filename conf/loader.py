"""Reading config text: a file, the embedded default, or a string."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import resources

from .errors import ConfigError
from .schema import DEFAULT_SOURCE, Config
from .validate import build_config

DEFAULT_RESOURCE = "default.toml"
_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def default_config_text() -> str:
    """The embedded default config (package data of ``monolake.conf``)."""
    return resources.files(__package__).joinpath(DEFAULT_RESOURCE).read_text(encoding="utf-8")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate ``path``; ``None`` means the embedded default config, whose relative
    paths resolve from the current directory. Raises :class:`ConfigError`."""
    if path is None:
        return parse_config(default_config_text(), DEFAULT_SOURCE, base_dir=os.getcwd())
    source = os.path.abspath(os.fspath(path))
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(
            [f"{source}: expected a readable config file, found {exc.strerror or exc}"]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{source}: expected UTF-8 text, found an invalid byte at offset {exc.start}"]
        ) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>", *, base_dir: str | None = None) -> Config:
    """Parse and validate TOML ``text``. ``source`` names it in messages; relative paths resolve
    from ``base_dir``, by default the folder of ``source``."""
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source)) if not source.startswith("<") else os.getcwd()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _POSITION.search(message)
        if where:
            message = message[: where.start()].rstrip()
            place = f"line {where.group(1)}, column {where.group(2)}"
        else:
            place = "TOML"
        raise ConfigError(
            [f"{source}: {place}: expected valid TOML, found a syntax error: {message}"]
        ) from None
    return build_config(raw, source, base_dir)
