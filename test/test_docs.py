"""The README is a landing page and docs/ hold the detail: short README, links that resolve, parameter tables
generated from the nodes' declarations, and a code layout that names every subpackage."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from prism_ros.nodes.parameters import DOCUMENTED_NODES, documented_table, parameters_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_to_existing_files_and_headings(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_package_paths_named_in_the_docs_exist(page):
    named = set(re.findall(r"(?<![\w/])prism_ros/[\w./]*\w", page.read_text()))  # not share/prism_ros/...
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_images_are_light():
    for image in (ROOT / "docs" / "images").glob("*.png"):
        assert image.stat().st_size < 250_000, f"{image.name} is {image.stat().st_size} bytes: downscale it"


@pytest.mark.parametrize("node", sorted(DOCUMENTED_NODES))
def test_parameter_tables_are_generated_from_the_declarations(node):
    pytest.importorskip("rclpy")
    from prism_ros.nodes.parameters import node_parameters

    page = ROOT / DOCUMENTED_NODES[node][1]
    text = page.read_text()
    span = documented_table(text, node)
    assert span is not None, f"{page.name} lacks <!-- parameters:{node} --> ... <!-- /parameters -->"
    assert text[span[0]:span[1]] == parameters_markdown(node_parameters(node)), (
        f"the {node} table in {page.name} is stale: regenerate with "
        "`python -m prism_ros.nodes.parameters --write-docs`")


def test_layout_names_every_subpackage():
    layout = (ROOT / "docs" / "layout.md").read_text()
    package = ROOT / "prism_ros"
    subpackages = sorted(init.parent.relative_to(package) for init in package.rglob("__init__.py")
                         if init.parent != package)
    missing = [str(p) for p in subpackages if f"`{p.name}/`" not in layout]
    assert not missing, f"docs/layout.md does not describe: {missing}"


def test_markdown_table_escapes_pipes_and_marks_dynamic_parameters():
    from prism_ros.nodes.parameters import Param

    table = parameters_markdown({"mode": Param("a", "str", "a | b", dynamic=True), "n": Param(3, "int", "count")})
    assert table.splitlines() == [
        "| parameter | default | dynamic | description |",
        "| --- | --- | --- | --- |",
        "| `mode` | `a` | yes | a \\| b |",
        "| `n` | `3` | no | count |",
    ]
