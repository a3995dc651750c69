"""``map.png``: the layout with its fences, the sampled true paths, the
fixes the technology reported, where the agent went wrong, and a dwell
heatmap (matplotlib, Agg backend: no display needed).

Each fence is *filled* by the run's recall and *outlined* by its precision
(green ≥ 90 %, orange ≥ 50 %, red below; unscored fences keep their kind's
pale fill and a grey outline); fences lint flagged are hatched.  A red ``×``
is a false entry (where the shopper truly was when the agent entered a zone
she was not in), a hollow ring a missed visit (where the shopper stood,
mid-visit, in a zone the agent never placed her in).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["render_map"]

_KIND_FACE = {
    "aisle": "#9ecae1", "section": "#a1d99b", "display": "#fdd0a2", "entrance": "#dadaeb",
    "checkout": "#bcbddc", "staff_only": "#969696", "other": "#d9d9d9",
}


def _score_colour(v) -> str:
    if v is None:
        return "#737373"
    if v >= 0.9:
        return "#238b45"
    if v >= 0.5:
        return "#fd8d3c"
    return "#cb181d"


def _rings(geom):
    for part in getattr(geom, "geoms", [geom]):
        yield np.asarray(part.exterior.coords)
        for hole in part.interiors:
            yield np.asarray(hole.coords)


def render_map(cfg, space, shoppers, samples, report: dict, path: Path, *, fixes=(), misses=(),
               false_entries=(), max_paths: int = 60) -> None:
    """Draw the map.  ``fixes``: ``(shopper, t, x, y, acc)`` as reported;
    ``misses``: ``(shopper, zone, start, end)``; ``false_entries``:
    ``(shopper, zone, ts)`` (see :func:`simulator.truth.score`)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Polygon as MplPolygon

    x0, y0, x1, y1 = space.walkable.bounds
    if cfg.outline is not None:
        ox0, oy0, ox1, oy1 = cfg.outline.bounds
        x0, y0, x1, y1 = min(x0, ox0), min(y0, oy0), max(x1, ox1), max(y1, oy1)
    pad = 1.0
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    fig, ax = plt.subplots(figsize=(12, 12 * h / w + 1.2), dpi=110)
    ax.set_xlim(x0 - pad, x1 + pad)
    ax.set_ylim(y0 - pad, y1 + pad)
    ax.set_aspect("equal")
    ax.set_facecolor("#f7f7f7")

    if cfg.outline is not None:
        for ring in _rings(cfg.outline):
            ax.add_patch(MplPolygon(ring, closed=True, facecolor="white", edgecolor="black", lw=2, zorder=1))
    if not space.obstacles.is_empty:
        for ring in _rings(space.obstacles):
            ax.add_patch(MplPolygon(ring, closed=True, facecolor="#bdbdbd", edgecolor="#636363", lw=0.5,
                                    zorder=2))

    # dwell heatmap: where shoppers spent their time (true path every second)
    pts = []
    for s in shoppers:
        ts = np.arange(s.arrive, s.leave, 1.0)
        if ts.size:
            xs, ys = s.position(ts)
            pts.append(np.column_stack([xs, ys]))
    if pts:
        allp = np.vstack(pts)
        bins = (max(8, int(w / 0.5)), max(8, int(h / 0.5)))
        hist, xe, ye = np.histogram2d(allp[:, 0], allp[:, 1], bins=bins,
                                      range=[[x0 - pad, x1 + pad], [y0 - pad, y1 + pad]])
        hist = np.ma.masked_where(hist <= 0, hist)
        im = ax.imshow(hist.T, origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), cmap="inferno_r",
                       alpha=0.75, zorder=3, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.035, pad=0.07, aspect=50)
        cb.set_label("shopper-seconds per 0.5 m cell")

    zones = report.get("zones", {})
    flagged = set(report.get("lint_flagged", ()))
    for f in sorted(cfg.fences, key=lambda f: (f.kind == "display", -f.geometry.area, f.id)):
        if f.kind == "obstacle":
            continue
        z = zones.get(f.id) or {}
        recall, precision = z.get("recall"), z.get("precision")
        face = _KIND_FACE.get(f.kind, "#d9d9d9") if recall is None else _score_colour(recall)
        edge = _score_colour(precision)
        for ring in _rings(f.geometry):
            ax.add_patch(MplPolygon(ring, closed=True, facecolor=face, alpha=0.3, edgecolor="none", zorder=2.5))
            ax.add_patch(MplPolygon(ring, closed=True, fill=False, edgecolor=edge, lw=2.5,
                                    hatch="//" if f.id in flagged else None, zorder=4))
        c = f.geometry.representative_point() if f.circle is None else None
        cx, cy = (f.circle[0], f.circle[1]) if f.circle is not None else (c.x, c.y)
        label = f.id if recall is None else (
            f"{f.id}\nR {recall:.0%} · P {'–' if precision is None else format(precision, '.0%')}")
        ax.text(cx, cy, label, ha="center", va="center", fontsize=7, zorder=6,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))

    # sampled true paths (the points the ground truth was taken at)
    by_shopper: dict[int, list] = {}
    for s in samples:
        by_shopper.setdefault(s.shopper, []).append(s)
    cmap = plt.get_cmap("tab20")
    for k, idx in enumerate(sorted(by_shopper)[:max_paths]):
        ss = sorted(by_shopper[idx], key=lambda s: s.t)
        ax.plot([s.x for s in ss], [s.y for s in ss], "-", lw=0.6, color=cmap(k % 20), alpha=0.8, zorder=5)
        ax.plot([s.x for s in ss], [s.y for s in ss], ".", ms=1.5, color=cmap(k % 20), alpha=0.8, zorder=5)

    # the fixes as the technology reported them (BLE: positioned as the agent does)
    shown = {idx: k for k, idx in enumerate(sorted(by_shopper)[:max_paths])}
    fx = [(x, y, shown[sh]) for sh, _t, x, y, _a in fixes if sh in shown]
    if fx:
        arr = np.array(fx)
        ax.scatter(arr[:, 0], arr[:, 1], s=4, c=[cmap(int(k) % 20) for k in arr[:, 2]], alpha=0.35,
                   marker="o", linewidths=0, zorder=4.5)
    # where the agent went wrong, at the shopper's true position
    people = {p.index: p for p in shoppers}
    miss_xy = [people[sh].position(np.array([(a + b) / 2]))
               for sh, _z, a, b in misses if sh in people]
    if miss_xy:
        ax.plot([float(p[0][0]) for p in miss_xy], [float(p[1][0]) for p in miss_xy], "o", mfc="none",
                mec="#08306b", mew=1.2, ms=7, zorder=8)
    false_xy = [people[sh].position(np.array([t])) for sh, _z, t in false_entries if sh in people]
    if false_xy:
        ax.plot([float(p[0][0]) for p in false_xy], [float(p[1][0]) for p in false_xy], "x", color="#a50f15",
                mew=1.5, ms=7, zorder=8)

    if cfg.beacons:
        ax.plot([b.x for b in cfg.beacons if b.floor == space.floor],
                [b.y for b in cfg.beacons if b.floor == space.floor], "^", color="#3f007d", ms=6, zorder=7,
                label="BLE beacon")
    ax.plot(*space.door_outside, "s", color="black", ms=6, zorder=7)

    from matplotlib.lines import Line2D

    handles = [Patch(facecolor=_score_colour(v), alpha=0.4, label=f"fill: {t}")
               for v, t in ((1.0, "recall ≥ 90 %"), (0.6, "recall ≥ 50 %"), (0.0, "recall < 50 %"))]
    handles += [Patch(fill=False, edgecolor=_score_colour(v), lw=2.5, label=f"outline: {t}")
                for v, t in ((1.0, "precision ≥ 90 %"), (0.6, "precision ≥ 50 %"), (0.0, "precision < 50 %"),
                             (None, "no visits / no entries"))]
    handles += [Patch(facecolor=c, alpha=0.5, label=f"{k} (unscored)") for k, c in _KIND_FACE.items()
                if any(f.kind == k for f in cfg.fences)]
    handles.append(Patch(fill=False, hatch="//", label="flagged by lint"))
    handles += [Line2D([], [], color="#555555", lw=0.8, label="true path"),
                Line2D([], [], ls="none", marker="o", ms=3, color="#555555", alpha=0.5, label="reported fix"),
                Line2D([], [], ls="none", marker="x", color="#a50f15", mew=1.5, label="false entry (true position)"),
                Line2D([], [], ls="none", marker="o", mfc="none", mec="#08306b", mew=1.2,
                       label="missed visit")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    lat = report.get("latency_ms", {})
    lat_txt = f", offer latency p50 {lat['p50']} ms / p99 {lat['p99']} ms" if lat.get("n") else ""
    tracker = {"fused": "fused tracker", "single_fix": "single-fix rule"}.get(report.get("tracker"), "")
    ax.set_title(f"Store {cfg.store_id} — {report.get('tech')}, {tracker} — {report.get('shoppers')} shoppers, "
                 f"{report.get('duration_s'):g} s, seed {report.get('seed')}{lat_txt}", fontsize=10)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
