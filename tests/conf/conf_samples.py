"""Config snippets shared by the conf tests."""

from tests.config_text import UPSTREAM_9000, http_server

HTTP_SERVER = http_server(upstream=UPSTREAM_9000)


def with_keys(extra: str) -> str:
    """HTTP_SERVER with ``extra`` lines in the [servers.web] table itself."""
    return HTTP_SERVER.replace('proxy_type = "http"\n', 'proxy_type = "http"\n' + extra + "\n", 1)
