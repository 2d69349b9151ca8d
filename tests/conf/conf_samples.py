"""Config snippets shared by the conf tests."""

HTTP_SERVER = """
[servers.web]
proxy_type = "http"
listener = { type = "socket", value = "127.0.0.1:18080" }
[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = { type = "uri", value = "http://127.0.0.1:9000" } }]
"""


def with_keys(extra: str) -> str:
    """HTTP_SERVER with ``extra`` lines in the [servers.web] table itself."""
    return HTTP_SERVER.replace('proxy_type = "http"\n', 'proxy_type = "http"\n' + extra + "\n", 1)
