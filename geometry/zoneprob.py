"""P(inside) of a Gaussian position against fences, vectorised per batch.

A coarse fix, or the fused tracker's estimate of a device, is a Gaussian
``N((x, y), σ² I)``.  The tracker enters a fence when ``P(inside) >=
confidence`` and leaves it when ``P(inside) <= 1 - confidence`` (DESIGN.md,
"Positioning that tells the truth").  :class:`ZoneProb` computes that
probability for every (fix, candidate fence) pair of a batch.

How (no per-pair Python):

* **Candidates** come from :meth:`geometry.fences.FenceIndex.classify_hits`
  with the radius ``z σ`` (``z = Φ⁻¹(confidence)``): a fence that disc does
  not reach holds at most ``1 - confidence`` of the mass (the half-plane
  through its nearest edge holds exactly that much), so it is "outside"
  without computing anything.
* **Fences as rectangles.**  An isotropic Gaussian's mass in an axis-aligned
  rectangle is a product of two differences of the normal CDF, in closed
  form.  A box fence is one rectangle (exact).  Any other shape (a circle,
  a polygon, an aisle grown over its half-shelves) is rasterised once, the
  first time it is a candidate, into horizontal runs of cells of side
  ``min(grid_m, halfwidth / 8)`` (at least ``min_grid_m``), runs that repeat
  row after row merged into taller rectangles: exact for the rasterised
  shape, off by at most the mass of a half-cell rim.  The sum over a
  fence's rectangles is vectorised over (pair, rectangle).
* **The decision** as :class:`geometry.fences.Match` values, so
  :func:`geometry.tracking.step` is unchanged: ``inside`` = ``P >=
  confidence``, ``straddle`` = ``1 - confidence < P < confidence``,
  ``centre_in`` as the index found it; everything else is outside.
* **A few positions** (a batch at low load) are judged one by one in plain
  Python instead (:meth:`ZoneProb.judge_small`, the same answers), where
  numpy's fixed cost per call would be most of the time.

Compared with judging the disc of radius ``z σ`` alone (the half-plane
through the nearest edge, which :mod:`geometry.fusion` used), this is the
true mass: in a narrow fence or a corner the mass spills over several
edges, so the disc test says "inside" at P 0.8 where 0.9 was asked for, and
holds a device that has walked half-way out.

Pure: no I/O, no clock; numpy and shapely only.
"""

from __future__ import annotations

import math
from math import erf
from collections.abc import Sequence

import numpy as np
import shapely

from .fences import CENTRE_IN, EMPTY_MATCH, FenceIndex, Hits, Match

__all__ = ["ZoneProb", "norm_cdf"]

_SQRT1_2 = 1.0 / math.sqrt(2.0)


def norm_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised (erf by Abramowitz & Stegun 7.1.26,
    absolute error below 1e-7; numpy has no erf)."""
    z = np.asarray(z, dtype=float)
    x = np.abs(z) * _SQRT1_2
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.copysign(erf, z))


def _rects_of(geom, halfwidth: float, grid_m: float, min_grid_m: float) -> np.ndarray:
    """Disjoint axis-aligned rectangles ``(x0, y0, x1, y1)`` covering ``geom``
    as rasterised (cell centres inside), runs merged across rows."""
    x0, y0, x1, y1 = shapely.bounds(geom)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        return np.zeros((0, 4))
    if (geom.geom_type == "Polygon" and len(geom.interiors) == 0 and len(geom.exterior.coords) == 5
            and abs(geom.area - w * h) <= 1e-9 * w * h):
        return np.array([[x0, y0, x1, y1]])
    c = max(min(grid_m, halfwidth / 8 if halfwidth > 0 else grid_m), min_grid_m)
    nx, ny = max(int(math.ceil(w / c)), 1), max(int(math.ceil(h / c)), 1)
    while nx * ny > 250_000:  # a huge fence: coarser cells (its rim matters less)
        c *= 2
        nx, ny = max(int(math.ceil(w / c)), 1), max(int(math.ceil(h / c)), 1)
    cx, cy = w / nx, h / ny
    xs = x0 + (np.arange(nx) + 0.5) * cx
    ys = y0 + (np.arange(ny) + 0.5) * cy
    X, Y = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(geom, X, Y)
    rects = []
    open_runs: dict[tuple[int, int], int] = {}  # (i0, i1) -> row where it started
    for j in range(ny + 1):
        row = inside[j] if j < ny else np.zeros(nx, dtype=bool)
        d = np.diff(np.r_[0, row.view(np.int8), 0])
        runs = set(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
        for run in list(open_runs):
            if run not in runs:
                j0 = open_runs.pop(run)
                rects.append((x0 + run[0] * cx, y0 + j0 * cy, x0 + run[1] * cx, y0 + j * cy))
        for run in runs:
            open_runs.setdefault(run, j)
    return np.array(rects, dtype=float).reshape(-1, 4)


class ZoneProb:
    """Per-fence rectangles of a :class:`~geometry.fences.FenceIndex`'s
    fences (built lazily) and the batch computation of P(inside).

    ``fences``: the same objects, in the same order, as the index was built
    from (``.geometry``; ``.circle`` is ignored: circles are rasterised).
    """

    def __init__(self, index: FenceIndex, fences: Sequence[object], *, grid_m: float = 0.25,
                 min_grid_m: float = 0.05):
        fences = list(fences)
        if len(fences) != len(index):
            raise ValueError("fences must be the index's fences, in order")
        self.index = index
        self._geoms = [f.geometry for f in fences]
        self._grid_m = float(grid_m)
        self._min_grid_m = float(min_grid_m)
        n = len(fences)
        # CSR of rectangles per fence, filled in as fences become candidates
        self._built = np.zeros(n, dtype=bool)
        self._start = np.zeros(n, dtype=np.int64)
        self._count = np.zeros(n, dtype=np.int64)
        self._rects = np.zeros((0, 4))
        self._rects_py: dict[int, list[tuple[float, float, float, float]]] = {}  # fence -> its rectangles
        self._pos: dict[str, int] | None = None  # fence id -> its place in the index (judge_small)

    def _ensure(self, fences: np.ndarray) -> None:
        need = np.unique(fences[~self._built[fences]])
        if not need.size:
            return
        hw = self.index.halfwidth
        ids = self.index.ids
        new = []
        at = self._rects.shape[0]
        for k in need.tolist():
            r = _rects_of(self._geoms[k], hw[ids[k]], self._grid_m, self._min_grid_m)
            self._start[k], self._count[k] = at, r.shape[0]
            at += r.shape[0]
            new.append(r)
        self._rects = np.concatenate([self._rects, *new])
        self._built[need] = True

    def rect_count(self, fence_id: str) -> int:
        """Rectangles a fence is judged by (builds them if needed)."""
        k = self.index.ids.index(fence_id)
        self._ensure(np.array([k]))
        return int(self._count[k])

    def mass(self, pair_ping: np.ndarray, pair_fence: np.ndarray, x, y, sigma) -> np.ndarray:
        """P(inside) for every (ping, fence) pair: the mass of ``N((x, y),
        sigma²)`` of ping ``pair_ping[k]`` in fence ``pair_fence[k]``."""
        pair_ping = np.asarray(pair_ping, dtype=np.int64)
        pair_fence = np.asarray(pair_fence, dtype=np.int64)
        out = np.zeros(pair_ping.size)
        if not pair_ping.size:
            return out
        self._ensure(pair_fence)
        cnt = self._count[pair_fence]
        tot = int(cnt.sum())
        pair = np.repeat(np.arange(pair_ping.size), cnt)
        ri = np.repeat(self._start[pair_fence] - (np.cumsum(cnt) - cnt), cnt) + np.arange(tot)
        R = self._rects[ri]
        p = pair_ping[pair]
        s = np.maximum(np.asarray(sigma, dtype=float)[p], 1e-9)
        px, py = np.asarray(x, dtype=float)[p], np.asarray(y, dtype=float)[p]
        z = np.empty((tot, 4))
        z[:, 0] = (R[:, 0] - px) / s
        z[:, 2] = (R[:, 2] - px) / s
        z[:, 1] = (R[:, 1] - py) / s
        z[:, 3] = (R[:, 3] - py) / s
        F = norm_cdf(z)
        m = (F[:, 2] - F[:, 0]) * (F[:, 3] - F[:, 1])
        np.add.at(out, pair, m)
        return np.minimum(out, 1.0)

    def judge(self, x, y, floor, sigma, confidence: float, z: float) -> tuple[list[Match], Hits, np.ndarray]:
        """Classify a batch of Gaussian positions: ``(matches, hits, p)``,
        ``p`` aligned with ``hits.fence`` (P(inside) of each candidate pair).

        ``z`` is ``Φ⁻¹(confidence)`` (:func:`geometry.fusion.z_for`).
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        sigma = np.asarray(sigma, dtype=float)
        hits = self.index.classify_hits(x, y, floor, z * sigma)
        n = x.size
        if n == 1:  # a batch of one (low load): plain floats, a few rectangles
            return self._judge_one(hits, float(x[0]), float(y[0]), float(sigma[0]), confidence)
        indptr, fence, code = hits
        pair_ping = np.repeat(np.arange(n), np.diff(indptr))
        p = self.mass(pair_ping, fence, x, y, sigma)
        p[~np.isfinite(sigma[pair_ping])] = 0.5  # no position information: straddles, changes nothing
        out: list[Match] = [EMPTY_MATCH] * n
        if not fence.size:
            return out, hits, p
        ids = self.index.ids
        ins = p >= confidence
        strad = ~ins & (p > 1.0 - confidence)
        cen = ((code & CENTRE_IN) != 0) & (ins | strad)  # Match: centre_in within inside | straddle
        for i in np.unique(pair_ping[ins | strad]).tolist():
            s, e = int(indptr[i]), int(indptr[i + 1])
            out[i] = Match([ids[f] for f, b in zip(fence[s:e].tolist(), ins[s:e].tolist()) if b],
                           [ids[f] for f, b in zip(fence[s:e].tolist(), strad[s:e].tolist()) if b],
                           [ids[f] for f, b in zip(fence[s:e].tolist(), cen[s:e].tolist()) if b])
        return out, hits, p

    def judge_small(self, x: Sequence[float], y: Sequence[float], floor: Sequence[int], sigma: Sequence[float],
                    confidence: float, z: float) -> list[Match]:
        """:meth:`judge`'s matches, position by position in plain Python: for
        the few positions of a batch at low load, where numpy's fixed cost per
        call is most of :meth:`judge`'s time.  Candidates from
        :meth:`FenceIndex.classify_one` (the index's own per-ping path, same
        answers as :meth:`~FenceIndex.classify_hits`); P(inside) with
        ``math.erf``, which :func:`norm_cdf` approximates to 1e-7
        (tests/test_geometry_coarse_small.py)."""
        if not (len(y) == len(floor) == len(sigma) == len(x)):
            raise ValueError("x, y, floor and sigma must have equal lengths")
        one = self._judge_small1
        return [one(float(xi), float(yi), int(fi), float(si), confidence, z)
                for xi, yi, fi, si in zip(x, y, floor, sigma)]

    def _judge_small1(self, x: float, y: float, fl: int, s: float, confidence: float, z: float) -> Match:
        m = self.index.classify_one(x, y, fl, z * s)
        if m is EMPTY_MATCH:
            return m
        reached = m.inside | m.straddle
        if not math.isfinite(s):  # no position information: straddles every fence it reaches
            return Match((), reached, m.centre_in)
        s = max(s, 1e-9)
        pos = self._pos
        if pos is None:
            pos = self._pos = {fid: k for k, fid in enumerate(self.index.ids)}
        cin = m.centre_in
        ins, strad, cen = [], [], []
        for fid in reached:
            p = self._p_inside(pos[fid], x, y, s)
            if p >= confidence:
                ins.append(fid)
            elif p > 1.0 - confidence:
                strad.append(fid)
            else:
                continue
            if fid in cin:
                cen.append(fid)
        return Match(ins, strad, cen) if ins or strad else EMPTY_MATCH

    def _p_inside(self, f: int, x: float, y: float, s: float) -> float:
        """P(inside) of fence ``f`` for one position (Python floats, ``s`` finite and
        positive): ``math.erf`` over up to 8 rectangles (kept as Python tuples after
        first use), :func:`norm_cdf` over more, as :meth:`mass` computes it."""
        rs = self._rects_py.get(f)
        if rs is None:
            if not self._built[f]:
                self._ensure(np.array([f]))
            a, m = int(self._start[f]), int(self._count[f])
            if m > 8:
                R = self._rects[a:a + m]
                F = norm_cdf((R - (x, y, x, y)) / s)
                return min(float(((F[:, 2] - F[:, 0]) * (F[:, 3] - F[:, 1])).sum()), 1.0)
            rs = self._rects_py[f] = [tuple(v) for v in self._rects[a:a + m].tolist()]
        k = _SQRT1_2 / s
        p = 0.0
        for x0, y0, x1, y1 in rs:
            p += 0.25 * (erf((x1 - x) * k) - erf((x0 - x) * k)) * (erf((y1 - y) * k) - erf((y0 - y) * k))
        return min(p, 1.0)

    def _judge_one(self, hits: Hits, x: float, y: float, s: float, confidence: float):
        """:meth:`judge` for one position with Python floats (the same arithmetic;
        tests check both agree)."""
        _, fence, code = hits
        if not fence.size:
            return [EMPTY_MATCH], hits, np.zeros(0)
        fl = fence.tolist()
        if not self._built[fl].all():
            self._ensure(fence)
        if not math.isfinite(s):  # no position information: straddles every fence it reaches
            return [Match([], [self.index.ids[f] for f in fl], [])], hits, np.full(len(fl), 0.5)
        s = max(s, 1e-9)
        ids = self.index.ids
        ps, ins, strad, cen = [], [], [], []
        for f, c in zip(fl, code.tolist()):
            p = self._p_inside(f, x, y, s)
            ps.append(p)
            if p >= confidence:
                ins.append(ids[f])
            elif p > 1.0 - confidence:
                strad.append(ids[f])
            else:
                continue
            if c & CENTRE_IN:
                cen.append(ids[f])
        m = Match(ins, strad, cen) if ins or strad else EMPTY_MATCH
        return [m], hits, np.array(ps)
