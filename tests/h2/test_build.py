"""The build script refuses a libnghttp2 without the flood defences and stays optional."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("h2_build_under_test", ROOT / "worker" / "h2" / "_build.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_installed_header_has_every_defence() -> None:
    build = load_build()
    assert build.find_header() is not None
    build.check_header()  # no raise on this machine (Debian 12's patched 1.52)


def test_an_old_header_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build = load_build()
    old = tmp_path / "nghttp2.h"
    old.write_text("NGHTTP2_EXTERN void nghttp2_option_set_max_settings(nghttp2_option *o, size_t v);\n")
    monkeypatch.setattr(build, "find_header", lambda: str(old))
    with pytest.raises(
        RuntimeError, match="nghttp2_option_set_stream_reset_rate_limit, nghttp2_option_set_max_continuations"
    ):
        build.check_header()
    assert build.extensions() == []  # optional: setup.py carries on without h2
    assert "not building the HTTP/2 extension" in capsys.readouterr().err


def test_no_header_means_no_extension(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    build = load_build()
    monkeypatch.setattr(build, "find_header", lambda: None)
    assert build.extensions() == []
    assert "apt-get install libnghttp2-dev" in capsys.readouterr().err


def test_the_c_glue_compiles_cleanly_with_warnings_as_errors(tmp_path: Path) -> None:
    """mh2.c must stay warning-free under -Wall -Wextra -Werror (its own pragmas make them
    errors in the real build too)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = subprocess.run(
        [
            cc,
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=gnu11",
            "-c",
            str(ROOT / "worker" / "h2" / "mh2.c"),
            "-o",
            str(tmp_path / "mh2.o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_glue_declarations_come_from_its_header() -> None:
    """cffi's declarations of the C glue are mh2.h's cdef section, not a copy in _build.py:
    every mh2_ function the header declares is declared to cffi, and _build.py's own text
    declares none but the two ``extern "Python"`` callbacks."""
    import re

    build = load_build()
    header = re.sub(r"/\*.*?\*/", "", (ROOT / "worker" / "h2" / "mh2.h").read_text(), flags=re.S)
    declared = set(re.findall(r"\b(mh2_\w+)\s*\(", header))
    assert declared and declared <= set(re.findall(r"\b(mh2_\w+)\s*\(", build.glue_cdef()))
    assert set(re.findall(r"\b(mh2_\w+)\s*\(", build.CDEF)) == {"mh2_on_invalid_frame_recv", "mh2_read_data"}
    assert "typedef struct mh2_hdrs" in build.glue_cdef() and "mh2_hdrs" not in build.CDEF
