"""The simulator speaks with one voice (issue 25): one size a technology
needs, verdicts (works / marginal / fails) that agree with the measured recall
and with lint's words, map labels that never collide, the heatmap in a panel
of its own.  Pure: no broker (the map is drawn from a planned run)."""

from __future__ import annotations

import re

import pytest

from simulator.render import _boxes_overlap, render_map
from simulator.report import advice, verdicts
from simulator.run import plan
from store_config import lint, load_store, sample_path
from store_config.lint import measured_verdict, needed_across, predictions


@pytest.fixture(scope="module")
def cfg():
    return load_store(sample_path())


def _zone(visits, detected, recall, precision=1.0):
    return {"visits": visits, "detected": detected, "recall": recall, "precision": precision,
            "detection_delay_s": None, "grazes": 0, "false_enters": 0, "enters": detected}


def test_verdicts_follow_the_measured_recall(cfg):
    zones = {"wine": _zone(4, 2, 0.5), "meat-deli": _zone(3, 0, 0.0), "grocery": _zone(10, 9, 0.9),
             "aisle-2": _zone(0, 0, None)}
    v = verdicts(cfg, zones, "wifi")
    assert v["wine"]["verdict"] == "marginal"      # 50 % recall is not "will fail"
    assert v["meat-deli"]["verdict"] == "fails"     # 0/3 is not "works"
    assert v["grocery"]["verdict"] == "works"
    assert v["aisle-2"]["verdict"] == v["aisle-2"]["predicted"] == "fails"  # no visits: lint's prediction
    for zid, z in zones.items():
        assert v[zid]["measured"] == measured_verdict(z["recall"])
    for a in advice(cfg, zones, "wifi"):
        if a["verdict"] in ("works", "marginal", "fails"):
            assert a["verdict"] == v[a["zone"]]["verdict"], a


def test_advice_and_lint_name_the_same_size(cfg):
    for tech in ("ble", "wifi", "html5"):
        need = f"{needed_across(cfg, tech):.1f}".rstrip("0").rstrip(".")
        zones = {f.id: _zone(3, 0, 0.0) for f in cfg.fences if f.kind not in ("obstacle", "staff_only")}
        sizes = {m for a in advice(cfg, zones, tech) for m in re.findall(r"at least ([\d.]+) m across", a["text"])}
        lint_sizes = {m for p in lint(cfg, tech=tech) for m in re.findall(r"≥ ([\d.]+) m across", p.message)}
        assert sizes <= {need} and lint_sizes <= {need}, (tech, sizes, lint_sizes)
        if tech == "wifi":
            assert sizes == lint_sizes == {need}


def test_lint_uses_the_three_verdicts(cfg):
    preds = predictions(cfg, "wifi")
    for p in lint(cfg, tech="wifi"):
        fid = p.where.split('"')[1]
        assert p.message.split(" ")[0] == preds[fid].verdict, p


def test_map_labels_do_not_collide_and_the_heatmap_is_its_own_panel(cfg, tmp_path):
    pl = plan(cfg, shoppers=6, duration=300, seed=3, tech="exact")
    zones = {f.id: {**_zone(3, 3, 1.0), "verdict": "works"} for f in cfg.fences if f.kind != "obstacle"}
    report = {"zones": zones, "lint_flagged": [], "tech": "exact", "shoppers": 6, "duration_s": 300, "seed": 3,
              "tracker": "fused", "latency_ms": {}}
    out = render_map(cfg, pl.space, pl.shoppers, pl.samples, report, tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 0
    boxes = list(out["boxes"].items())
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            assert not _boxes_overlap(ba, bb), (a, b)
    leaves = {"produce", "bakery", "aisle-1", "aisle-6", "meat-deli", "coffee-display"}
    assert leaves <= set(out["boxes"]), out["hidden"]
    assert out["images"] == {"map": 0, "heatmap": 1}
