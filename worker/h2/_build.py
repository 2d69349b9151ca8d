"""Build the cffi API-mode extension ``monolake.worker.h2._nghttp2`` over libnghttp2.

Why API mode: the declarations below are compiled against the real ``<nghttp2/nghttp2.h>``, so a
signature that drifts from the header fails the build instead of corrupting memory at run time;
struct layouts and enum values (``...``) come from the header, never from this file. The C glue
(mh2.c) takes nghttp2's per-field and per-frame callbacks and records them in a log Python reads
once per call; the rare ones (invalid frames) and the data provider are cffi ``extern "Python"``
functions, one registration per process.

The extension is optional (``setup.py`` builds it with ``optional=True``): without the headers,
or with a libnghttp2 that lacks the rapid-reset and CONTINUATION-flood defences, monolake still
installs and :func:`monolake.worker.h2.available` says why h2 is off. Run this file directly to
build the module in place for development.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODULE = "monolake.worker.h2._nghttp2"
GENERATED = os.path.join(HERE, "_nghttp2_gen.c")  # git-ignored
HEADER = "nghttp2/nghttp2.h"
# the defences this engine refuses to run without (docs/http2.md, "Defences")
REQUIRED_SYMBOLS = (
    # CVE-2023-44487 (nghttp2 1.57, Debian 1.52+deb12u1)
    "nghttp2_option_set_stream_reset_rate_limit",
    "nghttp2_option_set_max_continuations",  # CVE-2024-28182 (nghttp2 1.61, Debian 1.52+deb12u2)
    "nghttp2_option_set_max_outbound_ack",  # PING/SETTINGS ACK floods
    "nghttp2_option_set_max_settings",  # SETTINGS entry floods
)

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;

typedef struct {
    int age;
    int version_num;
    const char *version_str;
    const char *proto_str;
    ...;
} nghttp2_info;

typedef enum {
    NGHTTP2_ERR_INVALID_ARGUMENT, NGHTTP2_ERR_DEFERRED, NGHTTP2_ERR_STREAM_CLOSED,
    NGHTTP2_ERR_STREAM_CLOSING, NGHTTP2_ERR_STREAM_SHUT_WR, NGHTTP2_ERR_INVALID_STREAM_ID,
    NGHTTP2_ERR_INVALID_STREAM_STATE, NGHTTP2_ERR_DATA_EXIST, NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE,
    NGHTTP2_ERR_START_STREAM_NOT_ALLOWED, NGHTTP2_ERR_GOAWAY_ALREADY_SENT,
    NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE, NGHTTP2_ERR_SESSION_CLOSING, NGHTTP2_ERR_HTTP_HEADER,
    NGHTTP2_ERR_FATAL, NGHTTP2_ERR_NOMEM, NGHTTP2_ERR_CALLBACK_FAILURE,
    NGHTTP2_ERR_BAD_CLIENT_MAGIC, NGHTTP2_ERR_FLOODED, NGHTTP2_ERR_TOO_MANY_CONTINUATIONS,
    NGHTTP2_ERR_TOO_MANY_SETTINGS, NGHTTP2_ERR_SETTINGS_EXPECTED,
    ...
} nghttp2_error;

typedef enum {
    NGHTTP2_DATA, NGHTTP2_HEADERS, NGHTTP2_PRIORITY, NGHTTP2_RST_STREAM, NGHTTP2_SETTINGS,
    NGHTTP2_PUSH_PROMISE, NGHTTP2_PING, NGHTTP2_GOAWAY, NGHTTP2_WINDOW_UPDATE,
    NGHTTP2_CONTINUATION, ...
} nghttp2_frame_type;

typedef enum {
    NGHTTP2_FLAG_NONE, NGHTTP2_FLAG_END_STREAM, NGHTTP2_FLAG_END_HEADERS, NGHTTP2_FLAG_ACK,
    NGHTTP2_FLAG_PADDED, NGHTTP2_FLAG_PRIORITY, ...
} nghttp2_flag;

typedef enum {
    NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, NGHTTP2_SETTINGS_ENABLE_PUSH,
    NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
    NGHTTP2_SETTINGS_MAX_FRAME_SIZE, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
    NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, ...
} nghttp2_settings_id;

typedef enum {
    NGHTTP2_NO_ERROR, NGHTTP2_PROTOCOL_ERROR, NGHTTP2_INTERNAL_ERROR, NGHTTP2_FLOW_CONTROL_ERROR,
    NGHTTP2_SETTINGS_TIMEOUT, NGHTTP2_STREAM_CLOSED, NGHTTP2_FRAME_SIZE_ERROR,
    NGHTTP2_REFUSED_STREAM, NGHTTP2_CANCEL, NGHTTP2_COMPRESSION_ERROR, NGHTTP2_CONNECT_ERROR,
    NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_INADEQUATE_SECURITY, NGHTTP2_HTTP_1_1_REQUIRED, ...
} nghttp2_error_code;

typedef enum {
    NGHTTP2_DATA_FLAG_NONE, NGHTTP2_DATA_FLAG_EOF, NGHTTP2_DATA_FLAG_NO_END_STREAM, ...
} nghttp2_data_flag;

typedef enum {
    NGHTTP2_NV_FLAG_NONE, NGHTTP2_NV_FLAG_NO_INDEX, NGHTTP2_NV_FLAG_NO_COPY_NAME,
    NGHTTP2_NV_FLAG_NO_COPY_VALUE, ...
} nghttp2_nv_flag;

typedef enum {
    NGHTTP2_HCAT_REQUEST, NGHTTP2_HCAT_RESPONSE, NGHTTP2_HCAT_PUSH_RESPONSE, NGHTTP2_HCAT_HEADERS,
    ...
} nghttp2_headers_category;

typedef struct {
    uint8_t *name;
    uint8_t *value;
    size_t namelen;
    size_t valuelen;
    uint8_t flags;
} nghttp2_nv;

typedef struct {
    int32_t settings_id;
    uint32_t value;
} nghttp2_settings_entry;

typedef struct {
    size_t length;
    int32_t stream_id;
    uint8_t type;
    uint8_t flags;
    ...;
} nghttp2_frame_hd;

typedef struct { nghttp2_frame_hd hd; nghttp2_headers_category cat; ...; } nghttp2_headers;
typedef struct { nghttp2_frame_hd hd; uint32_t error_code; ...; } nghttp2_rst_stream;
typedef struct {
    nghttp2_frame_hd hd; size_t niv; nghttp2_settings_entry *iv; ...;
} nghttp2_settings;
typedef struct { nghttp2_frame_hd hd; uint8_t opaque_data[8]; ...; } nghttp2_ping;
typedef struct {
    nghttp2_frame_hd hd;
    int32_t last_stream_id;
    uint32_t error_code;
    uint8_t *opaque_data;
    size_t opaque_data_len;
    ...;
} nghttp2_goaway;
typedef struct { nghttp2_frame_hd hd; int32_t window_size_increment; ...; } nghttp2_window_update;

typedef union {
    nghttp2_frame_hd hd;
    nghttp2_headers headers;
    nghttp2_rst_stream rst_stream;
    nghttp2_settings settings;
    nghttp2_ping ping;
    nghttp2_goaway goaway;
    nghttp2_window_update window_update;
    ...;
} nghttp2_frame;

typedef union { int fd; void *ptr; } nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *session, int32_t stream_id,
    uint8_t *buf, size_t length, uint32_t *data_flags, nghttp2_data_source *source,
    void *user_data);
typedef struct {
    nghttp2_data_source source;
    nghttp2_data_source_read_callback read_callback;
} nghttp2_data_provider;

typedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *session,
    const nghttp2_frame *frame, void *user_data);
typedef int (*nghttp2_on_invalid_frame_recv_callback)(nghttp2_session *session,
    const nghttp2_frame *frame, int lib_error_code, void *user_data);
typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *session, uint8_t flags,
    int32_t stream_id, const uint8_t *data, size_t len, void *user_data);
typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *session, int32_t stream_id,
    uint32_t error_code, void *user_data);
typedef int (*nghttp2_on_frame_send_callback)(nghttp2_session *session,
    const nghttp2_frame *frame, void *user_data);
typedef int (*nghttp2_send_data_callback)(nghttp2_session *session, nghttp2_frame *frame,
    const uint8_t *framehd, size_t length, nghttp2_data_source *source, void *user_data);
typedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *session,
    const nghttp2_frame *frame, void *user_data);
typedef int (*nghttp2_on_header_callback)(nghttp2_session *session, const nghttp2_frame *frame,
    const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
    void *user_data);

nghttp2_info *nghttp2_version(int least_version);
const char *nghttp2_strerror(int lib_error_code);
const char *nghttp2_http2_strerror(uint32_t error_code);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr);
void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks);
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_frame_recv_callback on_frame_recv_callback);
void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_invalid_frame_recv_callback on_invalid_frame_recv_callback);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_data_chunk_recv_callback on_data_chunk_recv_callback);
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_stream_close_callback on_stream_close_callback);
void nghttp2_session_callbacks_set_on_frame_send_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_frame_send_callback on_frame_send_callback);
void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_begin_headers_callback on_begin_headers_callback);
void nghttp2_session_callbacks_set_send_data_callback(nghttp2_session_callbacks *cbs,
    nghttp2_send_data_callback send_data_callback);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *cbs,
    nghttp2_on_header_callback on_header_callback);

int nghttp2_option_new(nghttp2_option **option_ptr);
void nghttp2_option_del(nghttp2_option *option);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val);
void nghttp2_option_set_peer_max_concurrent_streams(nghttp2_option *option, uint32_t val);
void nghttp2_option_set_max_send_header_block_length(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_deflate_dynamic_table_size(nghttp2_option *option, size_t val);
void nghttp2_option_set_no_closed_streams(nghttp2_option *option, int val);
void nghttp2_option_set_max_outbound_ack(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_settings(nghttp2_option *option, size_t val);
void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *option, uint64_t burst,
    uint64_t rate);
void nghttp2_option_set_max_continuations(nghttp2_option *option, size_t val);

int nghttp2_session_server_new2(nghttp2_session **session_ptr,
    const nghttp2_session_callbacks *callbacks, void *user_data, const nghttp2_option *option);
int nghttp2_session_client_new2(nghttp2_session **session_ptr,
    const nghttp2_session_callbacks *callbacks, void *user_data, const nghttp2_option *option);
void nghttp2_session_del(nghttp2_session *session);

ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *in, size_t inlen);
ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr);
int nghttp2_session_want_read(nghttp2_session *session);
int nghttp2_session_want_write(nghttp2_session *session);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_session_consume_connection(nghttp2_session *session, size_t size);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);
int nghttp2_session_terminate_session2(nghttp2_session *session, int32_t last_stream_id,
    uint32_t error_code);
int nghttp2_session_check_request_allowed(nghttp2_session *session);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *session, nghttp2_settings_id id);
uint32_t nghttp2_session_get_local_settings(nghttp2_session *session, nghttp2_settings_id id);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *session, int32_t stream_id);
int32_t nghttp2_session_get_remote_window_size(nghttp2_session *session);
size_t nghttp2_session_get_outbound_queue_size(nghttp2_session *session);
int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags,
    int32_t stream_id, int32_t window_size);

int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags,
    const nghttp2_settings_entry *iv, size_t niv);
int32_t nghttp2_submit_request(nghttp2_session *session, const void *pri_spec,
    const nghttp2_nv *nva, size_t nvlen, const nghttp2_data_provider *data_prd,
    void *stream_user_data);
int nghttp2_submit_response(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva,
    size_t nvlen, const nghttp2_data_provider *data_prd);
int32_t nghttp2_submit_headers(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const void *pri_spec, const nghttp2_nv *nva, size_t nvlen, void *stream_user_data);
int nghttp2_submit_trailer(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva,
    size_t nvlen);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    uint32_t error_code);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id,
    uint32_t error_code, const uint8_t *opaque_data, size_t opaque_data_len);
int nghttp2_submit_shutdown_notice(nghttp2_session *session);
int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data);

extern "Python" int mh2_on_invalid_frame_recv(nghttp2_session *, const nghttp2_frame *, int,
    void *);
extern "Python" ssize_t mh2_read_data(nghttp2_session *, int32_t, uint8_t *, size_t, uint32_t *,
    nghttp2_data_source *, void *);
"""

# the C glue (mh2.h / mh2.c): header blocks in one piece each way, per-frame callbacks recorded
# into one log that Python reads per receive_data / data_to_send, output in one buffer. Its
# declarations are read from mh2.h's cdef section, the way uring/_build.py reads its headers.
GLUE_HEADER = "mh2.h"
GLUE = "mh2.c"

INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


def find_header() -> str | None:
    """Path of nghttp2.h (pkg-config first, then the usual prefixes)."""
    dirs: list[str] = []
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags-only-I", "libnghttp2"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0:
            dirs += [f[2:] for f in out.stdout.split() if f.startswith("-I")]
    except (OSError, subprocess.SubprocessError):
        pass
    for d in (*dirs, *INCLUDE_DIRS):
        p = os.path.join(d, HEADER)
        if os.path.exists(p):
            return p
    return None


def check_header() -> None:
    """Refuse to build against a libnghttp2 without the flood defences (raises RuntimeError)."""
    path = find_header()
    if path is None:
        raise RuntimeError(f"<{HEADER}> not found (apt-get install libnghttp2-dev)")
    with open(path) as f:
        text = f.read()
    missing = [s for s in REQUIRED_SYMBOLS if not re.search(rf"\b{s}\s*\(", text)]
    if missing:
        raise RuntimeError(
            f"{path} lacks {', '.join(missing)}: this libnghttp2 has no defence "
            "against rapid reset / CONTINUATION floods; upgrade it (>= 1.61, or a "
            "distro build with the CVE-2023-44487 and CVE-2024-28182 fixes)"
        )


def link_kwargs(relative: bool = False) -> dict[str, list[str]]:
    """Compile/link arguments; ``relative`` paths for setup.py (run from the project root)."""
    here = os.path.relpath(HERE, ROOT) if relative else HERE
    return {
        "libraries": ["nghttp2"],
        "extra_compile_args": ["-O2", "-std=gnu11"],
        "sources": [os.path.join(here, GLUE)],
        "include_dirs": [here],
    }


def glue_cdef() -> str:
    """mh2.h's cffi declarations, by uring/_build.py's ``cdef_from_header`` (one reader of
    ``/* cdef-begin */`` sections for every C unit; loaded by path: this file runs from
    setup.py and the tests, outside the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "monolake_uring_build", os.path.join(ROOT, "uring", "_build.py")
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # its dataclasses look it up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    with open(os.path.join(HERE, GLUE_HEADER)) as f:
        return str(module.cdef_from_header(f.read()))


def ffibuilder():  # type: ignore[no-untyped-def]
    """The cffi builder; raises when the header is missing or lacks the defences."""
    from cffi import FFI

    check_header()
    ffi = FFI()
    ffi.cdef(CDEF + glue_cdef())
    ffi.set_source(MODULE, f'#include <{HEADER}>\n#include "mh2.h"\n', **link_kwargs())
    return ffi


def extensions() -> list:
    """setuptools Extensions for setup.py; optional, so a failed build only warns."""
    from setuptools import Extension

    rel = os.path.relpath(GENERATED, ROOT)
    try:
        ffi = ffibuilder()
    except Exception as exc:  # no headers / no cffi: h2 stays unavailable
        sys.stderr.write(f"monolake: not building the HTTP/2 extension: {exc}\n")
        return []
    ffi.emit_c_code(GENERATED)
    kwargs = link_kwargs(relative=True)
    return [
        Extension(
            MODULE,
            sources=[rel, *kwargs["sources"]],
            optional=True,
            libraries=kwargs["libraries"],
            include_dirs=kwargs["include_dirs"],
            extra_compile_args=kwargs["extra_compile_args"],
        )
    ]


if __name__ == "__main__":
    # development: build the module next to this file (monolake/worker/h2/_nghttp2*.so)
    import glob
    import shutil

    target = ffibuilder().compile(tmpdir=os.path.join(ROOT, "build", "cffi-h2"), verbose=False)
    for so in glob.glob(
        os.path.join(os.path.dirname(target), "monolake", "worker", "h2", "_nghttp2*.so")
    ) or [target]:
        dest = os.path.join(HERE, os.path.basename(so))
        shutil.copy(so, dest + ".new")
        os.replace(dest + ".new", dest)
        sys.stderr.write(f"{so} -> {dest}\n")
