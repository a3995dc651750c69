"""The small-batch path of FenceIndex (plain Python per ping) against the
vectorised one (numpy over the batch): identical answers on random stores —
boxes, rotated and holed polygons, multi-parts, circles, polygons too big for
the edge test (shapely), fences grown over shelves and obstacles, several
floors — and random pings, including pings on edges and corners, points,
NaN/inf/negative accuracies and floors without fences.  Pure: no broker."""

from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from hypothesis import example, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, Polygon, box

from geometry.fences import FenceIndex, Match
from geometry.fusion import evidence_fences
from geometry.space import obstacles_on


@dataclass(frozen=True)
class F:
    id: str
    floor: int
    geometry: object
    circle: tuple | None = None
    kind: str = "section"


def random_store(rng: np.random.Generator) -> list[F]:
    fences: list[F] = []
    for fl in range(int(rng.integers(1, 4))):
        # aisles side by side (the shelves between them are obstacles), the rest anywhere
        x0 = float(rng.uniform(0, 20))
        for a in range(int(rng.integers(0, 4))):
            ax = x0 + a * 3.0
            fences.append(F(f"a{fl}-{a}", fl, box(ax, 0, ax + 1.5, float(rng.uniform(6, 15))), kind="aisle"))
        for k in range(int(rng.integers(1, 14))):
            fid = f"f{fl}-{k}"
            x, y = (float(v) for v in rng.uniform(-10, 40, 2))
            w, h = (float(v) for v in rng.uniform(0.3, 9, 2))
            kind = int(rng.integers(0, 8))
            if kind == 0:
                fences.append(F(fid, fl, box(x, y, x + w, y + h)))
            elif kind == 1:
                r = float(rng.uniform(0.2, 5))
                fences.append(F(fid, fl, Point(x, y).buffer(r), (x, y, r)))
            elif kind == 2:
                shell = box(x, y, x + w + 2, y + h + 2)
                hole = box(x + 0.7, y + 0.7, x + 0.7 + w * 0.5, y + 0.7 + h * 0.5)
                fences.append(F(fid, fl, Polygon(shell.exterior.coords, [hole.exterior.coords])))
            elif kind == 3:
                fences.append(F(fid, fl, shapely.affinity.rotate(box(x, y, x + w, y + h),
                                                                  float(rng.uniform(0, 90)))))
            elif kind == 4:
                fences.append(F(fid, fl, MultiPolygon([box(x, y, x + w, y + h),
                                                       box(x + w + 1, y, x + 2 * w + 1, y + h)])))
            elif kind == 5:  # a blob of > 64 edges: shapely's test
                fences.append(F(fid, fl, Point(x, y).buffer(float(rng.uniform(1, 6)), 24)))
            elif kind == 6:
                pts = rng.uniform(-4, 4, (7, 2)) + (x, y)
                hull = shapely.MultiPoint([tuple(p) for p in pts]).convex_hull
                if hull.geom_type == "Polygon" and hull.area > 0.01:
                    fences.append(F(fid, fl, hull))
            else:  # an obstacle (never a fence itself) or a staff-only room
                fences.append(F(fid, fl, box(x, y, x + w, y + h), kind="obstacle"))
    return fences


def indexes(fences: list[F]) -> list[FenceIndex]:
    """The raw index (obstacles aside) and the one over the fences grown across shelves
    and obstacles, as the pipeline builds them (pipeline/state.py)."""
    walk = [f for f in fences if f.kind != "obstacle"]
    out = [FenceIndex(walk)]
    obstacles = {}
    for fl in {f.floor for f in fences}:
        parts = obstacles_on(fences, fl)
        if parts:
            obstacles[fl] = shapely.union_all(parts)
    if obstacles and walk:
        out.append(FenceIndex(evidence_fences(walk, obstacles)))
    return out


def random_pings(rng: np.random.Generator, fences: list[F], n: int):
    x = rng.uniform(-15, 50, n)
    y = rng.uniform(-15, 50, n)
    # a share exactly on a fence's vertex or edge midpoint, where the tests' comparisons tie
    coords = np.concatenate([shapely.get_coordinates(f.geometry) for f in fences]) if fences else np.zeros((1, 2))
    on = rng.random(n) < 0.3
    k = rng.integers(0, len(coords), n)
    k2 = np.minimum(k + 1, len(coords) - 1)
    t = rng.choice([0.0, 0.5], n)
    x[on] = (coords[k, 0] * (1 - t) + coords[k2, 0] * t)[on]
    y[on] = (coords[k, 1] * (1 - t) + coords[k2, 1] * t)[on]
    floors = rng.integers(-1, 4, n)
    acc = rng.choice([0.0, 0.0, 0.1, 0.3, 1.0, 1.0, 2.5, 3.0, 8.0, 40.0, 5000.0, np.inf, np.nan, -1.0], n)
    acc = np.where(rng.random(n) < 0.3, rng.uniform(0, 6, n), acc)
    return x, y, floors, acc


def vectorised(idx: FenceIndex, x, y, floors, acc) -> list[Match]:
    return idx._matches(idx.classify_hits(x, y, floors, acc))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
@example(1797)  # stores whose fences, grown over the shelves, once failed GEOS's overlay (evidence_shapes)
@example(2093)
@example(3008)
def test_small_path_matches_vectorised(seed):
    rng = np.random.default_rng(seed)
    fences = random_store(rng)
    for idx in indexes(fences):
        x, y, floors, acc = random_pings(rng, fences, 300)
        want = vectorised(idx, x, y, floors, acc)
        assert idx.classify_small(x, y, floors, acc) == want
        # batches of one go through the index's own one-ping path (_hits_one)
        for i in range(0, 300, 23):
            assert idx.classify_small(x[i:i + 1], y[i:i + 1], floors[i:i + 1], acc[i:i + 1]) == [want[i]]
            assert idx.classify_one(x[i], y[i], floors[i], acc[i]) == want[i]
        # and classify picks a path by size: the same answers either side of the crossover
        for n in (2, idx.small_batch, idx.small_batch + 1, 64):
            assert idx.classify(x[:n], y[:n], floors[:n], acc[:n]) == want[:n]


def test_small_path_on_the_benchmark_grid_and_sequences():
    fences = [F(f"g{i}-{j}", 0, box(i * 4.0, j * 4.0, i * 4.0 + 2, j * 4.0 + 2)) for i in range(20) for j in range(20)]
    idx = FenceIndex(fences)
    got = idx.classify([1.0, 3.0, 1.9], [1.0, 3.0, 0.2], [0, 0, 0], [0.3, 1.0, 0.3])
    assert got == [Match({"g0-0"}, (), {"g0-0"}), Match(), Match((), {"g0-0"}, {"g0-0"})]
    assert idx.classify([], [], [], []) == []
    # ties on a box: a disc touching the edge from inside is inside, from outside it is outside
    x, y, fl, acc = [1.0, 3.0, 1.0], [1.0, 1.0, 3.0], [0, 0, 0], [1.0, 1.0, 1.0]
    inside = Match({"g0-0"}, (), {"g0-0"})
    assert idx.classify_small(x, y, fl, acc) == vectorised(idx, x, y, fl, acc) == [inside, Match(), Match()]
    # ties on a circle: the disc touching it from outside is outside, the one touching it from inside is inside
    ring = FenceIndex([F("c", 0, Point(100, 0).buffer(1), (100.0, 0.0, 1.0))])
    x, y, fl, acc = [102.0, 100.5, 101.0], [0.0, 0.0, 0.0], [0, 0, 0], [1.0, 0.5, 0.0]
    inside = Match({"c"}, (), {"c"})
    assert ring.classify_small(x, y, fl, acc) == vectorised(ring, x, y, fl, acc) == [Match(), inside, inside]
    with pytest.raises(ValueError):
        idx.classify_small([1.0], [1.0, 2.0], [0], [1.0])
    assert FenceIndex([]).classify([1.0], [1.0], [0], [1.0]) == [Match()]
