"""Lint a valid store configuration: things that load fine but will not
work the way the author expects.  Every result is a warning
:class:`~store_config.model.Problem` naming the fence or promotion.

Pure: no clock reads.
"""

from __future__ import annotations

from typing import Iterable

import shapely

from .model import Fence, Problem, Promotion, StoreConfig

__all__ = ["lint", "TECH_ACCURACY", "inscribed_radius", "matching_fences"]

# Typical horizontal accuracy (metres, 1-sigma-ish radius) of each
# positioning technology the simulator models.  `exact` is the simulator's
# ground-truth mode (published as uwb with acc 0.1).
TECH_ACCURACY = {"exact": 0.1, "uwb": 0.3, "ble": 3.0, "wifi": 8.0, "html5": 25.0}

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


def _lint_sizes(cfg: StoreConfig, tech: str | None, file: str) -> list[Problem]:
    out = []
    techs = [tech] if tech is not None else list(TECH_ACCURACY)
    for f in cfg.fences:
        r = inscribed_radius(f)
        failing = [t for t in techs if r < TECH_ACCURACY[t]]
        if not failing:
            continue
        passing = [t for t in TECH_ACCURACY if r >= TECH_ACCURACY[t] and t != "exact"]
        alt = f" or use {'/'.join(passing)}" if passing else ""
        across = f"its largest inscribed circle is {_fmt(2 * r)} m across"
        if tech is not None:
            msg = (f"too small for {tech} (typical accuracy {_fmt(TECH_ACCURACY[tech])} m; {across}): "
                   f"a single {tech} ping's accuracy circle can never lie wholly inside it; "
                   f"enlarge to ≥ {_fmt(2 * TECH_ACCURACY[tech])} m across{alt}")
        else:
            needs = ", ".join(f"{t} (needs ≥ {_fmt(2 * TECH_ACCURACY[t])} m)" for t in failing)
            works = f"; works with {'/'.join(passing)}" if passing else ""
            msg = (f"too small for {needs}: {across}, so a single ping's accuracy circle from those can "
                   f"never lie wholly inside it; enlarge it or use a more precise technology{works}")
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

