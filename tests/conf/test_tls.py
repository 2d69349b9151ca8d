"""TLS files are checked at load time: they exist, and chain + key load together."""

from __future__ import annotations

from pathlib import Path

from .conf_samples import HTTP_SERVER, Load, Problems, only, with_keys


def test_chain_and_key(load: Load, certs: Path) -> None:
    cfg = load(
        with_keys(f'tls = {{ chain = "{certs}/cert.pem", key = "{certs}/key.pem", stack = "rustls" }}')
    )
    tls = cfg.servers["web"].tls
    assert tls is not None and tls.chain == str(certs / "cert.pem") and tls.key == str(certs / "key.pem")
    assert tls.min_version == "1.2" and len(tls.certificates) == 1


def test_certificates_list_and_min_version(load: Load, certs: Path) -> None:
    pair = f'{{ chain = "{certs}/cert.pem", key = "{certs}/key.pem" }}'
    tls = (
        load(with_keys(f'tls = {{ certificates = [{pair}, {pair}], min_version = "1.3" }}'))
        .servers["web"]
        .tls
    )
    assert tls is not None and len(tls.certificates) == 2 and tls.min_version == "1.3"


def test_missing_files(problems: Problems, tmp_path: Path) -> None:
    lines = problems(with_keys('tls = { chain = "cert.pem", key = "/nonexistent/key.pem" }'))
    assert f'found "cert.pem" (= {tmp_path / "cert.pem"}), which does not exist' in only(
        lines, "servers.web.tls.chain"
    )
    assert "which does not exist" in only(lines, "servers.web.tls.key")
    assert "found nothing" in only(problems(with_keys('tls = { chain = "x.pem" }')), "servers.web.tls.key")


def test_key_that_does_not_match(problems: Problems, certs: Path) -> None:
    line = only(
        problems(with_keys(f'tls = {{ chain = "{certs}/cert.pem", key = "{certs}/other_key.pem" }}')),
        "servers.web.tls.chain",
    )
    assert "do not load together" in line and "other_key.pem" in line


def test_not_a_certificate(problems: Problems, tmp_path: Path, certs: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    line = only(
        problems(with_keys(f'tls = {{ chain = "junk.pem", key = "{certs}/key.pem" }}')),
        "servers.web.tls.chain",
    )
    assert "expected a PEM certificate chain and its matching PEM private key" in line


def test_encrypted_key_is_refused_without_prompting(problems: Problems, certs: Path) -> None:
    line = only(
        problems(with_keys(f'tls = {{ chain = "{certs}/cert.pem", key = "{certs}/enc_key.pem" }}')),
        "servers.web.tls.chain",
    )
    assert "expected an unencrypted PEM private key" in line


def test_tls_forms(problems: Problems, certs: Path) -> None:
    pair = f'chain = "{certs}/cert.pem", key = "{certs}/key.pem"'
    line = only(problems(with_keys(f"tls = {{ {pair}, certificates = [] }}")), "servers.web.tls.certificates")
    assert "either chain/key or certificates, found both" in line
    assert "found neither" in only(
        problems(with_keys('tls = { min_version = "1.2" }')), "servers.web.tls.chain"
    )
    line = only(problems(with_keys(f"tls = {{ {pair}, min_version = 1.2 }}")), "servers.web.tls.min_version")
    assert 'quote it: "1.2"' in line


def test_upstream_client_tls_files(load: Load, problems: Problems, certs: Path) -> None:
    extra = (
        f'tls_ca = "{certs}/cert.pem"\ntls_client_cert = "{certs}/cert.pem"\n'
        f'tls_client_key = "{certs}/key.pem"\n'
    )
    r = load(HTTP_SERVER.replace('path = "/"', 'path = "/"\n' + extra)).servers["web"].routes[0]
    assert (r.tls_ca, r.tls_client_cert, r.tls_client_key) == (
        str(certs / "cert.pem"),
        str(certs / "cert.pem"),
        str(certs / "key.pem"),
    )
    lines = problems(
        HTTP_SERVER.replace(
            'path = "/"', f'path = "/"\ntls_ca = "{certs}/key.pem"\ntls_client_cert = "{certs}/cert.pem"\n'
        )
    )
    assert "expected a PEM CA bundle" in only(lines, "servers.web.routes[0].tls_ca")
    assert "it goes with tls_client_cert" in only(lines, "servers.web.routes[0].tls_client_key")
    lines = problems(
        HTTP_SERVER.replace(
            'path = "/"',
            f'path = "/"\ntls_client_cert = "{certs}/cert.pem"\ntls_client_key = "{certs}/other_key.pem"\n',
        )
    )
    assert "do not load together" in only(lines, "servers.web.routes[0].tls_client_cert")
