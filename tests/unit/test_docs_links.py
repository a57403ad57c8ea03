"""Every relative link of the collection's Markdown (README.md, docs/, the tests' READMEs) reaches a file, and
every #anchor a heading of the page it names, as GitHub renders them."""

import glob
import os
import re

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PAGES = sorted(
    [os.path.join(ROOT, "README.md")]
    + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    + glob.glob(os.path.join(ROOT, "tests", "**", "*.md"), recursive=True)
)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose(path):
    """(line number, line) of a page's lines outside fenced code blocks."""
    lines, fenced = [], False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if not fenced:
                lines.append((number, line.rstrip("\n")))
    return lines


def slug(heading):
    """GitHub's anchor of a heading: the text as rendered (links as their text, no emphasis or code marks),
    lower-case, punctuation dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    found, seen = set(), {}
    for _, line in prose(path):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else "%s-%d" % (base, n))
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(path):
    for number, line in prose(path):
        m = REFERENCE_LINK.match(line)
        if m:
            yield number, m.group(1)
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for m in INLINE_LINK.finditer(line):
            yield number, m.group(1)


def broken(path):
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # a URL (https:, mailto:): not checked offline
        file_part, _, anchor = target.partition("#")
        where = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(where):
            problems.append("line %d: %s: no such file" % (number, target))
        elif anchor and where.endswith(".md") and anchor not in anchors(where):
            problems.append("line %d: %s: no heading gives #%s" % (number, target, anchor))
    return problems


@pytest.mark.parametrize("page", [os.path.relpath(p, ROOT) for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    problems = broken(os.path.join(ROOT, page))
    assert problems == [], "%s: %s" % (page, "; ".join(problems))


def test_the_link_checker_sees_a_broken_file_a_broken_anchor_and_github_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Where do an instance's defaults live?\n\n## `nodes:` and **shape**\n"
                                       "## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#where-do-an-instances-defaults-live) [ok](other.md#nodes-and-shape)\n"
                    "[ok](other.md#twice-1) [ok](#page) [ok](https://example.com/x#y) `[no](code.md)`\n"
                    "```\n[no](fenced.md)\n# not a heading\n```\n"
                    "[file](gone.md) [anchor](other.md#gone) [self](#not-a-heading) [twice](other.md#twice-2)\n")
    assert broken(str(page)) == [
        "line 9: gone.md: no such file",
        "line 9: other.md#gone: no heading gives #gone",
        "line 9: #not-a-heading: no heading gives #not-a-heading",
        "line 9: other.md#twice-2: no heading gives #twice-2",
    ]
