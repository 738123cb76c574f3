"""The fenced code blocks of a Markdown page, for the tests that run them.

A block is a ```LANG fence; the line right before it may be a marker comment:

- `<!-- file: PATH -->`: the block is the content of PATH (relative to the repository), verbatim;
- `<!-- snippet: NAME -->`: a test reads the block by NAME (`snippet(NAME)`) and runs it itself.

Unmarked blocks are run by tests/test_docs_snippets.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADDING_A_METHOD = REPO / "docs" / "adding-a-method.md"

_MARKER = re.compile(r"^<!--\s*(file|snippet):\s*(\S+)\s*-->$")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    #: 1-based line of the opening fence
    line: int
    file: str | None = None
    name: str | None = None

    @property
    def where(self) -> str:
        return f"{ADDING_A_METHOD.name}:{self.line}"


def blocks(path: Path = ADDING_A_METHOD) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.name}:{start + 1}: unclosed code block"
        marker = _MARKER.match(lines[start - 1].strip()) if start else None
        kind, value = marker.groups() if marker else (None, None)
        text = "\n".join(lines[start + 1 : end]) + "\n"
        found.append(Block(fence.group(1), text, start + 1, value if kind == "file" else None, value if kind == "snippet" else None))
        i = end + 1
    return found


def snippet(name: str, path: Path = ADDING_A_METHOD) -> Block:
    """The block marked `<!-- snippet: NAME -->`."""
    named = [block for block in blocks(path) if block.name == name]
    assert len(named) == 1, f"{path.name} has {len(named)} blocks named {name!r}"
    return named[0]


def commands(block: Block) -> list[str]:
    """The non-empty, non-comment lines of a bash block."""
    return [line.strip() for line in block.text.splitlines() if line.strip() and not line.strip().startswith("#")]
