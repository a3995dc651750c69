from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box

from geometry.fences import FenceIndex, Match


@dataclass(frozen=True)
class F:
    id: str
    floor: int
    geometry: object
    circle: tuple | None = None


def circle(fid, cx, cy, r, floor=0):
    return F(fid, floor, Point(cx, cy).buffer(r), (cx, cy, r))


AISLE = F("aisle", 0, box(0, 0, 4, 20))
DONUT = F("donut", 0, Polygon([(10, 0), (20, 0), (20, 10), (10, 10)], [[(13, 3), (17, 3), (17, 7), (13, 7)]]))
MULTI = F("multi", 0, MultiPolygon([box(30, 0, 34, 4), box(40, 0, 44, 4)]))
TRI = F("tri", 0, Polygon([(50, 0), (60, 0), (55, 8)]))
SMALL = circle("small", 70, 5, 0.9)
UPSTAIRS = F("up", 1, box(0, 0, 4, 20))


@pytest.fixture(scope="module")
def index():
    return FenceIndex([AISLE, DONUT, MULTI, TRI, SMALL, UPSTAIRS])


def test_ids_and_halfwidth(index):
    assert index.ids == ["aisle", "donut", "multi", "tri", "small", "up"]
    assert index.halfwidth["aisle"] == pytest.approx(2.0, abs=0.01)
    assert index.halfwidth["small"] == 0.9
    assert index.halfwidth["multi"] == pytest.approx(2.0, abs=0.01)
    assert 0 < index.halfwidth["donut"] < 3.0


def test_wholly_inside_straddle_outside_rectangle(index):
    m = index.classify_one(2, 10, 0, 1.5)
    assert m.inside == {"aisle"} and not m.straddle and m.centre_in == {"aisle"}
    m = index.classify_one(2, 10, 0, 3.0)  # disc crosses the long edges
    assert not m.inside and m.straddle == {"aisle"} and m.centre_in == {"aisle"}
    m = index.classify_one(5, 10, 0, 2.0)  # centre outside, disc reaches in
    assert m.straddle == {"aisle"} and not m.centre_in and not m.inside
    m = index.classify_one(7, 10, 0, 2.0)  # wholly outside (touching counts as outside)
    assert m == Match()
    assert index.classify_one(6, 10, 0, 2.0) == Match()


def test_point_in_hole_is_not_inside(index):
    m = index.classify_one(15, 5, 0, 0.0)
    assert "donut" not in m.inside | m.straddle | m.centre_in
    m = index.classify_one(15, 5, 0, 1.5)  # disc wholly within the hole
    assert m == Match()
    m = index.classify_one(15, 5, 0, 2.5)  # disc reaches the ring
    assert m.straddle == {"donut"} and not m.centre_in
    m = index.classify_one(11.5, 5, 0, 1.0)  # in the ring, clear of both boundaries
    assert m.inside == {"donut"}
    m = index.classify_one(11.5, 5, 0, 2.0)  # ring is 3 m wide: crosses the hole edge
    assert m.straddle == {"donut"} and m.centre_in == {"donut"}


def test_multipolygon(index):
    assert index.classify_one(42, 2, 0, 1.0).inside == {"multi"}
    assert index.classify_one(32, 2, 0, 1.0).inside == {"multi"}
    assert index.classify_one(37, 2, 0, 1.0) == Match()  # between the parts
    assert index.classify_one(36, 2, 0, 3.0).straddle == {"multi"}


def test_general_polygon(index):
    assert index.classify_one(55, 3, 0, 1.0).inside == {"tri"}
    m = index.classify_one(55, 7.5, 0, 1.0)
    assert m.straddle == {"tri"} and m.centre_in == {"tri"}


def test_small_circle_exact(index):
    m = index.classify_one(70, 5, 0, 15.0)
    assert "small" not in m.inside and "small" in m.straddle
    assert index.classify_one(70, 5, 0, 0.5).inside == {"small"}
    assert index.classify_one(70.3, 5, 0, 0.6).inside == {"small"}  # 0.3 + 0.6 <= 0.9
    assert index.classify_one(70.4, 5, 0, 0.6).straddle == {"small"}
    assert index.classify_one(71.5, 5, 0, 0.6) == Match()  # 1.5 - 0.6 >= 0.9
    assert index.classify_one(70.85, 5, 0, 0.0).inside == {"small"}  # a point near the rim
    assert index.classify_one(70.95, 5, 0, 0.0) == Match()


def test_floors_are_separate(index):
    assert index.classify_one(2, 10, 0, 1.0).inside == {"aisle"}
    assert index.classify_one(2, 10, 1, 1.0).inside == {"up"}
    assert index.classify_one(2, 10, 2, 1.0) == Match()


def test_acc_zero_is_a_point(index):
    m = index.classify_one(0.001, 10, 0, 0.0)
    assert m.inside == {"aisle"} and not m.straddle
    assert index.classify_one(-0.001, 10, 0, 0.0) == Match()


def test_overlapping_fences():
    idx = FenceIndex([F("section", 0, box(0, 0, 50, 50)), F("display", 0, box(10, 10, 14, 14)), circle("spot", 12, 12, 1.0)])
    m = idx.classify_one(12, 12, 0, 1.5)
    assert m.inside == {"section", "display"}
    assert m.straddle == {"spot"}
    assert m.centre_in == {"section", "display", "spot"}


def test_batch_matches_single_and_brute_force():
    rng = np.random.default_rng(11)
    fences = []
    for k in range(60):
        x0, y0 = rng.uniform(0, 80, 2)
        kind = k % 4
        if kind == 0:
            fences.append(F(f"b{k}", k % 2, box(x0, y0, x0 + rng.uniform(1, 8), y0 + rng.uniform(1, 8))))
        elif kind == 1:
            fences.append(circle(f"c{k}", x0, y0, rng.uniform(0.5, 5), floor=k % 2))
        elif kind == 2:
            shell = box(x0, y0, x0 + 10, y0 + 10)
            fences.append(F(f"h{k}", k % 2, Polygon(shell.exterior.coords, [box(x0 + 3, y0 + 3, x0 + 6, y0 + 6).exterior.coords])))
        else:
            fences.append(F(f"r{k}", k % 2, shapely.affinity.rotate(box(x0, y0, x0 + 6, y0 + 3), 30)))
    idx = FenceIndex(fences)
    n = 3000
    x = rng.uniform(-5, 95, n)
    y = rng.uniform(-5, 95, n)
    fl = rng.integers(0, 3, n)
    acc = rng.choice([0.0, 0.5, 3.0, 8.0], n)
    got = idx.classify(x, y, fl, acc)
    assert len(got) == n
    for i in range(0, n, 7):
        assert idx.classify_one(x[i], y[i], int(fl[i]), acc[i]) == got[i]
        p = Point(x[i], y[i])
        ins, st, ce = set(), set(), set()
        for f in fences:
            if f.floor != fl[i]:
                continue
            if f.circle:
                cx, cy, r = f.circle
                d = np.hypot(x[i] - cx, y[i] - cy)
                centre = d <= r
                wholly_in, wholly_out = d + acc[i] <= r, d - acc[i] >= r
            else:
                centre = f.geometry.contains(p)
                bd = f.geometry.boundary.distance(p)
                wholly_in = centre and bd >= acc[i]
                wholly_out = not centre and bd >= acc[i]
            if wholly_in:
                ins.add(f.id)
            elif not wholly_out:
                st.add(f.id)
            if centre:
                ce.add(f.id)
        assert got[i] == Match(frozenset(ins), frozenset(st), frozenset(ce)), i


def test_empty_and_sequences():
    idx = FenceIndex([AISLE])
    assert idx.classify([], [], [], []) == []
    assert idx.classify([2, 100], [10, 100], [0, 0], [1, 1]) == [Match(frozenset({"aisle"}), frozenset(), frozenset({"aisle"})), Match()]
    with pytest.raises(ValueError):
        idx.classify([1, 2], [1], [0], [1])
    assert FenceIndex([]).classify([1.0], [1.0], [0], [1.0]) == [Match()]
