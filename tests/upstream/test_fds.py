"""The kit's one fd hand-over (worker/upstream/fds.py): claimed once, the rest closed.

Every importer (HTTP pool, Thrift pool, services, the worker's Snapshot) claims through
``FdList``; a second claim of one fd, or a claim out of range, must get -1, never an fd that
another importer already owns, and nothing unclaimed may leak."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from monolake.worker.service.state import Exported, Stateful, restore_state
from monolake.worker.state import Snapshot
from monolake.worker.upstream.fds import NO_FDS, FdList, FdSource


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe_fds() -> Iterator[list[int]]:
    r, w = os.pipe()
    yield [r, w]
    for fd in (r, w):
        if _is_open(fd):
            os.close(fd)


def test_take_once_then_minus_one(pipe_fds: list[int]) -> None:
    r, w = pipe_fds
    src = FdList(list(pipe_fds))
    assert src.take_fd(1) == w
    assert src.take_fd(1) == -1
    assert src.take_fd(-1) == -1 and src.take_fd(2) == -1
    assert src.fds == [r, -1]


def test_close_untaken_closes_only_what_nobody_claimed(pipe_fds: list[int]) -> None:
    r, w = pipe_fds
    src = FdList(list(pipe_fds))
    assert src.take_fd(0) == r
    src.close_untaken()
    assert _is_open(r) and not _is_open(w)
    assert src.fds == [-1, -1]
    src.close_untaken()  # idempotent: nothing is closed twice


def test_no_fds_gives_nothing() -> None:
    assert NO_FDS.take_fd(0) == -1


def test_snapshot_is_the_kit_fd_list(pipe_fds: list[int]) -> None:
    snap = Snapshot({"version": 1}, list(pipe_fds))
    source: FdSource = snap
    assert source.take_fd(0) == pipe_fds[0]
    snap.close_untaken()
    assert not _is_open(pipe_fds[1])
    assert snap.data == {"version": 1} and Snapshot({}).fds == []


class _Holder(Stateful):
    """Exports one dup of a pipe end and claims it back."""

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd
        self.claimed = -2

    def export_state(self, fds: list[int]) -> dict:
        fds.append(os.dup(self.fd))
        fds.append(os.dup(self.fd))  # a second one nobody claims: adopt must close it
        return {"index": 0}

    def import_state(self, data: dict, fds: FdSource) -> None:
        self.claimed = fds.take_fd(data["index"])


def test_in_place_adopt_claims_and_closes_the_rest(pipe_fds: list[int]) -> None:
    old = _Holder(pipe_fds[0])
    new = _Holder()
    before = set(os.listdir("/proc/self/fd"))
    assert restore_state(new, old)
    assert new.claimed >= 0 and _is_open(new.claimed)
    os.close(new.claimed)
    assert set(os.listdir("/proc/self/fd")) == before


def test_exported_claims_through_its_source(pipe_fds: list[int]) -> None:
    src = FdList(list(pipe_fds))
    rec = Exported(version=1, data={"index": 1}, fds=src)
    svc = _Holder()
    assert restore_state(svc, rec)
    assert svc.claimed == pipe_fds[1] and rec.take_fd(1) == -1
