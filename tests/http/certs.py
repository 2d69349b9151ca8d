"""Certificates made at test time with the openssl CLI: a CA, server and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cert:
    chain: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


# `openssl req` arguments for a new unencrypted P-256 key
NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _self_signed(d: Path, key: Path, crt: Path, cn: str, *extra: str) -> Cert:
    _run(
        "req",
        "-x509",
        *NEW_EC_KEY,
        "-keyout",
        str(key),
        "-out",
        str(crt),
        "-days",
        "2",
        "-subj",
        f"/CN={cn}",
        *extra,
        cwd=d,
    )
    return Cert(crt, key)


def make_ca(d: Path, name: str = "monolake-test-ca") -> Cert:
    return _self_signed(d, d / f"{name}.key", d / f"{name}.pem", name)


def _alt_names(sans: list[str]) -> str:
    return ",".join(f"IP:{s}" if s[0].isdigit() or ":" in s else f"DNS:{s}" for s in sans)


def self_signed(d: Path, cn: str, sans: list[str]) -> Cert:
    """A self-signed server certificate (its own CA) for ``cn`` and ``sans``: d/cert.pem, d/key.pem."""
    return _self_signed(d, d / "key.pem", d / "cert.pem", cn, "-addext", f"subjectAltName={_alt_names(sans)}")


def make_cert(d: Path, ca: Cert, cn: str, sans: list[str], client: bool = False) -> Cert:
    key, csr, crt, ext = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.pem", d / f"{cn}.ext"
    _run(
        "req",
        *NEW_EC_KEY,
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={cn}",
        cwd=d,
    )
    alt = _alt_names(sans)
    usage = "clientAuth" if client else "serverAuth"
    ext.write_text(
        f"subjectAltName={alt}\nextendedKeyUsage={usage}\n" if alt else f"extendedKeyUsage={usage}\n"
    )
    _run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.chain),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
        cwd=d,
    )
    return Cert(crt, key)
