"""A worker runs on glibc malloc (PYTHONMALLOC=malloc) unless the operator chose otherwise
(issue 16 §4): with pymalloc a few objects made during a burst of connections pin whole 1 MiB
arenas and the worker keeps the burst's memory (docs/http.md "Memory per idle connection").
The master too (issue 17 §4, supervisor/allocator.py): on pymalloc its RSS rose with every
reload; it re-executes itself once, keeping its PID."""

from __future__ import annotations

import pytest

from tests.harness import base_config
from tests.support import free_port


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv]
    return {k.decode(): v.decode() for k, v in items}


@pytest.mark.parametrize("given, expected", [(None, "malloc"), ("pymalloc", "pymalloc")])
def test_worker_allocator(master_factory, tmp_path, monkeypatch, given, expected):
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    env = {} if given is None else {"PYTHONMALLOC": given}
    m = master_factory(base_config(tmp_path, free_port()), args=["--workers", "1"], env=env)
    st = m.wait_ready(1)
    assert _environ(st["workers"][0]["pid"]).get("PYTHONMALLOC") == expected
    # the master re-executed itself (same PID: the one the test started) unless told
    assert st["master"]["pid"] == m.proc.pid
    assert _environ(m.proc.pid).get("PYTHONMALLOC") == expected
