"""Batched classification of location pings against geofences.

A ping is a centre ``(x, y)`` in local metres, a ``floor`` and an accuracy
radius ``acc`` (metres).  Against every fence on its floor the ping's accuracy
disc is either wholly inside, straddling the boundary, or wholly outside.
:class:`FenceIndex` answers that for whole numpy batches at once.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import shapely

__all__ = ["Match", "FenceIndex", "EMPTY_MATCH"]

# Upper bound used for the tree query distance; larger (or non-finite)
# accuracies are clamped to it for the candidate search only.
_MAX_QUERY_DIST = 1e7


@dataclass(frozen=True, slots=True)
class Match:
    """One ping's relation to the fences on its floor.

    ``inside``: fences whose accuracy disc lies wholly inside the fence.
    ``straddle``: fences whose accuracy disc crosses the fence boundary.
    ``centre_in``: fences containing the disc's centre (a subset of
    ``inside | straddle``).  Every other fence is wholly outside the disc.
    """

    inside: frozenset[str] = frozenset()
    straddle: frozenset[str] = frozenset()
    centre_in: frozenset[str] = frozenset()


EMPTY_MATCH = Match()
_EMPTY: frozenset[str] = frozenset()
# Bound on the cross-call interning cache of Match values.
_CACHE_MAX = 1 << 17

# Per candidate pair codes (bit 0: inside, bit 1: straddle, bit 2: centre in).
_IN, _ST, _CE = 1, 2, 4
# Fence kinds inside a floor.
_BOX, _CIRCLE, _POLY = 0, 1, 2


class _Floor:
    """The fences of one floor: an STRtree over their envelopes plus parallel
    per-fence arrays.  Axis-aligned rectangles and circles are tested exactly
    in numpy; other polygons through shapely (prepared)."""

    __slots__ = ("tree", "fidx", "kind", "geoms", "bounds", "p0", "p1", "p2", "p3")

    def __init__(self, entries: list[tuple[int, object, tuple[float, float, float] | None]]):
        n = len(entries)
        self.fidx = np.fromiter((e[0] for e in entries), dtype=np.intp, count=n)
        self.kind = np.full(n, _POLY, dtype=np.int8)
        # box: (x0, y0, x1, y1); circle: (cx, cy, r, -)
        self.p0, self.p1, self.p2, self.p3 = (np.zeros(n) for _ in range(4))
        geoms = np.empty(n, dtype=object)
        env = np.empty(n, dtype=object)
        for k, (_, geom, circle) in enumerate(entries):
            if circle is not None:
                cx, cy, r = (float(v) for v in circle)
                self.kind[k] = _CIRCLE
                self.p0[k], self.p1[k], self.p2[k] = cx, cy, r
                env[k] = shapely.box(cx - r, cy - r, cx + r, cy + r)
                continue
            x0, y0, x1, y1 = geom.bounds
            env[k] = shapely.box(x0, y0, x1, y1)
            if _is_axis_box(geom):
                self.kind[k] = _BOX
                self.p0[k], self.p1[k], self.p2[k], self.p3[k] = x0, y0, x1, y1
            else:
                geoms[k] = geom
        self.geoms = geoms
        # Boundaries include holes: distance to them decides "wholly inside".
        self.bounds = np.empty(n, dtype=object)
        poly = self.kind == _POLY
        if poly.any():
            self.bounds[poly] = shapely.boundary(geoms[poly])
            shapely.prepare(geoms[poly])
            shapely.prepare(self.bounds[poly])
        self.tree = shapely.STRtree(env)

    def pairs(self, x: np.ndarray, y: np.ndarray, acc: np.ndarray):
        """Pairs ``(ping, local fence, code)`` for every fence not wholly
        outside the ping's disc."""
        q = np.minimum(acc, _MAX_QUERY_DIST)
        pi, fj = self.tree.query(shapely.box(x - q, y - q, x + q, y + q))
        code = np.zeros(pi.size, dtype=np.int8)
        if pi.size == 0:
            return pi, fj, code
        kind = self.kind[fj]
        for kd in (_BOX, _CIRCLE, _POLY):
            m = kind == kd
            if not m.any():
                continue
            if m.all():
                pp, ff = pi, fj
            else:
                pp, ff = pi[m], fj[m]
            px, py, a = x[pp], y[pp], acc[pp]
            if kd == _BOX:
                x0, y0, x1, y1 = self.p0[ff], self.p1[ff], self.p2[ff], self.p3[ff]
                contains = (px > x0) & (px < x1) & (py > y0) & (py < y1)
                d_in = np.minimum(np.minimum(px - x0, x1 - px), np.minimum(py - y0, y1 - py))
                d_out = np.hypot(
                    np.maximum(np.maximum(x0 - px, px - x1), 0.0),
                    np.maximum(np.maximum(y0 - py, py - y1), 0.0),
                )
                dist = np.where(contains, d_in, d_out)
                ins = contains & (dist >= a)
                strad = ~ins & (dist < a)
                c = ins * _IN + strad * _ST + contains * _CE
            elif kd == _CIRCLE:
                d = np.hypot(px - self.p0[ff], py - self.p1[ff])
                r = self.p2[ff]
                ins = d + a <= r
                strad = ~ins & (d - a < r)
                c = ins * _IN + strad * _ST + (d <= r) * _CE
            else:
                contains = shapely.contains_xy(self.geoms[ff], px, py)
                dist = shapely.distance(self.bounds[ff], shapely.points(px, py))
                ins = contains & (dist >= a)
                strad = ~ins & (dist < a)
                c = ins * _IN + strad * _ST + contains * _CE
            if m.all():
                code = c.astype(np.int8)
            else:
                code[m] = c
        keep = code != 0
        return pi[keep], fj[keep], code[keep]


def _is_axis_box(geom) -> bool:
    """True for a hole-free polygon equal to its own envelope."""
    if geom.geom_type != "Polygon" or len(geom.interiors):
        return False
    x0, y0, x1, y1 = geom.bounds
    if not (x1 > x0 and y1 > y0):
        return False
    area = (x1 - x0) * (y1 - y0)
    return abs(geom.area - area) <= 1e-9 * area and shapely.equals(geom, shapely.box(x0, y0, x1, y1))


class FenceIndex:
    """A static spatial index of fences, built once per configuration.

    ``fences`` is an iterable of objects with ``.id``, ``.floor``,
    ``.geometry`` (shapely Polygon/MultiPolygon in local metres, holes
    allowed) and ``.circle`` (``None`` or ``(cx, cy, r)``; circles are then
    tested exactly rather than through their polygon).

    Attributes:
        ids: fence ids in input order.
        halfwidth: fence id -> radius of the largest inscribed circle
            (``r`` for circle fences).
    """

    def __init__(self, fences: Iterable[object]):
        fences = list(fences)
        self.ids: list[str] = [str(f.id) for f in fences]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("duplicate fence ids")
        self._ids_arr = np.empty(len(self.ids), dtype=object)
        self._ids_arr[:] = self.ids
        self.halfwidth: dict[str, float] = {}
        by_floor: dict[int, list] = {}
        for k, f in enumerate(fences):
            circle = getattr(f, "circle", None)
            geom = f.geometry
            if circle is not None:
                self.halfwidth[self.ids[k]] = float(circle[2])
            elif geom is None or geom.is_empty:
                raise ValueError(f"fence {f.id!r} has no geometry")
            else:
                self.halfwidth[self.ids[k]] = float(shapely.maximum_inscribed_circle(geom).length)
            by_floor.setdefault(int(f.floor), []).append((k, geom, circle))
        self._floors: dict[int, _Floor] = {fl: _Floor(e) for fl, e in by_floor.items()}
        # random lanes for the per-ping set hash (see _assemble); fixed seed
        # keeps the index deterministic
        rng = np.random.default_rng(0x6E0F)
        nkeys = 8 * max(len(self.ids), 1)
        self._r1 = rng.integers(0, 2**64, nkeys, dtype=np.uint64, endpoint=False)
        self._r2 = rng.integers(0, 2**64, nkeys, dtype=np.uint64, endpoint=False)
        self._cache: dict[int, tuple[int, Match]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def floors(self) -> frozenset[int]:
        """Floors that have at least one fence."""
        return frozenset(self._floors)

    def classify(self, x, y, floor, acc) -> list[Match]:
        """Classify a batch of pings; returns one :class:`Match` per ping.

        ``x``, ``y``, ``floor`` and ``acc`` are equal-length arrays (or
        sequences).  ``acc`` is the accuracy radius in metres; ``acc <= 0`` is
        a point, ``NaN``/``inf`` straddles every fence it reaches.  Only fences
        on the ping's floor are considered.
        """
        x = np.asarray(x, dtype=float).ravel()
        y = np.asarray(y, dtype=float).ravel()
        fl = np.asarray(floor).ravel()
        acc = np.asarray(acc, dtype=float).ravel()
        n = x.size
        if not (y.size == fl.size == acc.size == n):
            raise ValueError("x, y, floor and acc must have equal lengths")
        if n == 0:
            return []
        acc = np.where(np.isnan(acc), np.inf, np.maximum(acc, 0.0))
        fl = fl.astype(np.int64, copy=False)
        # A batch allocates many short-lived, cycle-free objects (query
        # geometries, frozensets, Match values); letting the cyclic GC walk
        # the whole heap meanwhile roughly halves throughput, so it is paused
        # for the call and restored afterwards.
        was_enabled = gc.isenabled()
        if was_enabled:
            gc.disable()
        try:
            return self._classify(n, x, y, fl, acc)
        finally:
            if was_enabled:
                gc.enable()

    def _classify(self, n: int, x: np.ndarray, y: np.ndarray, fl: np.ndarray, acc: np.ndarray) -> list[Match]:
        """:meth:`classify` on validated arrays."""
        all_pi, all_f, all_c = [], [], []
        for f in np.unique(fl):
            fi = self._floors.get(int(f))
            if fi is None:
                continue
            sel = np.flatnonzero(fl == f)
            if sel.size == n:
                pi, fj, code = fi.pairs(x, y, acc)
                all_pi.append(pi)
            else:
                pi, fj, code = fi.pairs(x[sel], y[sel], acc[sel])
                all_pi.append(sel[pi])
            all_f.append(fi.fidx[fj])
            all_c.append(code)
        if not all_pi:
            return [EMPTY_MATCH] * n
        pi = np.concatenate(all_pi)
        fg = np.concatenate(all_f)
        code = np.concatenate(all_c)
        return self._assemble(n, pi, fg, code)

    def classify_one(self, x: float, y: float, floor: int, acc: float) -> Match:
        """Classify a single ping (see :meth:`classify`)."""
        return self.classify([x], [y], [floor], [acc])[0]

    def _assemble(self, n: int, pi: np.ndarray, fg: np.ndarray, code: np.ndarray) -> list[Match]:
        """Build the per-ping Match values from the (ping, fence, code) pairs.

        Many pings share the same relation to the fences (same aisle, same
        accuracy class), so pings are grouped by a 128-bit set hash of their
        ``(fence, code)`` pairs (two random 64-bit lanes; a collision would
        need both lanes to collide, ~2**-128) and one interned :class:`Match`
        is built per distinct group.  The interning cache also spans calls
        (bounded), so steady streams allocate almost nothing.
        """
        if pi.size == 0:
            return [EMPTY_MATCH] * n
        order = np.argsort(pi, kind="stable")
        pi, fg, code = pi[order], fg[order], code[order]
        key = fg * 8 + code
        starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])
        rows = pi[starts]
        with np.errstate(over="ignore"):
            h1 = np.add.reduceat(self._r1[key], starts)
            h2 = np.add.reduceat(self._r2[key], starts)
        hk = (h1 ^ (h2 >> np.uint64(1))).astype(np.int64)  # dict key (one lane suffices)
        uniq, first, inv = np.unique(hk, return_index=True, return_inverse=True)
        ends = np.r_[starts[1:], pi.size]
        cache = self._cache
        if len(cache) > _CACHE_MAX:
            cache.clear()
        ids = self.ids
        key_l = key.tolist()
        matches = []
        for hv, g, h2v in zip(uniq.tolist(), first.tolist(), h2[first].tolist()):
            hit = cache.get(hv)
            if hit is not None and hit[0] == h2v:
                matches.append(hit[1])
                continue
            m = _make_match(ids, key_l[starts[g] : ends[g]])
            cache[hv] = (h2v, m)
            matches.append(m)
        per_row = [matches[i] for i in inv.tolist()]
        # guard: every ping's second lane must agree with its group's
        bad = np.flatnonzero(h2 != h2[first][inv])
        for b in bad.tolist():
            per_row[b] = _make_match(ids, key_l[starts[b] : ends[b]])
        out = [EMPTY_MATCH] * n
        for r, m in zip(rows.tolist(), per_row):
            out[r] = m
        return out


def _make_match(ids: list[str], keys: list[int]) -> Match:
    """One Match from a ping's ``fence*8 + code`` keys."""
    ins = frozenset([ids[k >> 3] for k in keys if k & _IN])
    st = frozenset([ids[k >> 3] for k in keys if k & _ST])
    ce = frozenset([ids[k >> 3] for k in keys if k & _CE])
    return Match(ins or _EMPTY, st or _EMPTY, ce or _EMPTY)
