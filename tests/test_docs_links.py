"""Documentation citations resolve, and nothing outside docs/ cites anything else.

Code comments, YAML comments, tests and the README cite the project's own pages as
``docs/<path>.md`` or ``docs/<path>.md#anchor``. Every such citation must name an existing
file and, when it has an anchor, a heading of that file (GitHub's anchor rule: lowercase,
punctuation dropped, spaces to hyphens, ``-1``, ``-2`` … for repeats) or an explicit
``<a id="...">``. The docs' own relative links are held to the same rule. Outside docs/ no
file may refer to official behaviours by number or to the external notes the docs were
written from; the docs' section anchors replace both.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Where citations are looked for (besides docs/ itself, whose links are checked separately).
CITING = ["ovbench", "adapters", "methods", "configs", "tests", "README.md"]
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg", ".json", ".sh"}
#: The file kinds the forbidden-reference scan covers, anywhere outside docs/.
SCANNED_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml"}
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "build", "dist", "docs"}

CITATION = re.compile(r"docs/[\w./-]+?\.md(?:#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")
# Written so that this file does not match its own patterns.
FORBIDDEN = {
    "numbered official behaviour": re.compile(r"[q]uirks?\s*#", re.IGNORECASE),
    "section of an external note": re.compile(r"[a-z-]+\.md (?:§|section)"),
    "external shared-blocks note": re.compile(r"common[-]blocks"),
    "external results note": re.compile(r"paper[-]results"),
    "external card": re.compile(r"reference[ ]card", re.IGNORECASE),
    "external note as reference": re.compile(r"Referenc[e]: [a-z]+\.md"),
}


def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        anchors.update(EXPLICIT_ANCHOR.findall(line))
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = github_anchor(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def walk(entries: list[str], suffixes: set[str]) -> list[Path]:
    files = []
    for entry in entries:
        path = ROOT / entry
        if path.is_file():
            if path.suffix in suffixes:
                files.append(path)
            continue
        for candidate in sorted(path.rglob("*")):
            relative = candidate.relative_to(ROOT).parts
            if candidate.is_file() and candidate.suffix in suffixes and not SKIPPED_DIRS & set(relative[:-1]):
                files.append(candidate)
    return files


def resolve(target: Path, anchor: str | None) -> str | None:
    """None when the file (and the anchor, if any) exist, else what is wrong."""
    if not target.is_file():
        return "no such file"
    if anchor and target.suffix == ".md" and anchor not in anchors_of(target):
        return f"no heading or anchor #{anchor}"
    return None


def test_the_docs_exist():
    for page in ["datasets.md", "methods/gsnet.md", "methods/catseg.md", "methods/clip-dense.md"]:
        assert (DOCS / page).is_file(), page


def test_every_docs_citation_resolves():
    problems, cited = [], 0
    for path in walk(CITING, TEXT_SUFFIXES):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for citation in CITATION.findall(line):
                cited += 1
                file_part, _, anchor = citation.partition("#")
                problem = resolve(ROOT / file_part, anchor or None)
                if problem:
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {citation}: {problem}")
    assert cited > 0, "no docs citations found at all: the scan is broken"
    assert not problems, "\n".join(problems)


def test_the_docs_own_links_resolve():
    problems = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for link in MD_LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto: …
                    continue
                file_part, _, anchor = link.partition("#")
                target = (page.parent / file_part).resolve() if file_part else page
                problem = resolve(target, anchor or None)
                if problem:
                    problems.append(f"{page.relative_to(ROOT)}:{number}: {link}: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", sorted(FORBIDDEN))
def test_nothing_outside_docs_cites_numbers_or_external_notes(kind):
    pattern, hits = FORBIDDEN[kind], []
    top = sorted(p.name for p in ROOT.iterdir() if p.name not in SKIPPED_DIRS)
    for path in walk(top, SCANNED_SUFFIXES):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_github_anchor_rule():
    assert github_anchor("Sliding-window protocol") == "sliding-window-protocol"
    assert github_anchor("Module and state-dict correspondence") == "module-and-state-dict-correspondence"
    assert github_anchor("`transformer` (the RIPD), 4.0M!") == "transformer-the-ripd-40m"
