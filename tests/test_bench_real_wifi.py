"""benchmarks/real_wifi.py: the truth labelling and the held-out engine (pure)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import real_wifi  # noqa: E402


def _path_text() -> str:
    rows = [
        "#\tstartTime:0",
        "1000000\tTYPE_WAYPOINT\t0.0\t0.0",
        "1010000\tTYPE_WAYPOINT\t10.0\t0.0",
        # a scan delivered at 5.0 s: one AP seen at 4.5 s (fresh), one cached from 1.0 s (stale)
        "1005000\tTYPE_WIFI\tmall\taa:aa:aa:aa:aa:01\t-60\t2412\t1004500",
        "1005000\tTYPE_WIFI\tmall\taa:aa:aa:aa:aa:02\t-70\t2412\t1001000",
        # a scan after the last waypoint: no truth, dropped
        "1012000\tTYPE_WIFI\tmall\taa:aa:aa:aa:aa:01\t-61\t2412\t1011900",
        "1005100\tTYPE_ACCELEROMETER\t0.1\t0.2\t9.8\t3",
    ]
    return "\n".join(rows) + "\n"


def test_a_scan_keeps_fresh_aps_and_its_truth_is_interpolated_when_they_were_heard():
    scans = real_wifi.parse_path(_path_text())
    assert len(scans) == 1
    s = scans[0]
    assert s["ts"] == pytest.approx(1005.0)
    assert s["x"] == pytest.approx(4.5) and s["y"] == pytest.approx(0.0)
    assert list(s["wifi"].values()) == [-60]
    assert "aa:aa" not in "".join(s["wifi"])  # BSSIDs are not kept


def test_the_floor_plan_maps_its_bounding_box_onto_the_floor_image():
    gj = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Polygon", "coordinates": [[[120.0, 30.0], [120.002, 30.0], [120.002, 30.001],
                                                          [120.0, 30.001], [120.0, 30.0]]]}},
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Polygon", "coordinates": [[[120.0, 30.0], [120.001, 30.0], [120.001, 30.0005],
                                                          [120.0, 30.0005], [120.0, 30.0]]]}}]}
    zones, _ = real_wifi.shops(gj, 200.0, 100.0)
    (ring,) = zones.values()
    xs, ys = zip(*ring)
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((0.0, 100.0, 0.0, 50.0))


def test_the_engine_never_uses_a_scan_of_the_held_out_path():
    # two paths over the same spots with identical fingerprints: each scan's nearest
    # neighbours are its own path's, which must be excluded
    walk_idx = np.repeat([0, 1], 6)
    x = np.concatenate([np.arange(6.0), np.arange(6.0) + 100.0])
    fl = SimpleNamespace(walk_idx=walk_idx, x=x, y=np.zeros(12))
    rssi = np.tile(np.eye(6) * 40.0 - 90.0, (2, 1))
    fx = real_wifi.knn_fixes(fl, real_wifi.sq_dist(rssi))
    assert np.all(fx["x"][:6] >= 100.0) and np.all(fx["x"][6:] < 6.0)
