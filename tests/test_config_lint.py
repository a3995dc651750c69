"""store_config.lint: warnings about configurations that load but won't work."""

from __future__ import annotations

import dataclasses

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
        assert "html5" in ps[0].message and "≥ 50 m" in ps[0].message and "uwb" in ps[0].message
    uwb = by_where(lint(cfg, tech="uwb"))
    assert not any(k.startswith('feature "') for k in uwb)


def test_no_tech_names_failing_techs(cfg):
    ps = by_where(lint(cfg))
    msg = ps['feature "new-endcap"'][0].message
    assert "ble" in msg and "wifi" in msg and "html5" in msg and "works with uwb" in msg
    assert 'feature "produce"' in ps  # 10 m wide: fine for ble, not wifi
    assert "ble" not in ps['feature "produce"'][0].message.split(":")[0]


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
    # different triggers: no conflict
    c4 = _with(c2, promotions=cfg.promotions + (dataclasses.replace(promo, trigger="dwell"),))
    assert not [p for p in lint(c4, tech="uwb") if "overlaps" in p.message]


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
