"""``map.png``: the layout with its fences, the sampled true paths, the
fixes the technology reported and where the agent went wrong; below it, in
a panel of its own, the dwell heatmap (so it never muddies the fills)
(matplotlib, Agg backend: no display needed).

Labels are placed without collisions: the smaller (nested) fences first, at
their centre; a department in the part of it its sections leave free; a
label that does not fit tries other spots, then only the fence id, then a
smaller font, and is left out (listed under the map) when nothing fits.

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


def _boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_spots(f, children) -> list[tuple[float, float]]:
    """Where a fence's label may go, best first: its centre (a circle's
    centre); for a fence holding others, the part they leave free."""
    import shapely

    if f.circle is not None:
        return [(f.circle[0], f.circle[1])]
    g = f.geometry
    spots = []
    free = g.difference(shapely.union_all([c.geometry for c in children])) if children else g
    parts = sorted(getattr(free, "geoms", [free]), key=lambda p: -p.area)
    for part in parts[:4]:
        if part.is_empty or part.area <= 0:
            continue
        rp = part.representative_point()
        spots.append((rp.x, rp.y))
        c = part.centroid
        if part.contains(c):
            spots.append((c.x, c.y))
        x0, y0, x1, y1 = part.bounds
        for fy in (0.8, 0.2, 0.5):
            for fx in (0.5, 0.25, 0.75):
                pt = shapely.Point(x0 + fx * (x1 - x0), y0 + fy * (y1 - y0))
                if part.contains(pt):
                    spots.append((pt.x, pt.y))
    return spots


def place_labels(ax, fig, fences, texts: dict[str, tuple[str, str]], *, fontsize: float = 7) -> dict:
    """Place one label per fence without overlaps.  ``texts``: fence id ->
    (full label, short label).  Returns ``{"boxes": {id: (x0, y0, x1, y1)
    in display pixels}, "hidden": [ids]}``."""
    fig.canvas.draw()  # a renderer at the figure's dpi, as savefig draws (measuring before can use 72 dpi)
    renderer = fig.canvas.get_renderer()
    by_id = {f.id: f for f in fences}
    kids = {f.id: [o for o in fences if o.id != f.id and o.floor == f.floor and o.geometry.area < f.geometry.area
                   and f.geometry.buffer(1e-6).covers(o.geometry)] for f in fences}
    order = sorted(texts, key=lambda fid: (len(kids[fid]) > 0, by_id[fid].geometry.area, fid))
    placed: dict[str, tuple] = {}
    hidden = []
    for fid in order:
        full, short = texts[fid]
        spots = _label_spots(by_id[fid], kids[fid])
        done = False
        for text, size in ((full, fontsize), (short, fontsize), (short, fontsize - 1.5)):
            for (x, y) in spots:
                t = ax.text(x, y, text, ha="center", va="center", fontsize=size, zorder=9,
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
                bb = t.get_window_extent(renderer)  # the text; its white box pads it by ~0.15 em
                m = 0.3 * size * fig.dpi / 72
                box = (bb.x0 - m, bb.y0 - m, bb.x1 + m, bb.y1 + m)
                if not any(_boxes_overlap(box, b) for b in placed.values()):
                    placed[fid] = box
                    done = True
                    break
                t.remove()
            if done:
                break
        if not done:
            hidden.append(fid)
    return {"boxes": placed, "hidden": hidden}


def _draw_heatmap(fig, hax, cfg, shoppers, *, bounds, pad: float, size) -> None:
    """The dwell heatmap, in its own panel: where shoppers spent their time (true path every second)."""
    from matplotlib.patches import Polygon as MplPolygon

    x0, y0, x1, y1 = bounds
    w, h = size
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
        im = hax.imshow(hist.T, origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), cmap="inferno_r",
                        alpha=0.85, zorder=3, interpolation="nearest")
        cb = fig.colorbar(im, ax=hax, orientation="horizontal", fraction=0.035, pad=0.08, aspect=50)
        cb.set_label("shopper-seconds per 0.5 m cell")
    for f in cfg.fences:
        if f.kind != "obstacle":
            for ring in _rings(f.geometry):
                hax.add_patch(MplPolygon(ring, closed=True, fill=False, edgecolor="#525252", lw=0.6, zorder=4))
    hax.set_title("Where the simulated shoppers spent their time (dwell heatmap)", fontsize=10)
    hax.set_xlabel("x (m)")
    hax.set_ylabel("y (m)")


def _draw_fences(ax, cfg, space, report: dict) -> tuple[list, dict[str, tuple[str, str]]]:
    """Fill each fence of this floor by its recall and outline it by its precision (hatched when lint
    flagged it).  Returns the fences drawn and their labels (fence id -> (full, short))."""
    from matplotlib.patches import Polygon as MplPolygon

    zones = report.get("zones", {})
    flagged = set(report.get("lint_flagged", ()))
    fences = [f for f in cfg.fences if f.kind != "obstacle" and f.floor == space.floor]
    texts: dict[str, tuple[str, str]] = {}
    for f in sorted(fences, key=lambda f: (f.kind == "display", -f.geometry.area, f.id)):
        z = zones.get(f.id) or {}
        recall, precision = z.get("recall"), z.get("precision")
        face = _KIND_FACE.get(f.kind, "#d9d9d9") if recall is None else _score_colour(recall)
        edge = _score_colour(precision)
        order = 2.5 + 0.01 * len(texts)  # larger (outer) fences first, so the nested ones sit on top
        for ring in _rings(f.geometry):
            ax.add_patch(MplPolygon(ring, closed=True, facecolor=face, alpha=0.45, edgecolor="none", zorder=order))
            ax.add_patch(MplPolygon(ring, closed=True, fill=False, edgecolor=edge, lw=2.5,
                                    hatch="//" if f.id in flagged else None, zorder=4))
        verdict = z.get("verdict")
        texts[f.id] = (f.id if recall is None else
                       f"{f.id}\nR {recall:.0%} · P {'–' if precision is None else format(precision, '.0%')}"
                       + (f" · {verdict}" if verdict else ""), f.id)
    return fences, texts


def _legend_handles(cfg) -> list:
    """The map's legend: fill and outline colours, unscored kinds, hatching and the marks."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

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
    return handles


def render_map(cfg, space, shoppers, samples, report: dict, path: Path, *, fixes=(), misses=(),
               false_entries=(), max_paths: int = 60) -> dict:
    """Draw the map.  ``fixes``: ``(shopper, t, x, y, acc)`` as reported;
    ``misses``: ``(shopper, zone, start, end)``; ``false_entries``:
    ``(shopper, zone, ts)`` (see :func:`simulator.truth.score`).  Returns
    where the labels went (:func:`place_labels`) and the heatmap's panel."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon

    x0, y0, x1, y1 = space.walkable.bounds
    if cfg.outline is not None:
        ox0, oy0, ox1, oy1 = cfg.outline.bounds
        x0, y0, x1, y1 = min(x0, ox0), min(y0, oy0), max(x1, ox1), max(y1, oy1)
    pad = 1.0
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    fig, (ax, hax) = plt.subplots(2, 1, figsize=(12, 2 * 8.5 * h / w + 2.4), dpi=110,
                                  gridspec_kw={"height_ratios": [1, 1]})

    def base(a, *, shelves_face="#bdbdbd"):
        a.set_xlim(x0 - pad, x1 + pad)
        a.set_ylim(y0 - pad, y1 + pad)
        a.set_aspect("equal")
        a.set_facecolor("#f7f7f7")
        if cfg.outline is not None:
            for ring in _rings(cfg.outline):
                a.add_patch(MplPolygon(ring, closed=True, facecolor="white", edgecolor="black", lw=2, zorder=1))
        if not space.obstacles.is_empty:
            for ring in _rings(space.obstacles):
                a.add_patch(MplPolygon(ring, closed=True, facecolor=shelves_face, edgecolor="#636363", lw=0.5,
                                       zorder=2))

    base(ax)
    base(hax, shelves_face="#e0e0e0")

    # the dwell heatmap, in its own panel: where shoppers spent their time (true path every second)
    _draw_heatmap(fig, hax, cfg, shoppers, bounds=(x0, y0, x1, y1), pad=pad, size=(w, h))

    fences, texts = _draw_fences(ax, cfg, space, report)

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

    handles = _legend_handles(cfg)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    lat = report.get("latency_ms", {})
    lat_txt = f", offer latency p50 {lat['p50']} ms / p99 {lat['p99']} ms" if lat.get("n") else ""
    tracker = {"fused": "fused tracker", "single_fix": "single-fix rule"}.get(report.get("tracker"), "")
    ax.set_title(f"Store {cfg.store_id} — {report.get('tech')}, {tracker} — {report.get('shoppers')} shoppers, "
                 f"{report.get('duration_s'):g} s, seed {report.get('seed')}{lat_txt}", fontsize=10)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    fig.tight_layout()
    labels = place_labels(ax, fig, fences, texts)
    if labels["hidden"]:
        ax.annotate("no room for the label of: " + ", ".join(labels["hidden"]), (0, -0.06),
                    xycoords="axes fraction", fontsize=7, va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    images = {"map": len(ax.images), "heatmap": len(hax.images)}
    plt.close(fig)
    return {**labels, "images": images}
