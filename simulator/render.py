"""``map.png``: the layout with its fences, the sampled true paths and a
dwell heatmap (matplotlib, Agg backend: no display needed).

Fence outlines are coloured by the run's recall (green ≥ 90 %, orange
≥ 50 %, red below, grey when unscored); fences lint flagged are hatched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["render_map"]

_KIND_FACE = {
    "aisle": "#9ecae1", "section": "#a1d99b", "display": "#fdd0a2", "entrance": "#dadaeb",
    "checkout": "#bcbddc", "staff_only": "#969696", "other": "#d9d9d9",
}


def _recall_colour(recall) -> str:
    if recall is None:
        return "#737373"
    if recall >= 0.9:
        return "#238b45"
    if recall >= 0.5:
        return "#fd8d3c"
    return "#cb181d"


def _rings(geom):
    for part in getattr(geom, "geoms", [geom]):
        yield np.asarray(part.exterior.coords)
        for hole in part.interiors:
            yield np.asarray(hole.coords)


def render_map(cfg, space, shoppers, samples, report: dict, path: Path, *, max_paths: int = 60) -> None:
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
        cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
        cb.set_label("shopper-seconds per 0.5 m cell")

    zones = report.get("zones", {})
    flagged = set(report.get("lint_flagged", ()))
    for f in sorted(cfg.fences, key=lambda f: (f.kind == "display", f.id)):
        face = _KIND_FACE.get(f.kind, "#d9d9d9")
        edge = _recall_colour((zones.get(f.id) or {}).get("recall"))
        for ring in _rings(f.geometry):
            ax.add_patch(MplPolygon(ring, closed=True, facecolor=face, alpha=0.35, edgecolor="none", zorder=2.5))
            ax.add_patch(MplPolygon(ring, closed=True, fill=False, edgecolor=edge, lw=2.0,
                                    hatch="//" if f.id in flagged else None, zorder=4))
        c = f.geometry.representative_point() if f.circle is None else None
        cx, cy = (f.circle[0], f.circle[1]) if f.circle is not None else (c.x, c.y)
        z = zones.get(f.id) or {}
        label = f.id if z.get("recall") is None else f"{f.id}\n{z['recall']:.0%}"
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

    if cfg.beacons:
        ax.plot([b.x for b in cfg.beacons if b.floor == space.floor],
                [b.y for b in cfg.beacons if b.floor == space.floor], "^", color="#3f007d", ms=6, zorder=7,
                label="BLE beacon")
    ax.plot(*space.door_outside, "s", color="black", ms=6, zorder=7)

    handles = [Patch(facecolor=c, alpha=0.5, label=k) for k, c in _KIND_FACE.items()
               if any(f.kind == k for f in cfg.fences)]
    handles += [Patch(fill=False, edgecolor=_recall_colour(v), lw=2, label=t)
                for v, t in ((1.0, "recall ≥ 90 %"), (0.6, "recall ≥ 50 %"), (0.0, "recall < 50 %"),
                             (None, "no visits"))]
    handles.append(Patch(fill=False, hatch="//", label="flagged by lint"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False)
    lat = report.get("latency_ms", {})
    lat_txt = f", offer latency p50 {lat['p50']} ms / p99 {lat['p99']} ms" if lat.get("n") else ""
    ax.set_title(f"Store {cfg.store_id} — {report.get('tech')} — {report.get('shoppers')} shoppers, "
                 f"{report.get('duration_s'):g} s, seed {report.get('seed')}{lat_txt}", fontsize=10)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
