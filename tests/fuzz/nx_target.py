"""The fuzz target ``nx``: mu_nx.c's head decisions (uring/mu_nx.c) against their Python twins
(worker/http/native_engine.py parse_request / parse_response / client_head). The first byte
of an input picks what the rest is: bit 0 a request head (else a response head), bit 1 a
HEAD request's response. A disagreement raises Disagreement; a fault in C kills the process
(the sanitizer build, .ci/sanitize). Replayed by tests/fuzz/test_corpus.py, driven by
tests/fuzz/run.py; tests/http/test_native_engine_twins.py runs seeded mutations of its own."""

from __future__ import annotations

from typing import Any

from monolake.worker.http import native_engine as ne

try:
    from monolake.uring._uring import ffi, lib  # type: ignore[import-not-found,attr-defined,unused-ignore]
except ImportError:
    ffi = lib = None


class Disagreement(AssertionError):
    """C and its Python twin decided one head differently."""


def c_request(data: bytes) -> Any:
    rq = ffi.new("mu_nx_request *")
    buf = ffi.from_buffer(data)
    rc = lib.mu_nx_parse_request(buf, len(data), ne.REQUEST_BODY_MAX, rq)
    if rc != 0:
        return ffi.string(lib.mu_nx_decline_reason(rc)).decode()

    def span(p: Any, n: int) -> bytes:
        return bytes(ffi.buffer(p, n)) if n else b""

    fields = tuple(
        (span(rq.names[i], rq.name_lens[i]), span(rq.values[i], rq.value_lens[i])) for i in range(rq.nfields)
    )
    return ne.ParsedRequest(
        span(rq.method, rq.method_len),
        span(rq.path, rq.path_len),
        span(rq.query, rq.query_len),
        span(rq.host, rq.host_len),
        fields,
        rq.content_length,
        rq.head_len,
        rq.total,
        rq.body_missing,
    )


def c_response(data: bytes, head_only: bool) -> Any:
    rs = ffi.new("mu_nx_response *")
    buf = ffi.from_buffer(data)
    rc = lib.mu_nx_parse_response(buf, len(data), head_only, rs)
    if rc < 0:
        return None
    if rc > 0:
        return ffi.string(lib.mu_nx_decline_reason(rc)).decode()
    out = ffi.new("char[]", rs.client_len)
    lib.mu_nx_client_head(buf, rs, out)
    parsed = ne.ParsedResponse(rs.status, bool(rs.keep_alive), rs.content_length, rs.announce, rs.head_len)
    return parsed, bytes(ffi.buffer(out, rs.client_len))


def py_response(data: bytes, head_only: bool) -> Any:
    r = ne.parse_response(data, head_only)
    if isinstance(r, ne.ParsedResponse):
        return r, ne.client_head(data, r)
    return r


def one_input(raw: bytes) -> None:
    """Fuzzer entry (see the module doc)."""
    if not raw or lib is None:
        return
    data = raw[1:]
    if raw[0] & 1:
        got, want = c_request(data), ne.parse_request(data)
    else:
        head_only = bool(raw[0] & 2)
        got, want = c_response(data, head_only), py_response(data, head_only)
    if got != want:
        raise Disagreement(f"C {got!r} != Python {want!r} for {data!r}")


TARGETS = {"nx": one_input}
