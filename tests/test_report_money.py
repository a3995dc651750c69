"""Money in the campaign report, pure (issue 23): the method's intervals
cover the truth about 95 % of the time in seeded simulations, small arms
say "not enough data", strata combine as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.analytics.stats import MIN_PEOPLE, Arm, discount_of, estimate, margin_of
from edge_agent.analytics.table import format_markdown, variant_row

SIGMA = 0.8  # lognormal spread of baskets: skewed, as baskets are


def arms_from(revenues: np.ndarray) -> list[Arm]:
    """One Arm per row of per-person revenues (0: bought nothing)."""
    out = []
    for row in revenues:
        a = Arm(people=len(row), converted=int((row > 0).sum()), revenue=float(row.sum()),
                revenue_sq=float((row * row).sum()), baskets=int((row > 0).sum()))
        out.append(a)
    return out


def simulate(rng, runs, n, buy, median):
    """Per-person revenue: buys with probability ``buy``, a lognormal basket."""
    bought = rng.random((runs, n)) < buy
    return np.where(bought, median * np.exp(rng.normal(0.0, SIGMA, (runs, n))), 0.0)


def mean_revenue(buy, median):
    return buy * median * math.exp(SIGMA * SIGMA / 2)


@pytest.mark.parametrize("n_t,n_c", [(400, 400), (300, 100), (60, 40)])
def test_incremental_revenue_interval_covers_the_truth_about_95_percent(n_t, n_c):
    rng = np.random.default_rng(20261205 + n_t + n_c)
    runs = 2000
    treated = arms_from(simulate(rng, runs, n_t, 0.30, 32.0))
    control = arms_from(simulate(rng, runs, n_c, 0.22, 30.0))
    truth = n_t * (mean_revenue(0.30, 32.0) - mean_revenue(0.22, 30.0))
    hits = 0
    for t, c in zip(treated, control):
        lo, hi = estimate([(t, c)])["incremental_revenue_ci95"]
        assert hi > lo
        hits += lo <= truth <= hi
    coverage = hits / runs
    assert 0.925 <= coverage <= 0.97, coverage  # 2000 runs: ±1 % of sampling noise around 95 %


def test_uplift_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(7)
    runs, n_t, n_c = 4000, 150, 50
    x_t = rng.binomial(n_t, 0.12, runs)
    x_c = rng.binomial(n_c, 0.05, runs)
    hits = 0
    for xt, xc in zip(x_t, x_c):
        lo, hi = estimate([(Arm(people=n_t, converted=int(xt)), Arm(people=n_c, converted=int(xc)))])["uplift_ci95"]
        assert hi > lo  # never zero width, even when nobody in control converted
        hits += lo <= 0.07 <= hi
    assert 0.93 <= hits / runs <= 0.98, hits / runs  # Agresti–Caffo errs on the safe side at small p


def test_stratified_interval_covers_the_truth_across_unequal_stores():
    """Two stores with different basket sizes and holdout shares: the chain's
    incremental revenue is the sum of the stores' and its interval covers it."""
    rng = np.random.default_rng(11)
    runs = 1000
    stores = [(500, 100, 0.30, 0.20, 20.0), (200, 200, 0.40, 0.35, 60.0)]
    sims = [(arms_from(simulate(rng, runs, nt, bt, m * 1.1)), arms_from(simulate(rng, runs, nc, bc, m)))
            for nt, nc, bt, bc, m in stores]
    truth = sum(nt * (mean_revenue(bt, m * 1.1) - mean_revenue(bc, m)) for nt, nc, bt, bc, m in stores)
    hits = 0
    for r in range(runs):
        est = estimate([(t[r], c[r]) for t, c in sims])
        lo, hi = est["incremental_revenue_ci95"]
        hits += lo <= truth <= hi
    assert 0.925 <= hits / runs <= 0.97, hits / runs


def test_a_known_revenue_lift_is_recovered_within_its_interval():
    rng = np.random.default_rng(3)
    t, = arms_from(simulate(rng, 1, 3000, 0.35, 40.0))
    c, = arms_from(simulate(rng, 1, 3000, 0.25, 40.0))
    est = estimate([(t, c)])
    truth = 3000 * (mean_revenue(0.35, 40.0) - mean_revenue(0.25, 40.0))
    lo, hi = est["incremental_revenue_ci95"]
    assert lo <= truth <= hi and lo > 0  # the lift is real and the interval says so
    assert est["revenue_per_person_treated"] == pytest.approx(t.revenue / 3000)
    assert est["incremental_revenue"] == pytest.approx(t.revenue - c.revenue * 3000 / 3000)


def test_strata_weight_control_by_the_treated_people():
    """Store 1: 90 treated, 10 control; store 2: 10 treated, 90 control.  Pooling
    the control arms would compare mostly store 2's shoppers with mostly store
    1's; the stratified estimate compares each store with itself."""
    s1 = (Arm.of([10.0] * 90), Arm.of([10.0] * 10))  # no effect in either store
    s2 = (Arm.of([50.0] * 10), Arm.of([50.0] * 90))
    est = estimate([s1, s2])
    assert est["incremental_revenue"] == pytest.approx(0.0)
    assert est["revenue_per_person_control"] == pytest.approx(0.9 * 10 + 0.1 * 50)
    pooled = estimate([(Arm.of([10.0] * 90 + [50.0] * 10), Arm.of([10.0] * 10 + [50.0] * 90))])
    assert pooled["incremental_revenue"] < -2000  # what pooling would have claimed


def test_fewer_than_30_people_in_an_arm_is_not_enough_data():
    t = Arm.of([0.0] * 40 + [20.0] * 20)
    c = Arm.of([0.0] * (MIN_PEOPLE - 2) + [10.0])
    est = estimate([(t, c)])
    assert est["uplift_ci95"] is None and est["incremental_revenue_ci95"] is None
    assert est["incremental_revenue"] is not None  # the point estimate is still given
    row = variant_row(offered=60, applied=0, redeemed=0, strata=[(t, c)], discount_cost=0.0, margin_pct=None)
    md = format_markdown({"since": None, "until": "now", "promotions": {"p": {"variants": {"-": row},
                                                                               "suppressed": {}}}})
    assert "not enough data" in md and "+0.0 to +0.0" not in md
    assert row["uplift_ci95"] is None and row["incremental_revenue_ci95"] is None


def test_nobody_bought_gives_no_zero_width_revenue_interval():
    est = estimate([(Arm.of([0.0] * 100), Arm.of([0.0] * 100))])
    assert est["incremental_revenue"] == 0.0 and est["incremental_revenue_ci95"] is None
    lo, hi = est["uplift_ci95"]
    assert lo < 0 < hi  # 0 of 100 against 0 of 100: not a certainty of zero


def test_discount_and_margin():
    assert discount_of({"amount": 2.5}, 40.0) == 2.5
    assert discount_of({"pct": 20}, 40.0) == 8.0 and discount_of({"pct": 20}, None) == 0.0
    assert discount_of(None, 40.0) == 0.0
    assert margin_of(1000.0, 30.0, 120.0) == pytest.approx(180.0)
    assert margin_of(1000.0, None, 120.0) is None


def test_markdown_names_who_earned_money():
    rng = np.random.default_rng(5)
    t, = arms_from(simulate(rng, 1, 800, 0.40, 40.0))
    c, = arms_from(simulate(rng, 1, 800, 0.20, 40.0))
    good = variant_row(offered=900, applied=300, redeemed=100, strata=[(t, c)], discount_cost=250.0,
                       margin_pct=30.0)
    flat = variant_row(offered=900, applied=300, redeemed=100, strata=[(c, t)], discount_cost=0.0,
                       margin_pct=None)
    md = format_markdown({"since": None, "until": "now", "promotions": {
        "apples": {"variants": {"-": good}, "suppressed": {}}, "bread": {"variants": {"-": flat},
                                                                        "suppressed": {}}}})
    assert "**apples earned money**" in md and "**bread lost money**" in md
    assert "incremental revenue" in md and "95 % interval" in md


@pytest.mark.parametrize("basket", [12.34, 7.1])
def test_everyone_spending_the_same_gives_no_zero_width_revenue_interval(basket):
    """Audit h2: 40 against 40 people who each bought one basket of 12.34 have no
    spread at all; Σr² − n·m² left a rounding residue (~1e-13), so the report
    printed the interval [-0.0, 0.0] — a zero-width interval, which the
    contract rules out. No spread: the revenue interval is null."""
    strata = [(Arm.of([basket] * 40), Arm.of([basket] * 40))]
    assert strata[0][0].variance() == 0.0
    est = estimate(strata)
    assert est["incremental_revenue"] == pytest.approx(0.0, abs=1e-9)
    assert est["incremental_revenue_ci95"] is None
    row = variant_row(offered=40, applied=0, redeemed=0, strata=strata, discount_cost=0.0, margin_pct=None)
    assert row["incremental_revenue_ci95"] is None
    lo, hi = row["uplift_ci95"]
    assert lo < hi  # the conversion interval is still given, never zero width
