"""The layers of the house: data flows one way (benchmarks -> recipes -> adapters).

The library (``adapters/``) imports nothing of the recipes or benchmarks, the recipes
nothing of the benchmarks; shared writing goes through ``recipes/io.py`` and the corpus
does not reach for run bookkeeping (and so SpeechBrain's checkpointer).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import import_graph


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


def test_the_library_has_no_module_level_import_cycle():
    graph = import_graph.build_graph(import_graph.working_tree_sources(packages=("adapters",)))
    assert graph.unreadable == {}
    cycles = [c for c in import_graph.strongly_connected(graph.edges()) if len(c) > 1]
    assert cycles == []


def test_import_graph_finds_a_known_chain_and_cycle(tmp_path):
    """A tiny package and a script folder: the chain, the cycle and the arrows are known."""
    files = {
        "pkg/__init__.py": "from pkg.top import run\n",
        "pkg/top.py": "from . import mid\n\ndef later():\n    import pkg.loop_a\n",
        "pkg/mid.py": "import os\nfrom pkg.low import helper\n",
        "pkg/low.py": "def helper():\n    from pkg import top\n",
        "pkg/loop_a.py": "from pkg import loop_b\n",
        "pkg/loop_b.py": "import pkg.loop_a\n",
        "scripts/tool.py": "import shared\nimport pkg\n",
        "scripts/shared.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    sources = import_graph.working_tree_sources(tmp_path, ("pkg", "scripts"))
    graph = import_graph.build_graph(sources)
    edges = graph.edges()
    assert edges["scripts.tool"] == {"scripts.shared", "pkg"}
    assert edges["pkg.top"] == {"pkg.mid"}  # the import inside a function is not module-level
    assert "pkg.loop_a" in graph.edges(module_level_only=False)["pkg.top"]
    assert [c for c in import_graph.strongly_connected(edges) if len(c) > 1] == [
        ["pkg.loop_a", "pkg.loop_b"]
    ]
    assert import_graph.longest_chain(edges) == [
        ["scripts.tool"],
        ["pkg"],
        ["pkg.top"],
        ["pkg.mid"],
        ["pkg.low"],
    ]
    assert import_graph.layer_violations(graph, ("pkg", "scripts")) == []
    upward = import_graph.layer_violations(graph, ("scripts", "pkg"))
    assert [(a.source, a.target, a.line) for a in upward] == [("scripts.tool", "pkg", 2)]
