"""The layers of the house: data flows one way (benchmarks -> recipes -> adapters).

The library (``adapters/``) imports nothing of the recipes or benchmarks, the recipes
nothing of the benchmarks; shared writing goes through ``recipes/io.py`` and the corpus
does not reach for run bookkeeping (and so SpeechBrain's checkpointer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Top-level package-qualified modules a file imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [("adapters", ("recipes", "benchmarks")), ("recipes", ("benchmarks",))],
)
def test_no_arrow_points_back_up(folder, forbidden):
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imports_of(path) if m.split(".")[0] in forbidden
        )
        for path in modules_under(folder)
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def identifiers_of(path: Path) -> set[str]:
    """The names a file's code uses (not its comments or docstrings)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.alias)):
            names.add(node.name)
    return names


def test_the_library_code_names_no_model_or_task():
    named = {
        str(path.relative_to(ROOT)): sorted(
            n
            for n in identifiers_of(path)
            if any(w in n.lower() for w in ("whisper", "speaker", "conformer", "vad"))
        )
        for path in modules_under("adapters")
    }
    assert {k: v for k, v in named.items() if v} == {}


def test_the_corpus_does_not_import_run_bookkeeping():
    wrong = {
        str(path.relative_to(ROOT))
        for path in modules_under("recipes/corpus")
        if any(m in ("recipes.bookkeeping", "recipes.adaptation") for m in imports_of(path))
    }
    assert wrong == set()


def test_every_task_folder_is_a_package_with_a_train_script():
    tasks = [p for p in (ROOT / "recipes").iterdir() if (p / "train.py").is_file()]
    assert len(tasks) >= 5
    assert [t.name for t in tasks if not (t / "__init__.py").is_file()] == []
