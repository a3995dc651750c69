"""Fused tracker benchmark (issue 13): what geometry.fusion costs on the hot
path, how much state it keeps, and what it buys against the alternatives.

* ``cost``: :func:`geometry.fusion.fuse` per fix, a batch of 1,000 fixes of
  1,000 distinct devices out of 20,000 tracked (the common batch); the same
  1,000 fixes from 100 devices, 10 each, shuffled in time (a Meraki post:
  10 vectorised rounds); and a batch of one (latency at low load).  Beside
  it, ``FenceIndex.classify`` of the same batch on the sample store, against
  the raw fences and against the evidence fences (fences grown over the
  shelves), so the fused path's total is visible.
* ``memory``: bytes per device of the state arrays, and what 20,000
  devices cost in the process (arrays plus the key -> row dict), traced.
* ``quality``: the issue's scenarios (tests/fusion_scenarios.py) on seeds
  the tests do not use, for today's single-fix rule, a plain near-constant-
  position Kalman filter tuned for walking (q = 1 m²/s) and for standing
  (q = 0.05 m²/s), and the IMM of both (the default), each through
  ``FenceIndex.classify`` + ``tracking.step``.

    python benchmarks/fusion.py                  # all three, 40 quality seeds
    python benchmarks/fusion.py --seeds 100 --no-quality
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from shapely.geometry import box  # noqa: E402

from benchmarks._common import best_of, machine, table, write_json  # noqa: E402
from geometry.fences import FenceIndex  # noqa: E402
from geometry.fusion import FusionParams, FusionState, evidence_fences, fuse  # noqa: E402
from geometry.space import infer_shelves  # noqa: E402


def _sample_store():
    from store_config import load_store, sample_path

    cfg = load_store(sample_path())
    fences = [f for f in cfg.fences if f.kind != "staff_only"]
    obstacles = infer_shelves([f.geometry for f in fences if f.kind == "aisle"])
    return fences, obstacles, cfg.outline.bounds


def cost(repeat: int) -> dict:
    fences, obstacles, (x0, y0, x1, y1) = _sample_store()
    raw = FenceIndex(fences)
    t0 = time.perf_counter()
    ev = FenceIndex(evidence_fences(fences, {0: obstacles}))
    build_ev = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n_dev, n = 20_000, 1_000
    st = FusionState(n_dev)
    rows = st.rows(range(n_dev))
    # warm every device with a few fixes so the state is realistic
    for k in range(3):
        fuse(st, rows, rng.uniform(x0, x1, n_dev), rng.uniform(y0, y1, n_dev), np.zeros(n_dev),
             np.full(n_dev, 8.0), np.full(n_dev, 2.0 * k))
    sel = rng.choice(n_dev, n, replace=False)
    xs, ys = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    fl, acc = np.zeros(n, dtype=np.int64), rng.choice([3.0, 8.0, 16.0, 0.3], n, p=[0.3, 0.5, 0.15, 0.05])
    clock = [10.0]

    def one_batch():
        clock[0] += 2.0
        fuse(st, rows[sel], xs, ys, fl, acc, np.full(n, clock[0]))

    meraki_rows = np.repeat(rows[:100], 10)
    meraki_t = np.tile(np.arange(10.0), 100) + rng.uniform(0, 0.5, n)
    perm = rng.permutation(n)

    def meraki():
        clock[0] += 20.0
        fuse(st, meraki_rows[perm], xs, ys, fl, acc, (meraki_t + clock[0])[perm])

    def single():
        clock[0] += 2.0
        fuse(st, rows[:1], xs[:1], ys[:1], fl[:1], acc[:1], np.array([clock[0]]))

    f = fuse(st, rows[sel], xs, ys, fl, acc, np.full(n, clock[0] + 1.0))
    res = {
        "fuse_batch1000_us_per_fix": best_of(one_batch, repeat) / n * 1e6,
        "fuse_meraki_10x100_us_per_fix": best_of(meraki, repeat) / n * 1e6,
        "fuse_single_us": best_of(single, repeat * 20) * 1e6,
        "classify_raw_us_per_fix": best_of(lambda: raw.classify(xs, ys, fl, acc), repeat) / n * 1e6,
        "classify_evidence_us_per_fix": best_of(lambda: ev.classify(f.x, f.y, fl, f.acc), repeat) / n * 1e6,
        "evidence_index_build_s": build_ev,
    }
    return res


def memory(n_dev: int = 20_000) -> dict:
    tracemalloc.start()
    a = tracemalloc.take_snapshot()
    st = FusionState(1)
    rows = st.rows(f"device-{i:06d}" for i in range(n_dev))
    fuse(st, rows, np.zeros(n_dev), np.zeros(n_dev), np.zeros(n_dev), np.full(n_dev, 8.0), np.zeros(n_dev))
    b = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(s.size_diff for s in b.compare_to(a, "filename"))
    # the device id strings belong to the pipeline already; count them apart
    ids = sum(sys.getsizeof(f"device-{i:06d}") for i in range(n_dev))
    return {"devices": n_dev, "array_bytes_per_device": st.nbytes_per_device(),
            "traced_bytes_per_device_with_row_map": (total - ids) / n_dev,
            "capacity_rows": st.capacity}


def quality(seeds: range) -> list[list]:
    from tests import fusion_scenarios as sc

    sec, dep = box(20, 20, 32, 30), box(20, 20, 50, 40)
    layout = sc.aisle_layout()
    variants = [
        ("single-fix rule (today)", None),
        ("KF, q = 1 m²/s (walking)", FusionParams(q_still=1.0, q_move=1.0)),
        ("KF, q = 0.05 m²/s (standing)", FusionParams(q_still=0.05, q_move=0.05)),
        ("IMM standing + walking (default)", FusionParams()),
    ]
    rows = []
    n = len(seeds)
    for name, p in variants:
        kw = {"fused": p is not None, "params": p}
        w = [sc.browse_zone(s, sec, sigma=3.5, acc=8.0, every=2.0, dwell=45.0, **kw) for s in seeds]
        wd = [d for ok, d in w if ok]
        wp = sum(sc.pass_by(s, sec, sigma=3.5, acc=8.0, every=2.0, **kw) for s in seeds)
        h = [sc.browse_zone(s, dep, sigma=8.0, acc=16.0, every=2.0, dwell=90.0, **kw) for s in seeds]
        hd = [d for ok, d in h if ok]
        hp = sum(sc.pass_by(s, dep, sigma=8.0, acc=16.0, every=2.0, **kw) for s in seeds)
        b = [sc.browse_aisle(s, s % 5, layout=layout, **kw) for s in seeds]
        rows.append([name,
                     f"{len(wd)}/{n}", float(np.median(wd)) if wd else None, f"{wp}/{n}",
                     f"{len(hd)}/{n}", float(np.median(hd)) if hd else None, f"{hp}/{n}",
                     f"{sum(o for o, _ in b)}/{n}", f"{sum(x for _, x in b)}/{n}"])
    return rows


QUALITY_HEADERS = ["tracker", "Wi-Fi section: browsers in", "median delay s", "passers-by in",
                   "HTML5 dept: in", "median delay s", "passers-by in", "BLE aisle: own", "neighbour"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = {"machine": machine()}
    out["cost"] = c = cost(a.repeat)
    print(table(["measure", "value"], [[k, v] for k, v in c.items()]))
    out["memory"] = m = memory()
    print(table(["measure", "value"], [[k, v] for k, v in m.items()]))
    if not a.no_quality:
        q = quality(range(1000, 1000 + a.seeds))
        out["quality"] = [dict(zip(QUALITY_HEADERS, r)) for r in q]
        print(table(QUALITY_HEADERS, q))
    print("wrote", write_json("fusion.json", out, a.json))


if __name__ == "__main__":
    main()
