"""The CSR fast path (classify_hits), lazy Match values and the shape paths
of the grid index, checked against a shapely brute force."""

import pickle
from dataclasses import FrozenInstanceError, dataclass

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon, box

from geometry.fences import CENTRE_IN, EMPTY_MATCH, INSIDE, STRADDLE, FenceIndex, Match


@dataclass(frozen=True)
class F:
    id: str
    floor: int
    geometry: object
    circle: tuple | None = None


def brute(fences, x, y, fl, acc):
    """(inside, straddle, centre) id sets by shapely, as DESIGN.md defines them."""
    p = Point(x, y)
    ins, st, ce = set(), set(), set()
    for f in fences:
        if f.floor != fl:
            continue
        if f.circle:
            cx, cy, r = f.circle
            d = float(np.hypot(x - cx, y - cy))
            centre, w_in, w_out = d <= r, d + acc <= r, d - acc >= r
        else:
            centre = f.geometry.contains(p)
            bd = f.geometry.boundary.distance(p)
            w_in, w_out = centre and bd >= acc, (not centre) and bd >= acc
        if w_in:
            ins.add(f.id)
        elif not w_out:
            st.add(f.id)
        if centre:
            ce.add(f.id)
    return ins, st, ce


def layout():
    rng = np.random.default_rng(5)
    fences = [
        F("big", 0, Point(50, 50).buffer(30, quad_segs=40)),  # > 64 edges: the shapely path
        F("ell", 0, Polygon([(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)])),
        F("multi-hole", 1, shapely.MultiPolygon([
            Polygon([(0, 0), (20, 0), (20, 20), (0, 20)], [[(5, 5), (15, 5), (15, 15), (5, 15)]]),
            box(30, 0, 40, 10)])),
    ]
    for k in range(40):
        x0, y0 = rng.uniform(0, 90, 2)
        fences.append(F(f"a{k}", k % 2, shapely.affinity.rotate(box(x0, y0, x0 + 2, y0 + 12), 15 * (k % 3))))
        cx, cy = rng.uniform(0, 90, 2)
        r = float(rng.uniform(0.5, 4))
        fences.append(F(f"c{k}", k % 2, Point(cx, cy).buffer(r), (cx, cy, r)))
    return fences


def test_hits_match_brute_force_for_every_accuracy_class():
    fences = layout()
    idx = FenceIndex(fences)
    rng = np.random.default_rng(9)
    n = 600
    x, y = rng.uniform(-10, 110, n), rng.uniform(-10, 110, n)
    fl = rng.integers(0, 3, n)
    acc = rng.choice([0.0, 0.3, 1.0, 2.5, 7.0, 20.0, 60.0, 700.0, 5000.0, np.inf], n)
    hits = idx.classify_hits(x, y, fl, acc)
    matches = idx.classify(x, y, fl, acc)
    assert hits.indptr.shape == (n + 1,) and hits.indptr[-1] == hits.fence.size == hits.code.size
    for i in range(n):
        s, e = hits.indptr[i], hits.indptr[i + 1]
        f, c = hits.fence[s:e], hits.code[s:e]
        assert len(set(f.tolist())) == f.size  # each fence once per ping
        assert np.all(((c & INSIDE) != 0) ^ ((c & STRADDLE) != 0))
        got = tuple({idx.ids[k] for k in f[(c & bit) != 0]} for bit in (INSIDE, STRADDLE, CENTRE_IN))
        want = brute(fences, x[i], y[i], fl[i], acc[i])
        assert got == want, (i, x[i], y[i], fl[i], acc[i])
        assert (matches[i].inside, matches[i].straddle, matches[i].centre_in) == want
        assert idx.classify_one(x[i], y[i], fl[i], acc[i]) == matches[i]


def test_nan_accuracy_straddles_everything_on_the_floor():
    idx = FenceIndex(layout())
    m = idx.classify_one(2, 2, 0, float("nan"))
    assert not m.inside and "ell" in m.straddle and "big" in m.straddle and m.centre_in == {"ell"}
    assert idx.classify_one(float("nan"), 2, 0, 1.0) == EMPTY_MATCH


def test_lazy_match_is_a_value():
    idx = FenceIndex([F("aisle", 0, box(0, 0, 4, 20))])
    m = idx.classify([2.0, 50.0], [10.0, 50.0], [0, 0], [1.0, 1.0])
    eager = Match(frozenset({"aisle"}), frozenset(), frozenset({"aisle"}))
    assert m[0] == eager and hash(m[0]) == hash(eager) and m[1] is EMPTY_MATCH
    assert repr(m[0]) == repr(eager)
    assert pickle.loads(pickle.dumps(m[0])) == eager
    assert Match(inside={"a"}) == Match(frozenset({"a"}), frozenset(), frozenset())
    with pytest.raises(FrozenInstanceError):
        m[0].inside = frozenset()
    match m[0]:
        case Match(inside=ins):
            assert ins == {"aisle"}


def test_grids_grow_lazily_and_stay_consistent():
    idx = FenceIndex(layout())
    assert idx._ncells == 1
    first = idx.classify([5.0], [5.0], [0], [1.0])[0]
    cells = idx._ncells
    assert cells > 1
    again = idx.classify([5.0, 60.0], [5.0, 60.0], [0, 1], [1.0, 30.0])
    assert idx._ncells > cells and again[0] == first
