"""The native engine's counters in a server's stats() (server.py add_native_counters)."""

from __future__ import annotations

from monolake.worker.http.server import NATIVE_SHARED, add_native_counters


def test_native_counts_join_the_shared_keys_and_keep_their_own() -> None:
    out = {"requests": 2, "responses_2xx": 1, "responses_5xx": 1, "bytes_in": 10, "errors": 1}
    native = {key: 3 for key in NATIVE_SHARED} | {"declined": 4, "declined_late": 5, "aborted": 6}
    add_native_counters(out, native)
    assert out["requests"] == 5 and out["responses_2xx"] == 4 and out["responses_5xx"] == 4
    assert out["bytes_in"] == 13 and out["bytes_out"] == 3 and out["errors"] == 1
    assert (out["native_requests"], out["native_declined"], out["native_declined_late"]) == (3, 4, 5)
    assert out["native_aborted"] == 6
