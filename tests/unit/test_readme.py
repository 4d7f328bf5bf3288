"""The README starts with the user, and every link in it and in docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import pytest

from tests.package_walk import ROOT

README: Final = ROOT / "README.md"
PAGES: Final = (README, *sorted((ROOT / "docs").rglob("*.md")))
LINK: Final = re.compile(r"\]\(([^)\s]+)\)")
FENCE: Final = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", FENCE.sub("", text), re.MULTILINE)


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_starts_with_the_user() -> None:
    """The README was 378 lines (685 by issue 16) that never said what Penny is, with
    prerequisites scattered and Lua, WAIT and the fault table on its first screens. Now
    it opens with Penny and what penny_cache does for it, then the two commands,
    the prerequisites in one place, the usage example and configuration; internals live
    in docs/."""
    text = README.read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    assert "**Penny** is" in intro and "penny_cache" in intro
    assert sections(text)[:5] == [
        "Two commands",
        "Prerequisites",
        "Usage",
        "Configuration",
        "Counters",
    ]
    prerequisites = text.split("\n## Prerequisites\n", 1)[1].split("\n## ", 1)[0]
    for needed in ("Python ≥ 3.11", "redis-server", "promtool", "chromium", "PostgreSQL"):
        assert needed in prerequisites, needed
    before_links = text.split("\n## Further reading\n", 1)[0]
    for internal in ("Lua", "WAIT 1", "| fault |", "| bad state |", "retired|*"):
        assert internal not in before_links, f"{internal!r} belongs in docs/"
    assert len(text.splitlines()) < 340  # room for the metrics table the brief asks for


def test_the_readme_says_counters_accumulate_and_how_to_reset() -> None:
    """Counters in a shared namespace grew across runs without a word on resetting
    them; the README now says they accumulate and names the reset command."""
    counters = README.read_text(encoding="utf-8").split("\n## Counters\n", 1)[1]
    assert "keep growing across runs" in counters
    assert "penny-cache stats --reset --yes" in counters


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    """The moved sections link to each other and back to bench/, deploy/, grafana/: a
    link whose file or heading is missing fails here instead of on GitHub."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        assert path.exists(), f"{page.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: no heading for {target}"
