"""DNS lookups for upstream discovery: dnspython on the worker's own asyncio loop.

Why dnspython (and not c-ares through pycares/aiodns): its asyncio backend is plain
``loop.create_datagram_endpoint`` / ``open_connection``, so it runs on both of our loops (the
io_uring loop is a selector loop underneath) with no thread at all, where current aiodns
drives c-ares from an event thread of its own. It is pure Python (no second C library to
build), exposes each RRset's TTL and the SRV fields directly, reads /etc/resolv.conf, and
takes name servers with ports. Its per-query cost does not matter here: a name is queried
once per TTL per worker, never per connect.

A lookup either answers (possibly with no records: NXDOMAIN or no data, cached for
``negative_ttl_sec``) or raises :class:`LookupFailed` (timeout, SERVFAIL, REFUSED, no route):
the caller then keeps its last good answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monolake.conf.resolver import ResolverConfig

if TYPE_CHECKING:
    import dns.asyncresolver

# dnspython is imported by the first DnsClient, not here: it costs a worker ~5 MB of RSS and
# a fraction of a second at start, which a config without host names need not pay.

HOSTS_FILE = "/etc/hosts"
HOSTS_TTL = 30.0  # /etc/hosts answers are re-read this often (clamped by min/max TTL)


class LookupFailed(Exception):
    """No answer at all (the name servers failed); ``str()`` says why, for one log line."""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Answer:
    """What a name server said: records (addresses as text, or SrvRecords) and the smallest
    published TTL; no records means NXDOMAIN or no data (a negative answer)."""

    records: tuple[object, ...]
    ttl: float

    @property
    def negative(self) -> bool:
        return not self.records


class HostsFile:
    """/etc/hosts, as getaddrinfo would read it (used only when the name servers come from
    /etc/resolv.conf, so ``localhost`` and hosts-file names keep working)."""

    def __init__(self, path: str = HOSTS_FILE) -> None:
        self.path = path
        self._mtime = -1.0
        self._names: dict[str, tuple[str, ...]] = {}

    def lookup(self, name: str) -> tuple[str, ...]:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return ()
        if mtime != self._mtime:
            self._mtime = mtime
            self._names = self._parse()
        return self._names.get(name.lower().rstrip("."), ())

    def _parse(self) -> dict[str, tuple[str, ...]]:
        names: dict[str, list[str]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            return {}
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                ip = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
            except ValueError:
                continue
            for name in fields[1:]:
                found = names.setdefault(name.lower(), [])
                if ip not in found:
                    found.append(ip)
        return {k: tuple(v) for k, v in names.items()}


class DnsClient:
    """Lookups with one ``[resolver]`` setting; one per worker (no shared state)."""

    def __init__(self, cfg: ResolverConfig) -> None:
        self.cfg = cfg
        self.system = not cfg.nameservers
        self.hosts = HostsFile() if self.system else None
        self.resolver = self._resolver(cfg)

    @staticmethod
    def _resolver(cfg: ResolverConfig) -> dns.asyncresolver.Resolver:
        import dns.asyncresolver
        import dns.nameserver
        import dns.resolver

        if cfg.nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in cfg.servers()]
        else:
            try:
                r = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # no /etc/resolv.conf: glibc's default, a server on this host
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = ["127.0.0.1"]
            r.use_search_by_default = True  # as getaddrinfo: resolv.conf's search and ndots
        r.cache = None  # the watches are the cache (with TTL floor, ceiling and stale rules)
        r.lifetime = cfg.timeout_sec
        r.timeout = cfg.timeout_sec
        return r

    def describe(self) -> str:
        servers = ", ".join(str(ns) for ns in self.resolver.nameservers)
        return servers + (" (from /etc/resolv.conf)" if self.system else "")

    async def addresses(self, name: str) -> Answer:
        """A and AAAA records of ``name`` (queried at once), IPv4 first."""
        if self.hosts is not None:
            found = self.hosts.lookup(name)
            if found:
                return Answer(found, HOSTS_TTL)
        a, aaaa = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"))
        records = tuple(str(r) for r in a.records) + tuple(str(r) for r in aaaa.records)
        ttls = [x.ttl for x in (a, aaaa) if x.records]
        return Answer(records, min(ttls) if ttls else min(a.ttl, aaaa.ttl))

    async def srv(self, name: str) -> Answer:
        """SRV records of ``name``; a lone "." target means "no such service" (RFC 2782)."""
        got = await self._query(name, "SRV")
        records = tuple(_srv_record(r) for r in got.records)
        return Answer(tuple(r for r in records if r.target not in ("", ".")), got.ttl)

    async def _query(self, name: str, rdtype: str) -> Answer:
        import dns.exception
        import dns.resolver

        try:
            answer = await self.resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Answer((), self.cfg.negative_ttl_sec)
        except dns.resolver.LifetimeTimeout:
            raise LookupFailed(
                f"{rdtype} {name}: no answer within {self.cfg.timeout_sec:g}s from {self.describe()}"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise LookupFailed(f"{rdtype} {name}: {_first_line(exc)}") from None
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            raise LookupFailed(f"{rdtype} {name}: {type(exc).__name__}: {exc}") from None
        rrset: Any = answer.rrset
        if rrset is None:
            return Answer((), self.cfg.negative_ttl_sec)
        return Answer(tuple(rrset), float(rrset.ttl))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _srv_record(rdata: Any) -> SrvRecord:
    """One dnspython SRV rdata (the library is untyped) as our record."""
    target = rdata.target.to_text(omit_final_dot=True).lower()
    return SrvRecord(int(rdata.priority), int(rdata.weight), int(rdata.port), target)
