"""``python -m monolake.worker``: a worker under a master, or standalone."""

from __future__ import annotations

import argparse
import sys

from monolake.worker.main import main_controlled, main_standalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monolake.worker")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--control-fd", type=int, help="control socket inherited from the master")
    mode.add_argument(
        "--standalone",
        action="store_true",
        help="bind the configured listeners itself and serve (development, tests)",
    )
    parser.add_argument("--master-pid", type=int, default=0)
    parser.add_argument("-c", "--config", default=None, help="config file (standalone mode)")
    args = parser.parse_args(argv)
    if args.standalone:
        return main_standalone(args.config)
    return main_controlled(args.control_fd, args.master_pid)


if __name__ == "__main__":
    sys.exit(main())
