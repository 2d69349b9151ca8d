"""Certificate checks at load time: files that exist are not enough, they must load together.

A key that does not match its chain, or an encrypted key, fails at ``check`` rather than at the
first handshake in a worker.
"""

from __future__ import annotations

import ssl

from .errors import Problems


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # without a callback OpenSSL would prompt on the terminal for an encrypted key
    raise _EncryptedKey()


def check_cert_pair(problems: Problems, key_path: str, chain: str, key: str) -> bool:
    """Load ``chain`` + ``key`` as a server (or client) certificate; record why it fails."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(chain, key, password=_no_password)
    except _EncryptedKey:
        problems.expected(key_path, "an unencrypted PEM private key", f"an encrypted key in {key}", raw=True)
        return False
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        problems.expected(
            key_path,
            "a PEM certificate chain and its matching PEM private key",
            f"{chain} and {key} that do not load together ({reason})",
            raw=True,
        )
        return False
    except OSError as exc:
        problems.expected(
            key_path, "readable certificate files", f"{chain} / {key} ({exc.strerror or exc})", raw=True
        )
        return False
    return True


def check_ca_bundle(problems: Problems, key_path: str, cafile: str) -> bool:
    """``cafile`` must hold at least one PEM CA certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        problems.expected(key_path, "a PEM CA bundle", f"{cafile} ({reason})", raw=True)
        return False
    if not ctx.cert_store_stats().get("x509", 0):
        problems.expected(
            key_path, "a PEM CA bundle with at least one certificate", f"{cafile} without one", raw=True
        )
        return False
    return True
