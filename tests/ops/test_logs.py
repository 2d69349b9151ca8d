"""Log files: error_log, reopened on SIGUSR1 after logrotate renamed it, and the run-time level."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.harness import base_config
from tests.ops.conftest import admin_get, admin_section
from tests.support import free_port, wait_for


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_error_log_reopened_on_usr1(master_factory, tmp_path):
    log = tmp_path / "error.log"
    m = master_factory(base_config(tmp_path, free_port(), supervisor=f'error_log = "{log}"'))
    status = m.wait_ready()
    workers = {w["pid"] for w in status["workers"]}
    before = events(log)
    assert any(e.get("event") == "master started" and e["proc"] == "master" for e in before)
    assert {e["pid"] for e in before if e.get("proc") == "worker"} == workers
    assert not events(m.log_path)  # nothing went to stderr

    rotated = tmp_path / "error.log.1"
    log.rename(rotated)  # what logrotate does; both processes still write to the renamed file
    m.proc.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: any(e.get("event") == "log files reopened" for e in events(log)),
        10,
        0.05,
        "the master writing to the new file",
    )

    # workers reopen too: their next lines land in the new file
    def workers_in_new_file() -> bool:
        assert m.cli("log-level", "info").returncode == 0
        seen = {
            e["pid"]
            for e in events(log)
            if e.get("proc") == "worker" and e.get("event") == "log level changed"
        }
        return seen == workers

    wait_for(workers_in_new_file, 10, 0.2, "every worker writing to the new file")
    old = events(rotated)
    assert not any(e.get("event") == "log files reopened" for e in old)
    assert len(old) == len(before)  # nobody wrote to the rotated file after the reopen


def test_log_level_changes_at_run_time(master_factory, tmp_path):
    admin_port = free_port()
    log = tmp_path / "error.log"
    m = master_factory(
        base_config(tmp_path, free_port(), extra=admin_section(admin_port), supervisor=f'error_log = "{log}"')
    )
    status = m.wait_ready()
    workers = {w["pid"] for w in status["workers"]}

    def count(event: str, **fields: object) -> int:
        return sum(
            1
            for e in events(log)
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        )

    admin_get(admin_port, "/healthz")
    assert count("admin request") == 0  # a debug line, and the level is info

    assert m.cli("log-level", "debug").returncode == 0
    admin_get(admin_port, "/healthz")
    wait_for(
        lambda: count("admin request", path="/healthz", level="debug") == 1,
        10,
        0.05,
        "a debug line from the master",
    )
    wait_for(
        lambda: (
            {
                e["pid"]
                for e in events(log)
                if e.get("proc") == "worker"
                and e.get("event") == "log level changed"
                and e.get("new_level") == "debug"
            }
            == workers
        ),
        10,
        0.05,
        "every worker at debug",
    )

    # warning: info lines stop, in the master and in the workers
    assert m.cli("log-level", "warning").returncode == 0
    assert m.cli("log-level", "info").returncode == 0
    wait_for(
        lambda: count("log level changed", new_level="info", proc="master") == 1, 10, 0.05, "back at info"
    )
    assert count("log level changed", new_level="warning") == 0  # dropped at level warning
    admin_get(admin_port, "/healthz")
    assert count("admin request") == 1

    bad = m.cli("log-level", "verbose")
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
