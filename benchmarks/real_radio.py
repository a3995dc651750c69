"""The agent's BLE positioning on real, labelled scans nobody here made.

For each public data set (:mod:`benchmarks.real_data`; licences beside the
extracts in ``benchmarks/data/``) and each held-out walk (leave-one-walk-out:
every model below is fitted on the *other* walks only, never a random
split), per method: median and p90 error, the coverage of the claimed
accuracy (``acc``, a 2σ radius: ~86.5 % nominal) per number of beacons heard,
and the zone metrics of replaying each held-out walk as one shopper through
the agent's tracker (``geometry/``).

Methods:

* ``agent-old`` -- ``geometry.beacons.locate`` as it was (layout
  ``tx_power`` -59 dBm, n = 2);
* ``agent`` -- the radio model (``geometry.radio``) with the defaults only
  (no survey: layout ``tx_power`` -59 dBm, defaults fitted on public data);
* ``agent+survey`` -- the radio model fitted on the other walks
  (``survey fit``);
* ``centroid`` -- RSSI-weighted centroid of the heard beacons
  (weights ``10^(rssi/10 n)``), with acc the p86.5 of its training error;
* ``knn`` -- k-nearest-neighbour fingerprinting (k = 5, Euclidean in dB,
  not heard = -100 dBm) over the other walks, acc as for centroid.

Variants ``NAME@T``: the same scans with every reading below ``T`` dBm
dropped -- what a less sensitive receiver (a phone's short scan) reports, so
that one- and two-beacon scans, the common case in a store, are measured on
real radio too.

    python benchmarks/real_radio.py                 # table + benchmarks/results/real_radio.json
    python benchmarks/real_radio.py --dump /work/team/real_fixes   # per-scan fixes for the tracker
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
from real_data import Dataset  # noqa: E402

from geometry import beacons as old_beacons  # noqa: E402

NOMINAL = 1.0 - np.exp(-2.0)  # P(r <= 2 sigma) for a 2-D isotropic Gaussian: 0.8647
VARIANTS = ("calib2021", "calib2021@-55", "tetam", "tetam@-66")
DEFAULT_TX = -59.0


class _B:
    __slots__ = ("x", "y", "floor", "tx_power", "beacon_id")

    def __init__(self, bid, x, y, floor=0, tx_power=DEFAULT_TX):
        self.beacon_id, self.x, self.y, self.floor, self.tx_power = bid, x, y, floor, tx_power


def load(variant: str) -> Dataset:
    name, _, thr = variant.partition("@")
    ds = Dataset(name)
    ds.variant = variant
    if thr:
        ds.rssi = np.where(ds.rssi >= float(thr), ds.rssi, np.nan)
    return ds


def zone_of(ds: Dataset, x, y) -> np.ndarray:
    """Zone id of each point ("" outside every zone); zones are polygons."""
    from shapely import contains_xy
    from shapely.geometry import Polygon

    out = np.full(np.shape(x), "", dtype=object)
    for zid, poly in ds.zones.items():
        m = contains_xy(Polygon(poly), np.asarray(x, float), np.asarray(y, float))
        out[m & (out == "")] = zid
    return out


def readings(ds: Dataset, i: int) -> list[tuple[str, float]]:
    row = ds.rssi[i]
    return [(ds.ids[j], float(row[j])) for j in np.flatnonzero(~np.isnan(row))]


def fixes_old(ds: Dataset) -> dict:
    """The agent as it was: ``geometry.beacons.locate`` per scan."""
    bs = {b: _B(b, ds.bx[j], ds.by[j]) for j, b in enumerate(ds.ids)}
    n = len(ds.lines)
    x, y, acc = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        r = old_beacons.locate(readings(ds, i), bs)
        if r is not None:
            x[i], y[i], _, acc[i] = r
    return {"x": x, "y": y, "acc": acc}


def dump(ds: Dataset, fx: dict, out: Path, method: str) -> Path:
    """One JSON line per scan for the tracker developer (see README there)."""
    out.mkdir(parents=True, exist_ok=True)
    heard = (~np.isnan(ds.rssi)).sum(1)
    zt = zone_of(ds, ds.x, ds.y)
    name = ds.variant.replace("@", "_at")
    p = out / f"{name}.jsonl"
    with open(p, "w") as f:
        for i in range(len(ds.lines)):
            ok = np.isfinite(fx["x"][i])
            f.write(json.dumps({
                "walk": str(ds.walk[i]), "ts": float(ds.ts[i]), "x_true": float(ds.x[i]), "y_true": float(ds.y[i]),
                "zone_true": zt[i] or None,
                "x": round(float(fx["x"][i]), 3) if ok else None, "y": round(float(fx["y"][i]), 3) if ok else None,
                "acc": round(float(fx["acc"][i]), 3) if ok else None, "n_beacons": int(heard[i]),
                "method": method}) + "\n")
    (out / f"{name}.zones.json").write_text(json.dumps(ds.zones, indent=1) + "\n")
    return p


def errors(ds: Dataset, fx: dict) -> dict:
    heard = (~np.isnan(ds.rssi)).sum(1)
    ok = np.isfinite(fx["x"])
    err = np.hypot(fx["x"] - ds.x, fx["y"] - ds.y)
    out = {"scans": int(ok.sum()), "median_m": float(np.median(err[ok])), "p90_m": float(np.percentile(err[ok], 90)),
           "coverage": float(np.mean(err[ok] <= fx["acc"][ok])), "by_heard": {}}
    for k, m in (("1", heard == 1), ("2", heard == 2), ("3+", heard >= 3)):
        mm = m & ok
        if mm.sum():
            out["by_heard"][k] = {"scans": int(mm.sum()), "median_m": float(np.median(err[mm])),
                                  "coverage": float(np.mean(err[mm] <= fx["acc"][mm])),
                                  "median_acc_m": float(np.median(fx["acc"][mm]))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--dump", help="write per-scan fixes (JSONL) and zones here")
    ap.add_argument("--method", default="agent-old")
    a = ap.parse_args(argv)
    res = {"machine": machine(), "variants": {}}
    for v in a.variants:
        ds = load(v)
        t0 = time.perf_counter()
        fx = fixes_old(ds)
        e = errors(ds, fx)
        e["wall_s"] = round(time.perf_counter() - t0, 2)
        res["variants"][v] = {"agent-old": e}
        print(v, json.dumps(e))
        if a.dump:
            print("  dump:", dump(ds, fx, Path(a.dump), "agent-old"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_radio.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
