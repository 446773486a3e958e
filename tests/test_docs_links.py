"""Every relative link in README.md and docs/**/*.md points to an existing file, and to an existing heading when it
names one (``page.md#heading``, GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's id of a heading: lower case, links reduced to their text, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose_lines(text: str):
    """(line number, line) of the lines outside ``` fences."""
    fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            yield number, line


def anchors(page: Path) -> set[str]:
    """The heading ids of a Markdown page (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(page.read_text()):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """'file:line: target (why)' for every relative link of `page` that does not resolve."""
    out = []
    for number, line in _prose_lines(page.read_text()):
        for target in LINK.findall(re.sub(r"``[^`]*``", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            shown = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name
            where = f"{shown}:{number}: {target}"
            if not dest.exists():
                out.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                out.append(f"{where} (no heading with id '{anchor}')")
    return out


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_docs_exist():
    names = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    for required in ("index.md", "cli.md", "config.md", "metrics.md", "tree_rollouts.md", "ib_score.md",
                     "real_models.md", "results.md", "methods/index.md", "methods/ib_tpo.md"):
        assert required in names


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# A `code` heading: yes\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md) [ok](other.md#a-code-heading-yes) [ok](other.md#twice-1) [web](https://x.y/z)\n"
                    "[missing](nope.md) [bad anchor](other.md#nothing)\n"
                    "```\n[inside a fence](ignored.md)\n```\n"
                    "## Local\n[self](#local) [bad self](#elsewhere)\n")
    found = broken_links(page)
    assert len(found) == 3, found
    assert "nope.md (no such file)" in found[0]
    assert "other.md#nothing (no heading" in found[1]
    assert "#elsewhere (no heading" in found[2]
