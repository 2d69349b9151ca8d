"""TLS termination (SNI certificate choice, ALPN, minimum version), https upstreams
(verification, custom CA, SNI, client certificate), and PROXY protocol v1/v2."""

from __future__ import annotations

import socket
import ssl
import struct

import pytest

from tests.http.certs import make_ca, make_cert
from tests.http.conftest import LOOPS, Conn, run_worker
from tests.http.upstream import UpstreamServer
from tests.support import free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    other_ca = make_ca(d, "other-ca")
    return {
        "dir": d,
        "ca": ca,
        "other_ca": other_ca,
        "a": make_cert(d, ca, "a.test", ["a.test"]),
        "b": make_cert(d, ca, "b.test", ["b.test", "*.wild.test"]),
        "upstream": make_cert(d, ca, "upstream.test", ["upstream.test", "127.0.0.1"]),
        "client": make_cert(d, ca, "proxy-client", [], client=True),
    }


@pytest.fixture(scope="module")
def ups(pki):
    up_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    up_ctx.load_cert_chain(pki["upstream"].chain, pki["upstream"].key)
    mtls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"].chain))
    mtls_ctx.load_cert_chain(pki["upstream"].chain, pki["upstream"].key)
    mtls_ctx.verify_mode = ssl.CERT_REQUIRED
    with (
        UpstreamServer("plain") as plain,
        UpstreamServer("tls", ssl=up_ctx) as tls,
        UpstreamServer("mtls", ssl=mtls_ctx) as mtls,
    ):
        yield plain, tls, mtls


def _route(prefix: str, url: str, extra: str = "") -> str:
    return f"""
[[servers.px.routes]]
path_prefix = "{prefix}"
preserve_path = true
upstreams = [{{ endpoint = {{ type = "uri", value = "{url}" }} }}]
{extra}
"""


@pytest.fixture(scope="module", params=LOOPS, ids=lambda v: getattr(v, "values", [v])[0])
def proxy(request, pki, ups, tmp_path_factory):
    loop = request.param
    plain, tls, mtls = ups
    ca, a, b, client = pki["ca"].chain, pki["a"], pki["b"], pki["client"]
    config = (
        f"""
[servers.px]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
tls = {{ certificates = [{{ chain = "{a.chain}", key = "{a.key}" }}, {{ chain = "{b.chain}", key = "{b.key}" }}], min_version = "1.2" }}
[servers.px.timeout]
upstream_connect_timeout_sec = 2
"""
        + _route("/plain", plain.url)
        + _route("/tls", tls.url, f'tls_ca = "{ca}"')
        + _route("/sni", f"https://127.0.0.1:{tls.port}", f'tls_ca = "{ca}"\ntls_sni = "upstream.test"')
        + _route("/badca", tls.url, f'tls_ca = "{pki["other_ca"].chain}"')
        + _route("/noverify", tls.url, "tls_verify = false")
        + _route(
            "/mtls",
            mtls.url,
            f'tls_ca = "{ca}"\ntls_client_cert = "{client.chain}"\ntls_client_key = "{client.key}"',
        )
        + _route("/nocert", mtls.url, f'tls_ca = "{ca}"')
        + f"""
[servers.pp]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
proxy_protocol = true
"""
        + _route("/plain", plain.url).replace("servers.px", "servers.pp")
        + f"""
[servers.t13]
proxy_type = "http"
listener = {{ type = "socket", value = "127.0.0.1:{free_port()}" }}
tls = {{ chain = "{a.chain}", key = "{a.key}", min_version = "1.3" }}
proxy_protocol = true
[[servers.t13.routes]]
path = "/echo"
upstreams = [{{ endpoint = {{ type = "builtin", value = "echo" }} }}]
"""
    )
    with run_worker(tmp_path_factory.mktemp("w"), config, loop=getattr(loop, "values", [loop])[0]) as w:
        yield w


class TlsConn(Conn):
    def __init__(self, port: int, ctx: ssl.SSLContext, sni: str | None, prefix: bytes = b"") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if prefix:
            raw.sendall(prefix)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        self.buf = b""


def _client_ctx(pki, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"].chain))
    ctx.set_alpn_protocols(["http/1.1"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_default_certificate_and_alpn(proxy, pki):
    with TlsConn(proxy.port(), _client_ctx(pki), "a.test") as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        assert dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"] == "a.test"
        r = c.request("GET", "/plain/info")
        assert r.status == 200
        assert dict(map(tuple, r.json()["headers"]))["x-forwarded-proto"] == "https"


@pytest.mark.parametrize("sni,cn", [("b.test", "b.test"), ("x.wild.test", "b.test"), ("a.test", "a.test")])
def test_certificate_chosen_by_sni(proxy, pki, sni, cn):
    with TlsConn(proxy.port(), _client_ctx(pki), sni) as c:
        assert dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"] == cn
        assert c.request("GET", "/plain/x").status == 200


def test_unknown_sni_gets_the_default_certificate(proxy, pki):
    ctx = _client_ctx(pki, check_hostname=False)
    with TlsConn(proxy.port(), ctx, "unknown.test") as c:
        assert dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"] == "a.test"


def test_keepalive_over_tls_with_body(proxy, pki):
    with TlsConn(proxy.port(), _client_ctx(pki), "a.test") as c:
        for i in range(5):
            r = c.request("POST", "/plain/sink", body=b"x" * (100000 * i))
            assert r.json()["length"] == 100000 * i


def test_min_version_is_enforced(proxy, pki):
    ctx = _client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    # t13 also wants a PROXY header first
    with pytest.raises((ssl.SSLError, ConnectionError)):
        TlsConn(proxy.port("t13"), ctx, "a.test", prefix=b"PROXY UNKNOWN\r\n").request("GET", "/echo")


def test_tls_13_after_proxy_header_in_the_same_segment(proxy, pki):
    ctx = _client_ctx(pki)
    with TlsConn(
        proxy.port("t13"), ctx, "a.test", prefix=b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 443\r\n"
    ) as c:
        doc = c.request("GET", "/echo").json()
    assert doc["tls"] == "TLSv1.3"
    assert doc["peer"] == "192.0.2.10:40000"


@pytest.mark.parametrize(
    "prefix,expect",
    [("/tls", 200), ("/sni", 200), ("/noverify", 200), ("/badca", 502), ("/mtls", 200), ("/nocert", 502)],
)
def test_https_upstreams(proxy, pki, prefix, expect):
    with TlsConn(proxy.port(), _client_ctx(pki), "a.test") as c:
        r = c.request("GET", f"{prefix}/info")
        assert r.status == expect, r
        if prefix == "/mtls":
            assert r.json()["client_cert"] == "proxy-client"
        # the connection stays usable after an upstream TLS failure
        assert c.request("GET", "/plain/x").status == 200


def _plain_proxy_request(port: int, prefix: bytes, path: str = "/plain/info") -> dict:
    with Conn(port) as c:
        c.send(prefix + f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 200
        return r.json()


def test_proxy_protocol_v1(proxy):
    doc = _plain_proxy_request(proxy.port("pp"), b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n")
    h = dict(map(tuple, doc["headers"]))
    assert h["x-forwarded-for"] == "198.51.100.7"
    assert h["forwarded"].startswith("for=198.51.100.7;")


def test_proxy_protocol_v1_ipv6(proxy):
    doc = _plain_proxy_request(proxy.port("pp"), b"PROXY TCP6 2001:db8::1 ::1 5555 80\r\n")
    h = dict(map(tuple, doc["headers"]))
    assert h["x-forwarded-for"] == "2001:db8::1"
    assert h["forwarded"].startswith('for="[2001:db8::1]";')


def test_proxy_protocol_v2(proxy):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton("203.0.113.9") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 6000, 80)
    tlv = b"\x04\x00\x01\x00"  # a NOOP TLV must be skipped
    header = sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr) + len(tlv)) + addr + tlv
    doc = _plain_proxy_request(proxy.port("pp"), header)
    assert dict(map(tuple, doc["headers"]))["x-forwarded-for"] == "203.0.113.9"


def test_proxy_protocol_v2_local_keeps_socket_address(proxy):
    header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + b"\x00\x00"
    doc = _plain_proxy_request(proxy.port("pp"), header)
    assert dict(map(tuple, doc["headers"]))["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12,
    ],
)
def test_missing_or_bad_proxy_header_closes(proxy, junk):
    with Conn(proxy.port("pp")) as c:
        c.send(junk)
        assert c.closed_by_peer()
        assert c.buf == b""
