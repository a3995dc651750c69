"""Wi-Fi fixes on real, labelled scans nobody here made (issue 21, the Wi-Fi part).

Data: the sample data of Microsoft Research / XYZ10's Indoor Location
Competition 2.0 (github.com/location-competition/indoor-location-competition-20,
MIT licence; see ``benchmarks/data/ilc20/README.md``): shopping-mall floors in
Hangzhou with the shops' floor plan (GeoJSON), and paths walked by a surveyor
holding an Android phone flat, each a file of sensor readings with
``TYPE_WAYPOINT`` ground truth (metres on the floor plan) and ``TYPE_WIFI``
scans (one every ~2 s, each AP with its RSSI and the time it was last seen).

The store's *Wi-Fi location engine* is played by k-nearest-neighbour
fingerprinting (k = 5, Euclidean in dB, not heard = -100 dBm), the method most
vendor engines refine: trained on the scans of the *other* paths only
(leave-one-path-out; never a random split), one fix per scan.  The truth of a
scan is the surveyor's position interpolated between the path's waypoints at
the time its APs were heard (median last-seen time of the scan's fresh
entries).  The ``acc`` the engine claims, two ways, as engines do:

* ``fixed`` -- a constant 6 m, a vendor's datasheet accuracy (Wi-Fi engines
  quote 5-10 m; the simulator's Wi-Fi sends 5-10 m);
* ``spread`` -- twice the RMS per-axis spread of the k neighbours' positions
  about their mean (a 2σ radius: the engine's own uncertainty, large where
  the fingerprints disagree), floored at 2 m so that no Wi-Fi fix passes as
  precise (the agent's ``precise_acc`` is 1 m).

Then, as the agent offers (``[tracking.acc_scale]``, applied in
``edge_agent/pipeline/core.py`` ``_position``: ``acc *= scale``):

* no survey -- the engine's ``acc`` as it comes;
* a survey -- ``geometry.calibrate.scale_from_survey(errors, accs)`` on the
  fixes of the *other* paths (each of those fixed by a model that saw neither
  its own path nor the held-out one), the factor applied to the held-out
  path's ``acc``.

Per floor and variant: median / p90 error, the coverage of the claimed
``acc`` (nominal 86.5 % for a 2σ radius), and the zone metrics of replaying
each path as one shopper through the agent's tracker
(:func:`benchmarks._zones.replay`: the pipeline's path for coarse fixes,
``confidence`` 0.9) with the floor's shops (the GeoJSON's polygons, mapped into
the waypoints' metre frame) and the floor cut into 20 m and 10 m cells as
the zones.  And ``day_drift``: the same engine trained on the other *days*
only, on the scans where those days' walks passed (fingerprints a day old).

    python benchmarks/real_wifi.py convert   # mirror -> benchmarks/data/ilc20/<site>-<floor>/ extracts
    python benchmarks/real_wifi.py           # table + benchmarks/results/real_wifi.json
    python benchmarks/real_wifi.py --dump    # + per-scan fixes in benchmarks/results/real_fixes/

``convert`` reads the fetched repository's git objects (``--mirror-root``,
default ``/work/.mirror``); files the mirror lacks are skipped and counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402
import _zones  # noqa: E402

from geometry.calibrate import coverage_of, scale_from_survey  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "ilc20"
MIRRORS = Path("/work/.mirror")
REPO = "location-competition+indoor-location-competition-20"
FLOORS = ("site1/F1", "site1/F2", "site2/F1", "site2/B1")
FRESH_MS = 2000  # an AP is in a scan if it was seen within this of the scan (the ~2 s scan interval)
NOT_HEARD = -100.0
K = 5
FIXED_ACC = 6.0
MIN_ACC = 2.0
NOMINAL = coverage_of(2.0)  # 0.8647


# ---------------------------------------------------------------- convert (mirror -> extract)
def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _present(repo: Path, under: str) -> tuple[list[str], int]:
    rows = [ln.split() for ln in _git(repo, "ls-tree", "-r", "HEAD", under).splitlines() if ln.strip()]
    objs = [(r[2], r[3]) for r in rows if r[3].endswith(".txt")]
    out = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch-check"], input="\n".join(o for o, _ in objs),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    ok = [p for (o, p), line in zip(objs, out) if not line.endswith("missing")]
    return ok, len(objs) - len(ok)


def _ap_id(bssid: str) -> str:
    return "ap-" + hashlib.sha1(bssid.encode()).hexdigest()[:10]


def parse_path(text: str) -> list[dict]:
    """One path file -> its Wi-Fi scans with the interpolated truth."""
    wp: list[tuple[float, float, float]] = []
    scans: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for ln in text.splitlines():
        a = ln.split("\t")
        if len(a) < 4:
            continue
        if a[1] == "TYPE_WAYPOINT":
            wp.append((int(a[0]) / 1000.0, float(a[2]), float(a[3])))
        elif a[1] == "TYPE_WIFI" and len(a) >= 7:
            scans[int(a[0])].append((a[3], int(a[4]), int(a[6])))
    if len(wp) < 2:
        return []
    wp.sort()
    wt = np.array([w[0] for w in wp])
    wx = np.array([w[1] for w in wp])
    wy = np.array([w[2] for w in wp])
    out = []
    for t in sorted(scans):
        fresh: dict[str, int] = {}
        seen = []
        for bssid, rssi, last in scans[t]:
            if t - last <= FRESH_MS:
                k = _ap_id(bssid)
                fresh[k] = max(rssi, fresh.get(k, -200))
                seen.append(last)
        if not fresh:
            continue
        th = float(np.median(seen)) / 1000.0
        if th < wt[0] or th > wt[-1]:
            continue  # no truth outside the waypoints' span
        out.append({"ts": round(t / 1000.0, 3), "x": round(float(np.interp(th, wt, wx)), 3),
                    "y": round(float(np.interp(th, wt, wy)), 3),
                    "wifi": dict(sorted(fresh.items()))})
    return out


def floor_frame(geojson: dict, width: float, height: float):
    """The GeoJSON's lon/lat -> the waypoints' metres: the floor outline's
    bounding box is the floor image's extent (``floor_info.json``'s width x
    height, origin bottom-left, y up)."""
    from shapely.geometry import shape

    floor = shape(geojson["features"][0]["geometry"])
    x0, y0, x1, y1 = floor.bounds

    def to_m(lon, lat):
        return (np.asarray(lon) - x0) / (x1 - x0) * width, (np.asarray(lat) - y0) / (y1 - y0) * height

    return floor, to_m


def shops(geojson: dict, width: float, height: float) -> tuple[dict, dict]:
    """Shop polygons in metres (zone id -> ring) and the floor outline's."""
    from shapely import transform
    from shapely.geometry import mapping, shape

    floor, to_m = floor_frame(geojson, width, height)

    def conv(g):
        return transform(g, lambda c: np.column_stack(to_m(c[:, 0], c[:, 1])))

    zones = {}
    for i, f in enumerate(geojson["features"][1:]):
        g = conv(shape(f["geometry"])).buffer(0)
        if g.is_empty or g.geom_type != "Polygon" or g.area < 1.0:
            continue
        zid = f"shop-{i:03d}"
        zones[zid] = [[round(x, 2), round(y, 2)] for x, y in g.exterior.coords]
    outline = mapping(conv(floor))
    return zones, outline


def convert(floor: str, mirror: Path = MIRRORS, out: Path = DATA) -> dict:
    repo = mirror / REPO / "repo"
    info = json.loads(_git(repo, "show", f"HEAD:data/{floor}/floor_info.json"))["map_info"]
    gj = json.loads(_git(repo, "show", f"HEAD:data/{floor}/geojson_map.json"))
    zones, outline = shops(gj, info["width"], info["height"])
    files, missing = _present(repo, f"data/{floor}/path_data_files")
    d = out / floor.replace("/", "-")
    d.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(d / "scans.jsonl", "w") as fh:
        for p in files:
            for s in parse_path(_git(repo, "show", f"HEAD:{p}")):
                fh.write(json.dumps({"walk": Path(p).stem, **s}, separators=(",", ":")) + "\n")
                n += 1
    (d / "zones.json").write_text(json.dumps(zones, separators=(",", ":")) + "\n")
    (d / "floor.json").write_text(json.dumps({"width": info["width"], "height": info["height"],
                                              "paths": len(files), "paths_missing_in_mirror": missing,
                                              "outline": outline}, separators=(",", ":")) + "\n")
    return {"floor": floor, "paths": len(files), "missing": missing, "scans": n, "zones": len(zones)}


# ---------------------------------------------------------------- the data set as arrays
class Floor:
    """One converted floor: ``walk``, ``ts``, ``x``, ``y`` (truth) per scan,
    ``rssi`` (scans x APs, NOT_HEARD where not heard), ``zones``."""

    def __init__(self, name: str, root: Path = DATA):
        d = root / name.replace("/", "-")
        if not (d / "scans.jsonl").exists():
            raise SystemExit(f"{d / 'scans.jsonl'} is missing: fetch github:location-competition/"
                             f"indoor-location-competition-20, then run `python benchmarks/real_wifi.py convert`")
        self.name = name
        self.lines = [json.loads(ln) for ln in (d / "scans.jsonl").read_text().splitlines() if ln.strip()]
        self.meta = json.loads((d / "floor.json").read_text())
        self.zone_sets = zone_sets(json.loads((d / "zones.json").read_text()), self.meta["outline"])
        aps = sorted({a for s in self.lines for a in s["wifi"]})
        col = {a: i for i, a in enumerate(aps)}
        n = len(self.lines)
        self.walk = np.array([s["walk"] for s in self.lines])
        self.ts = np.array([s["ts"] for s in self.lines], dtype=float)
        self.x = np.array([s["x"] for s in self.lines], dtype=float)
        self.y = np.array([s["y"] for s in self.lines], dtype=float)
        self.rssi = np.full((n, len(aps)), NOT_HEARD, dtype=np.float32)
        for i, s in enumerate(self.lines):
            for a, r in s["wifi"].items():
                self.rssi[i, col[a]] = r
        self.aps = aps
        _, self.walk_idx = np.unique(self.walk, return_inverse=True)


GRIDS = (10.0, 20.0)


def zone_sets(shop_rings: dict, outline: dict) -> dict[str, dict]:
    """The zone sets a floor is judged on (zone id -> shapely geometry):
    ``shops`` -- the floor plan's shop polygons; ``gridS`` -- the floor cut
    into S x S m cells clipped to its outline (pieces under a quarter of a
    cell dropped), a store's sections (10 m) and departments (20 m)."""
    from shapely.geometry import Polygon, box, shape

    out = {"shops": {z: Polygon(r) for z, r in shop_rings.items()}}
    floor = shape(outline)
    x0, y0, x1, y1 = floor.bounds
    for s in GRIDS:
        cells = {}
        for j in range(int(math.ceil((y1 - y0) / s))):
            for i in range(int(math.ceil((x1 - x0) / s))):
                g = box(x0 + i * s, y0 + j * s, x0 + (i + 1) * s, y0 + (j + 1) * s).intersection(floor)
                if g.area >= 0.25 * s * s:
                    cells[f"g{int(s)}-{j:02d}-{i:02d}"] = g
        out[f"grid{int(s)}"] = cells
    return out


def sq_dist(R: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (dB²) between every pair of scans."""
    R = R.astype(np.float64)
    n2 = (R * R).sum(1)
    D = n2[:, None] + n2[None, :] - 2.0 * (R @ R.T)
    np.maximum(D, 0.0, out=D)
    return D


def knn_fixes(fl: Floor, D: np.ndarray, exclude=None) -> dict:
    """Every scan fixed from its k nearest scans of *other* paths, none of
    them in the scans ``exclude`` (a mask: a held-out group): x, y, and the
    neighbours' spread σ."""
    Dm = D.copy()
    Dm[fl.walk_idx[:, None] == fl.walk_idx[None, :]] = np.inf
    if exclude is not None:
        Dm[:, exclude] = np.inf
    idx = np.argpartition(Dm, K, axis=1)[:, :K]
    nx, ny = fl.x[idx], fl.y[idx]
    return {"x": nx.mean(1), "y": ny.mean(1), "sigma": np.sqrt((nx.var(1) + ny.var(1)) / 2.0)}


def raw_acc(fx: dict, kind: str) -> np.ndarray:
    if kind == "fixed":
        return np.full(fx["x"].shape, FIXED_ACC)
    return np.maximum(2.0 * fx["sigma"], MIN_ACC)


KINDS = ("fixed", "spread")


def groups_of(fl: Floor, split: str) -> np.ndarray:
    """The held-out unit of each scan: its path, or its path's day (store time, UTC+8)."""
    if split == "path":
        return fl.walk_idx
    first: dict[str, float] = {}
    for w, t in zip(fl.walk, fl.ts):
        first[w] = min(t, first.get(w, t))
    day = np.array([int((first[w] + 8 * 3600) // 86400) for w in fl.walk])
    return np.unique(day, return_inverse=True)[1]


def held_out(fl: Floor, D: np.ndarray, split: str = "path") -> tuple[dict, dict]:
    """Fixes of every scan by an engine trained without its group (its path,
    or its day), and per scan the ``scale_from_survey`` factor of its fold:
    from the fixes of the *other* groups' scans, each fixed by an engine that
    saw neither its own path nor the held-out group."""
    g = groups_of(fl, split)
    n = len(fl.lines)
    fx = {"x": np.full(n, np.nan), "y": np.full(n, np.nan), "sigma": np.full(n, np.nan)}
    scale = {k: np.full(n, np.nan) for k in KINDS}
    for h in np.unique(g):
        te = g == h
        f = knn_fixes(fl, D, exclude=te)
        for k in fx:
            fx[k][te] = f[k][te]
        err = np.hypot(f["x"] - fl.x, f["y"] - fl.y)[~te]
        for k in KINDS:
            scale[k][te] = scale_from_survey(err, raw_acc(f, k)[~te])
    return fx, scale


def errors(fl: Floor, x, y, acc) -> dict:
    err = np.hypot(x - fl.x, y - fl.y)
    return {"scans": int(err.size), "median_m": float(np.median(err)), "p90_m": float(np.percentile(err, 90)),
            "coverage": float(np.mean(err <= acc)), "median_acc_m": float(np.median(acc))}


def zone_of(zones: dict, x, y) -> np.ndarray:
    from shapely import contains_xy

    out = np.full(np.shape(x), "", dtype=object)
    for zid, g in zones.items():
        m = contains_xy(g, np.asarray(x, float), np.asarray(y, float))
        out[m & (out == "")] = zid
    return out


def fix_rows(fl: Floor, x, y, acc, method: str, truth_zone) -> list[dict]:
    zt = truth_zone
    return [{"walk": str(fl.walk[i]), "ts": float(fl.ts[i]), "x_true": float(fl.x[i]), "y_true": float(fl.y[i]),
             "zone_true": zt[i] or None, "x": round(float(x[i]), 3), "y": round(float(y[i]), 3),
             "acc": round(float(acc[i]), 3), "method": method} for i in range(len(fl.lines))]


def replay(zones: dict, rows: list[dict], confidence: float = 0.9) -> dict:
    """Each path as one shopper through the agent's tracker (Wi-Fi fixes:
    neither weak nor correlated, as the pipeline passes them)."""
    z = _zones.replay(rows, [{"id": k, "geometry": g} for k, g in zones.items()], {"confidence": confidence})
    return {"scans": z["scans"], "entries": z["entries"], "right_entries": z["right_entries"],
            "wrong_entries": z["entries"] - z["right_entries"], "visits": z["visits"],
            "visits_entered": z["visits_entered"], "entry_precision": z["entry_precision"],
            "held_right": z["held_right_share"], "held_wrong": z["held_wrong_share"],
            "visits_entered_share": z["visit_recall"]}


def zone_stats(zones: dict, fl: Floor) -> dict:
    """What a zone set is like: its zones' size, and how much of the walks is in one."""
    from shapely import maximum_inscribed_circle

    zt = zone_of(zones, fl.x, fl.y)
    gs = list(zones.values())
    # half-width: the radius of the largest inscribed circle
    hw = np.array([maximum_inscribed_circle(g, 0.05).length for g in gs])
    hw_of = dict(zip(zones, hw))
    inz = zt != ""
    return {"zones": len(zones), "area_median_m2": float(np.median([g.area for g in gs])),
            "halfwidth_median_m": float(np.median(hw)), "truth_in_zone": float(np.mean(inz)),
            "visited_halfwidth_median_m": float(np.median([hw_of[z] for z in zt[inz]])) if inz.any() else None}


def stats(fl: Floor) -> dict:
    heard = (fl.rssi > NOT_HEARD).sum(1)
    return {"paths": int(np.unique(fl.walk).size), "paths_missing_in_mirror": fl.meta["paths_missing_in_mirror"],
            "scans": len(fl.lines), "aps": len(fl.aps), "aps_per_scan_median": float(np.median(heard)),
            "scan_interval_median_s": float(np.median(np.diff(fl.ts)[np.diff(fl.walk_idx) == 0])),
            "zone_sets": {k: zone_stats(z, fl) for k, z in fl.zone_sets.items()}}


def frame_check(fl: Floor) -> dict:
    """The GeoJSON -> metres mapping checked against the waypoints: share of
    truths inside the floor outline and inside a shop, for the mapping used
    and for the same with y flipped (a wrong mapping puts walks in shops and
    off the floor; a surveyor walks the mall's corridors)."""
    from shapely import contains_xy
    from shapely.geometry import shape

    outline = shape(fl.meta["outline"])
    H = fl.meta["height"]
    sh = fl.zone_sets["shops"]
    return {"used": {"in_outline": float(np.mean(contains_xy(outline, fl.x, fl.y))),
                     "in_shop": float(np.mean(zone_of(sh, fl.x, fl.y) != ""))},
            "y_flipped": {"in_outline": float(np.mean(contains_xy(outline, fl.x, H - fl.y))),
                          "in_shop": float(np.mean(zone_of(sh, fl.x, H - fl.y) != ""))}}


def coverage_by_acc(err, acc, raw) -> list[float]:
    """Coverage in the terciles of the engine's raw claim (small, middle, large)."""
    q = np.quantile(raw, [1 / 3, 2 / 3])
    cls = np.digitize(raw, q)
    return [float(np.mean(err[cls == c] <= acc[cls == c])) if (cls == c).any() else None for c in range(3)]


def run_floor(name: str, dump: Path | None = None, log=print, split: str = "path") -> dict:
    """One floor: fixes held out by ``split`` (``path``, or ``day``: every
    path of a day held out at once), both claims with and without a survey,
    every zone set; and the day-drift check."""
    t0 = time.perf_counter()
    fl = Floor(name)
    D = sq_dist(fl.rssi)
    fx, scales = held_out(fl, D, split)
    err = np.hypot(fx["x"] - fl.x, fx["y"] - fl.y)
    truth = {k: zone_of(z, fl.x, fl.y) for k, z in fl.zone_sets.items()}
    res = {"split": split, "stats": stats(fl), "frame_check": frame_check(fl), "variants": {}}
    tag = name.replace("/", "-") + ("" if split == "path" else f"-by{split}")
    for kind in KINDS:
        acc0 = raw_acc(fx, kind)
        s = scales[kind]
        for label, acc in ((f"{kind}, no survey", acc0), (f"{kind}, survey", acc0 * s)):
            e = errors(fl, fx["x"], fx["y"], acc)
            if kind == "spread":
                e["coverage_by_raw_acc_tercile"] = coverage_by_acc(err, acc, acc0)
            if label.endswith(", survey"):
                e["scale_median"] = float(np.median(scales[kind]))
                e["scale_range"] = [float(np.min(scales[kind])), float(np.max(scales[kind]))]
            e["zones"] = {}
            for zs, zones in fl.zone_sets.items():
                rows = fix_rows(fl, fx["x"], fx["y"], acc, label, truth[zs])
                e["zones"][zs] = replay(zones, rows)
                if dump is not None:
                    from shapely.geometry import mapping

                    dump.mkdir(parents=True, exist_ok=True)
                    stem = f"ilc20-{tag}-{zs}.{label.replace(', ', '-').replace(' ', '')}"
                    with open(dump / f"{stem}.jsonl", "w") as fh:
                        for r in rows:
                            fh.write(json.dumps(r) + "\n")
                    (dump / f"ilc20-{tag}-{zs}.zones.json").write_text(json.dumps(
                        [{"id": k, "geometry": mapping(g)} for k, g in zones.items()]) + "\n")
            res["variants"][label] = e
            log(name, label, json.dumps({k: round(e[k], 3) for k in ("median_m", "p90_m", "coverage",
                                                                     "median_acc_m")}),
                json.dumps({k: (v["entry_precision"], v["right_entries"], v["wrong_entries"], v["held_right"],
                                v["held_wrong"], v["visits_entered"], v["visits"]) for k, v in e["zones"].items()}),
                flush=True)
    res["day_drift"] = day_drift(fl, D, fx)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def day_drift(fl: Floor, D: np.ndarray, fx_path: dict, near_m: float = 3.0) -> dict:
    """Fingerprints a day old: the error of an engine trained on the *other
    days* only, against leave-one-path-out, on the same scans -- those within
    ``near_m`` of a scan of another day (where the other days' survey covered
    the floor; the days are unequal, so elsewhere the engine has no data)."""
    g = groups_of(fl, "day")
    if np.unique(g).size < 2:
        return {"days": 1}
    fd, _ = held_out(fl, D, "day")
    near = np.zeros(len(fl.lines), dtype=bool)
    for h in np.unique(g):
        te = g == h
        d = np.hypot(fl.x[te][:, None] - fl.x[~te][None, :], fl.y[te][:, None] - fl.y[~te][None, :]).min(1)
        near[te] = d <= near_m
    ep = np.hypot(fx_path["x"] - fl.x, fx_path["y"] - fl.y)[near]
    ed = np.hypot(fd["x"] - fl.x, fd["y"] - fl.y)[near]
    return {"days": int(np.unique(g).size), "scans_per_day": np.bincount(g).tolist(), "scans": int(near.sum()),
            "path_median_m": float(np.median(ep)), "path_p90_m": float(np.percentile(ep, 90)),
            "day_median_m": float(np.median(ed)), "day_p90_m": float(np.percentile(ed, 90))}


def _pct(v):
    return "–" if v is None else f"{100 * v:.0f} %"


def table(res: dict) -> str:
    """The Markdown tables of BENCHMARKS.md: fixes, then zones."""
    out = ["| floor (paths, scans) | engine acc | survey | scale | median m | p90 m | median acc m | coverage |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, r in res["floors"].items():
        st = r["stats"]
        for label, e in r["variants"].items():
            kind, surv = label.split(", ")
            out.append(f"| {name} ({st['paths']}, {st['scans']}) | {kind} | {'yes' if surv == 'survey' else 'no'} | "
                       f"{e.get('scale_median', 1.0):.2f} | {e['median_m']:.1f} | {e['p90_m']:.1f} | "
                       f"{e['median_acc_m']:.1f} | {_pct(e['coverage'])} |")
    out += ["", "| floor | zones (median half-width; scans in one) | engine acc | survey | entry precision "
            "(right/wrong) | held right | held wrong | 3-scan visits entered |", "|---|---|---|---|---|---:|---:|---|"]
    for name, r in res["floors"].items():
        for zs, zst in r["stats"]["zone_sets"].items():
            for label, e in r["variants"].items():
                kind, surv = label.split(", ")
                z = e["zones"][zs]
                ep = "–" if z["entry_precision"] is None else f"{z['entry_precision']:.2f}"
                out.append(f"| {name} | {zs} ({zst['halfwidth_median_m']:.1f} m; {_pct(zst['truth_in_zone'])}) | "
                           f"{kind} | {'yes' if surv == 'survey' else 'no'} | {ep} ({z['right_entries']}/"
                           f"{z['wrong_entries']}) | {_pct(z['held_right'])} | {_pct(z['held_wrong'])} | "
                           f"{_pct(z['visits_entered_share'])} ({z['visits_entered']}/{z['visits']}) |")
    out += ["", "| floor | scans (per day) | near another day's scans | median / p90 m, other paths | "
            "median / p90 m, other days only |", "|---|---|---:|---|---|"]
    for name, r in res["floors"].items():
        d = r.get("day_drift", {})
        if d.get("days", 1) > 1:
            out.append(f"| {name} | {' + '.join(map(str, d['scans_per_day']))} | {d['scans']} | "
                       f"{d['path_median_m']:.1f} / {d['path_p90_m']:.1f} | {d['day_median_m']:.1f} / "
                       f"{d['day_p90_m']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", nargs="?", choices=["run", "convert"], default="run")
    ap.add_argument("floors", nargs="*", default=list(FLOORS))
    ap.add_argument("--mirror-root", default=str(MIRRORS))
    ap.add_argument("--dump", nargs="?", const=str(RESULTS / "real_fixes"),
                    help="write per-scan fixes (JSONL) and zones here (default benchmarks/results/real_fixes)")
    a = ap.parse_args(argv)
    if a.cmd == "convert":
        for f in a.floors:
            print(json.dumps(convert(f, Path(a.mirror_root))), flush=True)
        return 0
    res = {"machine": machine(), "k": K, "fixed_acc_m": FIXED_ACC, "min_acc_m": MIN_ACC, "fresh_ms": FRESH_MS,
           "confidence": 0.9, "floors": {}}
    for f in a.floors:
        res["floors"][f] = run_floor(f, Path(a.dump) if a.dump else None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_wifi.json").write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
