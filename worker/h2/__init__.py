"""monolake.worker.h2: HTTP/2 on libnghttp2 (cffi), as sans-I/O sessions.

The extension is optional: :func:`available` says whether it was built and loads, and why not.
Callers that need h2 (a listener with h2 on, an ``upstream_http_version = "http2"`` route) check
it once and turn a False into one log line or a config error (:func:`require`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monolake.worker.h2.settings import H2Settings, H2SettingsError

if TYPE_CHECKING:
    from monolake.worker.h2.session import H2ClientSession, H2Error, H2ServerSession

__all__ = [
    "Availability",
    "H2ClientSession",
    "H2Error",
    "H2ServerSession",
    "H2Settings",
    "H2SettingsError",
    "H2Unavailable",
    "announce",
    "available",
    "downstream_listener",
    "require",
]

INSTALL_HINT = (
    "install libnghttp2-dev (apt-get install -y libnghttp2-dev) and reinstall "
    "monolake (pip install .) to build the HTTP/2 extension"
)


class H2Unavailable(RuntimeError):
    """HTTP/2 was asked for but this build has no libnghttp2 extension."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""
    version: str = ""

    def __bool__(self) -> bool:
        return self.available


@functools.cache
def available() -> Availability:
    """Whether the libnghttp2 extension loads; ``reason`` says why not (for the one log line)."""
    try:
        from monolake.worker.h2 import _binding
    except ImportError as exc:
        return Availability(False, f"HTTP/2 unavailable: {exc}; {INSTALL_HINT}")
    except Exception as exc:
        return Availability(False, f"HTTP/2 unavailable: the extension failed to load ({exc!r})")
    return Availability(True, version=_binding.version())


_announced: list[bool] = []


def announce() -> Availability:
    """The one log line for a worker at start: ``h2_unavailable`` (warning, with the reason)
    or ``h2_available`` (debug, with the libnghttp2 version); later calls log nothing."""
    a = available()
    if not _announced:
        _announced.append(True)
        import structlog

        log = structlog.get_logger("monolake.h2")
        if a:
            log.debug("h2_available", libnghttp2=a.version)
        else:
            log.warning("h2_unavailable", reason=a.reason)
    return a


def require(where: str) -> None:
    """Raise H2Unavailable naming the config key ``where`` when h2 cannot be served."""
    a = available()
    if not a:
        raise H2Unavailable(f"{where}: {a.reason}")


def downstream_listener(server_cfg: Any) -> Any:
    """The server's h2 listener (``worker/h2/downstream.H2Listener``), or None when h2 is off
    for it: by its ``http2`` config, or because this build has no libnghttp2 (then the one
    ``h2_unavailable`` log line)."""
    cfg = getattr(server_cfg, "http2", None)
    if cfg is None:
        return None
    if not announce() or not cfg.enabled:  # announce first: the one line, even when "off"
        return None
    from monolake.worker.h2.downstream import H2Listener

    return H2Listener(cfg)


def __getattr__(name: str) -> Any:
    """Session classes load the extension lazily: importing this package never fails."""
    if name in ("H2ServerSession", "H2ClientSession", "H2Error"):
        from monolake.worker.h2 import session

        return getattr(session, name)
    raise AttributeError(name)
