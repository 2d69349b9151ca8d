"""TLS for the proxy: server contexts with SNI certificate choice, a memory-BIO session that
runs on any event loop's plain transport, and client contexts for https upstreams.

The server side uses ``ssl.MemoryBIO`` rather than ``loop.start_tls`` because the bytes after
a PROXY protocol header may already contain the ClientHello, and because it only needs the
plain Protocol/transport API that every loop (asyncio, uvloop, io_uring) offers.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import structlog

from monolake.worker.service.context import TlsInfo

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    pass


def _cert_names(chain: str) -> list[str]:
    """DNS names (SAN, else CN) of the leaf certificate in a PEM file, lower-case."""
    try:
        decoded = ssl._ssl._test_decode_cert(chain)  # type: ignore[attr-defined]
    except Exception:  # names are only used for SNI choice
        return []
    names = [v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    names.append(v.lower())
    return names


def _server_context(
    chain: str, key: str, min_version: str, alpn: tuple[str, ...] = ("http/1.1",)
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS.get(min_version, ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(chain, key)
    ctx.set_alpn_protocols(list(alpn))  # the server's preference order (h2 first when on)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


class ServerTls:
    """Server contexts, one per certificate; the first is the default; SNI picks the others."""

    def __init__(self, tls_cfg: Any, alpn: tuple[str, ...] = ("http/1.1",)) -> None:
        min_version = getattr(tls_cfg, "min_version", "1.2") or "1.2"
        certs = list(tls_cfg.certificates)
        self.contexts = [_server_context(c.chain, c.key, min_version, alpn) for c in certs]
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.wildcards: dict[str, ssl.SSLContext] = {}
        for cert, ctx in zip(certs, self.contexts, strict=True):
            for name in _cert_names(cert.chain):
                if name.startswith("*."):
                    self.wildcards.setdefault(name[2:], ctx)
                else:
                    self.by_name.setdefault(name, ctx)
        self.default = self.contexts[0]
        for ctx in self.contexts:
            ctx.sni_callback = self._sni

    def _sni(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if not server_name:
            return
        name = server_name.lower().rstrip(".")
        try:
            sslobj.monolake_sni = name  # for TlsInfo.server_name
        except AttributeError:
            pass
        chosen = self.by_name.get(name)
        if chosen is None and "." in name:
            chosen = self.wildcards.get(name.split(".", 1)[1])
        if chosen is not None and chosen is not sslobj.context:
            sslobj.context = chosen
        return

    def session(self, write: Callable[[bytes], None]) -> TlsSession:
        return TlsSession(self.default, write)


class TlsSession:
    """One server-side TLS connection over memory BIOs.

    ``feed(raw)`` returns the decrypted bytes (b"" while handshaking); ``write(plain)`` encrypts
    and passes the records to the raw ``write`` callable.
    """

    __slots__ = ("_in", "_obj", "_out", "_write", "handshake_done", "peer_closed")

    def __init__(self, ctx: ssl.SSLContext, write: Callable[[bytes], None]) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._write = write
        self.handshake_done = False
        self.peer_closed = False

    def feed(self, data: bytes) -> bytes:
        self._in.write(data)
        obj = self._obj
        if not self.handshake_done:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return b""
            except (ssl.SSLError, OSError) as exc:
                self._flush()
                raise TlsError(f"TLS handshake failed: {exc}") from exc
            self.handshake_done = True
        chunks = []
        while True:
            try:
                chunk = obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            except (ssl.SSLError, OSError) as exc:
                self._flush()
                raise TlsError(f"TLS error: {exc}") from exc
            if not chunk:
                self.peer_closed = True
                break
            chunks.append(chunk)
        self._flush()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes) -> None:
        try:
            self._obj.write(data)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"TLS write failed: {exc}") from exc
        self._flush()

    def close_notify(self) -> None:
        try:
            self._obj.unwrap()
        except (ssl.SSLError, OSError):
            pass
        self._flush()

    def _flush(self) -> None:
        if self._out.pending:
            self._write(self._out.read())

    def info(self) -> TlsInfo:
        obj = self._obj
        cipher = obj.cipher()
        return TlsInfo(
            version=obj.version(),
            cipher=cipher[0] if cipher else None,
            server_name=getattr(obj, "server_hostname", None) or _sni_of(obj),
            alpn=obj.selected_alpn_protocol(),
        )


def _sni_of(obj: Any) -> str | None:
    """The client's SNI as recorded by the sni callback (the server side has no accessor)."""
    return getattr(obj, "monolake_sni", None)


def client_context(route: Any) -> ssl.SSLContext:
    """Context for a route's https upstreams: verification, custom CA, client certificate."""
    ctx = ssl.create_default_context(cafile=route.tls_ca) if route.tls_ca else ssl.create_default_context()
    if not route.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if route.tls_client_cert:
        ctx.load_cert_chain(route.tls_client_cert, route.tls_client_key or None)
    ctx.set_alpn_protocols(["http/1.1"])
    structlog.get_logger().debug("upstream_tls_context", verify=route.tls_verify, ca=route.tls_ca)
    return ctx
