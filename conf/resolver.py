"""The ``[resolver]`` section: how workers resolve upstream host names and SRV records.

Absent, every setting has its default and the name servers come from /etc/resolv.conf (read
by each worker when it starts). Names here are part of the operator-facing contract (issue 15
§4): nameservers, min_ttl_sec, max_ttl_sec, negative_ttl_sec, timeout_sec; max_stale_sec bounds
how long a last good answer keeps serving while the name servers fail.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from .fields import MISSING, Table, found_with_type

RESOLVER_KEYS = (
    "nameservers",
    "min_ttl_sec",
    "max_ttl_sec",
    "negative_ttl_sec",
    "timeout_sec",
    "max_stale_sec",
)
DNS_PORT = 53


@dataclass(frozen=True)
class ResolverConfig:
    nameservers: tuple[str, ...] = ()  # "IP" or "IP:PORT" / "[IPV6]:PORT"; () = /etc/resolv.conf
    min_ttl_sec: float = 1.0  # floor under a published TTL (0 = none)
    max_ttl_sec: float = 300.0  # ceiling over a published TTL
    negative_ttl_sec: float = 5.0  # NXDOMAIN / no data cached this long; also the retry
    timeout_sec: float = 2.0  # one lookup, all servers and retries included
    max_stale_sec: float = 3600.0  # a last good answer serves this long past its TTL

    def servers(self) -> list[tuple[str, int]]:
        """The configured name servers as (ip, port) pairs (validated at load)."""
        return [split_nameserver(text) for text in self.nameservers]


def split_nameserver(text: str) -> tuple[str, int]:
    """``IP``, ``IPV4:PORT`` or ``[IPV6]:PORT`` -> (ip, port); raises ValueError with what was
    expected."""
    expected = 'an IP address with an optional port, such as "127.0.0.1:5353" or "[::1]:53"'
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (text[close + 1 :] and not text[close + 1 :].startswith(":")):
            raise ValueError(expected)
        host, port_text = text[1:close], text[close + 2 :]
        if close + 1 < len(text) and not port_text:
            raise ValueError(expected)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text:
            raise ValueError(expected)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(expected + " (a name server is given by address, not by name)") from None
    port = DNS_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError("a port from 1 to 65535 after the address")
        port = int(port_text)
    return str(ip), port


def parse_resolver(top: Table) -> ResolverConfig:
    """Read ``[resolver]``; every problem is recorded on ``top.problems``."""
    t = top.subtable("resolver", known=RESOLVER_KEYS)
    defaults = ResolverConfig()
    if t is None:
        return defaults
    nameservers = _nameservers(t)
    min_ttl = _seconds(t, "min_ttl_sec", defaults.min_ttl_sec, zero_ok=True)
    max_ttl = t.duration("max_ttl_sec", defaults.max_ttl_sec)
    if max_ttl < min_ttl:
        t.expected("max_ttl_sec", f"a duration >= min_ttl_sec ({min_ttl:g})", t.raw["max_ttl_sec"])
        max_ttl = max(min_ttl, defaults.max_ttl_sec)
    negative = t.duration("negative_ttl_sec", defaults.negative_ttl_sec)
    timeout = t.duration("timeout_sec", defaults.timeout_sec)
    stale = _seconds(t, "max_stale_sec", defaults.max_stale_sec, zero_ok=True)
    t.done()
    return ResolverConfig(
        nameservers=nameservers,
        min_ttl_sec=min_ttl,
        max_ttl_sec=max_ttl,
        negative_ttl_sec=negative,
        timeout_sec=timeout,
        max_stale_sec=stale,
    )


def _nameservers(t: Table) -> tuple[str, ...]:
    used, value = t.lookup("nameservers")
    if value is MISSING:
        return ()
    if not isinstance(value, list) or not value:
        t.expected(
            used,
            'a non-empty array of name server addresses, such as ["127.0.0.1:5353"] '
            "(leave the key out to use /etc/resolv.conf)",
            found_with_type(value) if not isinstance(value, list) else "an empty array",
            raw=True,
        )
        return ()
    out: list[str] = []
    for i, item in enumerate(value):
        key = f"{used}[{i}]"
        if not isinstance(item, str):
            t.expected(key, "a string", found_with_type(item), raw=True)
            continue
        try:
            ip, port = split_nameserver(item)
        except ValueError as exc:
            t.expected(key, str(exc), item)
            continue
        out.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return tuple(out)


def _seconds(t: Table, name: str, default: float, *, zero_ok: bool) -> float:
    """A number of seconds >= 0 (``duration`` insists on > 0)."""
    used, value = t.lookup(name)
    if value is MISSING:
        return float(default)
    expected = "a number of seconds >= 0" if zero_ok else "a duration in seconds (a number > 0)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        t.expected(used, expected, found_with_type(value), raw=True)
        return float(default)
    number: Any = value
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        t.expected(used, expected, value)
        return float(default)
    return float(number)
