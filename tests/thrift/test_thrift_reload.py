"""Reload through the real master (``monolaked``): the Thrift proxy's and the gateway's idle
upstream connections move to the new worker generation (fds over the control channel) or
the new in-place stack, so no new upstream connection is opened."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.harness import Monolaked
from tests.thrift.thrift_support import IDL, backend, client, endpoint, free_port


@pytest.mark.parametrize("mode", ["generation", "in_place"])
def test_reload_keeps_pooled_upstream_connections(tmp_path: Path, mode: str) -> None:
    with backend("framed", name="br") as (addr, _):
        tport, gport = free_port(), free_port()
        text = f"""
[runtime]
workers = 1

[supervisor]
control_socket = "{tmp_path}/control.sock"
log_format = "json"
heartbeat_interval = 0.5
graceful_timeout = 5
drain_timeout = 5
reload_timeout = 20
reload_mode = "{mode}"

[servers.rpc]
proxy_type = "thrift"
listener = {{ type = "socket", value = "127.0.0.1:{tport}" }}
route = {{ upstreams = [{{ endpoint = {endpoint(addr)} }}] }}

[servers.api]
proxy_type = "http_thrift"
idl = "{IDL}"
listener = {{ type = "socket", value = "127.0.0.1:{gport}" }}
route = {{ upstreams = [{{ endpoint = {endpoint(addr)} }}] }}
"""
        m = Monolaked(tmp_path, text)
        try:
            m.wait_ready(1)
            c = client(f"127.0.0.1:{tport}")
            for i in range(5):
                assert c.echo(str(i)) == str(i)
            c.close()

            def gateway_accepted() -> int:
                conn = http.client.HTTPConnection("127.0.0.1", gport, timeout=10)
                try:
                    conn.request("POST", "/Echo/accepted", body=b"{}")
                    resp = conn.getresponse()
                    assert resp.status == 200
                    return json.loads(resp.read())["result"]
                finally:
                    conn.close()

            before = gateway_accepted()  # the proxy's connection plus the gateway's
            assert before == 2
            pids = m.worker_pids()
            result = m.cli("reload", timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            m.wait_ready(1)
            if mode == "generation":
                assert m.worker_pids() != pids
            c = client(f"127.0.0.1:{tport}")
            try:
                assert c.accepted() == before  # the adopted connection, not a new one
            finally:
                c.close()
            assert gateway_accepted() == before
        finally:
            m.close()
