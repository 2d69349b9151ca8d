"""Every master <-> worker control message, typed, with its encoding and validation.

One place so that both ends agree: the master sends and reads these dataclasses, the worker
too (it imports this module as it imports ``channel``: neither holds service code). On the
wire a message is the JSON object ``{"type": KIND, "v": PROTOCOL_VERSION, <fields>}``;
``channel`` frames it and carries its fds (and adds ``nfds``, which ``decode`` drops: the fds
come back beside the message).

``decode`` refuses (``MessageError``) an unknown kind, another protocol version, a missing or
an extra field and a field of the wrong type; a receiver logs the refusal and serves on.

Adding a message: one class below, decorated with ``@to_worker`` or ``@to_master`` (which make
it a frozen dataclass), each
field declared with ``doc(...)``; then the handler at the other end, and
``python -m monolake.supervisor.messages`` to regenerate the table in docs/contracts.md
(tests/supervisor/test_messages.py fails until it matches).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

PROTOCOL_VERSION = 1
VERSION_KEY = "v"
CHANNEL_KEYS = ("nfds",)  # added and checked by ``channel``, not part of a message

M = TypeVar("M", bound="Message")


class MessageError(ValueError):
    """A frame that is not a valid message for this end: refused, never acted on."""


@dataclass(frozen=True)
class Message:
    """Base of every control message; ``KIND`` is its wire ``type``."""

    KIND: ClassVar[str] = ""
    DIRECTION: ClassVar[str] = ""


TO_WORKER: dict[str, type[Message]] = {}
TO_MASTER: dict[str, type[Message]] = {}
_HINTS: dict[type[Message], dict[str, Any]] = {}


def doc(text: str, default: Any = dataclasses.MISSING) -> Any:
    """A message field and what it means (the docs table is made from these)."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


def _register(
    registry: dict[str, type[Message]], direction: str, kind: str
) -> typing.Callable[[type[M]], type[M]]:
    def add(cls: type[M]) -> type[M]:
        if kind in registry:
            raise TypeError(f"two {direction} messages of kind {kind!r}")
        cls = dataclass(frozen=True)(cls)
        cls.KIND = kind
        cls.DIRECTION = direction
        registry[kind] = cls
        _HINTS[cls] = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        return cls

    return add


# Every message is a frozen dataclass: the two decorators below make it one and register it.
@typing.dataclass_transform(frozen_default=True, field_specifiers=(doc,))
def to_worker(kind: str) -> typing.Callable[[type[M]], type[M]]:
    """Register a master -> worker message (a frozen dataclass)."""
    return _register(TO_WORKER, "m -> w", kind)


@typing.dataclass_transform(frozen_default=True, field_specifiers=(doc,))
def to_master(kind: str) -> typing.Callable[[type[M]], type[M]]:
    """Register a worker -> master message (a frozen dataclass)."""
    return _register(TO_MASTER, "w -> m", kind)


# ----- master -> worker -------------------------------------------------------------------

Stats = dict[str, int]
ServerStats = dict[str, Stats]
FdIndexes = dict[str, list[int]]  # server name -> indexes into the message's fds


@to_worker("hello")
class Hello(Message):
    """The first message: who the worker is and what it serves."""

    slot: int = doc("the slot (and its sockets) it serves")
    cpu: int | None = doc("the CPU to pin to, null for none")
    generation: int = doc("the config generation")
    config: dict[str, Any] = doc("`Config.to_dict()`")
    listeners: FdIndexes = doc("server name -> indexes into the fds")
    accept: bool = doc("start accepting at once (false: a reload's worker, waits for `commit`)")
    upstream_overrides: list[dict[str, Any]] = doc(
        "runtime upstream changes still held, applied before the stacks are built: overrides "
        "(`server`, `address`, `state`, `weight`, `fp`) and edits (`edit` = `add` or `remove`, "
        "`server`, `route`, `address`, `uri`, `weight`, `fp`); supervisor/upstreams_api.py",
        default=(),
    )


@to_worker("drain")
class Drain(Message):
    """Retire: stop accepting, drain, exit 0."""

    timeout: float = doc("seconds before open connections are closed")


@to_worker("stop")
class Stop(Drain):
    """Graceful stop of the whole daemon (like `drain`)."""


@to_worker("export")
class Export(Message):
    """Stop accepting and reply `state`."""


@to_worker("commit")
class Commit(Message):
    """A reload's new worker: import the state, start accepting, reply `committed`."""

    state: str | None = doc("the `state` blob of the old worker, or null")


@to_worker("abort")
class Abort(Message):
    """A reload's new worker that will not be committed: exit now."""


@to_worker("log_level")
class LogLevel(Message):
    """`monolaked log-level`."""

    level: str = doc("the new level")


@to_worker("cover")
class Cover(Message):
    """Also accept on the sockets of a slot that has no live worker."""

    slot: int = doc("the slot covered")
    listeners: FdIndexes = doc("server name -> indexes into the fds")


@to_worker("uncover")
class Uncover(Message):
    """Stop accepting on a covered slot's sockets."""

    slot: int = doc("the slot no longer covered")


@to_worker("reconfigure")
class Reconfigure(Message):
    """In-place reload: build staged stacks from the live ones, reply `reconfigured`."""

    config: dict[str, Any] = doc("`Config.to_dict()` of the new config")


@to_worker("reconfigure_commit")
class ReconfigureCommit(Message):
    """New connections get the staged stacks."""


@to_worker("rollback")
class Rollback(Message):
    """Drop the staged stacks (`discard()`, `aclose()`); the live ones serve on as they were."""


@to_worker("debug")
class DebugRequest(Message):
    """`monolaked debug`: reply `debug`."""

    collect: bool = doc("run a full collection first")


# ----- worker -> master -------------------------------------------------------------------


@to_master("ready")
class Ready(Message):
    """Built (and accepting, unless hello said not to)."""

    runtime: str = doc("the event loop: io_uring, uvloop or asyncio")
    servers: dict[str, list[str]] = doc("server name -> bound addresses")


@to_master("failed")
class Failed(Message):
    """Could not start, or a control message failed."""

    reason: str = doc("what went wrong")


@to_master("heartbeat")
class Heartbeat(Message):
    """Every `heartbeat_interval`; also the last message before a drained worker exits."""

    lag: float = doc("seconds the event loop was late")
    stats: Stats = doc("counters summed over servers")
    servers: ServerStats = doc("per-server counters")
    accepting: bool = doc("accepting new connections")
    draining: bool = doc("draining")
    health: list[dict[str, Any]] = doc(
        "active health checks: one row per (server, route, upstream), see worker/health/group.py"
    )
    upstreams: list[dict[str, Any]] = doc(
        "every endpoint with its state, DNS-found ones included: one row per (server, route, "
        "address), see worker/upstream_routes.py",
        default=(),
    )


@to_master("state")
class State(Message):
    """Reply to `export`; the worker then waits for `drain`. Its fds: every server's, one
    after another."""

    state: str | None = doc(
        "base64 pickle of {server: {`data`: export_state(), `nfds`}}, or null when nothing could be carried"
    )
    servers: ServerStats = doc("per-server counters at the export (counter accounting)")
    errors: list[str] = doc("exports that raised, state that could not be pickled or sent")


@to_master("committed")
class Committed(Message):
    """Reply to `commit`."""

    servers: ServerStats = doc("per-server counters right after the import")
    state_error: str = doc('why the import failed, "" when it worked')


@to_master("reconfigured")
class Reconfigured(Message):
    """Reply to `reconfigure`."""

    ok: bool = doc("the staged stacks are built")
    reason: str = doc('why not (the worker already dropped what it staged), "" when ok')


@to_master("debug")
class DebugReport(Message):
    """Reply to `debug`."""

    report: dict[str, Any] = doc(
        "`rss`, `fds`, `timers`, `busy_poll_us`, `tasks`, `objects`, `collected`, "
        "`gc_counts`, `handles`, `types`, `allocations` (worker/introspect.py)"
    )


@to_worker("upstreams")
class Upstreams(Message):
    """A runtime upstream command (`monolaked upstreams ...`), answered by `upstreams_result`."""

    id: int = doc("matches the answer to the command")
    op: str = doc("`list`, `drain`, `disable`, `enable`, `weight`, `add` or `remove`")
    server: str = doc("the server's name (not for `list`)", default="")
    address: str = doc("the upstream's `ADDRESS:PORT` (not for `list`)", default="")
    fp: str = doc(
        "the fingerprint of the config the change depends on (kept until it changes; "
        "supervisor/upstream_rules.py)",
        default="",
    )
    weight: int | None = doc("the new weight (`weight`; `add`: the endpoint's)", default=None)
    route: str = doc("`add`, `remove`: the route's pattern", default="")
    uri: str = doc("`add`, `remove`: the endpoint (`http[s]://IP:PORT[/path]`, thrift `IP:PORT`)", default="")


@to_master("upstreams_result")
class UpstreamsResult(Message):
    """A worker's answer to `upstreams`."""

    id: int = doc("the command's `id`")
    ok: bool = doc("applied (or listed)")
    error: str | None = doc("why not, when not ok", default=None)
    applied: int | None = doc("how many balancer entries (`add`, `remove`: routes) changed", default=None)
    rows: list[dict[str, Any]] | None = doc(
        "`list`: one row per upstream (worker/upstream_admin.py)", default=None
    )


def as_dict(message: Message) -> dict[str, Any]:
    """The fields that are set (not None), for code that reads a message as a mapping."""
    return {k: v for k, v in encode(message).items() if v is not None}


# ----- encoding and validation ------------------------------------------------------------


def encode(message: Message) -> dict[str, Any]:
    """The JSON object ``channel`` sends for ``message``."""
    out: dict[str, Any] = {"type": message.KIND, VERSION_KEY: PROTOCOL_VERSION}
    for f in dataclasses.fields(message):
        out[f.name] = getattr(message, f.name)
    return out


def decode(registry: dict[str, type[Message]], raw: dict[str, Any]) -> Message:
    """The message ``raw`` (what ``channel`` read) is, if it is a valid one for the end that
    reads from ``registry`` (``TO_WORKER`` or ``TO_MASTER``); else ``MessageError``."""
    kind = raw.get("type")
    cls = registry.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {kind!r}")
    version = raw.get(VERSION_KEY)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MessageError(f"{kind}: protocol version {version!r}, expected {PROTOCOL_VERSION}")
    hints = _HINTS[cls]
    given = {k: v for k, v in raw.items() if k not in ("type", VERSION_KEY, *CHANNEL_KEYS)}
    extra = sorted(set(given) - set(hints))
    if extra:
        raise MessageError(f"{kind}: unexpected fields {extra}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in given:
            if f.default is not dataclasses.MISSING:
                continue
            raise MessageError(f"{kind}: missing field {f.name!r}")
        values[f.name] = _check(given[f.name], hints[f.name], f"{kind}.{f.name}")
    return cls(**values)


def _check(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it is of type ``hint`` (ints pass as floats, as JSON has one number)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(value, option, where)
            except MessageError:
                continue
        raise MessageError(f"{where}: {value!r:.80} is not {_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is dict:
        key_type, value_type = typing.get_args(hint)
        if isinstance(value, dict):
            return {
                _check(k, key_type, where): _check(v, value_type, f"{where}[{k!r}]") for k, v in value.items()
            }
    elif origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, list):
            return [_check(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint in (int, str, bool):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
    else:
        raise TypeError(f"{where}: message fields cannot be {hint!r}")
    raise MessageError(f"{where}: {value!r:.80} is not {_name(hint)}")


def _name(hint: Any) -> str:
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return str(hint.__name__)
    return str(hint).replace("typing.", "")


# ----- the table in docs/contracts.md -----------------------------------------------------


def doc_table() -> str:
    """The message table of docs/contracts.md, made from the classes above."""
    lines = ["| direction | type | class | fields |", "|---|---|---|---|"]
    for registry in (TO_WORKER, TO_MASTER):
        for kind, cls in registry.items():
            fields = "; ".join(
                f"`{f.name}` ({_name(_HINTS[cls][f.name]).replace('|', 'or')}): {f.metadata['doc']}"
                for f in dataclasses.fields(cls)
            )
            what = (cls.__doc__ or "").split("\n\n")[0].replace("\n   ", "").replace("  ", " ")
            lines.append(
                f"| {cls.DIRECTION} | `{kind}` | `{cls.__name__}` | {what.strip()}"
                f"{' Fields: ' + fields if fields else ''} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(doc_table())
