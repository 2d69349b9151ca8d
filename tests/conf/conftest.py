"""Fixtures for the conf tests: write a config file, collect its problems, make certificates."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from monolake.conf import Config, ConfigError, load_config


@pytest.fixture
def load(tmp_path: Path) -> Callable[[str], Config]:
    """Write ``text`` to tmp_path/monolake.toml and load it."""

    def _load(text: str) -> Config:
        path = tmp_path / "monolake.toml"
        path.write_text(text)
        return load_config(path)

    return _load


@pytest.fixture
def problems(tmp_path: Path) -> Callable[[str], list[str]]:
    """Write ``text`` to tmp_path/monolake.toml; the problem lines (the file must be invalid),
    each checked to start with the file's path."""

    def _problems(text: str) -> list[str]:
        path = tmp_path / "monolake.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        lines = info.value.problems
        assert lines, "a ConfigError without problems"
        assert str(info.value) == "\n".join(lines)
        for line in lines:
            assert line.startswith(f"{path}: "), line
        return lines

    return _problems


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with cert.pem/key.pem (a self-signed pair), other_key.pem (not matching) and
    enc_key.pem (encrypted), made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("certs")
    for name in ("key.pem", "other_key.pem"):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=d)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        cwd=d,
    )
    _openssl("pkey", "-in", "key.pem", "-aes256", "-passout", "pass:secret", "-out", "enc_key.pem", cwd=d)
    return d
