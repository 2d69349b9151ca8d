"""TOML snippets that many tests' configs are made of (one spelling of an HTTP server, so a
config change is made here once)."""

from __future__ import annotations

HELLO = '{ endpoint = { type = "builtin", value = "hello" } }'
UPSTREAM_9000 = '{ endpoint = { type = "uri", value = "http://127.0.0.1:9000" } }'


def uri_upstream(authority: str) -> str:
    """An upstream entry for ``http://AUTHORITY`` (a name is resolved to all its addresses)."""
    return f'{{ endpoint = {{ type = "uri", value = "http://{authority}" }} }}'


def http_server(
    name: str = "web", listen: str = "127.0.0.1:18080", upstream: str = HELLO, keys: str = ""
) -> str:
    """An HTTP server table ``name`` listening on ``listen``, one route ``/`` to ``upstream``;
    ``keys``: more lines in the server's own table."""
    own = f"{keys}\n" if keys else ""
    return f"""
[servers.{name}]
proxy_type = "http"
listener = {{ type = "socket", value = "{listen}" }}
{own}[[servers.{name}.routes]]
path = "/"
upstreams = [{upstream}]
"""
