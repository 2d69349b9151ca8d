"""Address parsing: ``host:port``, ``[v6]:port``, unix socket paths, http(s) URIs.

Each parser returns the parsed value or raises :class:`AddressError` whose text completes
"expected ..." so the validator can put it straight into a message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# sun_path is 108 bytes on Linux, including the terminating NUL
UNIX_PATH_MAX = 107

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class AddressError(ValueError):
    """``str(err)`` is what was expected, e.g. ``a port from 1 to 65535``."""


@dataclass(frozen=True)
class HostPort:
    host: str  # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_port(text: str) -> int:
    if not text.isdigit():
        raise AddressError("a port from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AddressError("a port from 1 to 65535")
    return port


def check_host(host: str) -> str:
    """An IP literal or a DNS name; IPv6 given without brackets. Returns it lower-cased."""
    if not host:
        raise AddressError('a host before the port, such as "127.0.0.1:8080" or "[::1]:8080"')
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if ":" in host:
        raise AddressError('an IPv6 address in brackets, such as "[::1]:8080"')
    if host.replace(".", "").isdigit():
        raise AddressError("a valid IPv4 address")
    if not _HOSTNAME.match(host):
        raise AddressError("an IP address or a host name")
    return host.lower()


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT`` or ``[IPV6]:PORT``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise AddressError('"[IPV6]:PORT", such as "[::1]:8080"')
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise AddressError('a valid IPv6 address in "[IPV6]:PORT"') from None
        return HostPort(host.lower(), parse_port(port_text))
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError('"HOST:PORT", such as "127.0.0.1:8080"')
    if ":" in host:
        raise AddressError('an IPv6 address in brackets, such as "[::1]:8080"')
    return HostPort(check_host(host), parse_port(port_text))


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def overlaps(a: HostPort, b: HostPort) -> bool:
    """Two TCP listeners that cannot both be bound by separate servers: same port and the same
    host, or one of them the wildcard (with SO_REUSEPORT the kernel would let both bind and then
    split connections between unrelated servers)."""
    if a.port != b.port:
        return False
    return a.host == b.host or is_wildcard(a.host) or is_wildcard(b.host)


def check_unix_path(path: str, *, parent_must_exist: bool) -> None:
    """An absolute path that fits ``sun_path``; its folder must exist for a listener."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise AddressError(
            f"a unix socket path of at most {UNIX_PATH_MAX} bytes (this one has {len(os.fsencode(path))})"
        )
    if parent_must_exist:
        parent = os.path.dirname(path) or "/"
        if not os.path.isdir(parent):
            raise AddressError(f"a unix socket path in an existing folder ({parent} does not exist)")


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    host: str
    port: int
    path: str
    query: str


def parse_http_uri(text: str) -> ParsedUri:
    """``http://host[:port][/path][?query]`` or ``https://...``."""
    try:
        parts = urlsplit(text)
    except ValueError:
        raise AddressError('an http:// or https:// URI, such as "http://127.0.0.1:9000/"') from None
    if parts.scheme not in ("http", "https"):
        raise AddressError('an http:// or https:// URI, such as "http://127.0.0.1:9000/"')
    if not parts.hostname:
        raise AddressError(f"a {parts.scheme}:// URI with a host")
    if parts.username is not None or parts.password is not None:
        raise AddressError("a URI without user information (user:password@)")
    if parts.fragment:
        raise AddressError("a URI without a #fragment")
    try:
        port = parts.port
    except ValueError:
        raise AddressError("a URI with a port from 1 to 65535") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    elif not 1 <= port <= 65535:
        raise AddressError("a URI with a port from 1 to 65535")
    host = parts.hostname
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError("a URI with a valid IPv6 address in brackets") from None
    else:
        check_host(host)
    return ParsedUri(parts.scheme, host.lower(), port, parts.path or "/", parts.query)
