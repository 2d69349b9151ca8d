"""Raw TOML dict -> :class:`Config`, collecting every problem before raising one ConfigError."""

from __future__ import annotations

from typing import Any

from . import addresses
from .addresses import AddressError, HostPort
from .errors import Problems
from .fields import MISSING, Table, found_with_type
from .resolver import parse_resolver
from .schema import AdminConfig, Config, RuntimeConfig, ServerConfig, SupervisorConfig
from .servers import SERVER_KEYS, TIMEOUT_ALIASES, parse_server

TOP_KEYS = ("runtime", "supervisor", "admin", "resolver", "servers")
RUNTIME_KEYS = ("runtime_type", "workers", "entries", "cpu_affinity", "busy_poll_us")
BUSY_POLL_MAX_US = 100_000  # beyond a few ms a window buys nothing but burnt CPU
RUNTIME_UNSUPPORTED = {
    "sqpoll_idle": "Monolake's SQPOLL option is not supported by monolake-python",
    "thread_pool": "Monolake's blocking thread pool is not used by monolake-python",
}
SUPERVISOR_DURATIONS = (
    "graceful_timeout",
    "drain_timeout",
    "reload_timeout",
    "heartbeat_interval",
    "heartbeat_timeout",
    "respawn_backoff_initial",
    "respawn_backoff_max",
    "flapping_window",
)
SUPERVISOR_KEYS = (
    "pid_file",
    "control_socket",
    "reload_mode",
    "flapping_threshold",
    "log_format",
    "log_level",
    "error_log",
    *SUPERVISOR_DURATIONS,
)


def build_config(raw: dict[str, Any], source: str, base_dir: str) -> Config:
    """Validate ``raw`` (a parsed TOML document); raises ConfigError listing every problem."""
    problems = Problems(source)
    top = Table(problems, "", raw, known=TOP_KEYS, base_dir=base_dir)
    runtime = _runtime(top)
    supervisor = _supervisor(top)
    admin = _admin(top)
    resolver = parse_resolver(top)
    servers = _servers(top)
    top.done()
    if servers:
        _check_listeners(problems, servers, admin)
    problems.raise_if_any()
    return Config(
        runtime=runtime, supervisor=supervisor, admin=admin, resolver=resolver, servers=servers, source=source
    )


def _runtime(top: Table) -> RuntimeConfig:
    t = top.subtable(
        "runtime", known=RUNTIME_KEYS, aliases={"worker_threads": "workers"}, rejected=RUNTIME_UNSUPPORTED
    )
    if t is None:
        return RuntimeConfig()
    runtime_type = t.enum(
        "runtime_type",
        "auto",
        ("io_uring", "legacy", "auto"),
        hints={"uring": 'io_uring is spelled "io_uring"', "epoll": 'the epoll runtime is "legacy"'},
    )
    used, workers = t.lookup("workers")
    if workers is MISSING:
        workers = "auto"
    elif not _valid_workers(workers):
        hint = "write the number without quotes" if isinstance(workers, str) and workers.isdigit() else ""
        t.expected(used, '"auto" or an integer from 1 to 4096', found_with_type(workers), raw=True, hint=hint)
        workers = "auto"
    entries = t.integer("entries", 1024, lo=8, hi=32768)
    if entries & (entries - 1):
        t.expected("entries", "a power of two from 8 to 32768", entries)
        entries = 1024
    cpu_affinity = t.boolean("cpu_affinity", True)
    busy_poll_us = t.integer("busy_poll_us", 0, lo=0, hi=BUSY_POLL_MAX_US, unit="of microseconds")
    t.done()
    return RuntimeConfig(
        runtime_type=runtime_type,
        workers=workers,
        entries=entries,
        cpu_affinity=cpu_affinity,
        busy_poll_us=busy_poll_us,
    )


def _valid_workers(value: Any) -> bool:
    if value == "auto" and isinstance(value, str):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096


def _supervisor(top: Table) -> SupervisorConfig:
    t = top.subtable("supervisor", known=SUPERVISOR_KEYS)
    defaults = SupervisorConfig()
    if t is None:
        return defaults
    pid_file = t.path_value("pid_file", "", allow_empty=True, check="parent")
    control_socket = t.path_value("control_socket", defaults.control_socket, check="parent")
    if "control_socket" in t.raw and isinstance(t.raw["control_socket"], str) and t.raw["control_socket"]:
        try:
            addresses.check_unix_path(control_socket, parent_must_exist=False)
        except AddressError as exc:
            t.expected("control_socket", str(exc), t.raw["control_socket"])
    durations = {k: t.duration(k, getattr(defaults, k)) for k in SUPERVISOR_DURATIONS}
    if durations["respawn_backoff_max"] < durations["respawn_backoff_initial"]:
        t.expected(
            "respawn_backoff_max",
            f"a duration >= respawn_backoff_initial ({durations['respawn_backoff_initial']:g})",
            durations["respawn_backoff_max"],
        )
    if durations["heartbeat_timeout"] <= durations["heartbeat_interval"]:
        t.expected(
            "heartbeat_timeout",
            f"a duration > heartbeat_interval ({durations['heartbeat_interval']:g})",
            durations["heartbeat_timeout"],
        )
    config = SupervisorConfig(
        pid_file=pid_file,
        control_socket=control_socket,
        reload_mode=t.enum(
            "reload_mode", "generation", ("generation", "in_place"), hints={"in-place": 'spelled "in_place"'}
        ),
        flapping_threshold=t.integer("flapping_threshold", 5, lo=1),
        log_format=t.enum("log_format", "auto", ("auto", "json", "console")),
        log_level=t.enum(
            "log_level", "info", ("debug", "info", "warning", "error"), hints={"warn": 'spelled "warning"'}
        ),
        error_log=t.path_value("error_log", "", allow_empty=True, check="parent"),
        **durations,
    )
    t.done()
    return config


def _admin(top: Table) -> AdminConfig:
    t = top.subtable("admin", known=("listen",))
    if t is None:
        return AdminConfig()
    listen = t.string("listen", "")
    t.done()
    if not listen:
        return AdminConfig()
    try:
        hp = addresses.parse_host_port(listen)
    except AddressError as exc:
        t.expected("listen", f'{exc} (or "" for no admin listener)', listen)
        return AdminConfig()
    return AdminConfig(listen=listen, host=hp.host, port=hp.port)


def _servers(top: Table) -> dict[str, ServerConfig]:
    _, value = top.lookup("servers")
    if value is MISSING or not isinstance(value, dict) or not value:
        found = "none" if value is MISSING or value == {} else found_with_type(value)
        top.problems.add("servers", f"expected at least one [servers.NAME] table, found {found}")
        return {}
    servers: dict[str, ServerConfig] = {}
    names: dict[str, str] = {}
    for table_name, raw in value.items():
        path = f"servers.{table_name}"
        if not isinstance(raw, dict):
            top.problems.expected(path, "a [servers.NAME] table", found_with_type(raw), raw=True)
            continue
        t = Table(top.problems, path, raw, known=SERVER_KEYS, aliases=TIMEOUT_ALIASES, base_dir=top.base_dir)
        server = parse_server(table_name, t)
        if server is None:
            continue
        if server.name in names:
            top.problems.add(
                f"{path}.name",
                f"expected a server name no other server uses, found "
                f'"{server.name}", also the name of servers.{names[server.name]}',
            )
        names[server.name] = table_name
        servers[table_name] = server
    return servers


def _check_listeners(problems: Problems, servers: dict[str, ServerConfig], admin: AdminConfig) -> None:
    """Two servers (or a server and the admin listener) may not share an address."""
    seen: list[tuple[str, HostPort | str]] = []
    if admin.listen:
        seen.append(("admin.listen", HostPort(admin.host, admin.port)))
    for table_name, server in servers.items():
        key = f"servers.{table_name}.listener.value"
        lst = server.listener
        mine: HostPort | str = HostPort(lst.host, lst.port) if lst.type == "socket" else lst.path
        for other_key, other in seen:
            clash = (
                (mine == other)
                if isinstance(mine, str) or isinstance(other, str)
                else addresses.overlaps(mine, other)
            )
            if clash:
                problems.add(
                    key,
                    f'expected an address no other listener uses, found "{lst.value}", '
                    f"which overlaps {other_key} ({other})",
                )
                break
        seen.append((key, mine))
