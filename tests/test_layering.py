"""The dependency rules of docs/ARCHITECTURE.md, checked on the source (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tinytamer"

# part -> the tinytamer modules it must never import
FORBIDDEN = {
    "targets": ("compress", "search", "recipe", "cli", "stages"),
    "export": ("compress", "search", "recipe", "cli", "stages", "targets"),
    "micro": ("compress", "search", "recipe", "cli", "stages", "targets", "export"),
    "codec": ("compress", "search", "recipe", "cli", "stages", "targets", "export", "micro"),
    "compress": ("search", "recipe", "cli", "stages"),
    "train": ("compress", "search", "recipe", "cli", "stages", "targets"),
    "data": ("compress", "search", "recipe", "cli", "stages", "targets", "micro"),
}


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m.split(".")[1] for m in found if m.startswith("tinytamer.")]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_part_never_imports_the_parts_above_it(part: str) -> None:
    files = sorted((PKG / part).rglob("*.py"))
    assert files, part
    bad = [
        f"{f.relative_to(PKG.parent)} imports tinytamer.{m}" for f in files for m in _imports(f) if m in FORBIDDEN[part]
    ]
    assert not bad, bad
