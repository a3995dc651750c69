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
    python benchmarks/real_radio.py --dump          # + per-scan fixes in benchmarks/results/real_fixes/
    python benchmarks/_zones.py benchmarks/results/real_fixes/tetam_at-66.jsonl \\
        benchmarks/results/real_fixes/tetam_at-66.zones.json --skip set1,set2   # tracker variants
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
import _zones  # noqa: E402
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


DUMP_AS = {"agent+survey": "", "agent": ".nosurvey", "agent-old": ".old"}


def dump(ds: Dataset, fx: dict, out: Path, method: str, suffix: str = "") -> Path:
    """The per-scan fixes as JSON lines (``_zones.py``'s input) and the zones."""
    out.mkdir(parents=True, exist_ok=True)
    name = ds.variant.replace("@", "_at")
    p = out / f"{name}{suffix}.jsonl"
    with open(p, "w") as f:
        for row in fix_rows(ds, fx, method):
            f.write(json.dumps(row) + "\n")
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


def _fmt(v, pct=False, nd=2):
    if v is None:
        return "–"
    return f"{100 * v:.0f} %" if pct else f"{v:.{nd}f}"


def table(res: dict) -> str:
    """The Markdown tables of BENCHMARKS.md."""
    out = ["| data set | method | median m | p90 m | coverage 1 / 2 / 3+ beacons (scans) | entry precision "
           "(right/wrong) | held right | held wrong | 3-scan visits entered |",
           "|---|---|---|---|---|---|---|---|---|"]
    for v, ms in res["variants"].items():
        for m, e in ms.items():
            cov = " / ".join(f"{_fmt(e['by_heard'][k]['coverage'], True)} ({e['by_heard'][k]['scans']})"
                             if k in e["by_heard"] else "–" for k in ("1", "2", "3+"))
            z = e.get("zones", {})
            ep = (f"{_fmt(z.get('entry_precision'))} ({z.get('n_right_entries')}/{z.get('n_wrong_entries')})"
                  if z else "–")
            out.append(f"| {v} | {m} | {_fmt(e['median_m'])} | {_fmt(e['p90_m'])} | {cov} | {ep} | "
                       f"{_fmt(z.get('held_right'), True)} | {_fmt(z.get('held_wrong'), True)} | "
                       f"{_fmt(z.get('visits_entered_share'), True)} ({z.get('visits_entered')}/{z.get('visits')}) |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--dump", nargs="?", const=str(RESULTS / "real_fixes"),
                    help="write per-scan fixes (JSONL) and zones here (default benchmarks/results/real_fixes)")
    ap.add_argument("--methods", default="agent-old,agent,agent+survey,centroid,knn")
    a = ap.parse_args(argv)
    res = {"machine": machine(), "variants": {}, "defaults": {}}
    for v in a.variants:
        ds = load(v)
        res["variants"][v] = {}
        for m in a.methods.split(","):
            t0 = time.perf_counter()
            if m == "agent-old":
                fx = fixes_old(ds)
            elif m == "agent":
                # no survey: the defaults as fitted on the OTHER data set (the committed
                # RadioParams defaults are fitted on both)
                other = [x for x in VARIANTS if x.split("@")[0] != v.split("@")[0]]
                key = ",".join(other)
                if key not in res["defaults"]:
                    res["defaults"][key] = fit_defaults(other, log=lambda *_: None)
                fx = lowo(ds, m, res["defaults"][key])
            else:
                fx = lowo(ds, m)
            e = errors(ds, fx)
            # the agent before issue 21: its old fixes through its old tracker; the rest: the tracker now
            e["zones"] = replay(ds, fx, mode="legacy" if m == "agent-old" else "fused")
            e["wall_s"] = round(time.perf_counter() - t0, 2)
            res["variants"][v][m] = e
            print(v, m, json.dumps({k: e[k] for k in ("median_m", "p90_m", "coverage")}), flush=True)
            if a.dump and m in DUMP_AS:
                print("  dump:", dump(ds, fx, Path(a.dump), m, DUMP_AS[m]))
    res["defaults"] = {k: repr(p) for k, p in res["defaults"].items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_radio.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(table(res))
    return 0


# ---------------------------------------------------------------- methods (leave-one-walk-out)
def bounds_of(ds: Dataset) -> dict:
    pts = np.array([p for poly in ds.zones.values() for p in poly])
    return {0: (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))}


def _empty(n):
    return {"x": np.full(n, np.nan), "y": np.full(n, np.nan), "acc": np.full(n, np.nan)}


def lowo(ds: Dataset, method: str, params=None) -> dict:
    """Fixes of every scan, each from a model fitted without its walk."""
    from geometry import radio

    n = len(ds.lines)
    out = _empty(n)
    F = np.zeros(n, dtype=np.int64)
    B = len(ds.ids)
    tx0 = np.full(B, DEFAULT_TX)
    heard = ~np.isnan(ds.rssi)
    params = params or radio.RadioParams()
    if method == "agent":  # no survey: nothing is fitted, so no fold is needed
        m = radio.BleModel(ds.ids, ds.bx, ds.by, np.zeros(B), tx0, params, bounds_of(ds))
        x, y, _, acc, _ = radio.predict(m, F, ds.rssi)
        return {"x": x, "y": y, "acc": acc}
    for w in ds.walks:
        te = ds.walk == w
        tr = ~te
        if method == "agent+survey":
            m, _ = radio.fit(ds.ids, ds.bx, ds.by, np.zeros(B), tx0, ds.x[tr], ds.y[tr], F[tr], ds.rssi[tr],
                             ds.walk[tr], ds.ts[tr], params=params, bounds=bounds_of(ds))
            x, y, _, acc, _ = radio.predict(m, F[te], ds.rssi[te])
        elif method == "agent+pathloss":
            m, _ = radio.fit(ds.ids, ds.bx, ds.by, np.zeros(B), tx0, ds.x[tr], ds.y[tr], F[tr], ds.rssi[tr],
                             ds.walk[tr], ds.ts[tr], params=params, bounds=bounds_of(ds), survey=False)
            x, y, _, acc, _ = radio.predict(m, F[te], ds.rssi[te])
        elif method == "centroid":
            def cen(R):
                w_ = np.where(np.isnan(R), 0.0, 10 ** (np.nan_to_num(R) / 20.0))
                s = w_.sum(1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    return (w_ @ ds.bx) / s, (w_ @ ds.by) / s
            cx, cy = cen(ds.rssi[tr])
            e = np.hypot(cx - ds.x[tr], cy - ds.y[tr])
            q = float(np.nanquantile(e, NOMINAL))
            x, y = cen(ds.rssi[te])
            acc = np.where(np.isfinite(x), q, np.nan)
        elif method == "knn":
            def knn(Rq, Rt, Xt, Yt, k=5):
                A = np.nan_to_num(Rq, nan=-100.0)
                T = np.nan_to_num(Rt, nan=-100.0)
                d = ((A[:, None, :] - T[None, :, :]) ** 2).sum(2)
                idx = np.argsort(d, axis=1)[:, :k]
                return Xt[idx].mean(1), Yt[idx].mean(1)
            # acc: p86.5 of the training error, itself leave-one-walk-out within the training walks
            errs = []
            for w2 in ds.walks:
                if w2 == w:
                    continue
                a_ = tr & (ds.walk == w2)
                b_ = tr & (ds.walk != w2)
                kx, ky = knn(ds.rssi[a_], ds.rssi[b_], ds.x[b_], ds.y[b_])
                errs.append(np.hypot(kx - ds.x[a_], ky - ds.y[a_])[heard[a_].any(1)])
            q = float(np.quantile(np.concatenate(errs), NOMINAL))
            x, y = knn(ds.rssi[te], ds.rssi[tr], ds.x[tr], ds.y[tr])
            acc = np.full(x.size, q)
            none = ~heard[te].any(1)
            x[none] = y[none] = acc[none] = np.nan
        else:
            raise ValueError(method)
        out["x"][te], out["y"][te], out["acc"][te] = x, y, acc
    return out


DEFAULT_GRID = {"sens_dbm": (-95.0, -85.0, -75.0), "sens_width_db": (5.0, 10.0), "p_miss": (0.1, 0.3),
                "temperature": (1.0, 0.5, 0.25), "sigma_db": (6.0, 9.0)}


def fit_defaults(variants, log=print):
    """The no-survey parameters: the grid point with the lowest mean (over
    ``variants``) median error at layout tx_power -59 dBm and n = 2, then
    ``acc_scale`` per beacons-heard class = the pooled 86.5 % quantile of
    error / raw acc.  Nothing here sees a data set's walks separately: the
    whole set is the 'other store' the defaults come from."""
    import itertools
    from dataclasses import replace

    from geometry import radio

    sets = [load(v) for v in variants]
    best = None
    keys = list(DEFAULT_GRID)
    for vals in itertools.product(*(DEFAULT_GRID[k] for k in keys)):
        p = radio.RadioParams(**dict(zip(keys, vals)))
        meds = []
        for ds in sets:
            fx = lowo(ds, "agent", p)
            e = np.hypot(fx["x"] - ds.x, fx["y"] - ds.y)
            meds.append(np.nanmedian(e) / np.nanmedian(np.hypot(ds.x - ds.x.mean(), ds.y - ds.y.mean())))
        score = float(np.mean(meds))
        if best is None or score < best[0]:
            best = (score, p)
    p = best[1]
    ratios = {0: [], 1: [], 2: []}
    for ds in sets:
        fx = lowo(ds, "agent", replace(p, acc_scale=(1.0, 1.0, 1.0)))
        k = radio.heard_class((~np.isnan(ds.rssi)).sum(1))
        r = np.hypot(fx["x"] - ds.x, fx["y"] - ds.y) / fx["acc"]
        for c in range(3):
            ratios[c] += r[(k == c) & np.isfinite(r)].tolist()
    allr = np.concatenate([np.asarray(v) for v in ratios.values()])
    scale = tuple(round(float(np.quantile(ratios[c], radio.NOMINAL)) if len(ratios[c]) >= 20
                        else float(np.quantile(allr, radio.NOMINAL)), 3) for c in range(3))
    p = replace(p, acc_scale=scale)
    log(f"defaults from {', '.join(variants)}: {p}")
    return p



# ---------------------------------------------------------------- zones: replay each held-out walk
FINGERPRINT_WALKS = ("set1", "set2")  # tetam's static fingerprint points: a survey, not a shopper


def fix_rows(ds: Dataset, fx: dict, method: str = "") -> list[dict]:
    """One dict per scan in the format of :mod:`_zones` (and of ``--dump``)."""
    heard = (~np.isnan(ds.rssi)).sum(1)
    zt = zone_of(ds, ds.x, ds.y)
    out = []
    for i in range(len(ds.lines)):
        ok = bool(np.isfinite(fx["x"][i]))
        out.append({"walk": str(ds.walk[i]), "ts": float(ds.ts[i]), "x_true": float(ds.x[i]),
                    "y_true": float(ds.y[i]), "zone_true": zt[i] or None,
                    "x": round(float(fx["x"][i]), 3) if ok else None,
                    "y": round(float(fx["y"][i]), 3) if ok else None,
                    "acc": round(float(fx["acc"][i]), 3) if ok else None,
                    "n_beacons": int(heard[i]), "method": method})
    return out


def replay(ds: Dataset, fx: dict, confidence: float = 0.9, mode: str = "fused") -> dict:
    """Each real walk (not tetam's fingerprint points) as one shopper through
    the agent's tracker: :func:`_zones.replay`, the pipeline's path (coarse
    fixes fused per device, one- and two-beacon scans as weak fixes, P(inside)
    in at >= ``confidence``, out at <= 1 - ``confidence``); ``mode="legacy"``
    is the tracker before issue 21 (weak fixes judged alone, exit when the
    whole circle is outside).  The scan's own ``ts`` is the clock."""
    z = _zones.replay(fix_rows(ds, fx), ds.zones, {"confidence": confidence, "mode": mode},
                      skip_walks=FINGERPRINT_WALKS)
    nw = z["entries"] - z["right_entries"]
    return {"mode": mode, "scans": z["scans"], "entries": z["entries"], "right_entries": z["right_entries"],
            "visits": z["visits"], "visits_entered": z["visits_entered"],
            "entry_precision": z["entry_precision"], "held_right": z["held_right_share"],
            "held_wrong": z["held_wrong_share"], "visits_entered_share": z["visit_recall"],
            "n_right_entries": z["right_entries"], "n_wrong_entries": nw}


if __name__ == "__main__":
    sys.exit(main())
