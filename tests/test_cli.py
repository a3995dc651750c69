"""The CLI: its reference (docs/cli.md) is complete and current, `check` reports and exits right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_agent.commands.cli import markdown_help
from store_config import sample_path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_generated_and_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_cli_docs import PATH, render

    assert PATH == ROOT / "docs" / "cli.md"
    page = PATH.read_text()
    assert page.count("<!-- cli-reference:start -->") == 1
    assert render(page) == page, "docs/cli.md is stale: run `make docs`"
    for cmd in ("run", "check", "demo", "simulate", "audit"):
        assert f"### `edge-agent {cmd}`" in markdown_help()


def test_check_sample_passes_and_broken_config_fails(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(sample_path()), "--tech", "uwb"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 errors" in ok.stdout
    (tmp_path / "store.toml").write_text('[store]\nid = "X"\nlayout = "missing.geojson"\n')
    bad = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(tmp_path / "store.toml")],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "error:" in bad.stdout and "store.toml" in bad.stdout
