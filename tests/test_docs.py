"""The README stays a guide and the docs stay connected: every relative link in README.md and docs/*.md (images
included) points to a file that exists, every #anchor to a heading of its page, README.md is at most 200 lines, and
each docs page opens with a title and a summary paragraph."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200

_FENCED = re.compile(r"```.*?```", re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_EXTERNAL = re.compile(r"[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto: ...


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower-cased, punctuation dropped, spaces turned into hyphens."""
    headings = re.findall(r"^#+ +(.+?) *$", _FENCED.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    return [t for t in _LINK.findall(_FENCED.sub("", page.read_text(encoding="utf-8"))) if not _EXTERNAL.match(t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_the_checks_see_links_and_anchors():
    """The link check is not vacuous: the README links into docs/, and a known heading gives a known anchor."""
    readme_links = relative_links(REPO / "README.md")
    assert any(link.startswith("docs/") for link in readme_links)
    assert "the-papers-settings-are-the-defaults" in heading_anchors(REPO / "docs" / "evaluation.md")


def test_readme_is_a_guide_of_at_most_200_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail to docs/ (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_each_docs_page_opens_with_a_title_and_a_summary(page):
    title, blank, summary = page.read_text(encoding="utf-8").split("\n")[:3]
    assert title.startswith("# ") and blank == "" and summary and not summary.startswith(("#", "|", "```", "-")), \
        f"{page.name}: expected '# Title', a blank line, then a summary paragraph"
