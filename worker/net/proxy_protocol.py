"""PROXY protocol v1 (text) and v2 (binary) header parsing, for listeners behind a load balancer.

``parse(buf)`` returns None while the header is incomplete, else ``(consumed, source, dest)``
where the addresses are ``(host, port)`` tuples, or None for ``UNKNOWN`` / ``LOCAL``.
Anything malformed raises ``ProxyProtocolError`` (the connection is then closed).
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107


class ProxyProtocolError(ValueError):
    pass


Addr = tuple[str, int] | str | None

# PROXY v2 address family (high nibble) -> its name, address type and address size in bytes
_V2_INET: dict[int, tuple[str, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], int]] = {
    0x1: ("IPv4", ipaddress.IPv4Address, 4),
    0x2: ("IPv6", ipaddress.IPv6Address, 16),
}


def parse(buf: bytes) -> tuple[int, Addr, Addr] | None:
    if buf[:1] == b"P":
        return _parse_v1(buf)
    if buf[:1] == b"\r":
        return _parse_v2(buf)
    if buf:
        raise ProxyProtocolError("connection does not start with a PROXY protocol header")
    return None


def _parse_v1(buf: bytes) -> tuple[int, Addr, Addr] | None:
    if not b"PROXY "[: len(buf)] == buf[:6]:
        raise ProxyProtocolError("bad PROXY v1 signature")
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 header too long")
        return None
    if end + 2 > V1_MAX:
        raise ProxyProtocolError("PROXY v1 header too long")
    parts = buf[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return end + 2, None, None
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 header")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
        sport, dport = int(parts[4]), int(parts[5])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyProtocolError(f"malformed PROXY v1 address: {exc}") from None
    want = 4 if parts[1] == b"TCP4" else 6
    if src.version != want or dst.version != want or not (0 <= sport < 65536 and 0 <= dport < 65536):
        raise ProxyProtocolError("PROXY v1 address family or port mismatch")
    if parts[4] != str(sport).encode() or parts[5] != str(dport).encode():
        raise ProxyProtocolError("PROXY v1 port not in canonical form")
    return end + 2, (str(src), sport), (str(dst), dport)


def _parse_v2(buf: bytes) -> tuple[int, Addr, Addr] | None:
    if len(buf) < 16:
        if V2_SIGNATURE[: len(buf)] != buf[:12]:
            raise ProxyProtocolError("bad PROXY v2 signature")
        return None
    if buf[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("bad PROXY v2 signature")
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY protocol version")
    total = 16 + length
    if len(buf) < total:
        return None
    cmd = ver_cmd & 0x0F
    if cmd == 0:  # LOCAL: health check from the balancer itself, keep the socket addresses
        return total, None, None
    if cmd != 1:
        raise ProxyProtocolError("unsupported PROXY v2 command")
    body = buf[16:total]
    family, proto = fam >> 4, fam & 0x0F
    inet = _V2_INET.get(family)
    if inet is not None:  # AF_INET, AF_INET6: source and destination address, then ports
        name, address, size = inet
        block = 2 * size + 4
        if length < block:
            raise ProxyProtocolError(f"short PROXY v2 {name} block")
        src = str(address(body[0:size]))
        dst = str(address(body[size : 2 * size]))
        sport, dport = struct.unpack("!HH", body[2 * size : block])
        return total, (src, sport), (dst, dport)
    if family == 0x3:  # AF_UNIX
        if length < 216:
            raise ProxyProtocolError("short PROXY v2 unix block")
        return (
            total,
            body[0:108].split(b"\0", 1)[0].decode("utf-8", "replace"),
            body[108:216].split(b"\0", 1)[0].decode("utf-8", "replace"),
        )
    if family == 0x0 and proto == 0x0:  # UNSPEC
        return total, None, None
    raise ProxyProtocolError("unsupported PROXY v2 address family")
