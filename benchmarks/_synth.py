"""Synthetic but realistic store layouts and ping streams for the benchmarks.

A venue is a grid of store "blocks" (40 m x 30 m each, about the size of the
sample store).  Every block holds what real layouts hold, in the proportions
of the sample store:

* 2 sections (one L-shaped polygon, one rectangle with a hole for a
  pillar or a promotional island),
* 8 aisles (axis-aligned rectangles, 2 m wide, 12 m long; every fourth one
  slightly rotated, so it is a general polygon),
* 8 displays (circles of radius 0.9-3 m, in front of aisle ends),
* 1 entrance/checkout strip, 1 staff-only triangle.

That is 20 fences per block; blocks are laid out row by row and, past 2,500
fences, over several floors (like a mall), so fence density per square metre
stays constant whatever the count — as it would in a real venue.

Pings: 60 % near a fence (inside or around it), 40 % anywhere in the venue;
the accuracy mix is per technology (UWB 0.5 m, BLE 1-4 m, Wi-Fi 5-12 m, HTML5
10-40 m) in proportions a store with mixed positioning would see.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import shapely

BLOCK_W, BLOCK_H = 40.0, 30.0
FENCES_PER_BLOCK = 20
BLOCKS_PER_FLOOR = 125  # 2,500 fences a floor


@dataclass(frozen=True, slots=True)
class SynthFence:
    """What FenceIndex needs (duck-typed like store_config.model.Fence)."""

    id: str
    floor: int
    geometry: object
    circle: tuple[float, float, float] | None
    kind: str


def _block(bx: float, by: float, floor: int, b: int, rng: np.random.Generator) -> list[SynthFence]:
    out: list[SynthFence] = []
    p = f"f{floor}b{b}"
    # sections
    l_shape = shapely.Polygon([(bx + 1, by + 5), (bx + 11, by + 5), (bx + 11, by + 10), (bx + 6, by + 10),
                               (bx + 6, by + 15), (bx + 1, by + 15)])
    out.append(SynthFence(f"{p}-produce", floor, l_shape, None, "section"))
    ring = shapely.Polygon(
        [(bx + 28, by + 17), (bx + 39, by + 17), (bx + 39, by + 29), (bx + 28, by + 29)],
        holes=[[(bx + 32, by + 21), (bx + 35, by + 21), (bx + 35, by + 25), (bx + 32, by + 25)]])
    out.append(SynthFence(f"{p}-dairy", floor, ring, None, "section"))
    # aisles
    for a in range(8):
        x0 = bx + 13 + a * 1.9 if a < 4 else bx + 1 + (a - 4) * 2.4 + 12
        y0 = by + 16 if a >= 4 else by + 4
        w, h = 1.6, 12.0 if a < 4 else 12.5
        g = shapely.box(x0, y0, x0 + w, y0 + h)
        if a % 4 == 3:
            g = shapely.affinity.rotate(g, 7.0, origin="centroid")
        out.append(SynthFence(f"{p}-aisle-{a}", floor, g, None, "aisle"))
    # displays (circles): aisle ends and free spots
    for d in range(8):
        cx = bx + 13.8 + (d % 4) * 1.9 if d < 4 else bx + 2 + (d - 4) * 2.3
        cy = by + 3.0 if d < 4 else by + 25.0
        r = float(rng.uniform(0.9, 3.0))
        g = shapely.Point(cx, cy).buffer(r, quad_segs=32)
        out.append(SynthFence(f"{p}-display-{d}", floor, g, (cx, cy, r), "display"))
    out.append(SynthFence(f"{p}-checkout", floor, shapely.box(bx + 10, by + 0.5, bx + 24, by + 2.5), None,
                          "checkout"))
    out.append(SynthFence(f"{p}-staff", floor,
                          shapely.Polygon([(bx + 30, by + 1), (bx + 39, by + 1), (bx + 39, by + 12)]),
                          None, "staff_only"))
    return out


def make_fences(n: int, *, seed: int = 7) -> list[SynthFence]:
    """``n`` fences (rounded up to whole blocks, then truncated to ``n``)."""
    import shapely.affinity  # noqa: F401  (used in _block)

    rng = np.random.default_rng(seed)
    blocks = math.ceil(n / FENCES_PER_BLOCK)
    cols = max(1, math.ceil(math.sqrt(min(blocks, BLOCKS_PER_FLOOR) * BLOCK_H / BLOCK_W)))
    fences: list[SynthFence] = []
    for b in range(blocks):
        floor, k = divmod(b, BLOCKS_PER_FLOOR)
        row, col = divmod(k, cols)
        fences.extend(_block(col * BLOCK_W, row * BLOCK_H, floor, b, rng))
    return fences[:n]


# per technology: (share, acc low, acc high)
ACC_MIX = {"uwb": (0.15, 0.3, 0.8), "ble": (0.35, 1.0, 4.0), "wifi": (0.35, 5.0, 12.0), "html5": (0.15, 10.0, 40.0)}


def make_points(fences: list[SynthFence], n: int, *, seed: int = 11, acc: str = "mix"):
    """``(x, y, floor, acc)`` arrays of ``n`` pings over the venue of ``fences``.

    ``acc``: ``"mix"`` (the per-technology mix above) or a number in metres.
    """
    rng = np.random.default_rng(seed)
    b = shapely.bounds(np.array([f.geometry for f in fences], dtype=object))
    floors = np.array([f.floor for f in fences])
    near = rng.random(n) < 0.6
    pick = rng.integers(0, len(fences), n)
    # near a fence: uniform within its envelope grown by 2 m
    x0, y0, x1, y1 = b[pick, 0] - 2, b[pick, 1] - 2, b[pick, 2] + 2, b[pick, 3] + 2
    xn = x0 + rng.random(n) * (x1 - x0)
    yn = y0 + rng.random(n) * (y1 - y0)
    # anywhere on that fence's floor
    fb = [b[floors == fl] for fl in range(int(floors.max()) + 1)]
    ext = np.array([[f[:, 0].min(), f[:, 1].min(), f[:, 2].max(), f[:, 3].max()] for f in fb])
    fl = floors[pick]
    e = ext[fl]
    xa = e[:, 0] + rng.random(n) * (e[:, 2] - e[:, 0])
    ya = e[:, 1] + rng.random(n) * (e[:, 3] - e[:, 1])
    x = np.where(near, xn, xa)
    y = np.where(near, yn, ya)
    if acc == "mix":
        techs = list(ACC_MIX.values())
        shares = np.array([t[0] for t in techs])
        t = rng.choice(len(techs), n, p=shares / shares.sum())
        lo = np.array([tt[1] for tt in techs])[t]
        hi = np.array([tt[2] for tt in techs])[t]
        a = lo + rng.random(n) * (hi - lo)
    else:
        a = np.full(n, float(acc))
    return x, y, fl.astype(np.int64), a


def layout_geojson(fences: list[SynthFence]) -> dict:
    """A ``"frame": "local"`` GeoJSON layout of ``fences`` (circles as Point + radius_m)."""
    feats = []
    for i, f in enumerate(fences):
        props: dict = {"id": f.id, "kind": f.kind, "name": f.id, "floor": f.floor}
        if i % 3 == 0:
            props["category"] = ("produce", "dairy", "snacks", "drinks", "household")[i % 5]
            props["skus"] = [f"sku-{i}", f"sku-{i + 1}"]
        if i % 10 == 0:
            props["dwell_s"] = 20
        if f.circle is not None:
            cx, cy, r = f.circle
            props["radius_m"] = round(r, 3)
            geom = {"type": "Point", "coordinates": [round(cx, 3), round(cy, 3)]}
        else:
            geom = json.loads(shapely.to_geojson(f.geometry))
        feats.append({"type": "Feature", "properties": props, "geometry": geom})
    return {"type": "FeatureCollection", "frame": "local", "features": feats}
