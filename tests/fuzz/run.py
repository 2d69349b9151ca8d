"""Run one differential fuzz target (tests/fuzz/targets.py) with atheris (libFuzzer).

    python -m tests.fuzz.run request            # MONOLAKE_FUZZ_SECONDS (default 25) seconds
    python -m tests.fuzz.run request --runs 12000   # CI: a fixed seed and count (reproducible)
    python -m tests.fuzz.run chunked --seconds 3600 --corpus /var/tmp/fuzz-chunked
    python -m tests.fuzz.run response -- -runs=100000   # anything after -- goes to libFuzzer

Bounded by time, never open-ended: .ci/run runs each target for a short while under the
sanitizer build; a longer run is the same command with more seconds. New inputs go to a work
corpus (a temporary folder unless --corpus names one to keep); the checked-in seeds
(tests/fuzz/corpus/<target>/) and regressions (tests/fuzz/regressions/<target>/) are read, never
written. A disagreement or a crash stops the run with a non-zero exit; libFuzzer writes the
input to <artifacts>/crash-<sha1>, which belongs in tests/fuzz/regressions/<target>/ once fixed
(or explained in docs/http.md and in targets.known_difference).

The C parser is not coverage-instrumented (that needs clang's -fsanitize=fuzzer-no-link; the
project builds with gcc): the coverage that guides the mutations is the Python twin's (the
protocol callbacks, split_response_headers) plus the dictionary http.dict.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=["request", "response", "chunked", "route", "head", "nx", "thrift"])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("MONOLAKE_FUZZ_SECONDS", "25")))
    ap.add_argument(
        "--runs",
        type=int,
        default=0,
        help="stop after this many inputs, with a fixed seed (what CI does: the same "
        "inputs on every machine, however fast); 0 = random seed, time only",
    )
    ap.add_argument("--corpus", help="work corpus folder to keep (default: a temporary one)")
    ap.add_argument(
        "--artifacts", default=tempfile.gettempdir(), help="where libFuzzer writes a failing input"
    )
    ap.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags (after --)")
    args = ap.parse_args(argv)

    import atheris

    with atheris.instrument_imports(
        include=["monolake.worker.http", "monolake.worker.thrift", "monolake.conf.routes", "tests.fuzz"]
    ):
        from tests.fuzz import targets

    one_input = targets.TARGETS[args.target]
    work = args.corpus or tempfile.mkdtemp(prefix=f"monolake-fuzz-{args.target}-")
    os.makedirs(work, exist_ok=True)
    seeds = [
        str(d)
        for d in (HERE / "corpus" / args.target, HERE / "regressions" / args.target)
        if d.is_dir() and any(d.iterdir())
    ]
    flags = [
        f"-max_total_time={args.seconds}",
        "-max_len=4096",
        "-timeout=10",
        f"-dict={HERE / 'http.dict'}",
        f"-artifact_prefix={os.path.join(args.artifacts, 'monolake-fuzz-' + args.target + '-')}",
        "-print_final_stats=1",
        *([f"-runs={args.runs}", "-seed=1"] if args.runs else []),
        *args.libfuzzer,
        work,
        *seeds,
    ]
    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
