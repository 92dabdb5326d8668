"""The README's fenced shell blocks, taken verbatim by their ``<!-- marker -->`` comment.

Tests and ``make demo`` run what the README tells a user to paste, not a copy of it.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The fenced ``sh`` block right after ``<!-- marker -->`` in README.md, verbatim."""
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)\n```\n", README.read_text(), re.S)
    if not match:
        raise LookupError(f"README.md has no <!-- {marker} --> block")
    return match.group(1) + "\n"
