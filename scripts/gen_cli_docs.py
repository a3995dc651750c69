"""Regenerate the README's command reference from `edge-agent --help`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge_agent.cli import markdown_help  # noqa: E402

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def render(readme: str) -> str:
    block = f"{START}\n{markdown_help()}{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, readme, flags=re.S)


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
