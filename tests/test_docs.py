"""The README and the docs pages: a front door of at most 300 lines, links that lead
somewhere (files and headings), and commands that name scripts and modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (lower case, punctuation dropped,
    spaces to hyphens; a repeated heading gets -1, -2...), and its ``<a id="...">`` ones.

    Example
    -------
    >>> import tempfile
    >>> page = Path(tempfile.mkdtemp()) / "p.md"
    >>> _ = page.write_text("# The padding, measured\\n## `alpha` follows `rank`\\n## Notes\\n"
    ...                     "## Notes\\n- <a id=\\"kept\\"></a>A point\\n")
    >>> sorted(anchors(page))
    ['alpha-follows-rank', 'kept', 'notes', 'notes-1', 'the-padding-measured']
    """
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    found = set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_the_readme_is_a_front_door_of_at_most_300_lines():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; results and references go in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading '#{anchor}' in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_names_a_script_or_module_that_exists(page):
    text = page.read_text()
    missing = []
    for script in set(re.findall(r"python3? ((?:benchmarks|recipes|tests)/[\w/]+\.py)", text)):
        if not (ROOT / script).is_file():
            missing.append(script)
    for module in set(re.findall(r"python3? -m ((?:recipes|benchmarks|adapters)[\w.]*)", text)):
        base = ROOT / module.replace(".", "/")
        if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
            missing.append(f"-m {module}")
    assert not missing, f"{page.name} names what does not exist: {sorted(missing)}"
