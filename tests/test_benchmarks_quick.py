"""A benchmark's ``--quick`` smoke run never writes into ``benchmarks/results``: those files are
the figures RESULTS.md cites, and a smoke run's numbers must not sit beside them."""

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _scripts_with_quick() -> list[Path]:
    return sorted(p for p in BENCHMARKS.glob("*.py") if '"--quick"' in p.read_text())


def _save_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "save"
    ]


def test_there_are_quick_scripts() -> None:
    assert len(_scripts_with_quick()) >= 10


@pytest.mark.parametrize("script", _scripts_with_quick(), ids=lambda p: p.stem)
def test_quick_results_go_under_work(script: Path) -> None:
    for call in _save_calls(ast.parse(script.read_text())):
        quick = [k for k in call.keywords if k.arg == "quick"]
        assert quick, f"{script.name}:{call.lineno}: save() without quick=: a --quick run would write into results/"
        assert ast.unparse(quick[0].value) == "args.quick", (
            f"{script.name}:{call.lineno}: quick={ast.unparse(quick[0].value)}"
        )
