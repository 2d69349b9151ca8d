#!/usr/bin/env python3
"""Run CPython's own ``test.test_asyncio`` suite against the io_uring loop (or asyncio's, as the
reference), with a per-test timeout and an explicit expected-failure list.

Why a runner of our own and not ``python -m test``: the loop has to be installed in the process
that runs the tests before they import anything (the default policy, ``asyncio.SelectorEventLoop``
and ``asyncio.DefaultEventLoopPolicy`` all replaced, so the I/O tests that build their loop from
``SelectorEventLoop(selector)`` run on io_uring too), and a hang must count as one failed test,
not a stuck CI. Each test module runs in a child process; a test that outlives ``--timeout`` is
interrupted (SIGALRM) and, if it still does not return, the child is ended by faulthandler and
restarted after that test, which is recorded as ``timeout``.

    python scripts/run_stdlib_asyncio.py                       # whole suite on io_uring, 2 jobs
    python scripts/run_stdlib_asyncio.py --loop asyncio        # the same on asyncio's loop
    python scripts/run_stdlib_asyncio.py -k test_ssl -k test_sock_lowlevel --json out.json

Exit status: 0 when every failure is listed in the expected-failure file (default
``scripts/stdlib_asyncio_xfail.txt``) and every listed test that ran did fail; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger()

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_XFAIL = os.path.join(HERE, "stdlib_asyncio_xfail.txt")
PACKAGE = "test.test_asyncio"
FAILED = ("fail", "error", "timeout", "crash")


class TestTimeout(BaseException):
    """Raised into a test that ran past its deadline (BaseException: no test code swallows it)."""


# ---------------------------------------------------------------- the loop under test


def install_uring() -> None:
    """Make every way the suite gets a loop give an io_uring one.

    ``SelectorEventLoop(selector)`` ignores the selector: the ring is the selector here."""
    import asyncio
    from asyncio import unix_events

    from monolake.uring.loop import UringEventLoop

    class StdlibUringLoop(UringEventLoop):
        """UringEventLoop with SelectorEventLoop's signature (the suite passes a selector)."""

        def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
            if selector is not None:
                selector.close()
            super().__init__(entries=256)

    class StdlibUringPolicy(unix_events._UnixDefaultEventLoopPolicy):  # type: ignore[misc,name-defined]
        _loop_factory = StdlibUringLoop

    asyncio.SelectorEventLoop = StdlibUringLoop  # type: ignore[misc,assignment]
    unix_events.SelectorEventLoop = StdlibUringLoop  # type: ignore[misc,assignment]
    asyncio.DefaultEventLoopPolicy = StdlibUringPolicy  # type: ignore[misc,assignment]
    unix_events.DefaultEventLoopPolicy = StdlibUringPolicy  # type: ignore[misc,assignment]
    asyncio.set_event_loop_policy(StdlibUringPolicy())
    for make in (asyncio.new_event_loop, asyncio.SelectorEventLoop):
        loop = make()
        try:
            if not isinstance(loop, UringEventLoop):
                raise RuntimeError(f"{make} still makes {type(loop)}: the loop is not installed")
        finally:
            loop.close()


def check_installed() -> str | None:
    """None if the stdlib tests can be imported, else why not (and which package has them)."""
    try:
        import test.test_asyncio  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        v = sys.version_info
        return (
            f"{exc}: CPython's test suite is not installed for {sys.executable} "
            f"(Debian/Ubuntu: apt-get install libpython{v.major}.{v.minor}-testsuite)"
        )
    return None


# ---------------------------------------------------------------- collection


def iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def module_names() -> list[str]:
    import pkgutil

    import test.test_asyncio as pkg

    return sorted(
        f"{PACKAGE}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("test_")
    )


# ---------------------------------------------------------------- child: one module


class _Result(unittest.TestResult):
    """Emits one JSON line per test on the parent's pipe; unittest's own output goes nowhere."""

    def __init__(self, out: Any, timeout: float, grace: float) -> None:
        super().__init__()
        self.out = out
        self.timeout = timeout
        self.grace = grace
        self.t0 = 0.0
        self.outcome = ""
        self.detail = ""
        self.timed_out = False

    def _emit(self, **kw: Any) -> None:
        self.out.write(json.dumps(kw) + "\n")
        self.out.flush()

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self.outcome, self.detail, self.timed_out = "pass", "", False
        self._emit(event="start", id=test.id())
        self.t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        import faulthandler

        # the backstop when the interrupted test does not return either
        faulthandler.dump_traceback_later(self.timeout + self.grace, exit=True)

    def stopTest(self, test: unittest.TestCase) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        outcome = "timeout" if self.timed_out else self.outcome
        self._emit(
            event="result",
            id=test.id(),
            outcome=outcome,
            secs=round(time.monotonic() - self.t0, 3),
            detail=self.detail[-2000:],
        )
        super().stopTest(test)

    def _fail(self, kind: str, test: Any, err: Any) -> None:
        if err[0] is TestTimeout:
            self.timed_out = True
        if self.outcome in ("pass", "skip"):
            self.outcome = kind
        try:
            self.detail += self._exc_info_to_string(err, test)  # type: ignore[attr-defined]  # unittest's own formatter
        except Exception as exc:
            self.detail += f"{err[0].__name__}: {err[1]} ({exc})"

    def addError(self, test: Any, err: Any) -> None:
        if isinstance(test, unittest.suite._ErrorHolder):  # type: ignore[attr-defined]
            # setUpClass/tearDownModule and the like: outside any test, reported on its own
            self._emit(
                event="result",
                id=test.id(),
                outcome="error",
                secs=0.0,
                detail=self._exc_info_to_string(err, test)[-2000:],  # type: ignore[attr-defined]
            )
            return
        self._fail("error", test, err)

    def addFailure(self, test: Any, err: Any) -> None:
        self._fail("fail", test, err)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._fail(kind, test, err)

    def addSkip(self, test: Any, reason: str) -> None:
        if self.outcome == "pass":
            self.outcome = "skip"

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        self.outcome = "pass"  # the suite's own expectedFailure: working as CPython intends

    def addUnexpectedSuccess(self, test: Any) -> None:
        self.outcome = "fail"
        self.detail += "unexpected success of a test CPython marks expectedFailure"


def _on_alarm(signum: int, frame: Any) -> None:
    raise TestTimeout("test ran past its deadline")


def child_main(loop: str, timeout: float, grace: float, report_fd: int, ids: list[str]) -> int:
    """Run ``ids`` (test ids of one module) here, one JSON line per event on ``report_fd``."""
    out = os.fdopen(report_fd, "w")
    if loop == "io_uring":
        install_uring()
    signal.signal(signal.SIGALRM, _on_alarm)
    real_stderr = sys.stderr
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the tests print a lot
    try:
        suite = unittest.defaultTestLoader.loadTestsFromNames(ids)
        result = _Result(out, timeout, grace)
        suite.run(result)
    except BaseException:
        import traceback

        traceback.print_exc(file=real_stderr)  # the parent shows it with the test it ended
        raise
    out.close()
    return 0


# ---------------------------------------------------------------- parent


@dataclass
class Outcome:
    id: str
    outcome: str
    secs: float = 0.0
    detail: str = ""


@dataclass
class Job:
    module: str
    ids: list[str]
    done: dict[str, Outcome] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    pipe: Any = None
    current: str | None = None
    started: float = 0.0
    buf: bytes = b""
    stderr: Any = None
    done_at_start: int = 0
    last_event: float = 0.0

    def ndone(self) -> int:
        """Tests of this module with a result (class-level errors come on top)."""
        return sum(i in self.done for i in self.ids)

    def stderr_tail(self) -> str:
        """The last lines the child wrote to stderr (faulthandler's traceback of a hang)."""
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        self.stderr.close()
        self.stderr = None
        return text[-3000:]


# on the io_uring loop these classes differ only in the selector they pass, which it ignores
_SAME_ON_URING = ("SelectEventLoopTests", "PollEventLoopTests")


def collect(patterns: list[str], one_selector: bool = False) -> dict[str, list[str]]:
    """Test ids per module, for modules whose name contains one of ``patterns`` (all if none).

    ``one_selector``: keep only the EPoll variant of the per-selector test classes (on io_uring
    the Select/Poll/EPoll variants run the very same loop)."""
    out: dict[str, list[str]] = {}
    loader = unittest.defaultTestLoader
    for mod in module_names():
        if patterns and not any(p in mod for p in patterns):
            continue
        try:
            suite = loader.loadTestsFromName(mod)
        except unittest.SkipTest as exc:  # e.g. the Windows-only modules
            log.info("module skipped", module=mod, reason=str(exc))
            continue
        except Exception as exc:
            out[mod] = [f"{mod}.<import>"]
            log.error("cannot load module", module=mod, error=str(exc))
            continue
        ids = [t.id() for t in iter_tests(suite)]
        ids = [i for i in ids if not i.startswith("unittest.loader._FailedTest")]
        if one_selector and any(".EPollEventLoopTests." in i for i in ids):
            ids = [i for i in ids if i.split(".")[-2] not in _SAME_ON_URING]
        if ids:
            out[mod] = ids
    return out


def start(job: Job, loop: str, timeout: float, grace: float) -> None:
    left = [i for i in job.ids if i not in job.done]
    r, w = os.pipe()
    os.set_inheritable(w, True)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--loop",
        loop,
        "--timeout",
        str(timeout),
        "--grace",
        str(grace),
        "--report-fd",
        str(w),
        *left,
    ]
    job.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the job, closed when reaped
    job.proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=job.stderr, pass_fds=(w,)
    )
    os.close(w)
    job.pipe = os.fdopen(r, "rb", buffering=0)
    job.current, job.buf, job.started = None, b"", time.monotonic()
    job.last_event = job.started
    job.done_at_start = job.ndone()


def pump(job: Job, chunk: bytes) -> None:
    job.buf += chunk
    while b"\n" in job.buf:
        line, job.buf = job.buf.split(b"\n", 1)
        msg = json.loads(line)
        job.last_event = time.monotonic()
        if msg["event"] == "start":
            job.current = msg["id"]
            job.started = time.monotonic()
        else:
            job.done[msg["id"]] = Outcome(msg["id"], msg["outcome"], msg["secs"], msg["detail"])
            job.current = None


def run_all(
    modules: dict[str, list[str]], loop: str, timeout: float, jobs: int, grace: float = 15.0
) -> list[Outcome]:
    """Run every module in child processes, ``jobs`` at a time; a dead child is restarted after
    the test it died in."""
    pending = [Job(m, ids) for m, ids in sorted(modules.items(), key=lambda kv: -len(kv[1]))]
    running: list[Job] = []
    finished: list[Job] = []
    sel = selectors.DefaultSelector()
    while pending or running:
        while pending and len(running) < jobs:
            job = pending.pop(0)
            start(job, loop, timeout, grace)
            sel.register(job.pipe, selectors.EVENT_READ, job)
            running.append(job)
        for job in running:
            # the child's own alarms cover a test; this covers the rest (a hanging
            # setUpClass, a child that stopped reporting): end it, it is restarted after
            if (
                job.proc is not None
                and job.proc.poll() is None
                and time.monotonic() - job.last_event > timeout + grace + 30
            ):
                job.proc.kill()
        for key, _ in sel.select(1.0):
            job = key.data
            chunk = job.pipe.read(65536)
            if chunk:
                pump(job, chunk)
                continue
            sel.unregister(job.pipe)
            job.pipe.close()
            rc = job.proc.wait()
            tail = job.stderr_tail()
            if job.current is not None:  # died inside a test: a hang (faulthandler) or a crash
                kind = "timeout" if time.monotonic() - job.started >= timeout else "crash"
                job.done[job.current] = Outcome(
                    job.current,
                    kind,
                    round(time.monotonic() - job.started, 3),
                    f"child exited with {rc} during the test\n{tail}",
                )
            running.remove(job)
            progressed = job.ndone() > job.done_at_start
            if rc == 0:  # a clean exit leaves out only what a failed set-up never started
                for i in job.ids:
                    job.done.setdefault(
                        i, Outcome(i, "error", 0.0, "not run: its class or module set-up failed")
                    )
            if job.ndone() < len(job.ids) and not progressed:
                # died before its first test: count that one as crashed, go on with the rest
                first = next(i for i in job.ids if i not in job.done)
                job.done[first] = Outcome(first, "crash", 0.0, f"child exited with {rc}\n{tail}")
            if job.ndone() < len(job.ids):
                pending.insert(0, job)  # the rest of the module, in a fresh child
            else:
                finished.append(job)
                log.info(
                    "module done",
                    module=job.module,
                    tests=len(job.ids),
                    failed=sum(o.outcome in FAILED for o in job.done.values()),
                )
    return [o for job in finished for o in job.done.values()]


def load_xfail(path: str) -> dict[str, str]:
    """``test id  # one-line reason`` per line; a line without a reason is an error."""
    out: dict[str, str] = {}
    if not path or not os.path.exists(path):
        return out
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            test_id, sep, reason = line.partition("#")
            if not sep or not reason.strip():
                raise SystemExit(f"{path}:{n}: an expected failure needs a '# reason'")
            out[test_id.strip()] = reason.strip()
    return out


def summarize(results: list[Outcome], xfail: dict[str, str], secs: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for o in results:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    failed = {o.id: o for o in results if o.outcome in FAILED}
    ran = {o.id for o in results}
    unexpected = sorted(i for i in failed if i not in xfail)
    fixed = sorted(i for i in xfail if i in ran and i not in failed)
    return {
        "tests": len(results),
        "counts": counts,
        "seconds": round(secs, 1),
        "expected_failures": sorted(i for i in failed if i in xfail),
        "unexpected_failures": [
            {"id": i, "outcome": failed[i].outcome, "secs": failed[i].secs, "detail": failed[i].detail}
            for i in unexpected
        ],
        "unexpected_passes": fixed,
        "ok": not unexpected and not fixed,
        "slowest": [[o.id, o.secs, o.outcome] for o in sorted(results, key=lambda o: -o.secs)[:25]],
        "results": {o.id: [o.outcome, o.secs] for o in results},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop", choices=("io_uring", "asyncio"), default="io_uring")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per test")
    ap.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="seconds an interrupted test gets to return before its child is ended",
    )
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only modules whose name contains this (repeatable)",
    )
    ap.add_argument(
        "--one-selector",
        action="store_true",
        help="run the per-selector test classes once (EPoll), not three times",
    )
    ap.add_argument("--xfail", default=DEFAULT_XFAIL, help="expected-failure file ('' = none)")
    ap.add_argument("--json", help="write the summary (and every failure's traceback) here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report-fd", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("ids", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.loop, args.timeout, args.grace, args.report_fd, args.ids)
    why = check_installed()
    if why:
        log.error("stdlib asyncio tests unavailable", reason=why)
        return 2
    xfail = load_xfail(args.xfail) if args.loop == "io_uring" else {}
    t0 = time.monotonic()
    results = run_all(
        collect(args.patterns, args.one_selector), args.loop, args.timeout, args.jobs, args.grace
    )
    summary = summarize(results, xfail, time.monotonic() - t0)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    sys.stdout.write(
        f"{args.loop}: {summary['tests']} tests in {summary['seconds']} s, {summary['counts']}\n"
    )
    for u in summary["unexpected_failures"]:
        sys.stdout.write(f"UNEXPECTED {u['outcome']}: {u['id']} ({u['secs']} s)\n")
    for i in summary["unexpected_passes"]:
        sys.stdout.write(f"EXPECTED FAILURE PASSED (remove it from the list): {i}\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
