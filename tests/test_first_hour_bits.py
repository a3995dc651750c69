"""Issue 25's smaller things that need no broker: the ACL template Mosquitto
takes without a warning, the favicon the pages never request, the check-in
note that says why no offer comes, the simulator's plotting as an extra."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from edge_agent.http.shop.notes import checkin_note
from store_config import load_store, sample_path

ROOT = Path(__file__).resolve().parent.parent


def test_acl_patterns_all_substitute_the_client():
    """Mosquitto warns about a `pattern` line with neither %u nor %c."""
    lines = [ln.split() for ln in (ROOT / "deploy" / "acl").read_text().splitlines()
             if ln.strip().startswith("pattern ")]
    assert lines
    for parts in lines:
        assert "%u" in parts[-1] or "%c" in parts[-1], parts


def test_pages_do_not_request_a_favicon():
    for page in ("associates.html", "shop.html"):
        html = (ROOT / "edge_agent" / "http" / "static" / page).read_text()
        assert '<link rel="icon" href="data:,">' in html, page


def test_checkin_note_says_why_no_offer_comes():
    cfg = load_store(sample_path())
    tz = ZoneInfo(cfg.timezone)
    promos = {p.id: p for p in cfg.promotions}
    bakery = cfg.fence("bakery")
    assert promos["bakery-morning"].hours, "the sample's bakery promotion has hours"
    night = datetime(2026, 12, 1, 23, 30, tzinfo=tz)
    note = checkin_note(bakery, cfg.promotions, night)
    assert note and "right now" in note and promos["bakery-morning"].title in note
    start = promos["bakery-morning"].hours[0][0]
    during = datetime(2026, 12, 1, start // 60, start % 60 + 1, tzinfo=tz)
    assert checkin_note(bakery, cfg.promotions, during) is None
    assert "Nothing is on offer" in checkin_note(cfg.fence("back-room"), cfg.promotions, during)


def test_plotting_is_an_extra_that_make_installs():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("matplotlib") for d in py["dependencies"])
    assert any(d.startswith("matplotlib") for d in py["optional-dependencies"]["sim"])
    make = (ROOT / "Makefile").read_text()
    assert "'.[test,sim]'" in make


def test_simulate_without_matplotlib_says_what_to_install(monkeypatch, capsys):
    import sys

    from edge_agent.commands.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["simulate", "--config", str(sample_path()), "--out", "unused"]) == 2
    assert "store-edge-agent[sim]" in capsys.readouterr().err
