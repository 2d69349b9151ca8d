"""The HTTP-to-Thrift gateway (``proxy_type = "http_thrift"``) as a real worker process in
front of real thriftpy2 servers: JSON round trips for every Thrift type, declared
exceptions, and the 400/404/405/502/504 error mapping."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.thrift.thrift_support import IDL, backend, endpoint, free_port, listener, proxy


class Gw:
    def __init__(self, servers: dict[str, list[str]]) -> None:
        self.servers = servers

    def post(
        self, server: str, path: str, body: Any = None, raw: bytes | None = None, method: str = "POST"
    ) -> tuple[int, Any, dict[str, str]]:
        host, _, port = self.servers[server][0].rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, json.loads(payload), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("gateway")
    with ExitStack() as stack:
        b1, _ = stack.enter_context(backend("framed", name="b1"))
        bt, _ = stack.enter_context(backend("ttheader", name="bt"))
        dead = f"127.0.0.1:{free_port()}"

        def server(name: str, upstream: str, extra: str = "") -> str:
            return (
                f'[servers.{name}]\nproxy_type = "http_thrift"\n'
                f'listener = {listener(f"127.0.0.1:{free_port()}")}\nidl = "{IDL}"\n{extra}\n'
                f"route = {{ upstreams = [{{ endpoint = {endpoint(upstream)} }}] }}\n"
            )

        servers = "\n".join(
            [
                server("gw", b1),
                server(
                    "custom",
                    bt,
                    'gateway_path = "/rpc/{method}"\nexception_status = 409\nthrift_transport = "ttheader"',
                ),
                server("down", dead),
                server("slow", b1, "timeout = { upstream_read_timeout_sec = 0.5 }"),
            ]
        )
        px = stack.enter_context(proxy(tmp, servers))
        yield Gw(px.servers)


FULL_ITEM = {
    "name": "full ✓",
    "count": 2**40,
    "inner": {"id": 1, "label": "one"},
    "inners": [{"id": 2}, {"id": 3, "label": "three"}],
    "scores": {"a": 1, "b": -2},
    "tags": ["x", "y"],
    "color": "BLUE",
    "blob": base64.b64encode(bytes(range(256))).decode(),
    "ratio": 0.125,
    "flag": True,
    "tiny": -128,
    "small": 32767,
    "nested": {"1": ["a", "b"], "-5": []},
    "deep": [{"k": {"id": 9, "label": "deep"}}, {}],
    "palette": ["RED", "GREEN"],
    "keyed": [[{"id": 4}, "four"]],
    "flags": {"true": 1.5, "false": "-Infinity"},
}


def test_every_thrift_type_round_trips(gw: Gw) -> None:
    status, body, headers = gw.post("gw", "/Echo/roundtrip", {"item": FULL_ITEM})
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert body == {"result": FULL_ITEM}


def test_defaults_and_optional_fields(gw: Gw) -> None:
    status, body, _ = gw.post("gw", "/Echo/roundtrip", {"item": {"name": "bare", "inner": None}})
    assert status == 200
    # count and color take their IDL defaults; unset optional fields are left out
    assert body == {"result": {"name": "bare", "count": 7, "color": "GREEN"}}


def test_enum_numbers_nan_and_maps_with_enum_keys(gw: Gw) -> None:
    status, body, _ = gw.post("gw", "/Echo/roundtrip", {"item": {"name": "n", "color": 1, "ratio": "NaN"}})
    assert status == 200 and body["result"]["color"] == "RED" and body["result"]["ratio"] == "NaN"
    status, body, _ = gw.post(
        "gw", "/Echo/colors", {"cs": ["RED", 3], "ids": [1, 2, 3], "names": {"BLUE": "b", "2": "g"}}
    )
    assert status == 200
    assert body == {"result": ["RED", "BLUE", "GREEN", "BLUE", "BLUE"]}  # + [len(ids)] = 3 = BLUE


def test_scalars_binary_void_and_oneway(gw: Gw) -> None:
    assert gw.post("gw", "/Echo/ping")[:2] == (200, {"result": "pong"})
    assert gw.post("gw", "/Echo/ping", raw=b"{}")[:2] == (200, {"result": "pong"})
    assert gw.post("gw", "/Echo/add", {"a": -(2**31), "b": 2**62})[:2] == (200, {"result": 2**62 - 2**31})
    data = base64.b64encode(b"\x00\x01\x02").decode()
    assert gw.post("gw", "/Echo/blob", {"data": data})[:2] == (
        200,
        {"result": base64.b64encode(b"\x02\x01\x00").decode()},
    )
    assert gw.post("gw", "/Echo/nothing", {})[:2] == (200, {"result": None})
    assert gw.post("gw", "/Echo/fire", {"note": "via-gateway"})[:2] == (202, {"result": None})
    status, body, _ = gw.post("gw", "/Echo/fired")
    assert status == 200 and "via-gateway" in body["result"]


def test_declared_exceptions(gw: Gw) -> None:
    status, body, _ = gw.post("gw", "/Echo/roundtrip", {"item": {"name": "missing"}})
    assert status == 500
    assert body == {
        "exception": {"type": "NotFound", "field": "nf", "fields": {"what": "item missing", "code": 404}}
    }
    status, body, _ = gw.post("gw", "/Echo/roundtrip", {"item": {"name": "invalid"}})
    assert status == 500 and body["exception"]["type"] == "Invalid"


def test_custom_path_status_and_ttheader_upstream(gw: Gw) -> None:
    assert gw.post("custom", "/rpc/whoami")[:2] == (200, {"result": "bt"})
    status, body, _ = gw.post("custom", "/rpc/roundtrip", {"item": {"name": "missing"}})
    assert status == 409 and body["exception"]["type"] == "NotFound"
    assert gw.post("custom", "/Echo/whoami")[0] == 404


@pytest.mark.parametrize("path,method", [("/Echo/nope", "POST"), ("/Nope/ping", "POST"), ("/ping", "POST")])
def test_unknown_method_is_404(gw: Gw, path: str, method: str) -> None:
    status, body, _ = gw.post("gw", path, {}, method=method)
    assert status == 404 and body["error"]["kind"] == "not_found"


def test_other_http_methods_are_405(gw: Gw) -> None:
    status, _body, headers = gw.post("gw", "/Echo/ping", method="GET")
    assert status == 405 and headers["allow"] == "POST"


@pytest.mark.parametrize(
    "args,field",
    [
        ({"item": {"name": "x", "inners": [{"id": 1}, {"id": "2"}]}}, "item.inners[1].id"),
        ({"item": {"name": "x", "scores": {"a": 1.5}}}, 'item.scores["a"]'),
        ({"item": {"name": "x", "tags": ["ok", 3]}}, "item.tags[1]"),
        ({"item": {"name": "x", "color": "PURPLE"}}, "item.color"),
        ({"item": {"name": "x", "blob": "not base64!"}}, "item.blob"),
        ({"item": {"name": "x", "tiny": 300}}, "item.tiny"),
        ({"item": {"name": "x", "flag": "yes"}}, "item.flag"),
        ({"item": {"name": "x", "nested": {"one": []}}}, 'item.nested["one"]'),
        ({"item": {"name": "x", "keyed": {"k": "v"}}}, "item.keyed"),
        ({"item": {"name": "x", "bogus": 1}}, "item.bogus"),
        ({"item": {"inner": {"id": 1}}}, "item.name"),
        ({"item": {"name": "x", "inner": {"label": "no id"}}}, "item.inner.id"),
        ({"item": "a string"}, "item"),
        ({"itm": {}}, "itm"),
        ([1, 2], ""),
    ],
)
def test_type_mismatch_is_400_naming_the_field(gw: Gw, args: Any, field: str) -> None:
    status, body, _ = gw.post("gw", "/Echo/roundtrip", args)
    assert status == 400, body
    assert body["error"]["kind"] == "bad_argument"
    assert body["error"]["field"] == field


def test_bad_json_is_400(gw: Gw) -> None:
    status, body, _ = gw.post("gw", "/Echo/echo", raw=b'{"text": ')
    assert status == 400 and body["error"]["kind"] == "bad_json"


def test_upstream_down_is_502_and_timeout_is_504(gw: Gw) -> None:
    status, body, _ = gw.post("down", "/Echo/ping")
    assert status == 502 and body["error"]["kind"] == "upstream_error"
    status, body, _ = gw.post("slow", "/Echo/slow", {"seconds": 3, "tag": "t"})
    assert status == 504 and body["error"]["kind"] == "upstream_timeout"
    assert gw.post("slow", "/Echo/slow", {"seconds": 0, "tag": "t"})[:2] == (200, {"result": "t"})
