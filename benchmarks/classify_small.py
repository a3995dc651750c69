"""Where classifying a batch per ping in plain Python stops paying: the
crossover between ``FenceIndex.classify_small`` and the vectorised path
(``classify_hits`` + lazy ``Match`` values), by batch size.

Two stores: e2e's 400-box grid (hotpath's and e2e's load) and a mixed store
of 400 fences (rotated rectangles and holed polygons through the edge test,
circles, boxes), each also grown over shelves between aisles.  Pings are
spread over the store (about half within a metre of a fence), acc 0.3–3 m.
Each ping's match is read as the tracker reads it (``inside`` and
``centre_in``).  Figures are µs per ping, best of ``--repeat`` timings of
``--pings`` pings cut into batches of each size; the crossover is the first
size at which the vectorised path is faster, per store, beside the index's
``small_batch`` (the size up to which ``classify`` takes the Python path).

    python benchmarks/classify_small.py
    python benchmarks/classify_small.py --sizes 1,2,4,8,16,32,64 --repeat 9

Writes benchmarks/results/classify_small.json.  Pure: no broker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Point, Polygon, box

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from geometry.fences import FenceIndex  # noqa: E402


@dataclass(frozen=True)
class F:
    id: str
    floor: int
    geometry: object
    circle: tuple | None = None


def grid_store() -> list[F]:
    return [F(f"f-{i}-{j}", 0, box(i * 4.0, j * 4.0, i * 4.0 + 2, j * 4.0 + 2)) for i in range(20) for j in range(20)]


def mixed_store() -> list[F]:
    out = []
    for i in range(20):
        for j in range(20):
            x, y, fid = i * 4.0, j * 4.0, f"m-{i}-{j}"
            k = (i + j) % 4
            if k == 0:
                out.append(F(fid, 0, shapely.affinity.rotate(box(x, y, x + 2.5, y + 1.5), 25)))
            elif k == 1:
                out.append(F(fid, 0, Polygon(box(x, y, x + 3, y + 3).exterior.coords,
                                             [box(x + 1, y + 1, x + 2, y + 2).exterior.coords])))
            elif k == 2:
                out.append(F(fid, 0, Point(x + 1, y + 1).buffer(1.2), (x + 1, y + 1, 1.2)))
            else:
                out.append(F(fid, 0, box(x, y, x + 2, y + 2)))
    return out


def pings(n: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 80, n)
    y = rng.uniform(-2, 80, n)
    near = rng.random(n) < 0.5  # about half on or beside a fence
    x[near] = np.floor(x[near] / 4) * 4 + rng.uniform(-0.5, 2.5, near.sum())
    y[near] = np.floor(y[near] / 4) * 4 + rng.uniform(-0.5, 2.5, near.sum())
    return x, y, np.zeros(n, dtype=np.int64), rng.choice([0.3, 0.3, 1.0, 3.0], n)


def per_ping_us(fn, x, y, fl, acc, size: int, repeat: int) -> float:
    n = x.size - x.size % size
    batches = [(x[s:s + size], y[s:s + size], fl[s:s + size], acc[s:s + size]) for s in range(0, n, size)]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            for m in fn(*b):
                m.inside
                m.centre_in
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,2,4,6,8,12,16,24,32,48,64")
    ap.add_argument("--pings", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "classify_small.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    x, y, fl, acc = pings(args.pings)
    from geometry.fusion import evidence_fences

    stores = {"grid (e2e)": grid_store(), "mixed": mixed_store()}
    shelves = {0: shapely.union_all([box(i * 4.0 + 2, 0, i * 4.0 + 4, 80) for i in range(20)])}
    stores["mixed, grown over shelves"] = list(evidence_fences(stores["mixed"], shelves))
    rows = {}
    thresholds = {}
    print(f"{'store':<28}{'batch':>6}{'python µs/ping':>16}{'numpy µs/ping':>15}{'numpy/python':>14}")
    for name, fences in stores.items():
        idx = FenceIndex(fences)
        thresholds[name] = idx.small_batch
        vec = lambda *a, idx=idx: idx._matches(idx.classify_hits(*a))  # noqa: E731
        idx.classify_hits(x, y, fl, acc)  # build the lazy grids once, for both paths
        idx.classify_small(x, y, fl, acc)  # and the small path's cell cache (a store's cells repeat)
        for size in sizes:
            py = per_ping_us(idx.classify_small, x, y, fl, acc, size, args.repeat)
            nv = per_ping_us(vec, x, y, fl, acc, size, args.repeat)
            rows.setdefault(name, []).append({"batch": size, "python_us": py, "numpy_us": nv})
            print(f"{name:<28}{size:>6}{py:>16.2f}{nv:>15.2f}{nv / py:>14.2f}", flush=True)
    crossover = {name: next((r["batch"] for r in v if r["numpy_us"] < r["python_us"]), None)
                 for name, v in rows.items()}
    print("\nstore                        crossover (first size numpy wins)   index.small_batch")
    for name in rows:
        print(f"{name:<28}{str(crossover[name]):>12}{thresholds[name]:>28}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "crossover": crossover,
                                          "small_batch": thresholds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
