"""`edge-agent demo` needs no set-up and shows offers within seconds."""

from __future__ import annotations

import subprocess
import sys

from .conftest import free_port


def test_demo_shows_transitions_and_an_offer_within_seconds():
    out = subprocess.run([sys.executable, "-m", "edge_agent", "--log-level", "warning", "demo", "--duration", "10",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "/metrics" in out.stdout and "/associates?token=" in out.stdout
    assert " enter " in out.stdout
    assert "OFFER " in out.stdout
