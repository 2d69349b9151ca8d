"""The loaded extension, the one callbacks table, nghttp2 options built from H2Settings.

Why a module of its own: the extern "Python" callbacks must be defined exactly once per process,
and the options/callbacks objects are shared by every session (nghttp2 copies them at
session creation), so building them per connection would be waste.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import structlog

from monolake.worker.h2._nghttp2 import ffi, lib  # ImportError: h2 unavailable (see __init__)

if TYPE_CHECKING:
    from monolake.worker.h2.settings import H2Settings

log = structlog.get_logger("monolake.h2")

__all__ = ["callbacks", "ffi", "lib", "options", "provider", "strerror", "version"]


def version() -> str:
    return ffi.string(lib.nghttp2_version(0).version_str).decode()


def strerror(rv: int) -> str:
    return ffi.string(lib.nghttp2_strerror(rv)).decode()


def error_name(code: int) -> str:
    """RFC 9113 error code name (``ENHANCE_YOUR_CALM``)."""
    return ffi.string(lib.nghttp2_http2_strerror(code)).decode()


# The session inside mem_recv/mem_send right now. nghttp2 only calls back from inside those two
# calls and one loop thread drives them, so a module global beats a per-callback lookup through
# user_data (which points at the C glue's header buffer instead).
current: Any = None
_FAIL = lib.NGHTTP2_ERR_CALLBACK_FAILURE


def _failed(exc: BaseException) -> int:
    """An exception inside a callback: kept on the session and re-raised from receive_data /
    data_to_send; nghttp2 gets CALLBACK_FAILURE, which ends the session."""
    if current is not None:
        current._error = exc
    return _FAIL


@ffi.def_extern(error=_FAIL)
def mh2_on_invalid_frame_recv(session: Any, frame: Any, lib_error: int, user_data: Any) -> int:
    try:
        return current._on_invalid_frame(frame, lib_error)
    except BaseException as exc:  # must not unwind through C
        return _failed(exc)


@ffi.def_extern(error=_FAIL)
def mh2_read_data(
    session: Any, stream_id: int, buf: Any, length: int, data_flags: Any, source: Any, user_data: Any
) -> int:
    try:
        return current._read_data(stream_id, buf, length, data_flags)
    except BaseException as exc:  # must not unwind through C
        return _failed(exc)


@functools.cache
def provider() -> Any:
    """The one data provider (nghttp2 copies it per stream; the stream id finds the queue)."""
    prd = ffi.new("nghttp2_data_provider *")
    prd.read_callback = lib.mh2_read_data
    return prd


@functools.cache
def callbacks() -> Any:
    """The process-wide callbacks table (nghttp2 copies it into each session)."""
    pp = ffi.new("nghttp2_session_callbacks **")
    if lib.nghttp2_session_callbacks_new(pp) != 0:
        raise MemoryError("nghttp2_session_callbacks_new")
    cbs = ffi.gc(pp[0], lib.nghttp2_session_callbacks_del)
    # header fields and frames go to the C glue (mh2.c), which records them in a log Python
    # reads once per receive_data / data_to_send: no Python call per field or per frame
    lib.nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, lib.mh2_begin_headers_c)
    lib.nghttp2_session_callbacks_set_on_header_callback(cbs, lib.mh2_header_c)
    lib.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, lib.mh2_on_frame_recv_c)
    lib.nghttp2_session_callbacks_set_on_frame_send_callback(cbs, lib.mh2_on_frame_send_c)
    lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, lib.mh2_on_data_chunk_recv_c)
    lib.nghttp2_session_callbacks_set_on_stream_close_callback(cbs, lib.mh2_on_stream_close_c)
    # whole response bodies the glue owns: DATA frames written into the output without a copy
    lib.nghttp2_session_callbacks_set_send_data_callback(cbs, lib.mh2_send_data_c)
    lib.nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, lib.mh2_on_invalid_frame_recv)
    return cbs


@functools.lru_cache(maxsize=64)
def options(settings: H2Settings) -> Any:
    """nghttp2 options for ``settings``: every defence set explicitly (docs/http2.md), not left
    to whatever default the installed libnghttp2 has."""
    pp = ffi.new("nghttp2_option **")
    if lib.nghttp2_option_new(pp) != 0:
        raise MemoryError("nghttp2_option_new")
    opt = ffi.gc(pp[0], lib.nghttp2_option_del)
    # inbound backpressure: WINDOW_UPDATE only for bytes the application acknowledged
    lib.nghttp2_option_set_no_auto_window_update(opt, 1)
    # closed streams are not kept for the (deprecated) priority tree: memory per reset is zero
    lib.nghttp2_option_set_no_closed_streams(opt, 1)
    # CVE-2023-44487 rapid reset: RST_STREAM token bucket, GOAWAY when empty
    lib.nghttp2_option_set_stream_reset_rate_limit(opt, settings.reset_burst, settings.reset_rate)
    # CVE-2024-28182 CONTINUATION flood: a header block may span this many CONTINUATIONs
    lib.nghttp2_option_set_max_continuations(opt, settings.max_continuations)
    # PING / SETTINGS floods from a peer that does not read: bounded ACK queue -> ERR_FLOODED
    lib.nghttp2_option_set_max_outbound_ack(opt, settings.max_outbound_ack)
    # SETTINGS with thousands of entries: bounded per frame -> ERR_TOO_MANY_SETTINGS
    lib.nghttp2_option_set_max_settings(opt, settings.max_settings)
    # HPACK: our encoder's table stays at the RFC default whatever the peer allows
    lib.nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096)
    lib.nghttp2_option_set_max_send_header_block_length(opt, settings.max_send_header_block)
    # until the peer's SETTINGS arrive, assume what H2ClientSession.ASSUMED_MAX_STREAMS says
    lib.nghttp2_option_set_peer_max_concurrent_streams(opt, 100)
    return opt
