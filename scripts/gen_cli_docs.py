"""Regenerate the command reference (docs/cli.md) from `edge-agent --help`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge_agent.commands.cli import markdown_help

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
PATH = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def render(page: str) -> str:
    block = f"{START}\n{markdown_help()}{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, page, flags=re.S)


if __name__ == "__main__":
    PATH.write_text(render(PATH.read_text()))
    print(f"updated {PATH}")
