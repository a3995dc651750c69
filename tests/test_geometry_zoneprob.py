"""The tracker that abstains and lets go (issue 21), pure: P(inside) of a
Gaussian position per fence (geometry.zoneprob), weak fixes in the filter
(geometry.fusion), and the two composed with geometry.tracking.step."""

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from geometry.fences import FenceIndex, Match
from geometry.fusion import FusionParams, FusionState, fuse, z_for
from geometry.tracking import Entered, Exited, TrackParams, step
from geometry.zoneprob import ZoneProb, norm_cdf

from .fusion_scenarios import Fence, judge

Z90 = z_for(0.9)


def zp_of(*fences):
    idx = FenceIndex(fences)
    return ZoneProb(idx, fences)


def test_norm_cdf_matches_the_error_function():
    from math import erf, sqrt

    z = np.linspace(-7, 7, 281)
    want = np.array([0.5 * (1 + erf(v / sqrt(2))) for v in z])
    assert np.max(np.abs(norm_cdf(z) - want)) < 2e-7


@pytest.mark.parametrize("x,y,s", [(2.0, 1.5, 0.5), (2.0, 1.5, 1.5), (0.5, 0.4, 1.0), (10.0, 10.0, 1.0),
                                   (11.2, 10.3, 0.7), (21.0, 1.0, 1.0), (25.0, 1.0, 2.0), (23.0, 6.0, 1.5)])
def test_p_inside_is_the_gaussian_mass_in_the_fence(x, y, s):
    fences = [Fence("box", box(0, 0, 4, 3)), Fence("disc", Point(10, 10).buffer(2.0, 64)),
              Fence("ell", box(20, 0, 30, 2).union(box(20, 0, 22, 10)))]
    zp = zp_of(*fences)
    _, hits, p = zp.judge([x], [y], [0], [s], 0.9, Z90)
    got = {zp.index.ids[k]: v for k, v in zip(hits.fence.tolist(), p.tolist())}
    pts = np.random.default_rng(7).normal([x, y], s, (400_000, 2))
    for f in fences:
        mc = shapely.contains_xy(f.geometry, pts[:, 0], pts[:, 1]).mean()
        # a box is exact; other shapes are rasterised (their rim: within 0.01)
        assert got.get(f.id, 0.0) == pytest.approx(mc, abs=0.01 if f.id != "box" else 0.004), f.id


def test_a_narrow_aisle_is_not_entered_on_a_disc_that_fits_but_holds_too_little():
    # 2.6 m wide, estimate in the middle with sigma 1 m: the 0.9 disc (1.28 m) fits, yet P = 0.81
    aisle = Fence("aisle", box(0, 0, 2.6, 20))
    zp = zp_of(aisle)
    [m], _, p = zp.judge([1.3], [10.0], [0], [1.0], 0.9, Z90)
    assert p[0] == pytest.approx(2 * norm_cdf(1.3) - 1, abs=1e-6)
    assert zp.index.classify([1.3], [10.0], [0], [Z90 * 1.0])[0].inside == {"aisle"}  # the disc alone: inside
    assert m.inside == frozenset() and m.straddle == {"aisle"}  # P(inside): abstain
    # wide enough, it enters
    [m], _, _ = zp.judge([1.3], [10.0], [0], [0.6], 0.9, Z90)
    assert m.inside == {"aisle"}


def test_an_estimate_past_a_corner_is_let_go_though_its_disc_still_touches():
    a = Fence("a", box(0, 0, 10, 10))
    zp = zp_of(a)
    # 0.7 m past the corner, sigma 1: the disc of 1.28 m still reaches the fence, P(inside) = 0.095
    [m], _, p = zp.judge([10.5], [10.5], [0], [1.0], 0.9, Z90)
    assert zp.index.classify([10.5], [10.5], [0], [Z90])[0].straddle == {"a"}
    assert p[0] < 0.1 and m == Match()
    track, _ = step(None, Match(["a"], [], ["a"]), 0.0, TrackParams())
    track, ev = step(track, m, 1.0, TrackParams(sustained_pings=0))
    assert ev == [Exited("a", 1.0, "left")]


def test_a_position_without_accuracy_changes_nothing():
    zp = zp_of(Fence("a", box(0, 0, 10, 10)), Fence("b", box(20, 0, 30, 10)))
    for n in (1, 3):
        ms, _, _ = zp.judge([5.0] * n, [5.0] * n, [0] * n, [np.inf] * n, 0.9, Z90)
        assert all(m.inside == frozenset() and m.straddle == {"a", "b"} for m in ms)


def test_judge_is_the_same_for_a_batch_and_one_at_a_time():
    fences = [Fence(f"z{i}", box(i * 4.0, 0, i * 4.0 + 4, 5)) for i in range(5)]
    zp = zp_of(*fences)
    rng = np.random.default_rng(3)
    x, y, s = rng.uniform(-2, 22, 200), rng.uniform(-2, 7, 200), rng.uniform(0.2, 4, 200)
    batch, _, _ = zp.judge(x, y, np.zeros(200), s, 0.9, Z90)
    one = [zp.judge(x[i:i + 1], y[i:i + 1], [0], s[i:i + 1], 0.9, Z90)[0][0] for i in range(200)]
    assert batch == one


def test_weak_fixes_move_the_estimate_but_never_tighten_it_below_their_floor():
    p = FusionParams(weak_floor=0.7)
    st = FusionState(4)
    weak, strong = st.rows(["w", "s"])
    for k in range(30):
        f = fuse(st, [weak, strong], [5.0, 5.0], [5.0, 5.0], [0, 0], [4.0, 4.0], [2.0 * k] * 2, p,
                 weak=[True, False])
    sw, ss = f.sigma
    assert sw >= 0.7 * 2.0 - 1e-9  # sigma of one fix: acc 4 / 2
    assert ss < 0.7 * sw  # the same fixes, independent: averaged
    # they still move it: the weak estimate follows a proximity that moved
    for k in range(30, 45):
        f = fuse(st, [weak], [9.0], [5.0], [0], [4.0], [2.0 * k], p, weak=[True])
    assert f.x[0] > 8.0


def test_repeated_one_beacon_proximities_near_an_edge_never_enter():
    # A phone that hears one beacon 1 m inside the zone's edge, scan after scan: "near that
    # beacon" (acc 5 m) says nothing about which side of the edge it is on.
    zone = Fence("zone", box(0, 0, 12, 12))
    t = np.arange(0.0, 60.0, 2.0)
    fx, fy = np.full(t.size, 11.0), np.full(t.size, 6.0)
    assert not [e for e in judge([zone], t, fx, fy, 5.0, weak=True) if isinstance(e, Entered)]
    # the single-fix rule's sustained evidence (3 centre-inside fixes, acc below the half-width) did
    assert [e for e in judge([zone], t, fx, fy, 5.0, fused=False) if isinstance(e, Entered)]
    # independent fixes that agree that often are evidence: they enter
    assert [e for e in judge([zone], t, fx - 1.5, fy, 5.0) if isinstance(e, Entered)]


def test_a_shopper_who_walked_out_is_let_go_though_her_circle_still_touches_the_zone():
    # One-beacon proximities (acc 5 m, weak) every 2 s: 40 s near beacon a in the middle of zone A,
    # then near beacon b, 3 m past A's edge.  Every fix near b still has its circle reaching into
    # A: the whole-circle rule holds her in A until the silence timeout; P(A) lets her go.
    zone = Fence("A", box(0, 0, 12, 12))
    t = np.arange(0.0, 100.0, 2.0)
    near_b = t >= 40.0
    fx, fy = np.where(near_b, 15.0, 6.0), np.full(t.size, 6.0)
    new = judge([zone], t, fx, fy, 5.0, weak=True)
    old = judge([zone], t, fx, fy, 5.0, fused=False)
    for ev in (new, old):
        assert [e.fence for e in ev if isinstance(e, Entered)] == ["A"]
    out = [e.ts for e in new if isinstance(e, Exited)]
    assert out and out[0] <= 40.0 + 6 * 2.0, out  # within six sightings of b (measured: five)
    assert not [e for e in old if isinstance(e, Exited)]  # held in A for the whole minute near b


def test_a_sources_accuracy_is_calibrated_from_a_survey_or_its_own_spread():
    from geometry.calibrate import coverage_of, scale_from_spread, scale_from_survey

    rng = np.random.default_rng(5)
    # an engine that reports acc 5 (2 sigma = 5: sigma 2.5) while its error is sigma 3.5 per axis
    e = rng.normal(0, 3.5, (4000, 2))
    err = np.hypot(e[:, 0], e[:, 1])
    k = scale_from_survey(err, np.full(err.size, 5.0))
    assert k == pytest.approx(3.5 / 2.5, rel=0.05)
    assert np.mean(err <= k * 5.0) == pytest.approx(coverage_of(2.0), abs=0.01)
    assert scale_from_spread(10 + e[:, 0], 20 + e[:, 1], np.full(err.size, 5.0)) == pytest.approx(1.4, rel=0.05)
    with pytest.raises(ValueError):
        scale_from_survey([1.0], [2.0])
