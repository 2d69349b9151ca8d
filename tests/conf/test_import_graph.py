"""conf/ has no import cycle (issue 17 §2), counting imports made for type checking only: a
static tool (an import linter, an IDE's dependency view) sees those too. conf/schema.py and
conf/summary.py imported each other until the summary moved into schema.py."""

from __future__ import annotations

import ast
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"


def _imports(folder: Path) -> dict[str, set[str]]:
    """Module name -> the modules of the same folder it imports (anywhere in its body)."""
    names = {p.stem for p in folder.glob("*.py")}
    package = f"monolake.{folder.name}"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    found.add(node.module.split(".")[0])
                elif node.level == 1 or node.module == package:
                    found.update(alias.name for alias in node.names)
                elif node.module and node.module.startswith(package + "."):
                    found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[2] for a in node.names if a.name.startswith(package + "."))
        graph[path.stem] = (found & names) - {path.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated last), or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            found = visit(dep, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_type_checking_only_cycle(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.py").write_text("from .b import x\n")
    (folder / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import y\n"
    )
    (folder / "c.py").write_text("from monolake.conf.a import z\n")
    (folder / "d.py").write_text("from . import a\n")
    assert _cycle(_imports(folder)) == ["a", "b", "c", "a"]
    (folder / "c.py").write_text("import os\n")
    assert _cycle(_imports(folder)) is None


def test_conf_has_no_import_cycle() -> None:
    graph = _imports(CONF)
    assert graph.get("schema"), "the scan found conf's imports"
    assert _cycle(graph) is None
