"""Zone metrics of the agent's tracker on labelled fixes (issue 21): a pure replay.

:func:`replay` runs fixes ``(x, y, floor, acc)`` with their true position
through the same path as the pipeline (``edge_agent/pipeline/core.py``,
``_process_pings``): a precise fix (``acc <= precise_acc``) is classified as
it came against the raw fences and stepped with the store's tracking
parameters; every coarse fix goes through :func:`geometry.fusion.fuse`
(``weak`` fixes -- scans that heard one or two beacons -- with the variance
floor), its effective fix is classified against the fences grown over the
obstacles (:func:`geometry.fusion.evidence_fences`) and stepped with
sustained-evidence entry off.  ``mode="single"`` replays the single-fix rule
(``[tracking] fusion = false``); ``mode="legacy"`` the pipeline before issue 21
(weak fixes judged alone, with the single-fix rule).

Each ``walk`` (a survey walk, a day) is one shopper; its fixes are replayed in
time order, one at a time (the pipeline's batch of one at low load).

Metrics (per scan = per fix; the truth is the zone holding the true position):

* ``held_right``: share of scans after which the device is held in its true zone;
* ``held_wrong``: share of scans after which it is held in a zone it is not in;
* ``entries``, ``right_entries``, ``entry_precision``: ``enter`` events, and
  those into the zone the device truly is in at that scan (or, with
  ``tol_s``, at a scan of the same walk within ``tol_s`` seconds);
* ``visits``: runs of at least ``min_visit_scans`` consecutive scans truly in
  one zone; ``visits_entered``: those during which the device was held in
  that zone at some scan; ``visit_recall`` their share.

Used by ``benchmarks/real_radio.py`` (the radio side of issue 21) and by
``python benchmarks/_zones.py FIXES.jsonl ZONES.json`` (a table of modes and
confidences).

Fixes: dicts with ``walk`` (or ``device``), ``ts``, ``x``, ``y``, ``acc``
(``x`` null: a scan with no fix, the tracker only ticks), optional ``floor``
(0), the truth as ``zone_true`` (or ``zone``; null: no zone) or as
``x_true``/``y_true`` (or ``true_x``/``true_y``, ``tx``/``ty``, ``truth: [x,
y]``), and optionally
``weak`` (bool) or ``n_beacons`` (distinct beacons heard; fewer than 3 is
weak).  Zones: a GeoJSON FeatureCollection (``properties.id``, optional
``properties.floor`` and ``properties.kind``; ``kind: "obstacle"`` features are
obstacles) or a list of ``{"id", "geometry", "floor"?, "kind"?}``, or a dict
``{"zones": [...], "obstacles": [...]}``, or ``{zone id: [[x, y], ...]}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import shape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geometry.fences import FenceIndex  # noqa: E402
from geometry.fusion import FusionParams, FusionState, evidence_fences, fuse, z_for  # noqa: E402
from geometry.radio import FINGERPRINT_BEACONS  # noqa: E402
from geometry.tracking import Entered, TrackParams, step, tick  # noqa: E402
from geometry.zoneprob import ZoneProb  # noqa: E402

__all__ = ["Zone", "load_fixes", "load_zones", "replay", "tracker_params"]


@dataclass(frozen=True)
class Zone:
    id: str
    geometry: object
    floor: int = 0
    circle: tuple | None = None
    kind: str = "zone"


def load_zones(src) -> tuple[list[Zone], dict[int, object]]:
    """Zones and obstacles (floor -> shapely geometry) from a path, a GeoJSON
    FeatureCollection, a list or a dict (see the module docstring)."""
    if isinstance(src, (str, Path)):
        src = json.loads(Path(src).read_text())
    obstacles: list[tuple[int, object]] = []
    if isinstance(src, Mapping) and src.get("type") == "FeatureCollection":
        items = [{**(f.get("properties") or {}), "geometry": f["geometry"]} for f in src["features"]]
    elif isinstance(src, Mapping) and "zones" not in src and "obstacles" not in src:
        # {zone id: [[x, y], ...]} (real_radio.py --dump's <data set>.zones.json)
        items = [{"id": k, "geometry": {"type": "Polygon", "coordinates": [v]} if isinstance(v, list) else v}
                 for k, v in src.items()]
    elif isinstance(src, Mapping):
        items = list(src.get("zones", []))
        obstacles = [(int(o.get("floor", 0)), _geom(o.get("geometry", o))) for o in src.get("obstacles", [])]
    else:
        items = list(src)
    zones = []
    for it in items:
        g = _geom(it["geometry"])
        fl = int(it.get("floor", 0) or 0)
        if it.get("kind") == "obstacle":
            obstacles.append((fl, g))
        else:
            zones.append(Zone(str(it["id"]), g, fl, None, str(it.get("kind", "zone"))))
    obs: dict[int, object] = {}
    for fl, g in obstacles:
        obs[fl] = g if fl not in obs else shapely.union(obs[fl], g)
    return zones, obs


def _geom(g):
    return g if hasattr(g, "geom_type") else shape(g)


def load_fixes(path) -> list[dict]:
    """Fixes from a JSON-lines file."""
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def tracker_params(config: Mapping | None = None) -> tuple[FusionParams, dict]:
    """``config`` -> (FusionParams, the rest).  Keys: any FusionParams field
    (``confidence``, ``acc_sigmas``, ``weak_floor``, ``q_still``, ...), and
    ``timeout_s`` (120), ``sustained_pings`` (3), ``mode`` ("fused" |
    "legacy" | "disc" | "single"), ``tol_s`` (0), ``min_visit_scans`` (3), ``weak_beacons`` (3),
    ``correlated`` (1, as the pipeline: BLE fixes that are not weak -- those with
    ``n_beacons`` -- are fused as correlated, :func:`geometry.fusion.fuse`; 0: as
    independent, the pipeline before the correlated floor was wired)."""
    config = dict(config or {})
    names = {f.name for f in fields(FusionParams)}
    fp = {k: v for k, v in config.items() if k in names}
    rest = {k: v for k, v in config.items() if k not in names}
    timeout = float(rest.get("timeout_s", 120.0))
    fp.setdefault("max_gap_s", min(60.0, timeout))
    return FusionParams(**fp), rest


def _truth(fix: Mapping, zones: list[Zone], geoms_by_floor: dict) -> str | None:
    for k in ("zone_true", "zone"):
        if k in fix:
            return fix[k]
    if "x_true" in fix:
        tx, ty = fix["x_true"], fix["y_true"]
    elif "true_x" in fix:
        tx, ty = fix["true_x"], fix["true_y"]
    elif "tx" in fix:
        tx, ty = fix["tx"], fix["ty"]
    else:
        tx, ty = fix["truth"][:2]
    fl = int(fix.get("true_floor", fix.get("floor", 0)) or 0)
    ids, gs = geoms_by_floor.get(fl, ([], None))
    if not ids:
        return None
    hit = np.flatnonzero(shapely.contains_xy(gs, tx, ty))
    return ids[int(hit[0])] if hit.size else None


TRACE = None  # a list: replay appends one tuple per scan (debugging)


def replay(fixes: Iterable[Mapping], zones, tracker_config: Mapping | None = None, *,
           obstacles: Mapping[int, object] | None = None, skip_walks: Iterable[str] = ()) -> dict:
    """Replay labelled ``fixes`` against ``zones`` with the agent's tracker;
    returns the zone metrics (see the module docstring) and, per walk, the
    same counts under ``walks``.  ``zones`` is anything :func:`load_zones`
    takes, or a list of :class:`Zone`; ``tracker_config`` as for
    :func:`tracker_params`.  ``skip_walks``: walks left out (static
    fingerprint points, which are a survey, not a shopper)."""
    skip = set(skip_walks)
    if isinstance(zones, (list, tuple)) and zones and isinstance(zones[0], Zone):
        zs, obs = list(zones), {}
    else:
        zs, obs = load_zones(zones)
    if obstacles:
        obs = {**obs, **obstacles}
    fparams, rest = tracker_params(tracker_config)
    mode = rest.get("mode", "fused")
    tol = float(rest.get("tol_s", 0.0))
    min_scans = int(rest.get("min_visit_scans", 3))
    weak_beacons = int(rest.get("weak_beacons", FINGERPRINT_BEACONS))
    correlated = bool(rest.get("correlated", True))
    raw = FenceIndex(zs)
    grown = evidence_fences(zs, obs)
    ev = FenceIndex(grown) if mode != "single" else raw
    zp = ZoneProb(ev, grown)
    z = z_for(fparams.confidence)
    params = TrackParams(timeout_s=float(rest.get("timeout_s", 120.0)),
                         sustained_pings=int(rest.get("sustained_pings", 3)), halfwidth=raw.halfwidth)
    fused_params = replace(params, sustained_pings=0)
    gbf: dict = {}
    for zone in zs:
        gbf.setdefault(zone.floor, ([], []))
        gbf[zone.floor][0].append(zone.id)
        gbf[zone.floor][1].append(zone.geometry)
    gbf = {fl: (ids, np.array(gs, dtype=object)) for fl, (ids, gs) in gbf.items()}

    walks: dict[str, list[Mapping]] = {}
    for f in fixes:
        w = str(f.get("walk", f.get("device", "walk")))
        if w not in skip:
            walks.setdefault(w, []).append(f)
    total = {"scans": 0, "held_right": 0, "held_wrong": 0, "entries": 0, "right_entries": 0,
             "visits": 0, "visits_entered": 0}
    per_walk = {}
    for name, fs in sorted(walks.items()):
        fs = sorted(fs, key=lambda f: float(f["ts"]))
        n = len(fs)
        ts = np.array([float(f["ts"]) for f in fs])
        x = np.array([float(f["x"]) if f.get("x") is not None else math.nan for f in fs])
        y = np.array([float(f["y"]) if f.get("y") is not None else math.nan for f in fs])
        fl = np.array([int(f.get("floor", 0) or 0) for f in fs])
        acc = np.array([float(f["acc"]) if f.get("acc") is not None else math.inf for f in fs])
        weak = np.array([bool(f["weak"]) if "weak" in f else
                         (int(f["n_beacons"]) < weak_beacons if f.get("n_beacons") is not None else False)
                         for f in fs])
        corr = np.array([correlated and f.get("n_beacons") is not None for f in fs]) & ~weak
        truth = [_truth(f, zs, gbf) for f in fs]
        state = FusionState(2)
        row = state.rows([name])
        track = None
        held: list[frozenset] = []
        entries: list[tuple[int, str]] = []
        for k in range(n):
            a = acc[k]
            if math.isnan(x[k]):  # no fix in this scan: time passes (dwell, silence)
                if track is not None:
                    track, _ = tick(track, float(ts[k]), params)
                    if track is None:
                        state.forget(name)
                        row = state.rows([name])
                held.append(frozenset(track.inside) if track is not None else frozenset())
                continue
            coarse = mode != "single" and a > fparams.precise_acc and not (mode == "legacy" and weak[k])
            if coarse and mode == "fused":  # the pipeline today: P(inside) under the estimate
                f = fuse(state, row, x[k:k + 1], y[k:k + 1], fl[k:k + 1], acc[k:k + 1], ts[k:k + 1], fparams,
                         weak=weak[k:k + 1], correlated=corr[k:k + 1])
                m = zp.judge(f.x, f.y, fl[k:k + 1], f.sigma, fparams.confidence, z)[0][0]
                p, ea = fused_params, z * float(f.sigma[0])
            elif coarse:  # before issue 21: the estimate's disc of radius z sigma (a fix passed through: raw)
                f = fuse(state, row, x[k:k + 1], y[k:k + 1], fl[k:k + 1], acc[k:k + 1], ts[k:k + 1], fparams,
                         weak=weak[k:k + 1] if mode == "disc" else None)
                if f.passed[0]:
                    m, p, ea = raw.classify_one(x[k], y[k], fl[k], a), params, a
                else:
                    ea = float(f.acc[0])
                    m, p = ev.classify_one(float(f.x[0]), float(f.y[0]), fl[k], ea), fused_params
            else:
                m, p, ea = raw.classify_one(x[k], y[k], fl[k], a), params, a
            track, events = step(track, m, float(ts[k]), p, acc=float(ea))
            for e in events:
                if isinstance(e, Entered):
                    entries.append((k, e.fence))
            held.append(frozenset(track.inside))
            if TRACE is not None:
                TRACE.append((name, k, truth[k], sorted(track.inside), round(x[k], 1), round(y[k], 1), round(a, 1),
                              round(float(f.x[0]), 1) if coarse else None, round(float(f.y[0]), 1) if coarse else None,
                              round(float(f.sigma[0]), 2) if coarse else None, m))
        w = {"scans": n, "held_right": 0, "held_wrong": 0, "entries": len(entries), "right_entries": 0,
             "visits": 0, "visits_entered": 0}
        for k in range(n):
            h, t = held[k], truth[k]
            w["held_right"] += t is not None and t in h
            w["held_wrong"] += bool(h - {t})
        for k, zid in entries:
            lo, hi = np.searchsorted(ts, ts[k] - tol, "left"), np.searchsorted(ts, ts[k] + tol, "right")
            w["right_entries"] += any(truth[j] == zid for j in range(lo, hi))
        k = 0
        while k < n:  # runs of scans truly in one zone
            j = k
            while j + 1 < n and truth[j + 1] == truth[k]:
                j += 1
            if truth[k] is not None and j - k + 1 >= min_scans:
                w["visits"] += 1
                w["visits_entered"] += any(truth[k] in held[i] for i in range(k, j + 1))
            k = j + 1
        per_walk[name] = w
        for key in total:
            total[key] += w[key]
    return {**total, **_rates(total), "walks": per_walk}


def _rates(t: Mapping) -> dict:
    def r(a, b):
        return round(a / b, 4) if b else None

    return {"held_right_share": r(t["held_right"], t["scans"]), "held_wrong_share": r(t["held_wrong"], t["scans"]),
            "entry_precision": r(t["right_entries"], t["entries"]), "visit_recall": r(t["visits_entered"], t["visits"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixes")
    ap.add_argument("zones")
    ap.add_argument("--confidence", default="0.8,0.9,0.95")
    ap.add_argument("--weak-floor", default=str(FusionParams().weak_floor),
                    help="comma-separated; default the tracker's own (FusionParams.weak_floor)")
    ap.add_argument("--modes", default="legacy,fused")
    ap.add_argument("--skip", default="", help="walks to leave out, comma-separated")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE tracker config (repeatable)")
    a = ap.parse_args(argv)
    extra = {k: (float(v) if v.replace(".", "", 1).replace("-", "", 1).isdigit() else v)
             for k, v in (kv.split("=", 1) for kv in a.set)}
    skip = [w for w in a.skip.split(",") if w]
    fixes = load_fixes(a.fixes)
    zones = json.loads(Path(a.zones).read_text())
    print("| mode | confidence | weak_floor | scans | held right | held wrong | entries | precision | visits entered |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in a.modes.split(","):
        for c in map(float, a.confidence.split(",")):
            for wf in map(float, a.weak_floor.split(",")):
                m = replay(fixes, zones, {**extra, "mode": mode, "confidence": c, "weak_floor": wf},
                           skip_walks=skip)
                print(f"| {mode} | {c} | {wf} | {m['scans']} | {m['held_right_share']} | {m['held_wrong_share']} | "
                      f"{m['right_entries']}/{m['entries']} | {m['entry_precision']} | "
                      f"{m['visits_entered']}/{m['visits']} ({m['visit_recall']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
