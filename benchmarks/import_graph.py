"""The project's own import graph: layer arrows, cycles and the longest import chain.

Reads every ``.py`` file of the packages ``adapters``, ``recipes`` and ``benchmarks``
(and ``tests`` with ``--tests``) with :mod:`ast`, from the working tree or, with
``--at COMMIT``, from a commit's tree, and keeps the imports of one project module by
another. Each arrow is marked *module-level* (runs when the importing module is imported:
top level, class bodies, ``try``/``if`` blocks) or not (inside a function, or under
``if TYPE_CHECKING:``). It prints:

* the number of modules and arrows (all, and module-level);
* arrows that point back up the layers (adapters -> recipes, adapters -> benchmarks,
  recipes -> benchmarks), which must be none;
* import cycles: strongly connected components of more than one module in the
  module-level graph;
* the longest import chain: the longest path of module-level arrows (on the graph of
  those components when there are cycles), as the chain of module names.

How a name resolves: ``import a.b.c`` and ``from a.b import c`` point at the most
specific project module they name (``a.b.c`` when it is a module, else ``a.b``); a
package's ``__init__`` that Python runs on the way is not an arrow of its own. Relative
imports resolve against the importing package. A folder without ``__init__.py``
(``benchmarks/``, ``tests/``) is a folder of scripts: its files import each other by bare
name (``from measure import ...``), as Python does with the script's folder first on
``sys.path``. Imports written in strings (``importlib.import_module(name)``) and in
docstrings are not seen.

Usage::

    python benchmarks/import_graph.py                # the working tree
    python benchmarks/import_graph.py --at aa4f1ad   # a commit's tree
    python benchmarks/import_graph.py --at aa4f1ad --at HEAD --json
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The layers, bottom first: an arrow may point down or sideways, never up.
LAYERS = ("adapters", "recipes", "benchmarks")
PACKAGES = (*LAYERS, "tests")


@dataclass(frozen=True)
class Arrow:
    """One import of a project module by another.

    Attributes
    ----------
    source, target : str
        Dotted module names (``recipes.corpus.prepare``; a package is its own name).
    line : int
        Line of the import statement in the source module.
    module_level : bool
        Whether the import runs when ``source`` is imported (not inside a function
        or under ``if TYPE_CHECKING:``).
    """

    source: str
    target: str
    line: int
    module_level: bool


@dataclass
class ImportGraph:
    """The project-internal imports of a set of modules.

    Attributes
    ----------
    modules : list of str
        Every module read, sorted.
    arrows : list of Arrow
        Every import of one project module by another (one per imported name).
    unreadable : dict of str to str
        Files that did not parse, with the error.
    """

    modules: list[str]
    arrows: list[Arrow]
    unreadable: dict[str, str] = field(default_factory=dict)

    def edges(self, module_level_only: bool = True) -> dict[str, set[str]]:
        """Adjacency sets (self-imports dropped), every module a key."""
        graph: dict[str, set[str]] = {m: set() for m in self.modules}
        for a in self.arrows:
            if a.source != a.target and (a.module_level or not module_level_only):
                graph[a.source].add(a.target)
        return graph


def module_name(path: str) -> str:
    """The dotted name of a ``.py`` file given relative to the repository root.

    >>> module_name("recipes/corpus/__init__.py"), module_name("benchmarks/measure.py")
    ('recipes.corpus', 'benchmarks.measure')
    """
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of a parsed file, with whether it is module-level."""
    stack: list[tuple[ast.AST, bool]] = [(tree, True)]
    while stack:
        node, module_level = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, module_level
            continue
        inner = module_level and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, False) for child in node.body)
            stack.extend((child, inner) for child in node.orelse)
            continue
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest prefix of a dotted ``name`` that is a known module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _targets(
    node: ast.Import | ast.ImportFrom, source: str, is_package: bool, known: set[str]
) -> list[str]:
    """The project modules one import statement of module ``source`` points at."""
    package = source if is_package else source.rpartition(".")[0]
    # A folder without __init__.py is a folder of scripts: bare names are its files first.
    script_folder = package if package not in known else None

    def absolute(name: str) -> str | None:
        if script_folder is not None:
            sibling = _resolve(f"{script_folder}.{name}", known)
            if sibling is not None and sibling != script_folder:
                return sibling
        return _resolve(name, known)

    if isinstance(node, ast.Import):
        found = [absolute(alias.name) for alias in node.names]
        return [t for t in found if t is not None]
    if node.level:
        base_parts = package.split(".")
        if node.level > 1:
            base_parts = base_parts[: -(node.level - 1)]
        base = ".".join(p for p in (*base_parts, node.module or "") if p)
        found = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append(sub if sub in known else _resolve(base, known))
        return [t for t in found if t is not None]
    module = node.module or ""
    base_target = absolute(module)
    if base_target is None:
        return []
    found = []
    for alias in node.names:
        sub = f"{base_target}.{alias.name}"
        found.append(sub if sub in known else base_target)
    return found


def build_graph(sources: Mapping[str, str]) -> ImportGraph:
    """The import graph of files given as ``{relative path: source text}``.

    Parameters
    ----------
    sources : mapping of str to str
        Paths relative to the repository root (``/``-separated, ending in ``.py``) and
        the text of each file.

    Returns
    -------
    ImportGraph
        Modules, arrows between them (duplicates of one statement kept once) and the
        files that did not parse.

    Examples
    --------
    >>> g = build_graph({
    ...     "pkg/__init__.py": "from .a import f",
    ...     "pkg/a.py": "import pkg.b\\ndef f():\\n    from pkg import c",
    ...     "pkg/b.py": "",
    ...     "pkg/c.py": "",
    ... })
    >>> [(a.source, a.target, a.module_level) for a in g.arrows]
    [('pkg', 'pkg.a', True), ('pkg.a', 'pkg.b', True), ('pkg.a', 'pkg.c', False)]
    """
    names = {path: module_name(path) for path in sources}
    known = set(names.values())
    arrows: set[Arrow] = set()
    unreadable: dict[str, str] = {}
    for path, text in sources.items():
        try:
            tree = ast.parse(text, filename=path)
        except SyntaxError as error:
            unreadable[path] = f"{type(error).__name__}: {error}"
            continue
        source = names[path]
        is_package = path.endswith("/__init__.py")
        for node, module_level in _imports(tree):
            for target in _targets(node, source, is_package, known):
                arrows.add(Arrow(source, target, node.lineno, module_level))
    ordered = sorted(arrows, key=lambda a: (a.source, a.line, a.target, not a.module_level))
    return ImportGraph(sorted(known), ordered, unreadable)


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each sorted, in sorted order.

    >>> strongly_connected({"a": ["b"], "b": ["a", "c"], "c": []})
    [['a', 'b'], ['c']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return sorted(components)


def longest_chain(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The longest path of the graph's condensation, as its components in import order.

    The chain starts at the importing module: ``[[a], [b], [c]]`` reads "a imports b,
    which imports c". Each element is a strongly connected component (one module unless
    there is a cycle). Of equally long chains, the first in sorted order is returned.

    Parameters
    ----------
    graph : mapping of str to iterable of str
        Adjacency (module -> modules it imports); every node must be a key.

    Returns
    -------
    list of list of str
        The components along the chain; its length in arrows is ``len(chain) - 1``.

    Examples
    --------
    >>> longest_chain({"a": ["b", "d"], "b": ["c"], "c": [], "d": []})
    [['a'], ['b'], ['c']]
    >>> longest_chain({"a": ["b"], "b": ["a", "c"], "c": []})
    [['a', 'b'], ['c']]
    """
    components = strongly_connected(graph)
    owner = {m: i for i, comp in enumerate(components) for m in comp}
    down: dict[int, set[int]] = {i: set() for i in range(len(components))}
    for node, targets in graph.items():
        for target in targets:
            if owner[node] != owner[target]:
                down[owner[node]].add(owner[target])
    best: dict[int, tuple[int, tuple[str, ...], int | None]] = {}

    def visit(i: int) -> tuple[int, tuple[str, ...], int | None]:
        # Iterative post-order, so a deep graph does not hit the recursion limit.
        todo = [(i, False)]
        while todo:
            c, expanded = todo.pop()
            if c in best:
                continue
            if not expanded:
                todo.append((c, True))
                todo.extend((d, False) for d in down[c] if d not in best)
                continue
            key: tuple[int, tuple[str, ...], int | None] = (0, (), None)
            for d in sorted(down[c]):
                length, names, _ = best[d]
                candidate = (length + 1, tuple(components[d]) + names, d)
                if candidate[0] > key[0] or (candidate[0] == key[0] and candidate[1] < key[1]):
                    key = candidate
            best[c] = key
        return best[i]

    start, start_key = None, (-1, ())
    for i in range(len(components)):
        length, names, _ = visit(i)
        key = (length, tuple(components[i]) + names)
        if key[0] > start_key[0] or (key[0] == start_key[0] and key[1] < start_key[1]):
            start, start_key = i, key
    chain: list[list[str]] = []
    while start is not None:
        chain.append(components[start])
        start = best[start][2]
    return chain


def layer_violations(graph: ImportGraph, layers: tuple[str, ...] = LAYERS) -> list[Arrow]:
    """Arrows (at any level) from a layer to one above it in ``layers``."""
    rank = {name: i for i, name in enumerate(layers)}
    wrong = []
    for a in graph.arrows:
        low, high = a.source.split(".")[0], a.target.split(".")[0]
        if low in rank and high in rank and rank[high] > rank[low]:
            wrong.append(a)
    return wrong


def working_tree_sources(root: Path = ROOT, packages: Iterable[str] = LAYERS) -> dict[str, str]:
    """``{relative path: text}`` of every ``.py`` file of ``packages`` under ``root``."""
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }


def commit_sources(
    commit: str, packages: Iterable[str] = LAYERS, root: Path = ROOT
) -> dict[str, str]:
    """``{relative path: text}`` of every ``.py`` file of ``packages`` in a commit's tree."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, check=True, capture_output=True, text=True
        ).stdout

    paths = git("ls-tree", "-r", "--name-only", commit, "--", *packages).splitlines()
    return {p: git("show", f"{commit}:{p}") for p in paths if p.endswith(".py")}


def summary(graph: ImportGraph) -> dict:
    """The figures of one tree, JSON-ready."""
    module_level = graph.edges(module_level_only=True)
    cycles = [c for c in strongly_connected(module_level) if len(c) > 1]
    chain = longest_chain(module_level)
    return {
        "modules": len(graph.modules),
        "arrows": sum(len(t) for t in graph.edges(module_level_only=False).values()),
        "module_level_arrows": sum(len(t) for t in module_level.values()),
        "layer_violations": [
            {"from": a.source, "to": a.target, "line": a.line, "module_level": a.module_level}
            for a in layer_violations(graph)
        ],
        "cycles": cycles,
        "longest_chain": chain,
        "longest_chain_arrows": len(chain) - 1,
        "unreadable": graph.unreadable,
    }


def _text(label: str, figures: dict) -> str:
    allowed = " -> ".join(reversed(LAYERS))
    lines = [
        f"== {label}",
        (
            f"modules: {figures['modules']}  arrows: {figures['arrows']} "
            f"(module-level: {figures['module_level_arrows']})"
        ),
        f"arrows up the layers (allowed: {allowed}): {len(figures['layer_violations'])}",
    ]
    lines += [
        f"  {v['from']}:{v['line']} -> {v['to']}"
        + ("" if v["module_level"] else " (in a function)")
        for v in figures["layer_violations"]
    ]
    lines.append(f"module-level cycles: {len(figures['cycles'])}")
    lines += ["  " + " <-> ".join(c) for c in figures["cycles"]]
    lines.append(f"longest module-level chain: {figures['longest_chain_arrows']} arrows")
    lines += [
        "  " + ("-> " if i else "   ") + (c[0] if len(c) == 1 else "{" + " | ".join(c) + "}")
        for i, c in enumerate(figures["longest_chain"])
    ]
    lines += [f"unreadable: {p}: {e}" for p, e in figures["unreadable"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--at",
        action="append",
        metavar="COMMIT",
        help="measure this commit's tree instead of the working tree (repeat to compare)",
    )
    parser.add_argument("--tests", action="store_true", help="read tests/ too")
    parser.add_argument("--json", action="store_true", help="one JSON object per tree")
    args = parser.parse_args(argv)
    packages = PACKAGES if args.tests else LAYERS
    trees = args.at or [None]
    results = {}
    for commit in trees:
        sources = (
            working_tree_sources(packages=packages)
            if commit is None
            else commit_sources(commit, packages)
        )
        results[commit or "working tree"] = summary(build_graph(sources))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print("\n\n".join(_text(label, figures) for label, figures in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
