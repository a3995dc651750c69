"""geometry.radio: BLE fixes from a likelihood over cells, heard and silent beacons alike (pure)."""

import json
import math

import numpy as np
import pytest

from geometry.radio import NOMINAL, BleModel, RadioParams, fit, predict


class B:
    def __init__(self, bid, x, y, floor=0, tx_power=-59.0):
        self.beacon_id, self.x, self.y, self.floor, self.tx_power = bid, x, y, floor, tx_power


ROW = [B("a", 0, 0), B("b", 10, 0), B("c", 20, 0)]


def model(beacons=ROW, **kw):
    return BleModel.from_beacons(beacons, RadioParams(**kw), bounds={0: (-5.0, -5.0, 25.0, 5.0)})


def test_one_beacon_gives_a_region_around_it_not_a_point_at_the_floor():
    fix, unknown, distinct = model().locate([("b", -65.0)])
    x, y, fl, acc = fix
    assert (unknown, distinct, fl) == (0, 1, 0)
    assert abs(x - 10) < 2.0 and abs(y) < 2.0
    # a region of several metres, not the 1.5 m point the range fit claimed
    assert acc > 2.5


def test_a_beacon_not_heard_pushes_the_fix_away_from_it():
    # heard only "a"; "b" 10 m away stayed silent.  With the same reading the fix
    # sits further from "b" than when "b" is not in the layout at all.
    # (a radio where a beacon within ~10 m is heard 80-90 % of the time)
    kw = dict(p_miss=0.1, sens_dbm=-80.0, sens_width_db=4.0)
    alone = model([B("a", 0, 0)], **kw).locate([("a", -75.0)])[0]
    with_silent = model([B("a", 0, 0), B("b", 10, 0)], **kw).locate([("a", -75.0)])[0]
    assert with_silent[0] < alone[0] - 1.0
    # the defaults (fitted on public data) weigh silence less, in the same direction
    assert model([B("a", 0, 0), B("b", 10, 0)]).locate([("a", -75.0)])[0][0] < model([B("a", 0, 0)]).locate(
        [("a", -75.0)])[0][0]


def test_one_beacon_listed_three_times_counts_as_one():
    m = model()
    once = m.locate([("b", -65.0)])
    thrice = m.locate([("b", -70.0), ("B", -65.0), ("b", -80.0)])
    assert once[2] == thrice[2] == 1
    assert once[0] == thrice[0]  # the strongest reading is the one used


def test_unknown_and_non_finite_readings():
    m = model()
    fix, unknown, distinct = m.locate([("zz", -60.0), ("a", float("nan")), ("c", -60.0)])
    assert (unknown, distinct) == (1, 1)
    assert m.locate([("zz", -60.0)]) == (None, 1, 0)


def test_more_beacons_heard_is_a_tighter_fix_between_them():
    m = model()
    one = m.locate([("b", -75.0)])[0]
    three = m.locate([("a", -75.0), ("b", -70.0), ("c", -75.0)])[0]
    assert three[3] < one[3]
    assert abs(three[0] - 10) < 2.0


def test_batch_and_single_agree():
    m = model()
    scans = [[("a", -60.0)], [("a", -70.0), ("b", -72.0)], [("a", -80.0), ("b", -62.0), ("c", -81.0)]]
    R = np.full((3, 3), np.nan)
    for i, s in enumerate(scans):
        for bid, r in s:
            R[i, "abc".index(bid)] = r
    x, y, fl, acc, k = predict(m, np.zeros(3), R)
    for i, s in enumerate(scans):
        one = m.locate(s)[0]
        assert one[0] == pytest.approx(x[i]) and one[1] == pytest.approx(y[i]) and one[3] == pytest.approx(acc[i])
    assert k.tolist() == [1, 2, 3]


def test_model_round_trips_through_json_and_rejects_junk():
    m = model()
    again = BleModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.locate([("a", -70.0), ("b", -72.0)]) == m.locate([("a", -70.0), ("b", -72.0)])
    with pytest.raises(ValueError, match="not an edge-agent BLE model"):
        BleModel.from_dict({"kind": "other"})
    with pytest.raises(ValueError, match="version"):
        BleModel.from_dict({**m.to_dict(), "version": 99})


def _synthetic_survey(seed=0, walks=4, per_walk=150):
    """Scans on a 20 x 10 m floor with 6 beacons: per-beacon offsets, t noise, misses."""
    rng = np.random.default_rng(seed)
    bx = np.array([0.0, 10, 20, 0, 10, 20])
    by = np.array([0.0, 0, 0, 10, 10, 10])
    off = rng.normal(0, 4, 6)
    S = walks * per_walk
    X, Y = rng.uniform(0, 20, S), rng.uniform(0, 10, S)
    d = np.maximum(np.hypot(X[:, None] - bx, Y[:, None] - by), 0.5)
    R = -62 + off - 25 * np.log10(d) + 4 * rng.standard_t(4, d.shape)
    R[(R < -85) | (rng.uniform(size=R.shape) < 0.15)] = np.nan
    walk = np.repeat([f"w{i}" for i in range(walks)], per_walk)
    return bx, by, X, Y, R.round(), walk


def test_fit_recovers_the_radio_and_its_accuracy_is_honest_on_held_out_walks():
    bx, by, X, Y, R, walk = _synthetic_survey()
    ids = [f"b{i}" for i in range(6)]
    z = np.zeros(6)
    train = walk != "w3"
    m, cv = fit(ids, bx, by, z, z - 59, X[train], Y[train], np.zeros(train.sum()), R[train], walk[train],
                bounds={0: (-1.0, -1.0, 21.0, 11.0)})
    assert m.params.sens_dbm > -95  # it learnt that far beacons go unheard
    x, y, _, acc, k = predict(m, np.zeros((~train).sum()), R[~train])
    ok = k > 0
    err = np.hypot(x - X[~train], y - Y[~train])[ok]
    assert abs(np.mean(err <= acc[ok]) - NOMINAL) < 0.1
    # the survey beats the no-survey defaults on the same scans
    d0 = BleModel(ids, bx, by, z, z - 59, RadioParams(), {0: (-1.0, -1.0, 21.0, 11.0)})
    x0, y0, _, _, _ = predict(d0, np.zeros((~train).sum()), R[~train])
    assert np.median(err) < np.median(np.hypot(x0 - X[~train], y0 - Y[~train])[ok])
    # the cross-validated fixes the report uses are calibrated too
    cok = cv["heard"] > 0
    cerr = np.hypot(cv["x"] - X[train], cv["y"] - Y[train])[cok]
    assert abs(np.mean(cerr <= cv["acc"][cok]) - NOMINAL) < 0.06


def test_params_are_checked():
    with pytest.raises(ValueError):
        RadioParams(p_miss=1.0)
    with pytest.raises(ValueError):
        RadioParams(acc_scale=(1.0, 1.0))
    assert math.isclose(NOMINAL, 0.8647, abs_tol=1e-4)


def test_a_beacons_heard_class_too_small_to_calibrate_is_not_given_the_pooled_accuracy():
    # Every scan hears all six beacons but 16, which hear only their third-nearest (a phone behind
    # a pillar): too few for their class's quantile.  The pooled scale, set by the full scans,
    # would claim a few metres for them; held out, their truth lies further.
    rng = np.random.default_rng(0)
    bx, by = np.array([0.0, 10, 20, 0, 10, 20]), np.array([0.0, 0, 0, 10, 10, 10])
    off = rng.normal(0, 4, 6)
    X, Y = rng.uniform(0, 20, 600), rng.uniform(0, 10, 600)
    d = np.maximum(np.hypot(X[:, None] - bx, Y[:, None] - by), 0.5)
    R = (-62 + off - 25 * np.log10(d) + 4 * rng.standard_t(4, d.shape)).round()
    walk = np.repeat([f"w{i}" for i in range(4)], 150)
    lone = []
    for w in range(4):
        for i in rng.choice(np.flatnonzero(walk == f"w{w}"), 4, replace=False):
            j = int(np.argsort(np.hypot(X[i] - bx, Y[i] - by))[2])
            r = R[i, j]
            R[i] = np.nan
            R[i, j] = r
            lone.append(i)
    lone = np.array(lone)
    ids, z = [f"b{i}" for i in range(6)], np.zeros(6)
    train = walk != "w3"
    m, _ = fit(ids, bx, by, z, z - 59, X[train], Y[train], np.zeros(train.sum()), R[train], walk[train],
               bounds={0: (-1.0, -1.0, 21.0, 11.0)})
    t = lone[walk[lone] == "w3"]
    x, y, _, acc, k = predict(m, np.zeros(t.size), R[t])
    assert (k == 1).all()
    assert np.mean(np.hypot(x - X[t], y - Y[t]) <= acc) >= 0.75
    assert m.params.acc_scale[0] > m.params.acc_scale[2]  # wider than the full scans' scale



def test_the_cross_validated_coverage_is_measured_not_the_calibration_target():
    # DESIGN: `survey fit` prints a report cross-validated one walk held out at a time,
    # with the coverage of the claimed accuracy.  If the accuracy of the held-out fixes
    # is scaled with a factor fitted on those same fixes, that coverage is 86.5 % by
    # construction, whatever the walks hold: one walk of four whose positions were all
    # mis-noted (mirrored) would not show.  Calibrated on the other walks only, the
    # report's coverage is what a walk the fit never saw gets.
    bx, by, X, Y, R, walk = _synthetic_survey()
    ids = [f"b{i}" for i in range(6)]
    z = np.zeros(6)
    bounds = {0: (-1.0, -1.0, 21.0, 11.0)}
    F = np.zeros(X.size)

    def coverage(X):
        _, cv = fit(ids, bx, by, z, z - 59, X, Y, F, R, walk, bounds=bounds)
        ok = cv["heard"] > 0
        return float(np.mean(np.hypot(cv["x"] - X, cv["y"] - Y)[ok] <= cv["acc"][ok]))

    assert abs(coverage(X) - NOMINAL) < 0.03  # walks that agree: as claimed
    mis = X.copy()
    mis[walk == "w0"] = 20.0 - mis[walk == "w0"]
    assert coverage(mis) < NOMINAL - 0.035  # a bad walk shows (it read 86.3 % when self-calibrated)
