"""Replaces one generated section of a Markdown file, between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` (appended when the file has none), leaving the rest as written.

    python3 scripts/docsection.py FILE NAME < section.md
"""
from __future__ import annotations

import sys
from pathlib import Path


def write_section(path: str | Path, name: str, section: str) -> None:
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{section.strip(chr(10))}\n{end}{tail}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    write_section(sys.argv[1], sys.argv[2], sys.stdin.read())
