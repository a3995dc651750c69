"""Scores from central (issue 23), pure: scores change the winner among the
promotions the rules allow, explore_pct picks uniformly with the right
propensity, and no scores leaves the rules as they were."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edge_agent.pipeline.decisions import OfferHistory, decide
from store_config.load import parse_scores
from store_config.model import Discount, OffersConfig, Profile, Promotion

from .test_decisions import FENCE, NOON_ISH, PRAGUE, YES


def promo(pid, **kw) -> Promotion:
    kw.setdefault("zones", ("produce",))
    return Promotion(id=pid, title=pid, **kw)


A = promo("a", priority=5)  # the rules' winner
B = promo("b", priority=1, margin_pct=40.0, discount=Discount(pct=10))  # value 0.30
C = promo("c", priority=1, segments=("vip",))
SCORES = parse_scores({"model": "propensity-2026-12-01",
                       "scores": {"*": {"a": 0.02, "b": 0.10}, "vip": {"c": 0.5}}}, file="scores.json")


def go(*, scores=SCORES, explore=0.0, profile=None, rand=None, candidates=(A, B, C)):
    return decide(trigger="enter", fence=FENCE, candidates=list(candidates), profile=profile, consent=YES,
                  history=OfferHistory(), inventory={}, now=NOON_ISH, tz=PRAGUE,
                  offers=OffersConfig(explore_pct=explore), holdout=lambda pid: 0.99, scores=scores, rand=rand)


def test_no_scores_the_rules_decide_as_before():
    out = go(scores=None)
    assert out.offer.promotion_id == "a" and out.model is None and out.propensity == 1.0 and out.allowed == ()


def test_scores_change_the_winner_by_score_times_value():
    out = go()  # a: 0.02 × 1; b: 0.10 × (0.40 − 0.10) = 0.03; c: not allowed (segment)
    assert out.offer.promotion_id == "b" and out.model == "propensity-2026-12-01" and out.propensity == 1.0
    assert out.allowed == ("a", "b")
    assert {d.promotion_id: d.reason for d in out.decisions}["a"] == "outranked"
    vip = go(profile=Profile(device="x", segments=("vip",)))
    assert vip.offer.promotion_id == "c" and vip.allowed == ("a", "b", "c")  # the vip row scores c


def test_equal_scores_fall_back_to_priority():
    tie = parse_scores({"model": "m", "scores": {"*": {"a": 0.1, "b": 0.1}}}, file="s")
    assert go(scores=tie, candidates=(promo("a", priority=1), promo("b", priority=2))).offer.promotion_id == "b"


def test_explore_pct_picks_uniformly_and_records_the_propensity():
    rng = random.Random(1)
    picks = Counter()
    props = {}
    for _ in range(4000):
        out = go(explore=30.0, rand=rng.random)
        picks[out.offer.promotion_id] += 1
        props[out.offer.promotion_id] = out.propensity
    assert props == pytest.approx({"b": 0.7 + 0.15, "a": 0.15})
    assert abs(picks["a"] / 4000 - 0.15) < 0.02 and abs(picks["b"] / 4000 - 0.85) < 0.02


def test_a_bundles_scores_replace_the_files_and_bad_ones_are_refused():
    from pathlib import Path

    from store_config.load import load_store
    from store_config.model import ConfigError
    from sync.downlink import build_config

    base = load_store(Path(__file__).resolve().parent.parent / "store_config" / "sample" / "store.toml")
    assert base.scores is None
    cfg = build_config(base, {"version": "1", "scores": {"model": "m2", "scores": {"*": {"bakery-morning": 0.2}}}})
    assert cfg.scores.model == "m2" and cfg.scores.table["*"]["bakery-morning"] == 0.2
    assert cfg.version != base.version
    with pytest.raises(ConfigError, match="finite number"):
        build_config(base, {"version": "2", "scores": {"model": "m3", "scores": {"*": {"x": -1}}}})


def test_equal_score_times_value_falls_back_to_priority_whatever_the_float_rounding():
    """Audit h2: 0.02 × 50 % and 0.05 × 20 % are both 0.01, but in floats the
    second is 0.010000000000000002, so it beat the higher priority; the tie
    now goes to priority, in the agent and in the offline evaluation alike."""
    from edge_agent.analytics.policy import choose, promo_value

    hi = promo("hi", priority=2, margin_pct=50.0)
    lo = promo("lo", priority=1, margin_pct=20.0)
    tie = parse_scores({"model": "m", "scores": {"*": {"hi": 0.02, "lo": 0.05}}}, file="s")
    assert go(scores=tie, candidates=(hi, lo)).offer.promotion_id == "hi"
    values = {p.id: promo_value(p) for p in (hi, lo)}
    assert choose(["lo", "hi"], [], tie.table, values, {"hi": 2, "lo": 1}) == "hi"
