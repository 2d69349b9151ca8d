"""The C extensions' build contract (uring/_build.py): one unit per concern with its own header,
cffi declarations read from the headers, no compiler warning, and an HTTP codec that needs
neither liburing nor the io_uring extension."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
URING = ROOT / "uring"
sys.path.insert(0, str(URING))
import _build  # type: ignore[import-not-found]  # noqa: E402

sys.path.remove(str(URING))

PY = sys.executable


def test_cdef_from_header_applies_the_rewrites() -> None:
    header = textwrap.dedent("""\
        #include <stdint.h>
        /* not for cffi */
        int hidden(void);
        /* cdef-begin */
        #ifndef X
        typedef struct thing {
            int64_t seen; /* read by Python */
            /* private { */
            int secret;
            /* } private */
        } thing;
        #define LIMIT 16
        #define NOT_A_NUMBER (1 << 2)
        /* cdef: #define POLLIN ... */
        int visible(thing *t);
        #endif
        /* cdef-end */
        """)
    assert _build.cdef_from_header(header).split("\n") == [
        "typedef struct thing {",
        "    int64_t seen;",
        "    ...;",
        "} thing;",
        "#define LIMIT 16",
        "#define POLLIN ...",
        "int visible(thing *t);",
        "",
    ]


def test_a_header_without_a_cdef_section_is_an_error() -> None:
    with pytest.raises(ValueError, match="cdef-begin"):
        _build.cdef_from_header("int f(void);\n")


def _declared_names(unit: _build.Unit) -> set[str]:
    """Function and constant names the unit's headers hand to cffi."""
    import re

    text = _build.cdef(unit)
    names = set(re.findall(r"\b(mu_\w+)\s*\(", text))
    names |= set(re.findall(r"#define\s+(\w+)", text))
    return names


def test_every_declared_name_is_in_the_built_modules() -> None:
    from monolake.uring._codec import lib as codec

    assert _declared_names(_build.CODEC) <= set(dir(codec))
    try:
        from monolake.uring._uring import lib as uring
    except ImportError:
        pytest.skip("the io_uring extension is not built here")
    assert _declared_names(_build.URING) <= set(dir(uring))
    assert "mu_http_install" not in dir(uring)  # the codec is not linked twice


def _unit_flags() -> list[str]:
    inc = sysconfig.get_paths()["include"]
    return ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-D_CFFI_NO_LIMITED_API", f"-I{inc}", f"-I{URING}"]


@pytest.mark.parametrize("source", ["mu_ring.c", "mu_fast.c", "mu_http.c", "mu_lend.c"])
def test_each_unit_compiles_alone_without_a_warning(source: str) -> None:
    """Each .c is a translation unit of its own (nothing relies on being concatenated)."""
    if source in _build.URING.sources and source != "mu_lend.c" and not _build.has_liburing():
        pytest.skip("liburing headers missing")
    cc = _build._compiler()
    r = subprocess.run(
        [*cc, "-fsyntax-only", *_unit_flags(), str(URING / source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_the_codec_units_do_not_include_liburing() -> None:
    cc = _build._compiler()
    for source in _build.CODEC.sources:
        r = subprocess.run(
            [*cc, "-M", *_unit_flags(), str(URING / source)], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        assert "liburing" not in r.stdout, source


def test_without_liburing_only_the_codec_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONOLAKE_NO_LIBURING", "1")
    assert _build.wanted_units() == [_build.CODEC]
    assert "libraries" not in _build.link_kwargs(_build.CODEC)
    assert "extra_objects" not in _build.link_kwargs(_build.CODEC)


def test_the_native_parser_and_epoll_work_without_the_io_uring_extension() -> None:
    """A process where monolake.uring._uring cannot be imported (as where liburing was
    missing at build time): the worker falls back to epoll and still gets the native parser."""
    code = textwrap.dedent("""\
        import sys
        sys.modules["monolake.uring._uring"] = None  # import now raises ImportError
        from monolake.uring.runtime import choose_loop
        from monolake.worker.http import parser as hp
        choice = choose_loop("auto")
        assert choice.name in ("asyncio", "uvloop"), choice
        assert hp.resolve_parser("auto") == "native", hp.native
        heads = []
        class P:
            def on_request_head(self, *a): heads.append(a)
        hp.native.RequestParser(P(), 65536, 8192).feed_data(b"GET /x HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n")
        assert heads and heads[0][:3] == ("GET", "/x", "1.1"), heads
        print("ok")
        """)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), out
    assert "io_uring unavailable" in out  # the one log line saying why (structlog's)


def test_parser_keywords_are_honoured() -> None:
    """The constructors' keywords (as their docstrings spell them) used to be dropped silently:
    max_fields=1 let a head with two fields through."""
    from monolake.worker.http import parser as hp

    if hp.native is None:
        pytest.skip("the codec extension is not built")

    class P:
        def on_request_head(self, *a: object) -> None:
            pass

        def on_response(self, *a: object) -> None:
            pass

    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"
    with pytest.raises(hp.ParseError, match="too many header fields"):
        hp.native.RequestParser(P(), 65536, 8192, max_fields=1).feed_data(head)
    with pytest.raises(hp.ParseError, match="too many header fields"):
        hp.native.ResponseParser(P(), False, max_fields=1).feed_data(
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n"
        )
    with pytest.raises(TypeError):
        hp.native.RequestParser(P(), 65536, 8192, max_feilds=1)


def test_strict_builds_are_not_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONOLAKE_REQUIRE_EXTENSIONS", "1")
    assert all(not e.optional for e in _build.extensions())
    monkeypatch.delenv("MONOLAKE_REQUIRE_EXTENSIONS")
    monkeypatch.delenv("CFLAGS", raising=False)
    assert "-Werror" in _build.compile_args() and "-O2" in _build.compile_args()
    monkeypatch.setenv("CFLAGS", "-O1 -fsanitize=address")
    assert "-O2" not in _build.compile_args()
