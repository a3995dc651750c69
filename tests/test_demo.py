"""`edge-agent demo` needs no set-up and shows offers within seconds."""

from __future__ import annotations

import subprocess
import sys

from .conftest import free_port


def test_demo_shows_transitions_and_an_offer_within_seconds(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edge_agent", "--log-level", "warning", "demo", "--duration", "10",
                          "--port", str(free_port()), "--data", str(tmp_path / "demo")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "/metrics" in out.stdout and "/associates?token=" in out.stdout and "/shop " in out.stdout
    assert " enter " in out.stdout
    assert "OFFER " in out.stdout


def test_demo_leaves_its_data_for_report_and_audit(tmp_path):
    """The banner names the data dir and the exact report/audit commands; they work afterwards, the
    offered audit rows carry their zone, and the lines are in store time."""
    import json
    import re
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    data = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "edge_agent", "--log-level", "warning", "demo", "--duration", "10",
                          "--port", str(free_port()), "--data", str(data)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    toml = data / "store.toml"
    assert f"edge-agent report --config {toml}" in out.stdout
    assert f"edge-agent audit --config {toml}" in out.stdout
    # the money story: one store's minutes cannot decide, the chain's exports can, and the command is given
    assert "**snacks-chocolate-test earned money**" in out.stdout and "not sure yet" in out.stdout
    assert f"edge-agent report --chain {data / 'chain'}/*.jsonl.gz" in out.stdout
    assert "Europe/Prague" in out.stdout
    stamps = re.findall(r"^(\d\d:\d\d:\d\d)  \S+\s+(?:enter|OFFER)", out.stdout, re.M)
    assert stamps
    now = datetime.now(ZoneInfo("Europe/Prague"))
    t = datetime.strptime(stamps[-1], "%H:%M:%S").replace(year=now.year, month=now.month, day=now.day,
                                                          tzinfo=now.tzinfo)
    assert abs(t - now) < timedelta(minutes=5) or abs(t - now) > timedelta(hours=23)  # store time, not UTC
    rep = subprocess.run([sys.executable, "-m", "edge_agent", "report", "--config", str(toml), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)
    aud = subprocess.run([sys.executable, "-m", "edge_agent", "audit", "--config", str(toml), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert aud.returncode == 0, aud.stderr
    rows = [json.loads(line) for line in aud.stdout.splitlines()]
    offered = [r for r in rows if r["outcome"] == "offered"]
    assert offered and all(r["zone"] for r in offered)
    # a second demo replaces the first's data; a directory it did not make is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    bad = subprocess.run([sys.executable, "-m", "edge_agent", "demo", "--duration", "1", "--port",
                          str(free_port()), "--data", str(tmp_path / "mine")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "not a demo's data dir" in bad.stderr
