"""Lint a valid store configuration: things that load fine but will not
work the way the author expects.  Every result is a warning
:class:`~store_config.model.Problem` naming the fence or promotion.

Fence sizes are judged per positioning technology by :func:`predict`, a
model of the trackers (``[tracking]``):

* a single fix enters at once when its accuracy circle fits inside the
  fence (inscribed radius ``r`` ≥ the technology's accuracy).  For a
  coarse fix the tracker asks ``P(inside) ≥ confidence`` of the fix's
  Gaussian (``geometry.zoneprob``): at the centre of a strip that needs
  ``r ≥ 0.82 acc``, of a square ``0.97 acc``, of a circle ``1.07 acc`` (at
  0.9), so ``r ≥ acc`` stays the rule of thumb;
* otherwise the fused tracker averages fixes: with ``σ = acc / acc_sigmas``
  per fix and ``z = Φ⁻¹(confidence)``, a shopper standing ``d`` metres from
  the edge is placed inside after ``N`` fixes with ``z σ / √N ≤ d``, i.e.
  ``N = ⌈(z σ / d)²⌉``, which takes ``N`` × the technology's fix interval.
  ``d`` is the typical distance from the edge of a shopper somewhere in the
  fence: half the inscribed radius (the mean over a strip) of the fence
  grown over the obstacles beside it (shelves:
  :func:`geometry.space.evidence_shapes`, as the tracker judges).  Measured
  on the sample store (README, "Which positioning works for which zones")
  the model is right to within a factor of two;
* BLE fixes do not average down for ever: a fingerprint's error repeats
  while the phone stands still, so the fused estimate never gets tighter
  than ``corr_floor`` (0.7) of one fix's σ (:mod:`geometry.fusion`).  A
  fence whose inscribed radius is under ``z · 0.7 σ`` therefore *fails*
  however long the shopper stays, and one where only the middle is that far
  from the edge (``d`` under it) is at best *marginal*.  Without a site
  survey a BLE fix claims ~5 m (:data:`BLE_UNSURVEYED_ACC`: the median on
  the public scans of BENCHMARKS.md section 11 and in the simulator's radio),
  with one ~3 m (:data:`TECH_ACCURACY`).

The verdict (:func:`verdict`), the same three words everywhere (lint, the
simulator's advice and its map): ``works`` (at once, or within
:data:`WORKS_DWELL_S` of dwell), ``marginal`` (within :data:`MAX_DWELL_S`:
longer than many shoppers stay) and ``fails`` (longer, or never).
:func:`needed_across` is the one place that says how wide a fence must be
for a technology to work; :func:`measured_verdict` turns a simulated
recall into the same words.

Pure: no clock reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable

import shapely

from geometry.fusion import FusionParams

from .model import Fence, Problem, Promotion, StoreConfig

__all__ = ["lint", "TECH_ACCURACY", "BLE_UNSURVEYED_ACC", "TECH_SIGMA_FLOOR", "tech_accuracy", "TECH_INTERVAL_S",
           "WORKS_DWELL_S", "MAX_DWELL_S", "Prediction", "predict",
           "inscribed_radius", "matching_fences", "needed_across", "verdict", "measured_verdict", "predictions",
           "VERDICTS"]

# Typical horizontal accuracy (metres, 1-sigma-ish radius) of each
# positioning technology the simulator models.  `exact` is the simulator's
# ground-truth mode (published as uwb with acc 0.1).
TECH_ACCURACY = {"exact": 0.1, "uwb": 0.3, "ble": 3.0, "wifi": 8.0, "html5": 25.0}

# A BLE fix without a site survey (``[sources.ble] model``): the agent's no-survey fixes on the
# public labelled scans of BENCHMARKS.md section 11 claimed a median 3.0-7.9 m per data set, the
# simulator's radio on the sample store 5.0 m.
BLE_UNSURVEYED_ACC = 5.0

# The fused estimate's floor, as a share of one fix's sigma (geometry.fusion: BLE fingerprints of
# three or more beacons are correlated, corr_floor; proximities of one or two are weak, weak_floor).
TECH_SIGMA_FLOOR = {"ble": FusionParams().corr_floor}

# Typical seconds between two fixes of one device (what the simulator models).
TECH_INTERVAL_S = {"exact": 1.0, "uwb": 0.5, "ble": 1.5, "wifi": 10.0, "html5": 3.0}

# Seconds of dwell up to which a fence "works" with a technology, and past
# which it "fails" (between the two: "marginal", longer than many shoppers stay).
WORKS_DWELL_S = 30.0
MAX_DWELL_S = 60.0

VERDICTS = ("works", "marginal", "fails")

# Measured recall at or above which a fence works / is marginal (the simulator).
RECALL_WORKS = 0.8
RECALL_MARGINAL = 0.5

# Intersections smaller than this (m²) are touching edges, not overlaps.
_AREA_EPS = 1e-6

# A fence may stick out of the store outline by this much (metres) without a
# warning.  A fence drawn along the outline's edge pokes out by the rounding
# of the coordinates: WGS84 with 7 decimals moves a position by up to ~1 cm,
# with 6 decimals (what RFC 7946 suggests) by up to ~7 cm, so a fence and the
# outline may disagree by twice that.  No positioning technology resolves
# 20 cm (UWB is ~30 cm).
OUTLINE_TOLERANCE_M = 0.2


def inscribed_radius(fence: Fence) -> float:
    """Radius of the largest circle wholly inside the fence (metres)."""
    if fence.circle is not None:
        return float(fence.circle[2])
    g = fence.geometry
    parts = list(getattr(g, "geoms", [g]))
    best = 0.0
    for part in parts:
        line = shapely.maximum_inscribed_circle(part, tolerance=0.01)
        best = max(best, float(line.length))
    return best


def fence_matches(fence: Fence, promo: Promotion) -> bool:
    """The contract's matching rule: zone id, or category, or any sku."""
    return (
        fence.id in promo.zones
        or (fence.category is not None and fence.category in promo.categories)
        or any(s in promo.skus for s in fence.skus)
    )


def matching_fences(promo: Promotion, fences: Iterable[Fence]) -> list[Fence]:
    return [f for f in fences if fence_matches(f, promo)]


def _fmt(m: float) -> str:
    return f"{m:.1f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class Prediction:
    """How a fence will do with one technology: ``at_once`` (a single fix
    fits), else ``fixes`` and ``dwell_s`` before the fused tracker enters
    (``None`` with ``[tracking] fusion = false``); ``works`` when that is at
    most :data:`MAX_DWELL_S`.  ``r``: the fence's inscribed radius; ``d``:
    the typical distance from its edge (half the inscribed radius of the
    fence grown over the obstacles beside it)."""

    tech: str
    at_once: bool
    fixes: int | None
    dwell_s: float | None
    works: bool
    r: float
    d: float
    floored: bool = False  # repeated fixes cannot place a shopper d from the edge (TECH_SIGMA_FLOOR)

    @property
    def verdict(self) -> str:
        """``works``, ``marginal`` or ``fails`` (see the module docstring)."""
        if self.floored:
            return "marginal" if self.works else "fails"
        if self.at_once or (self.dwell_s is not None and self.dwell_s <= WORKS_DWELL_S):
            return "works"
        return "marginal" if self.works else "fails"


def tech_accuracy(cfg: StoreConfig, tech: str) -> float:
    """A technology's typical ``acc`` in this store: BLE's depends on whether
    the store has a site survey (``[sources.ble] model``)."""
    return BLE_UNSURVEYED_ACC if _unsurveyed(cfg, tech) else TECH_ACCURACY[tech]


def _unsurveyed(cfg: StoreConfig, tech: str) -> bool:
    """BLE in a store without a fitted radio model (``edge-agent survey fit``)."""
    return tech == "ble" and cfg.ble_model is None


def verdict(p: Prediction) -> str:
    return p.verdict


def measured_verdict(recall: float | None) -> str | None:
    """The verdict a simulated run measured: recall ≥ 80 % works, ≥ 50 %
    marginal, below fails; None when the zone had no visits."""
    if recall is None:
        return None
    return "works" if recall >= RECALL_WORKS else "marginal" if recall >= RECALL_MARGINAL else "fails"


def _grown_radii(cfg: StoreConfig) -> dict[str, float]:
    """Inscribed radius of each fence grown over the obstacles beside it."""
    from geometry.space import evidence_shapes, obstacles_on

    out: dict[str, float] = {}
    fences = [f for f in cfg.fences if f.kind != "obstacle"]
    for floor in sorted({f.floor for f in fences}):
        on = [f for f in fences if f.floor == floor]
        parts = obstacles_on(cfg.fences, floor)
        obstacles = shapely.union_all(parts) if parts else None
        shapes = evidence_shapes([f.geometry for f in on], obstacles) if obstacles is not None else None
        for i, f in enumerate(on):
            g = shapes[i] if shapes is not None else f.geometry
            out[f.id] = inscribed_radius(f) if g is f.geometry else max(
                inscribed_radius(f), _inscribed(g))
    return out


def _inscribed(g) -> float:
    return max((float(shapely.maximum_inscribed_circle(p, tolerance=0.01).length)
                for p in getattr(g, "geoms", [g])), default=0.0)


def predict(cfg: StoreConfig, fence: Fence, tech: str, *, grown_r: float | None = None) -> Prediction:
    """The model in the module docstring, for one fence and technology."""
    r = inscribed_radius(fence)
    d = (r if grown_r is None else max(r, grown_r)) / 2
    acc = tech_accuracy(cfg, tech)
    if r >= acc:
        return Prediction(tech, True, 1, 0.0, True, r, d)
    t = cfg.tracking
    if not t.fusion or d <= 0:
        return Prediction(tech, False, None, None, False, r, d)
    z = NormalDist().inv_cdf(t.confidence)
    sigma = acc / t.acc_sigmas
    least = z * TECH_SIGMA_FLOOR.get(tech, 0.0) * sigma  # the tightest disc repeated fixes give
    middle = 2 * d  # the inscribed radius (grown over the shelves): the middle's distance from the edge
    if least > middle:  # not even at the middle
        return Prediction(tech, False, None, None, False, r, d, floored=True)
    if least > d:  # only near the middle: the fixes for a shopper there
        n = max(1, math.ceil((z * sigma / middle) ** 2))
        dwell = n * TECH_INTERVAL_S[tech]
        return Prediction(tech, False, n, dwell, dwell <= MAX_DWELL_S, r, d, floored=True)
    n = max(1, math.ceil((z * sigma / d) ** 2))
    dwell = n * TECH_INTERVAL_S[tech]
    return Prediction(tech, False, n, dwell, dwell <= MAX_DWELL_S, r, d)


def needed_across(cfg: StoreConfig, tech: str) -> float:
    """How wide (metres, twice the inscribed radius) a fence must be for
    ``tech`` to work: a single fix fits (``2 × accuracy``), or the fused
    tracker is sure within :data:`WORKS_DWELL_S` of dwell (``d`` = a quarter
    of the width, so ``4 z σ / √N`` with ``N`` the fixes in that time).  The
    one place lint, the simulator's advice and its map take the size from."""
    t = cfg.tracking
    acc = tech_accuracy(cfg, tech)
    single = 2 * acc
    if not t.fusion:
        return single
    n = max(1.0, math.floor(WORKS_DWELL_S / TECH_INTERVAL_S[tech]))
    z = NormalDist().inv_cdf(t.confidence)
    fused = 4 * z * acc / t.acc_sigmas * max(1 / math.sqrt(n), TECH_SIGMA_FLOOR.get(tech, 0.0))
    return min(single, fused)


def predictions(cfg: StoreConfig, tech: str) -> dict[str, Prediction]:
    """:func:`predict` for every fence (obstacles aside), shelves counted."""
    grown = _grown_radii(cfg)
    return {f.id: predict(cfg, f, tech, grown_r=grown.get(f.id)) for f in cfg.fences if f.kind != "obstacle"}


def _say(p: Prediction) -> str:
    if p.at_once:
        return f"{p.tech} at once"
    if p.verdict == "works":
        return f"{p.tech} after ~{_fmt(p.dwell_s)} s of dwell"
    if p.verdict == "marginal":
        return f"{p.tech} marginal (~{_fmt(p.dwell_s)} s of dwell)"
    return f"{p.tech} fails"


def _lint_sizes(cfg: StoreConfig, tech: str | None, file: str) -> list[Problem]:
    out = []
    techs = [tech] if tech is not None else [t for t in TECH_ACCURACY if t != "exact"]
    grown = _grown_radii(cfg)
    for f in cfg.fences:
        if f.kind == "obstacle":
            continue
        preds = [predict(cfg, f, t, grown_r=grown.get(f.id)) for t in techs]
        if all(p.at_once for p in preds):
            continue
        better = [t for t in TECH_ACCURACY if t != "exact"
                  and tech_accuracy(cfg, t) < tech_accuracy(cfg, preds[0].tech)
                  and predict(cfg, f, t, grown_r=grown.get(f.id)).verdict == "works"]
        if tech is not None:
            p = preds[0]
            grow = (f"enlarge to ≥ {_fmt(needed_across(cfg, tech))} m across (now {_fmt(2 * p.r)} m)"
                    + (f" or use {'/'.join(better)}" if better else ""))
            if p.floored:
                msg = (f"{p.verdict} with {tech}: a {tech} fix's error repeats while the shopper stands still, so "
                       + ("only a shopper near the middle is ever placed here" if p.works else
                          "no shopper is ever placed here, however long she stays")
                       + (" (take a site survey: `edge-agent survey fit`)" if _unsurveyed(cfg, tech) else "")
                       + f"; {grow}")
            elif p.verdict == "works":
                msg = (f"works with {tech} after ~{_fmt(p.dwell_s)} s of dwell (the fused tracker needs ~{p.fixes} "
                       f"fixes; a single fix never fits inside)")
            elif p.fixes is None:
                msg = (f"fails with {tech}: a single fix never fits inside and [tracking] fusion is off; "
                       + grow)
            elif p.verdict == "marginal":
                msg = (f"marginal with {tech}: the fused tracker needs ~{p.fixes} fixes (~{_fmt(p.dwell_s)} s of "
                       f"dwell) here, longer than many shoppers stay; {grow}")
            else:
                msg = (f"fails with {tech}: the fused tracker needs ~{p.fixes} fixes (~{_fmt(p.dwell_s)} s "
                       f"of dwell) here; {grow}")
        else:
            msg = "positioning: " + ", ".join(_say(p) for p in preds)
            short = [p for p in preds if p.verdict != "works"]
            if short:
                msg += f" (≥ {_fmt(needed_across(cfg, short[0].tech))} m across to work with {short[0].tech})"
        out.append(Problem(file, f'feature "{f.id}"', "geometry", msg, severity="warning"))
    return out


def _lint_overlaps(cfg: StoreConfig, file: str) -> list[Problem]:
    out = []
    fences = list(cfg.fences)
    if len(fences) < 2:
        return out
    matches = {f.id: [p for p in cfg.promotions if fence_matches(f, p)] for f in fences}
    tree = shapely.STRtree([f.geometry for f in fences])
    left, right = tree.query([f.geometry for f in fences], predicate="intersects")
    for i, j in zip(left.tolist(), right.tolist()):
        if i >= j:
            continue
        a, b = fences[i], fences[j]
        if a.floor != b.floor:
            continue
        area = a.geometry.intersection(b.geometry).area
        if area <= _AREA_EPS:
            continue
        conflicts = sorted(
            {(pa.trigger, pa.id, pb.id) for pa in matches[a.id] for pb in matches[b.id]
             if pa.trigger == pb.trigger and pa.id != pb.id}
        )
        if not conflicts:
            continue
        pairs = "; ".join(f'{t}: "{x}" vs "{y}"' for t, x, y in conflicts[:5])
        more = f" (+{len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        out.append(Problem(
            file, f'feature "{a.id}"', "geometry",
            f'overlaps fence "{b.id}" on floor {a.floor} ({_fmt(area)} m²) and their promotions compete on '
            f"the same trigger ({pairs}{more}); a shopper in the overlap triggers both fences: separate the "
            f"fences or make the promotions distinct",
            severity="warning",
        ))
    return out


def _pct(part: float, whole: float) -> str:
    pct = 100 * part / whole
    return "less than 1 %" if pct < 1 else f"{pct:.0f} %"


def _lint_outline(cfg: StoreConfig, file: str) -> list[Problem]:
    """Fences and beacons outside the outline by more than OUTLINE_TOLERANCE_M."""
    if cfg.outline is None:
        return []
    out = []
    zone = cfg.outline.buffer(OUTLINE_TOLERANCE_M)
    for f in cfg.fences:
        if zone.covers(f.geometry):
            continue
        outside = f.geometry.difference(cfg.outline)
        if outside.area >= f.geometry.area - _AREA_EPS:
            how = "wholly"
        else:
            beyond = float(shapely.distance(shapely.points(shapely.get_coordinates(outside)), cfg.outline).max())
            how = f"{_pct(outside.area, f.geometry.area)} of it, up to {_fmt(beyond)} m beyond"
        out.append(Problem(file, f'feature "{f.id}"', "geometry",
                           f"lies outside the store outline ({how}); check its coordinates (and the anchor)",
                           severity="warning"))
    for b in cfg.beacons:
        if not zone.covers(shapely.Point(b.x, b.y)):
            out.append(Problem(file, f'beacon "{b.beacon_id}"', "geometry",
                               "lies outside the store outline", severity="warning"))
    return out


def _lint_reachable(cfg: StoreConfig, file: str) -> list[Problem]:
    """Fences a shopper cannot reach from an entrance: on the entrance's floor,
    the outline minus ``staff_only`` areas splits into pieces; a fence that
    touches none of the pieces holding an entrance is unreachable."""
    if cfg.outline is None:
        return []
    out = []
    for floor in sorted({f.floor for f in cfg.fences if f.kind == "entrance"}):
        staff = [f.geometry for f in cfg.fences if f.floor == floor and f.kind == "staff_only"]
        if not staff:
            continue
        free = cfg.outline.difference(shapely.union_all(staff))
        pieces = list(getattr(free, "geoms", [free]))
        entrances = [f.geometry for f in cfg.fences if f.floor == floor and f.kind == "entrance"]
        open_ = [p for p in pieces if any(p.intersection(e).area > _AREA_EPS for e in entrances)]
        if not open_:
            continue
        reach = shapely.union_all(open_)
        for f in cfg.fences:
            if f.floor != floor or f.kind in ("staff_only", "entrance"):
                continue
            if f.geometry.intersection(reach).area <= _AREA_EPS:
                out.append(Problem(file, f'feature "{f.id}"', "geometry",
                                   "is unreachable from an entrance (staff-only areas or the outline cut it off), "
                                   "so no shopper can ever enter it", severity="warning"))
    return out


def _lint_promotions(cfg: StoreConfig, file: str) -> list[Problem]:
    out = []
    ids = {f.id for f in cfg.fences}
    all_cats = {f.category for f in cfg.fences if f.category}
    for p in cfg.promotions:
        where = f'promotion "{p.id}"'
        matched = matching_fences(p, cfg.fences)
        if not matched:
            if not (p.zones or p.categories or p.skus):
                msg = "names no zones, categories or skus, so it matches no fence and is never offered"
            else:
                bits = []
                if p.zones:
                    bits.append(f"zones {list(p.zones)}")
                if p.categories:
                    bits.append(f"categories {list(p.categories)}")
                if p.skus:
                    bits.append(f"skus {list(p.skus)}")
                msg = f"matches no fence ({', '.join(bits)} are carried by none), so it is never offered"
            out.append(Problem(file, where, "zones", msg, severity="warning"))
        else:
            unknown_cats = [c for c in p.categories if c not in all_cats]
            if unknown_cats:
                out.append(Problem(file, where, "categories",
                                   f"no fence has category {', '.join(unknown_cats)}", severity="warning"))
        if p.trigger == "dwell":
            no_dwell = [f.id for f in matched if f.dwell_s is None]
            if no_dwell:
                out.append(Problem(file, where, "trigger",
                                   f"is a dwell promotion but fence(s) {', '.join(no_dwell)} have no dwell_s, "
                                   "so no dwell event fires there", severity="warning"))
        if p.requires_stock:
            if not p.skus:
                out.append(Problem(file, where, "skus",
                                   "requires_stock without skus: there is no stock to check",
                                   severity="warning"))
            missing = [s for s in p.skus if s not in cfg.inventory]
            if missing:
                out.append(Problem(file, where, "skus",
                                   f"requires_stock but inventory has no entry for {', '.join(missing)} "
                                   "(treated as out of stock)", severity="warning"))
        if p.alternative_zone is not None and p.alternative_zone not in ids:
            out.append(Problem(file, where, "alternative_zone",
                               f'names fence "{p.alternative_zone}" which the layout does not have',
                               severity="warning"))
    return out


def lint(cfg: StoreConfig, *, tech: str | None = None) -> list[Problem]:
    """Warnings about a loaded configuration.

    ``tech`` is one of :data:`TECH_ACCURACY` (``exact``, ``uwb``, ``ble``,
    ``wifi``, ``html5``); ``None`` lints fence sizes against every
    technology and names the ones that fail.
    """
    if tech is not None and tech not in TECH_ACCURACY:
        raise ValueError(f"unknown positioning technology {tech!r} (known: {', '.join(TECH_ACCURACY)})")
    layout_file = cfg.files.get("layout", "layout")
    promo_file = cfg.files.get("promotions", "promotions")
    return (
        _lint_sizes(cfg, tech, layout_file)
        + _lint_overlaps(cfg, layout_file)
        + _lint_outline(cfg, layout_file)
        + _lint_reachable(cfg, layout_file)
        + _lint_promotions(cfg, promo_file)
    )

