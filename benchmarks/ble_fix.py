"""Cost of one coarse BLE fix on the hot path: ``geometry.radio`` (what the
agent runs now) against ``geometry.beacons.locate`` (before), on the sample
store (40 x 30 m, 29 beacons: a 1,344-cell grid at 1 m), per number of
beacons heard.  Best of ``--repeat`` runs of ``--n`` scans each, one thread.

    python benchmarks/ble_fix.py

Writes benchmarks/results/ble_fix.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

from geometry import beacons as old  # noqa: E402
from geometry.radio import predict  # noqa: E402
from simulator.sensors import ble_rssi  # noqa: E402
from store_config import load_store, sample_path  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    from edge_agent.pipeline.state import ble_model

    cfg = load_store(sample_path())
    model = ble_model(cfg)
    bs = list(cfg.beacons)
    table = {b.beacon_id: b for b in bs}
    rng = np.random.default_rng(1)
    xs, ys = rng.uniform(1, 39, a.n), rng.uniform(1, 29, a.n)
    rssi, _ = ble_rssi(xs, ys, bs, rng)
    out = {"machine": machine(), "cells": int(sum(g.cx.size for g in model.floors.values())),
           "beacons": len(bs), "per_fix_us": {}}
    for k in (1, 3, 8):
        order = np.argsort(-rssi, axis=1)[:, :k]
        scans = [[(bs[j].beacon_id, float(rssi[i, j])) for j in order[i]] for i in range(a.n)]
        R = np.full_like(rssi, np.nan)
        for i in range(a.n):
            R[i, order[i]] = rssi[i, order[i]]
        res = {}
        for name, fn in (("radio.locate", lambda: [model.locate(s) for s in scans]),
                         ("radio.predict (batch)", lambda: predict(model, np.zeros(a.n, int), R)),
                         ("beacons.locate (before)", lambda: [old.locate(s, table) for s in scans])):
            best = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            res[name] = round(best / a.n * 1e6, 1)
        out["per_fix_us"][str(k)] = res
        print(f"{k} beacons heard: " + ", ".join(f"{n} {v} µs" for n, v in res.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ble_fix.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
