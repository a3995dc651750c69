"""Pure simulations of coarse positioning for the fused tracker (issue 13):
shoppers' true paths, noisy fixes, and the pipeline's judging of them
(``fuse`` → ``FenceIndex.classify`` → ``tracking.step``), with no broker.

Shared by tests/test_geometry_fusion.py and benchmarks/fusion.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import box

from geometry.fences import FenceIndex
from geometry.fusion import FusionParams, FusionState, evidence_fences, fuse, z_for
from geometry.space import infer_shelves
from geometry.tracking import Entered, TrackParams, step
from geometry.zoneprob import ZoneProb


@dataclass(frozen=True)
class Fence:
    id: str
    geometry: object
    floor: int = 0
    circle: tuple | None = None


def walk(points, speeds, pauses=None):
    """Waypoints -> (t, x, y) knots; ``speeds`` per leg, ``pauses`` seconds at each point."""
    pts = [np.asarray(p, float) for p in points]
    pauses = pauses or [0.0] * len(pts)
    t, out = 0.0, [(0.0, *pts[0])]
    if pauses[0]:
        t += pauses[0]
        out.append((t, *pts[0]))
    for k in range(1, len(pts)):
        t += float(np.hypot(*(pts[k] - pts[k - 1]))) / speeds[k - 1]
        out.append((t, *pts[k]))
        if pauses[k]:
            t += pauses[k]
            out.append((t, *pts[k]))
    return np.array(out)


def sample(knots, every, rng, sigma, t0=None):
    """Fix times every ``every`` s (random phase) and noisy positions."""
    t0 = rng.uniform(0, every) if t0 is None else t0
    t = np.arange(t0, knots[-1, 0], every)
    x = np.interp(t, knots[:, 0], knots[:, 1])
    y = np.interp(t, knots[:, 0], knots[:, 2])
    return t, x, y, x + rng.normal(0, sigma, t.size), y + rng.normal(0, sigma, t.size)


_INDEXES: dict = {}


def indexes(fences, obstacles=None):
    """(raw index, evidence index, its ZoneProb) of a layout, built once."""
    key = (tuple(fences), None if obstacles is None else obstacles.wkb)
    if key not in _INDEXES:
        grown = evidence_fences(fences, {0: obstacles} if obstacles is not None else {})
        ev = FenceIndex(grown)
        _INDEXES[key] = (FenceIndex(fences), ev, ZoneProb(ev, grown))
    return _INDEXES[key]


def judge(fences, t, fx, fy, acc, *, fused=True, params=None, obstacles=None, batch=1, sustained=None,
          rule="p", weak=False):
    """Run one device's fixes through the pipeline; returns the events.
    ``fused=False``: the single-fix rule (raw fixes, raw fences).
    ``sustained``: the tracker's ``sustained_pings`` (default: 3 for raw
    fixes, 0 for fused ones: the estimate *is* the sustained evidence, and
    counting centre-inside estimates would bypass the confidence rule).
    ``rule``: ``"p"`` (the pipeline: P(inside) under the estimate,
    :class:`geometry.zoneprob.ZoneProb`) or ``"disc"`` (before issue 21: the
    estimate's disc of radius ``z σ``).  ``weak``: the fixes are weak
    (one- or two-beacon proximities)."""
    raw, ev_idx, zp = indexes(fences, obstacles)
    if sustained is None:
        sustained = 0 if fused else 3
    tp = TrackParams(halfwidth=raw.halfwidth, sustained_pings=sustained)
    params = params or FusionParams()
    accs = np.full(t.size, float(acc))
    if fused:
        idx = ev_idx
        st = FusionState(4)
        rows = st.rows(["d"] * t.size)
        ex, ey, ea, sg = np.empty(t.size), np.empty(t.size), np.empty(t.size), np.empty(t.size)
        wk = np.full(t.size, bool(weak))
        for s in range(0, t.size, batch):
            f = fuse(st, rows[s:s + batch], fx[s:s + batch], fy[s:s + batch], np.zeros(len(rows[s:s + batch])),
                     accs[s:s + batch], t[s:s + batch], params, weak=wk[s:s + batch])
            ex[s:s + batch], ey[s:s + batch], ea[s:s + batch], sg[s:s + batch] = f.x, f.y, f.acc, f.sigma
    else:
        idx, (ex, ey, ea) = raw, (fx, fy, accs)
    if fused and rule == "p":
        z = z_for(params.confidence)
        matches, _, _ = zp.judge(ex, ey, np.zeros(t.size), sg, params.confidence, z)
        ea = z * sg
    else:
        matches = idx.classify(ex, ey, np.zeros(t.size), ea)
    track, events = None, []
    for j in range(t.size):
        track, ev = step(track, matches[j], float(t[j]), tp, acc=float(ea[j]))
        events += ev
    return events


def first_enter(events, fid, t_from=-np.inf, t_to=np.inf):
    ts = [e.ts for e in events if isinstance(e, Entered) and e.fence == fid and t_from <= e.ts <= t_to]
    return min(ts) if ts else None


def entered(events, fid):
    return any(isinstance(e, Entered) and e.fence == fid for e in events)


# -- scenarios -----------------------------------------------------------------

def browse_fixes(seed, zone, *, sigma, every, dwell, approach=15.0, margin=1.0, stops=3):
    """A shopper walks ``approach`` m from outside into ``zone`` (a box),
    browses ``dwell`` s among ``stops`` points at least ``margin`` inside,
    and walks away.  Returns (t, fx, fy, t_in, t_leave): the noisy fixes and
    when she truly crossed in and last was inside."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = zone.bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    pts = [(rng.uniform(x0 + margin, x1 - margin), rng.uniform(y0 + margin, y1 - margin)) for _ in range(stops)]
    ang = rng.uniform(0, 2 * np.pi)
    far = max(x1 - x0, y1 - y0) / 2 + approach
    start = (cx + far * np.cos(ang), cy + far * np.sin(ang))
    speed = rng.uniform(1.0, 1.3)
    # browsing: equal pauses at each stop, short slow moves between them
    hops = sum(np.hypot(pts[k][0] - pts[k - 1][0], pts[k][1] - pts[k - 1][1]) for k in range(1, stops)) / 0.5
    pause = max(dwell - hops, 0.0) / stops
    knots = walk([start, *pts, start], [speed] + [0.5] * (stops - 1) + [speed], [0.0] + [pause] * stops + [0.0])
    t, x, y, fx, fy = sample(knots, every, rng, sigma)
    inside = shapely.contains_xy(zone, x, y)
    t_in = t[np.argmax(inside)] if inside.any() else None
    t_leave = t[np.flatnonzero(inside)[-1]] if inside.any() else None
    return t, fx, fy, t_in, t_leave


def browse_zone(seed, zone, *, sigma, acc, every, dwell, approach=15.0, margin=1.0, fused=True,
                params=None, stops=3):
    """:func:`browse_fixes` judged.  Returns (entered while browsing, delay from crossing in)."""
    t, fx, fy, t_in, t_leave = browse_fixes(seed, zone, sigma=sigma, every=every, dwell=dwell,
                                            approach=approach, margin=margin, stops=stops)
    ev = judge([Fence("zone", zone)], t, fx, fy, acc, fused=fused, params=params)
    te = first_enter(ev, "zone", t_to=t_leave + 1e-9)
    return te is not None, (te - t_in) if te is not None else None


def pass_by(seed, zone, *, sigma, acc, every, gap=3.0, beyond=10.0, fused=True, params=None):
    """A shopper walks past ``zone`` (a box) parallel to a random side,
    ``gap`` m from it.  Returns whether the zone was entered."""
    t, fx, fy = pass_by_fixes(seed, zone, sigma=sigma, every=every, gap=gap, beyond=beyond)
    return entered(judge([Fence("zone", zone)], t, fx, fy, acc, fused=fused, params=params), "zone")


def pass_by_fixes(seed, zone, *, sigma, every, gap=3.0, beyond=10.0):
    """The noisy fixes (t, fx, fy) of a shopper walking past ``zone``."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = zone.bounds
    side = int(rng.integers(4))
    if side in (0, 1):  # below / above
        yy = y0 - gap if side == 0 else y1 + gap
        a, b = (x0 - beyond, yy), (x1 + beyond, yy)
    else:  # left / right
        xx = x0 - gap if side == 2 else x1 + gap
        a, b = (xx, y0 - beyond), (xx, y1 + beyond)
    if rng.random() < 0.5:
        a, b = b, a
    knots = walk([a, b], [rng.uniform(1.0, 1.3)])
    t, _, _, fx, fy = sample(knots, every, rng, sigma)
    return t, fx, fy


def aisle_layout(n=5, width=2.0, shelf=1.2, length=14.0, y0=4.0):
    """``n`` parallel aisles (``width`` m) separated by ``shelf`` m shelves,
    a cross aisle in front (y < y0); returns (fences, obstacles)."""
    fences = []
    for i in range(n):
        x = 2.0 + i * (width + shelf)
        fences.append(Fence(f"aisle-{i + 1}", box(x, y0, x + width, y0 + length)))
    shelves = infer_shelves([f.geometry for f in fences])
    return fences, shelves


def aisle_fixes(seed, k, *, sigma=1.5, every=1.0, dwell=20.0, layout=None):
    """A shopper walks from the cross aisle into aisle ``k`` (0-based),
    browses ``dwell`` s at two spots there and walks back.  Returns (t, fx,
    fy, t_leave): the noisy fixes and when she left the second spot."""
    rng = np.random.default_rng(seed)
    fences, shelves = layout or aisle_layout()
    g = fences[k].geometry
    x0, y0, x1, y1 = g.bounds
    cx = (x0 + x1) / 2
    start = (rng.uniform(0.0, fences[-1].geometry.bounds[2] + 2.0), 1.5)
    mouth = (cx, y0 - 1.0)
    a = (cx + rng.uniform(-0.4, 0.4), rng.uniform(y0 + 2, y1 - 4))
    b = (cx + rng.uniform(-0.4, 0.4), min(a[1] + rng.uniform(1, 3), y1 - 1))
    knots = walk([start, mouth, a, b, mouth, start], [1.1, 1.1, 0.4, 1.1, 1.1],
                 [0, 0, dwell / 2, dwell / 2, 0, 0])
    t, _, _, fx, fy = sample(knots, every, rng, sigma)
    return t, fx, fy, knots[3, 0] + dwell / 2


def browse_aisle(seed, k, *, sigma=1.5, acc=3.0, every=1.0, dwell=20.0, fused=True, params=None,
                 layout=None):
    """:func:`aisle_fixes` judged.  Returns (entered her aisle while browsing,
    entered a neighbour at any time)."""
    fences, shelves = layout or aisle_layout()
    t, fx, fy, t_leave = aisle_fixes(seed, k, sigma=sigma, every=every, dwell=dwell, layout=(fences, shelves))
    ev = judge(fences, t, fx, fy, acc, fused=fused, params=params, obstacles=shelves)
    own = first_enter(ev, fences[k].id, t_to=t_leave) is not None
    neigh = any(entered(ev, fences[j].id) for j in (k - 1, k + 1) if 0 <= j < len(fences))
    return own, neigh
