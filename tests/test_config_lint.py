"""store_config.lint: warnings about configurations that load but won't work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely

from store_config import check, lint, load_store, sample_path
from store_config.lint import TECH_ACCURACY, inscribed_radius
from store_config.model import Fence, Promotion


@pytest.fixture(scope="module")
def cfg():
    return load_store(sample_path())


def by_where(problems):
    out: dict[str, list] = {}
    for p in problems:
        out.setdefault(p.where, []).append(p)
    return out


def test_sample_is_clean_for_uwb(cfg):
    assert lint(cfg, tech="uwb") == []
    assert lint(cfg, tech="exact") == []


def test_small_displays_flagged_for_html5_not_uwb(cfg):
    html5 = by_where(lint(cfg, tech="html5"))
    for d in ("coffee-display", "new-endcap", "seasonal-display"):
        ps = html5[f'feature "{d}"']
        assert ps[0].severity == "warning" and ps[0].field == "geometry"
        msg = ps[0].message
        assert msg.startswith("fails with html5") and "s of dwell" in msg and "uwb" in msg
        assert "\n" not in msg
    uwb = by_where(lint(cfg, tech="uwb"))
    assert not any(k.startswith('feature "') for k in uwb)


def test_no_tech_names_each_techs_outcome_on_one_line(cfg):
    ps = by_where(lint(cfg))
    msg = ps['feature "new-endcap"'][0].message
    assert msg.startswith("positioning: uwb at once, ble fails, wifi fails, html5 fails")
    assert "m across to work with ble" in msg
    assert 'feature "produce"' in ps  # 10 m wide: ble after a few fixes, wifi needs long dwell
    produce = ps['feature "produce"'][0].message
    assert "ble after ~" in produce and "wifi marginal (~" in produce
    assert 'feature "grocery"' in ps and "wifi after ~" in ps['feature "grocery"'][0].message


def test_prediction_model(cfg):
    """N = ceil((z σ / d)²) fixes, d half the inscribed radius grown over the shelves beside it."""
    from statistics import NormalDist

    from store_config.lint import TECH_INTERVAL_S, predict

    aisle = cfg.fence("aisle-3")  # 2 m wide between two shelves 1 m wide: grown to 3 m
    p = predict(cfg, aisle, "wifi", grown_r=1.5)
    z = NormalDist().inv_cdf(0.9)
    n = int(np.ceil((z * (8.0 / 2.0) / 0.75) ** 2))
    assert (p.at_once, p.fixes, p.dwell_s, p.works) == (False, n, n * TECH_INTERVAL_S["wifi"], False)
    assert predict(cfg, aisle, "uwb").at_once
    # without the shelves an aisle needs more fixes; with fusion off it never works
    assert predict(cfg, aisle, "wifi").fixes > p.fixes
    off = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, fusion=False))
    q = predict(off, aisle, "wifi", grown_r=1.5)
    assert (q.works, q.fixes, q.dwell_s) == (False, None, None)
    assert predict(off, cfg.fence("grocery"), "ble").at_once
    # a stricter confidence needs more fixes
    strict = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, confidence=0.99))
    assert predict(strict, aisle, "wifi", grown_r=1.5).fixes > p.fixes
    # the sample's departments work with Wi-Fi fixes, its aisles do not
    ps = by_where(lint(cfg, tech="wifi"))
    assert ps['feature "grocery"'][0].message.startswith("works with wifi after ~")
    assert ps['feature "aisle-3"'][0].message.startswith("fails with wifi")


def test_ble_fixes_do_not_average_below_their_floor_and_a_survey_narrows_them(cfg, monkeypatch):
    """A BLE fix's error repeats while the shopper stands still (geometry.fusion's corr_floor): no
    dwell places her in an aisle without a survey (fixes ~5 m); with one (~3 m), near its middle."""
    from store_config.lint import BLE_UNSURVEYED_ACC, TECH_SIGMA_FLOOR, predict, tech_accuracy

    aisle = cfg.fence("aisle-3")
    assert cfg.ble_model is None and tech_accuracy(cfg, "ble") == BLE_UNSURVEYED_ACC
    p = predict(cfg, aisle, "ble", grown_r=1.5)
    assert (p.floored, p.works, p.fixes, p.verdict) == (True, False, None, "fails")
    msg = by_where(lint(cfg, tech="ble"))['feature "aisle-3"'][0].message
    assert msg.startswith("fails with ble") and "however long" in msg and "survey fit" in msg
    surveyed = dataclasses.replace(cfg, ble_model={"version": 1})
    assert tech_accuracy(surveyed, "ble") == TECH_ACCURACY["ble"] < BLE_UNSURVEYED_ACC
    s = predict(surveyed, aisle, "ble", grown_r=1.5)
    assert s.floored and s.works and s.verdict == "marginal"
    assert predict(surveyed, cfg.fence("grocery"), "ble").at_once
    # with no floor the same surveyed fixes would be sure in the aisle after a few seconds
    monkeypatch.setitem(TECH_SIGMA_FLOOR, "ble", 0.0)
    assert predict(surveyed, aisle, "ble", grown_r=1.5).verdict == "works"


def test_unknown_tech(cfg):
    with pytest.raises(ValueError):
        lint(cfg, tech="lidar")


def test_inscribed_radius(cfg):
    assert inscribed_radius(cfg.fence("aisle-1")) == pytest.approx(1.0, abs=0.02)
    assert inscribed_radius(cfg.fence("new-endcap")) == 0.9
    assert set(TECH_ACCURACY) == {"exact", "uwb", "ble", "wifi", "html5"}


def _with(cfg, **changes):
    return dataclasses.replace(cfg, **changes)


def test_overlap_with_competing_promotions(cfg):
    # a display that overlaps the produce section, both with enter promotions
    extra = Fence(id="melon-display", kind="display", floor=0, geometry=shapely.Point(10, 10).buffer(2),
                  category="melons", circle=(10, 10, 2))
    promo = Promotion(id="melons", title="Melons", categories=("melons",))
    c2 = _with(cfg, fences=cfg.fences + (extra,), promotions=cfg.promotions + (promo,))
    ps = [p for p in lint(c2, tech="uwb") if "overlaps" in p.message]
    assert len(ps) == 1
    assert ps[0].where in ('feature "produce"', 'feature "melon-display"')
    assert "melons" in ps[0].message and "produce-welcome" in ps[0].message
    # on another floor: no overlap
    c3 = _with(c2, fences=cfg.fences + (dataclasses.replace(extra, floor=1),))
    assert not [p for p in lint(c3, tech="uwb") if "overlaps" in p.message]
    # different triggers: no conflict with produce (a dwell one now meets the fresh department's)
    c4 = _with(c2, promotions=cfg.promotions + (dataclasses.replace(promo, trigger="dwell"),))
    assert not [p for p in lint(c4, tech="uwb") if "overlaps" in p.message and "produce" in p.message]


def test_fence_outside_outline(cfg):
    extra = Fence(id="car-park", kind="other", floor=0, geometry=shapely.box(45, 0, 60, 10))
    half = Fence(id="porch", kind="entrance", floor=0, geometry=shapely.box(10, -2, 14, 2))
    ps = by_where(lint(_with(cfg, fences=cfg.fences + (extra, half)), tech="uwb"))
    assert "outside the store outline" in ps['feature "car-park"'][0].message
    assert "50 %" in ps['feature "porch"'][0].message


def test_promotion_lints(cfg):
    promos = cfg.promotions + (
        Promotion(id="ghost", title="g", categories=("toys",)),
        Promotion(id="nothing", title="n"),
        Promotion(id="stock", title="s", zones=("dairy",), skus=("unicorn-milk",), requires_stock=True),
        Promotion(id="alt", title="a", zones=("dairy",), alternative_zone="cellar"),
        Promotion(id="dwell-nodwell", title="d", zones=("dairy",), trigger="dwell"),
    )
    ps = by_where(lint(_with(cfg, promotions=promos), tech="uwb"))
    assert "toys" in ps['promotion "ghost"'][0].message
    assert "matches no fence" in ps['promotion "nothing"'][0].message
    assert "unicorn-milk" in ps['promotion "stock"'][0].message
    assert ps['promotion "alt"'][0].field == "alternative_zone"
    assert ps['promotion "dwell-nodwell"'][0].field == "trigger"
    assert all(p.severity == "warning" for v in ps.values() for p in v)


def test_check_combines_errors_and_warnings():
    cfg, probs = check(sample_path(), tech="html5")
    assert cfg is not None
    assert probs and all(p.severity == "warning" for p in probs)
