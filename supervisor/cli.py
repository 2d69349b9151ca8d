"""``monolaked``: start the master, or talk to a running one over its control socket."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from monolake.supervisor import logs
from monolake.supervisor.status import render_status

if TYPE_CHECKING:
    from monolake.conf.schema import Config

STATE_NOT_MIGRATED = 3  # `reload`: the new generation serves, without the old one's state
# names the control socket for scripts and containers, where passing a flag to every command
# (or shipping the config file next to them) is awkward; --control-socket still wins
CONTROL_SOCKET_ENV = "MONOLAKE_CONTROL_SOCKET"


def _load(path: str | None) -> Config:
    from monolake.conf import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        sys.stderr.write(f"monolaked: invalid configuration:\n{exc}\n")
        raise SystemExit(1) from None
    except OSError as exc:
        sys.stderr.write(f"monolaked: cannot read configuration: {exc}\n")
        raise SystemExit(1) from None


def _env_control_socket() -> str | None:
    """``$MONOLAKE_CONTROL_SOCKET`` made absolute (``start --daemon`` leaves the working
    directory), or None when it is unset or empty."""
    path = os.environ.get(CONTROL_SOCKET_ENV)
    return os.path.abspath(path) if path else None


def _control_path(args: argparse.Namespace) -> str:
    """The control socket: ``--control-socket``, else ``$MONOLAKE_CONTROL_SOCKET``, else the
    config's, else the default. A config that no longer validates (the user is mid-edit and
    about to ``reload``) still names it: read that one key leniently."""
    from monolake.conf import ConfigError, load_config

    if args.control_socket:
        return str(args.control_socket)
    if (from_env := _env_control_socket()) is not None:
        return from_env
    try:
        return load_config(args.config).supervisor.control_socket
    except (ConfigError, OSError):
        if not args.config:
            raise
    import tomllib

    try:
        with open(args.config, "rb") as f:
            raw = tomllib.load(f)
        path = raw["supervisor"]["control_socket"]
        if isinstance(path, str) and path:
            return os.path.join(os.path.dirname(os.path.abspath(args.config)), path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return load_config(None).supervisor.control_socket


def _request(args: argparse.Namespace, message: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    from monolake.supervisor.control import request

    path = _control_path(args)
    try:
        return request(path, message, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        sys.stderr.write(f"monolaked: no master is running (nothing answers on {path})\n")
        raise SystemExit(2) from None
    except OSError as exc:
        sys.stderr.write(f"monolaked: cannot reach the master on {path}: {exc}\n")
        raise SystemExit(2) from None


def _answer(
    args: argparse.Namespace, message: dict[str, Any], kind: str, timeout: float = 30.0, what: str = ""
) -> dict[str, Any] | None:
    """The master's reply to ``message`` (without its ``type``) when it is a ``kind``; else
    None, the master's error written to stderr (after ``what``)."""
    reply = _request(args, message, timeout=timeout)
    if reply.get("type") != kind:
        sys.stderr.write(f"monolaked: {what}{reply.get('error', reply)}\n")
        return None
    reply.pop("type", None)
    return reply


def cmd_start(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if (from_env := _env_control_socket()) is not None:
        # the master listens where the other commands, run with the same environment, look
        config = dataclasses.replace(
            config, supervisor=dataclasses.replace(config.supervisor, control_socket=from_env)
        )
    if args.workers is not None and args.workers < 1:
        sys.stderr.write("monolaked: --workers must be at least 1\n")
        return 1
    config_path = os.path.abspath(args.config) if args.config else None
    if args.daemon:
        from monolake.supervisor.daemon import daemonize

        report = daemonize()
    else:
        report = None
    sup = config.supervisor
    logs.configure(sup.log_format, sup.log_level, sup.error_log, proc="master", pid=os.getpid())
    from monolake.supervisor.master import Master

    master = Master(config, config_path, workers=args.workers, pid_file=args.pid_file)
    return asyncio.run(master.run(started=report))


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"configuration {args.config or '(embedded default)'} is valid")
    print(config.summary())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reply = _answer(args, {"type": "status"}, "status")
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        print(render_status(reply))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    import time

    status = _request(args, {"type": "status"}, timeout=30)
    pid = int(status.get("master", {}).get("pid", 0))
    if _answer(args, {"type": "stop", "fast": args.fast}, "ok") is None:
        return 1
    if args.no_wait or not pid:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            print(f"master {pid} stopped")
            return 0
        time.sleep(0.05)
    sys.stderr.write(f"monolaked: master {pid} still running after {args.timeout}s\n")
    return 1


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited master stays a zombie until its parent reaps it)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cmd_reload(args: argparse.Namespace) -> int:
    reply = _request(args, {"type": "reload"}, timeout=args.timeout)
    if reply.get("ok"):
        print(
            f"reload done: generation {reply.get('generation')} ({reply.get('mode')}, "
            f"{reply.get('duration')}s)"
        )
        return 0
    if reply.get("state_migrated") is False:
        # the new generation serves; what it lost is in the reason
        sys.stderr.write(f"monolaked: reload done, but {reply.get('reason')}\n")
        return STATE_NOT_MIGRATED
    sys.stderr.write(f"monolaked: reload failed: {reply.get('reason') or reply.get('error')}\n")
    return 1


def cmd_log_level(args: argparse.Namespace) -> int:
    return 0 if _answer(args, {"type": "log_level", "level": args.level}, "ok") is not None else 1


def cmd_debug(args: argparse.Namespace) -> int:
    reply = _answer(args, {"type": "debug", "slot": args.slot, "collect": args.collect}, "debug")
    if reply is None:
        return 1
    print(json.dumps(reply, indent=2, sort_keys=True))
    return 0


CONTROL_SOCKET_HELP = (
    f"environment: {CONTROL_SOCKET_ENV}=PATH names the control socket when "
    "--control-socket is not given, over supervisor.control_socket of the "
    "config; `start` listens on it."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monolaked",
        description="monolake: HTTP and Thrift proxies, one worker per core.",
        epilog=CONTROL_SOCKET_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, control: bool = True) -> None:
        p.add_argument("-c", "--config", help="config file (default: the embedded default config)")
        if control:
            p.add_argument(
                "--control-socket",
                help=f"control socket path (default: ${CONTROL_SOCKET_ENV}, "
                "else supervisor.control_socket of the config)",
            )

    p = sub.add_parser(
        "start", help="run the master (foreground unless --daemon)", epilog=CONTROL_SOCKET_HELP
    )
    common(p, control=False)
    p.add_argument("--workers", type=int, help="number of workers (overrides runtime.workers)")
    p.add_argument("--pid-file", help="pid file (overrides supervisor.pid_file)")
    p.add_argument("--daemon", action="store_true", help="detach; exit once the workers are ready")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("check", help="validate a config file and print a summary (like nginx -t)")
    common(p, control=False)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("status", help="show the master and every worker")
    common(p)
    p.add_argument("--json", action="store_true", help="stable JSON (see docs/operations.md)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", help="graceful stop (drain in-flight requests)")
    common(p)
    p.add_argument("--fast", action="store_true", help="fast stop (like SIGQUIT)")
    p.add_argument("--no-wait", action="store_true", help="return without waiting for the exit")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("reload", help="zero-downtime reload; waits for and reports the outcome")
    common(p)
    p.add_argument("--timeout", type=float, default=300.0)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("log-level", help="change the log level of the master and the workers")
    common(p)
    p.add_argument("level", choices=sorted(logs.LEVELS))
    p.set_defaults(func=cmd_log_level)

    p = sub.add_parser(
        "debug",
        help="what one worker holds: objects by type, fds, timers, "
        "tasks, RSS (JSON; a diagnostic that pauses the worker)",
    )
    common(p)
    p.add_argument("--slot", type=int, default=0)
    p.add_argument(
        "--collect",
        action="store_true",
        help="run a full garbage collection first (shows what is really retained)",
    )
    p.set_defaults(func=cmd_debug)

    from monolake.supervisor import upstreams_cli  # the runtime upstream API's verbs

    upstreams_cli.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.func is cmd_start:
        # a master started from the command line (not called in-process) runs on glibc
        # malloc, as its workers do: supervisor/allocator.py says why
        from monolake.supervisor.allocator import reexec_on_malloc

        reexec_on_malloc()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
