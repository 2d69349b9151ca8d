"""Replay of the fuzz targets' seeds and regressions (tests/fuzz/targets.py), with no fuzzer:
every checked-in input must be read alike by the native parser and its llhttp twin (or differ
only by a documented strictness choice). The bounded fuzz runs themselves are in .ci/run
(tests/fuzz/run.py, atheris); the inputs they find that mattered are kept in regressions/."""

from __future__ import annotations

from pathlib import Path

import pytest

from monolake.worker.http import parser as hp

pytestmark = pytest.mark.skipif(hp.native is None, reason="the codec extension is not built")

HERE = Path(__file__).resolve().parent
INPUTS = sorted(p for sub in ("corpus", "regressions") for p in (HERE / sub).glob("*/*") if p.is_file())


@pytest.mark.parametrize(
    "path", INPUTS, ids=[f"{p.parent.parent.name}/{p.parent.name}/{p.name}" for p in INPUTS]
)
def test_checked_in_input_agrees(path: Path) -> None:
    from tests.fuzz import targets

    data = path.read_bytes()
    target = targets.TARGETS[path.parent.name]
    target(data)  # Disagreement on failure
    for seed in range(1, 16):  # and however it is split
        target(bytes([seed]) + data[1:])


def test_there_are_inputs_for_every_target() -> None:
    from tests.fuzz import targets

    for name in targets.TARGETS:
        assert list((HERE / "corpus" / name).iterdir()), name


def test_a_real_disagreement_is_reported() -> None:
    """The harness can fail: a twin that drops a header disagrees."""
    from tests.fuzz import targets

    data = b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"
    native = targets.run_native_request(data, [])
    twin = targets.run_twin_request(data, [])
    assert targets._same("request", native, twin)
    twin.events[0] = (*twin.events[0][:4], [(b"host", b"a")], *twin.events[0][5:])
    assert not targets._same("request", native, twin)
    assert targets.known_difference("request", data, 0, native, twin) is None


def test_reason_phrase_split_across_reads_is_whole() -> None:
    """client.py's on_status kept only the last piece llhttp handed over."""
    from tests.fuzz import targets

    data = b"HTTP/1.1 200 A Long Reason Phrase\r\nContent-Length: 2\r\n\r\nok"
    for cut in range(10, 30):
        twin = targets.run_twin_response(data, [cut])
        assert twin.events[0][2] == b"A Long Reason Phrase", (cut, twin)


def test_trailing_whitespace_is_not_part_of_a_value() -> None:
    from tests.fuzz import targets

    twin = targets.run_twin_request(b"GET / HTTP/1.1\r\nHost: a \t\r\nX: v \r\n\r\n", [])
    assert twin.events[0][4] == [(b"host", b"a"), (b"x", b"v")] and twin.events[0][5] == b"a"


@pytest.mark.parametrize(
    "body, ok",
    [
        (b"000000000000000005\r\nhello\r\n0\r\n\r\n", True),  # leading zeros: legal
        (b"fffffffffffffff\r\n", True),  # 15 digits: the bound
        (b"1000000000000000\r\n", False),  # 2^60: over it
        (b"5 \r\nhello\r\n0\r\n\r\n", False),  # BWS with no extension
        (b"5 ;a=b\r\nhello\r\n0\r\n\r\n", True),  # BWS before an extension
    ],
)
def test_native_chunk_size_line(body: bytes, ok: bool) -> None:
    from tests.fuzz import targets

    out = targets.run_native_request(targets.CHUNKED_REQUEST_HEAD + body, [])
    assert (out.end == "ok") is ok, out


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, chunked"])
def test_native_refuses_a_response_coding_other_than_chunked(coding: bytes) -> None:
    """Any Transfer-Encoding was decoded as chunked: gzip-coded bytes reached the client
    without their coding (the header is hop-by-hop and dropped)."""
    from tests.fuzz import targets

    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    out = targets.run_native_response(data, [])
    assert out.end == "error" and "Transfer-Encoding" in out.detail, out


@pytest.mark.parametrize(
    "target, ok",
    [
        ("http://h:1/x", True),
        ("http://[::1]:8080/", True),
        ("https://a.b-c_d~e/", True),
        ("http://h:<<2/x", False),
        ('http://h"x/', False),
        ("http://u@h/", False),
        ("http:///x", False),
    ],
)
def test_absolute_target_authority(target: str, ok: bool) -> None:
    """The authority of an absolute target becomes the Host sent upstream: it was taken with
    any character the request line allows (the native path; llhttp refuses such URLs)."""
    from monolake.worker.http.connection import _split_absolute

    if ok:
        _split_absolute(target)
    else:
        with pytest.raises(hp.ParseError, match="authority"):
            _split_absolute(target)
