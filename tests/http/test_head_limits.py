"""Head limits: total size, one field line, field count; 431 for requests, 502 for responses.

Every parser counts the same way (HeadLimits.field in worker/http/parser.py is the twin of
field_limits in uring/mu_http.c): a field line is name + ": " + value, a head's size the sum of
name + value + 4 over its fields. An upstream head over a limit gets the client a 502 and costs
that upstream connection, never the next request (issue 16 §3).
"""

from __future__ import annotations

import pytest

from monolake.worker.http.parser import HeadLimits, ParseError
from tests.http.conftest import VARIANT_IDS, VARIANTS, Conn, Reply, run_worker, variant
from tests.http.upstream import UpstreamServer
from tests.support import free_port

LIMITS = """max_header_size = 4096
max_header_line_size = 1024
max_headers = 20
max_response_header_size = 8192
"""


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def proxy(request, tmp_path_factory):
    parser, loop = variant(request.param)
    with UpstreamServer("h") as up:
        route = f"""path_prefix = "/"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{up.url}" }} }}]
"""
        config = f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
http_parser = "{parser}"
{LIMITS}
[[servers.px.routes]]
{route}
[servers.dflt]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
http_parser = "{parser}"
[[servers.dflt.routes]]
{route}"""
        with run_worker(tmp_path_factory.mktemp("limits"), config, loop) as w:
            yield w


def _get(port: int, target: str, fields: bytes = b"") -> Reply:
    with Conn(port) as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n".encode() + fields + b"\r\n")
        return c.read_response()


def _fields(n: int, size: int) -> bytes:
    return b"".join(b"x-r%d: %s\r\n" % (i, b"v" * size) for i in range(n))


# (n, size) of the response's extra fields -> status; the upstream adds content-length
@pytest.mark.parametrize(
    "n,size,status",
    [
        (19, 300, 200),  # 20 fields, each line < 1024, about 6 KiB in all
        (20, 10, 502),  # 21 fields
        (1, 1100, 502),  # one line over 1024
        (1, 1020, 502),  # "x-h0" + ": " + 1020 = 1026: over
        (1, 1018, 200),  # 4 + 2 + 1018 = 1024: the limit itself is allowed
        (10, 900, 502),  # about 9 KiB > 8192
    ],
    ids=["within", "too-many", "long-line", "line-edge-over", "line-edge-within", "too-large"],
)
def test_response_head_limits(proxy, n, size, status):
    w = proxy
    r = _get(w.port(), f"/head?n={n}&size={size}")
    assert r.status == status, r
    if status == 200:
        assert r.body == b"ok" and r.header("x-h0") == "v" * size
    # the connection that brought an oversized head is gone; the next request is served
    assert _get(w.port(), "/delay/next?s=0").body == b"next"


def test_response_heads_over_the_default_limit_are_refused(proxy):
    """40 KiB is within the default (max_response_header_size = max_header_size = 64 KiB); 70
    KiB is not, where before some limit between 70 KiB and 1 MiB applied."""
    w = proxy
    assert _get(w.port("dflt"), "/head?n=50&size=800").status == 200  # 40 KiB
    assert _get(w.port("dflt"), "/head?n=90&size=800").status == 502  # 70 KiB: too many as well
    assert _get(w.port("dflt"), "/head?n=70&size=1000").status == 502  # 70 KiB in 71 fields


@pytest.mark.parametrize(
    "fields,status",
    [
        (_fields(19, 100), 200),  # with Host: 20 fields
        (_fields(20, 10), 431),  # 21
        (_fields(1, 1100), 431),  # one line over 1024
        (_fields(1, 1019), 431),  # "x-r0" + ": " + 1019 = 1025: over
        (_fields(1, 1018), 200),  # 4 + 2 + 1018 = 1024: the limit itself is allowed
        (_fields(5, 1000), 431),  # over 4096 in all
    ],
    ids=["within", "too-many", "long-line", "line-edge-over", "line-edge-exact", "too-large"],
)
def test_request_head_limits(proxy, fields, status):
    r = _get(proxy.port(), "/delay/req?s=0", fields)
    assert r.status == status, r


def test_the_python_twin_counts_as_documented():
    limits = HeadLimits(size=100, line=20, count=3, status=502)
    size = limits.field(b"a", b"b" * 17, 0, 0)  # 1 + 2 + 17 = 20: the limit itself
    assert size == 22
    with pytest.raises(ParseError) as exc:
        limits.field(b"a", b"b" * 18, 0, 0)
    assert exc.value.status == 502 and "line" in str(exc.value)
    with pytest.raises(ParseError, match="too many"):
        limits.field(b"a", b"b", 10, 3)
    with pytest.raises(ParseError, match="response header block too large"):
        limits.field(b"a", b"b" * 17, 90, 1)
