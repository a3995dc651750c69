"""Batched classification of location pings against geofences.

A ping is a centre ``(x, y)`` in local metres, a ``floor`` and an accuracy
radius ``acc`` (metres).  Against every fence on its floor the ping's accuracy
disc is either wholly inside, straddling the boundary, or wholly outside.
:class:`FenceIndex` answers that for whole numpy batches at once.

How (all numpy, no per-ping Python):

* **Candidates** come from uniform grids, one per floor and *accuracy class*
  (``acc <= 0.5, 0.71, 1, 1.41, ... 1024`` m, and "larger": every fence of the floor).
  In the grid of class ``A`` each fence is registered in every cell that its
  envelope grown by ``A`` touches, so one lookup of the ping's own cell gives
  every fence its disc can reach (plus a few that a cheap envelope test then
  drops).  Grids are built lazily, the first time a class is seen on a floor.
* **Exact tests** per fence shape: axis-aligned rectangles and circles in
  closed form; other polygons with up to 64 edges (holes and multi-parts
  included) by an even-odd crossing test and the distance to every edge,
  vectorised over (pair, edge); bigger polygons through shapely (prepared).
* **Small batches** (up to :attr:`FenceIndex.small_batch` pings) skip numpy: each
  ping looks up its own cell and runs the same tests, in the same float
  operations in the same order, on Python floats (numpy's fixed cost per
  call dominates a batch of a few pings; the crossover is measured by
  ``benchmarks/classify_small.py``).  Both paths give identical answers
  (``tests/test_geometry_fences_small.py``).
* **Results** come out as CSR arrays (:class:`Hits`: per ping, the fences its
  disc reaches and a code per fence) from :meth:`FenceIndex.classify_hits`;
  :meth:`FenceIndex.classify` wraps them in lazy :class:`Match` values
  (the frozensets are built only when read).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import FrozenInstanceError
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np
import shapely

__all__ = ["Match", "Hits", "FenceIndex", "EMPTY_MATCH", "INSIDE", "STRADDLE", "CENTRE_IN", "SMALL_BATCH"]

# Code bits of a (ping, fence) pair in :class:`Hits`.
INSIDE, STRADDLE, CENTRE_IN = 1, 2, 4


class Match:
    """One ping's relation to the fences on its floor (immutable).

    ``inside``: fences whose accuracy disc lies wholly inside the fence.
    ``straddle``: fences whose accuracy disc crosses the fence boundary.
    ``centre_in``: fences containing the disc's centre (a subset of
    ``inside | straddle``).  Every other fence is wholly outside the disc.

    The values :meth:`FenceIndex.classify` returns are lazy: each frozenset
    is built from the batch's arrays the first time it is read (a tracker
    reads ``straddle`` only for devices already in a fence), so a batch
    allocates one small object per ping.  Equality, hashing and ``repr`` are
    by value, as for a frozen dataclass.
    """

    __slots__ = ("_v", "_b", "_r")  # values [inside, straddle, centre_in] (None: lazy), batch, row
    __match_args__ = ("inside", "straddle", "centre_in")

    def __init__(self, inside: Iterable[str] = (), straddle: Iterable[str] = (),
                 centre_in: Iterable[str] = ()):
        _set_v(self, [_fz(inside), _fz(straddle), _fz(centre_in)])
        _set_b(self, None)

    def _get(self, k: int) -> frozenset[str]:
        v = self._v
        if v is None:
            v = [None, None, None]
            _set_v(self, v)
        x = v[k]
        if x is None:
            x = v[k] = self._b.get(k, self._r)
        return x

    @property
    def inside(self) -> frozenset[str]:
        return self._get(0)

    @property
    def straddle(self) -> frozenset[str]:
        return self._get(1)

    @property
    def centre_in(self) -> frozenset[str]:
        return self._get(2)

    def _key(self) -> tuple:
        return (self._get(0), self._get(1), self._get(2))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Match):
            return NotImplemented
        return self is other or self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        i, s, c = self._key()
        return f"Match(inside={i!r}, straddle={s!r}, centre_in={c!r})"

    def __reduce__(self):
        return (Match, self._key())

    def __setattr__(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")


# slot setters that bypass the frozen __setattr__
_set_v, _set_b, _set_r = Match._v.__set__, Match._b.__set__, Match._r.__set__
_EMPTY: frozenset[str] = frozenset()


def _fz(v) -> frozenset[str]:
    if isinstance(v, frozenset):
        return v if v else _EMPTY
    v = frozenset(v)
    return v if v else _EMPTY


EMPTY_MATCH = Match()


class _Batch:
    """A classified batch behind lazy :class:`Match` values: per code bit, the
    CSR of the fence ids with that bit, built on first use."""

    __slots__ = ("ids", "hits", "cats")

    def __init__(self, ids: np.ndarray, hits: "Hits"):
        self.ids = ids
        self.hits = hits
        self.cats: list = [None, None, None]

    def get(self, k: int, row: int) -> frozenset[str]:
        cat = self.cats[k]
        if cat is None:
            indptr, fence, code = self.hits
            m = (code & (INSIDE, STRADDLE, CENTRE_IN)[k]) != 0
            cum = np.zeros(m.size + 1, dtype=np.int64)
            np.cumsum(m, out=cum[1:])
            cat = self.cats[k] = (cum[indptr].tolist(), self.ids[fence[m]].tolist())
        ptr, names = cat
        s, e = ptr[row], ptr[row + 1]
        return frozenset(names[s:e]) if e > s else _EMPTY


class Hits(NamedTuple):
    """Classification of a batch as CSR arrays.

    The fences that ping ``i``'s disc reaches (inside or straddling) are
    ``fence[indptr[i]:indptr[i + 1]]`` (indices into :attr:`FenceIndex.ids`,
    in no particular order), each with ``code`` bits :data:`INSIDE` (disc
    wholly inside), :data:`STRADDLE` (disc crosses the boundary) and
    :data:`CENTRE_IN` (the centre is in the fence).  Exactly one of INSIDE
    and STRADDLE is set on every pair.
    """

    indptr: np.ndarray  # int64, n + 1
    fence: np.ndarray  # int32
    code: np.ndarray  # int8


# Accuracy classes: a ping with acc <= _ACC[k] uses grid k; larger (or
# infinite) accuracies use class _NCLS, "every fence of the floor".
_ACC = 0.5 * 2.0 ** (np.arange(23) / 2)
_NCLS = len(_ACC)
_ACC_L = _ACC.tolist()
_CELL_FRAC = 0.5  # cell side of class A: max(A * _CELL_FRAC, a typical fence's size * _CBASE)
_CBASE = 1.0
_MAX_CELLS = 1 << 18  # per grid
_MAX_EDGES = 64  # polygons with more edges are tested through shapely
_EDGE_BUCKETS = (4, 8, 16, 32, 64)
# Batches of at most this many pings are classified per ping in plain Python (no numpy call):
# the crossover measured by benchmarks/classify_small.py (BENCHMARKS.md section 12) -- 32 for
# boxes, circles and polygons of up to 16 edges; 8 when the index has bigger polygons (fences
# grown over shelves: their edge test costs a Python loop over up to 64 edges per candidate).
SMALL_BATCH = 32
SMALL_BATCH_COMPLEX = 8


class _Group:
    """Fences of one shape kind: per-row envelope, floor and global index,
    plus the kind's parameters, and the CSR of its rows per global grid cell."""

    kind = ""

    def __init__(self, gidx: np.ndarray, floor: np.ndarray, env: np.ndarray):
        self.gidx = gidx.astype(np.int32)
        self.floor = floor
        self.ex0, self.ey0, self.ex1, self.ey1 = (np.ascontiguousarray(env[:, i]) for i in range(4))
        self.cs = np.zeros(2, dtype=np.int32)  # global cell 0: always empty
        self.cf = np.zeros(0, dtype=np.int32)

    def near(self, px, py, a, r):
        """Disc's bounding box meets the row's envelope (inclusive: exact tests decide)."""
        return (px + a >= self.ex0[r]) & (px - a <= self.ex1[r]) & (py + a >= self.ey0[r]) & (py - a <= self.ey1[r])

    def codes(self, px, py, a, r):
        """Code of every candidate pair (0: wholly outside)."""
        near = np.flatnonzero(self.near(px, py, a, r))
        code = np.zeros(px.size, dtype=np.int8)
        if near.size:
            code[near] = self.test(px[near], py[near], a[near], r[near])
        return code

    def test(self, px, py, a, r):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- one pair in plain Python (the small-batch path): the same float operations as the arrays'
    def _near1(self, x: float, y: float, a: float, r: int) -> bool:
        env = self._env_l
        if env is None:
            env = self._env_l = (self.ex0.tolist(), self.ey0.tolist(), self.ex1.tolist(), self.ey1.tolist())
        ex0, ey0, ex1, ey1 = env
        return x + a >= ex0[r] and x - a <= ex1[r] and y + a >= ey0[r] and y - a <= ey1[r]

    def code1(self, x: float, y: float, a: float, r: int) -> int:
        """:meth:`codes` of one pair."""
        if not self._near1(x, y, a, r):
            return 0
        return self.test1(x, y, a, r)

    def test1(self, x: float, y: float, a: float, r: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    _env_l = None


def _code1(contains: bool, dist: float, a: float) -> int:
    """:func:`_codes` of one pair."""
    return (STRADDLE if dist < a else int(contains)) + (CENTRE_IN if contains else 0)


def _codes(contains, dist, a):
    """Pair codes from "centre inside" and the centre's distance to the boundary:
    inside when the disc fits (``dist >= a``), else straddle when it reaches
    the boundary (``dist < a``), else (centre outside, far) nothing."""
    cv = contains.view(np.int8)
    code = np.where(dist < a, np.int8(STRADDLE), cv)
    code += cv << 2
    return code


class _Boxes(_Group):
    kind = "box"

    def codes(self, px, py, a, r):
        mx = np.minimum(px - self.ex0[r], self.ex1[r] - px)
        my = np.minimum(py - self.ey0[r], self.ey1[r] - py)
        d_in = np.minimum(mx, my)
        contains = d_in > 0
        # outside: distance to the rectangle, compared squared
        np.minimum(mx, 0.0, out=mx)
        np.minimum(my, 0.0, out=my)
        mx *= mx
        my *= my
        mx += my
        lt = np.where(contains, d_in < a, mx < a * a)
        cv = contains.view(np.int8)
        code = np.where(lt, np.int8(STRADDLE), cv)
        code += cv << 2
        return code

    def code1(self, x: float, y: float, a: float, r: int) -> int:
        env = self._env_l
        if env is None:
            env = self._env_l = (self.ex0.tolist(), self.ey0.tolist(), self.ex1.tolist(), self.ey1.tolist())
        return _box1(x, y, a, env[0][r], env[1][r], env[2][r], env[3][r])


def _box1(x: float, y: float, a: float, x0: float, y0: float, x1: float, y1: float) -> int:
    """:meth:`_Boxes.codes` of one pair (``FenceIndex._match1`` inlines it)."""
    mx, u = x - x0, x1 - x
    mx = u if u < mx else mx
    my, u = y - y0, y1 - y
    my = u if u < my else my
    d_in = my if my < mx else mx
    if d_in > 0:
        return (STRADDLE if d_in < a else INSIDE) + CENTRE_IN
    mx = mx if mx < 0.0 else 0.0
    my = my if my < 0.0 else 0.0
    return STRADDLE if mx * mx + my * my < a * a else 0


class _Circles(_Group):
    kind = "circle"

    def __init__(self, gidx, floor, cx, cy, rad):
        super().__init__(gidx, floor, np.column_stack([cx - rad, cy - rad, cx + rad, cy + rad]))
        self.cx, self.cy, self.r = cx, cy, rad

    def codes(self, px, py, a, r):
        ux, uy = px - self.cx[r], py - self.cy[r]
        d = np.sqrt(ux * ux + uy * uy)
        rad = self.r[r]
        ins = d + a <= rad
        strad = ~ins & (d - a < rad)
        return ins * np.int8(INSIDE) | strad * np.int8(STRADDLE) | (d <= rad) * np.int8(CENTRE_IN)

    def code1(self, x: float, y: float, a: float, r: int) -> int:
        c = self._c_l
        if c is None:
            c = self._c_l = (self.cx.tolist(), self.cy.tolist(), self.r.tolist())
        ux, uy = x - c[0][r], y - c[1][r]
        d = math.sqrt(ux * ux + uy * uy)
        rad = c[2][r]
        code = CENTRE_IN if d <= rad else 0
        if d + a <= rad:
            return code | INSIDE
        return code | STRADDLE if d - a < rad else code

    _c_l = None


class _Polygons(_Group):
    """Polygons (holes, multi-parts) with at most ``E`` edges, padded with
    zero-length edges at a vertex (harmless to both tests)."""

    kind = "polygon"

    def __init__(self, gidx, floor, env, x0, y0, x1, y1):
        super().__init__(gidx, floor, env)
        dx, dy = x1 - x0, y1 - y0
        l2 = dx * dx + dy * dy
        with np.errstate(divide="ignore", invalid="ignore"):
            il2 = np.where(l2 > 0, 1.0 / l2, 0.0)
            slope = np.where(dy != 0, dx / dy, 0.0)
        # small batches: (pair, edge) 2-D arrays; large: one 1-D pass per edge slot
        self.E = x0.shape[1]
        self.grid2d = (x0, y0, y1, dx, dy, il2, slope)
        self.edges = [tuple(np.ascontiguousarray(v[:, k]) for v in self.grid2d) for k in range(self.E)]

    def test(self, px, py, a, r):
        m = px.size
        if m * self.E <= 4096:
            X0, Y0, Y1, DX, DY, IL2, SLOPE = (v[r] for v in self.grid2d)
            px2, py2 = px[:, None], py[:, None]
            ux, uy = px2 - X0, py2 - Y0
            odd = np.count_nonzero(((Y0 > py2) != (Y1 > py2)) & (ux < uy * SLOPE), axis=1) & 1
            t = np.minimum(np.maximum((ux * DX + uy * DY) * IL2, 0.0), 1.0)
            ux -= t * DX
            uy -= t * DY
            dist = np.sqrt((ux * ux + uy * uy).min(axis=1))
            return _codes(odd.astype(bool) & (dist > 0), dist, a)
        best = np.full(m, np.inf)
        odd = np.zeros(m, dtype=bool)
        for X0, Y0, Y1, DX, DY, IL2, SLOPE in self.edges:
            x0, y0, dx, dy = X0[r], Y0[r], DX[r], DY[r]
            ux = px - x0
            uy = py - y0
            # crossing number (even-odd) of a ray to +x
            odd ^= ((y0 > py) != (Y1[r] > py)) & (ux < uy * SLOPE[r])
            # squared distance to the segment
            t = ux * dx
            t += uy * dy
            t *= IL2[r]
            np.maximum(t, 0.0, out=t)
            np.minimum(t, 1.0, out=t)
            ux -= t * dx
            uy -= t * dy
            ux *= ux
            uy *= uy
            ux += uy
            np.minimum(best, ux, out=best)
        dist = np.sqrt(best)
        return _codes(odd & (dist > 0), dist, a)

    def test1(self, x: float, y: float, a: float, r: int) -> int:
        rows = self._rows_l
        if rows is None:
            rows = self._rows_l = {}
        edges = rows.get(r)
        if edges is None:  # (x0, y0, y1, dx, dy, il2, slope) per edge slot as floats; the pads are
            # copies of one zero-length edge (the same distance each), so one of them stays
            edges = list(zip(*(v[r].tolist() for v in self.grid2d)))
            while len(edges) > 1 and edges[-1] == edges[-2]:
                edges.pop()
            rows[r] = edges
        best = math.inf
        odd = False
        for x0, y0, y1, dx, dy, il2, slope in edges:
            ux = x - x0
            uy = y - y0
            if ((y0 > y) != (y1 > y)) and ux < uy * slope:
                odd = not odd
            t = (ux * dx + uy * dy) * il2
            t = 1.0 if t > 1.0 else (t if t > 0.0 else 0.0)
            ux -= t * dx
            uy -= t * dy
            d2 = ux * ux + uy * uy
            if d2 < best:
                best = d2
        dist = math.sqrt(best)
        return _code1(odd and dist > 0, dist, a)

    _rows_l = None


class _Shapes(_Group):
    """Large polygons: shapely, prepared."""

    kind = "shapely"

    def __init__(self, gidx, floor, env, geoms):
        super().__init__(gidx, floor, env)
        self.geoms = geoms
        self.bounds = shapely.boundary(geoms)
        shapely.prepare(geoms)
        shapely.prepare(self.bounds)

    def test(self, px, py, a, r):
        contains = shapely.contains_xy(self.geoms[r], px, py)
        dist = shapely.distance(self.bounds[r], shapely.points(px, py))
        return _codes(contains, dist, a)

    def test1(self, x: float, y: float, a: float, r: int) -> int:
        return int(self.test(np.array([x]), np.array([y]), np.array([a]), np.array([r]))[0])


def _edges(geoms: np.ndarray):
    """Per geometry, its ring edges: ``(owner, x0, y0, x1, y1)`` arrays."""
    parts, pidx = shapely.get_parts(geoms, return_index=True)
    rings, ridx = shapely.get_rings(parts, return_index=True)
    xy, cidx = shapely.get_coordinates(rings, return_index=True)
    same = cidx[1:] == cidx[:-1]
    owner = pidx[ridx[cidx[:-1][same]]]
    return owner, xy[:-1][same, 0], xy[:-1][same, 1], xy[1:][same, 0], xy[1:][same, 1]


def _pad_edges(nrows: int, E: int, owner, x0, y0, x1, y1):
    """Scatter edges (grouped by owner, owners 0..nrows-1) into (nrows, E)
    arrays, padded with zero-length edges at each row's last vertex."""
    counts = np.bincount(owner, minlength=nrows)
    first = np.cumsum(counts) - counts
    rank = np.arange(owner.size) - first[owner]
    last = first + counts - 1
    out = []
    for src, pad in ((x0, x1), (y0, y1), (x1, x1), (y1, y1)):
        arr = np.repeat(pad[last][:, None], E, axis=1)
        arr[owner, rank] = src
        out.append(arr)
    return out


class _HalfWidth(Mapping):
    """fence id -> largest inscribed radius; exact for circles and rectangles,
    shapely's maximum_inscribed_circle for other polygons, computed the first
    time a fence is asked for (it dominates building an index otherwise)."""

    def __init__(self, ids: list[str], values: np.ndarray, geoms: np.ndarray):
        self._pos = {fid: k for k, fid in enumerate(ids)}
        self._ids = ids
        self._v = values
        self._geoms = geoms

    def __getitem__(self, fid: str) -> float:
        k = self._pos[fid]
        v = self._v[k]
        if v != v:  # NaN: not computed yet
            v = self._v[k] = shapely.length(shapely.maximum_inscribed_circle(self._geoms[k]))
        return float(v)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class FenceIndex:
    """A static spatial index of fences, built once per configuration.

    ``fences`` is an iterable of objects with ``.id``, ``.floor``,
    ``.geometry`` (shapely Polygon/MultiPolygon in local metres, holes
    allowed) and ``.circle`` (``None`` or ``(cx, cy, r)``; circles are then
    tested exactly rather than through their polygon).

    Attributes:
        ids: fence ids in input order.
        halfwidth: fence id -> radius of the largest inscribed circle
            (``r`` for circle fences, half the short side for rectangles).
    """

    def __init__(self, fences: Iterable[object]):
        fences = list(fences)
        n = len(fences)
        self.ids: list[str] = [str(f.id) for f in fences]
        if len(set(self.ids)) != n:
            raise ValueError("duplicate fence ids")
        self._ids_arr = np.empty(n, dtype=object)
        self._ids_arr[:] = self.ids
        floor = np.fromiter((int(f.floor) for f in fences), dtype=np.int64, count=n)
        circles = [getattr(f, "circle", None) for f in fences]
        is_circle = np.fromiter((c is not None for c in circles), dtype=bool, count=n)
        geoms = np.empty(n, dtype=object)
        geoms[:] = [f.geometry for f in fences]
        poly = np.flatnonzero(~is_circle)
        if poly.size:
            g = geoms[poly]
            bad = shapely.is_missing(g) | shapely.is_empty(g)
            if bad.any():
                raise ValueError(f"fence {self.ids[poly[np.flatnonzero(bad)[0]]]!r} has no geometry")
        halfwidth = np.zeros(n)
        groups: list[_Group] = []

        ci = np.flatnonzero(is_circle)
        if ci.size:
            cxyr = np.array([circles[i] for i in ci], dtype=float).reshape(-1, 3)
            halfwidth[ci] = cxyr[:, 2]
            groups.append(_Circles(ci, floor[ci], cxyr[:, 0], cxyr[:, 1], cxyr[:, 2]))
        if poly.size:
            g = geoms[poly]
            env = shapely.bounds(g)
            w, h = env[:, 2] - env[:, 0], env[:, 3] - env[:, 1]
            # a hole-free 4-cornered polygon whose area is its envelope's is that envelope
            is_box = ((shapely.get_type_id(g) == 3) & (shapely.get_num_coordinates(g) == 5)
                      & (shapely.get_num_interior_rings(g) == 0) & (w > 0) & (h > 0)
                      & (np.abs(shapely.area(g) - w * h) <= 1e-9 * w * h))
            bi = np.flatnonzero(is_box)
            if bi.size:
                halfwidth[poly[bi]] = np.minimum(w[bi], h[bi]) / 2
                groups.append(_Boxes(poly[bi], floor[poly[bi]], env[bi]))
            oi = np.flatnonzero(~is_box)
            if oi.size:
                og = g[oi]
                halfwidth[poly[oi]] = np.nan  # computed on first use (start-up time)
                owner, x0, y0, x1, y1 = _edges(og)
                ne = np.bincount(owner, minlength=oi.size)
                lo = 0
                for E in _EDGE_BUCKETS:
                    sel = np.flatnonzero((ne > lo) & (ne <= E))
                    lo = E
                    if not sel.size:
                        continue
                    remap = np.full(oi.size, -1)
                    remap[sel] = np.arange(sel.size)
                    em = remap[owner] >= 0
                    arrs = _pad_edges(sel.size, E, remap[owner[em]], x0[em], y0[em], x1[em], y1[em])
                    rows = poly[oi[sel]]
                    groups.append(_Polygons(rows, floor[rows], env[oi[sel]], *arrs))
                big = np.flatnonzero(ne > _MAX_EDGES)
                if big.size:
                    rows = poly[oi[big]]
                    groups.append(_Shapes(rows, floor[rows], env[oi[big]], og[big]))
        self.halfwidth: Mapping[str, float] = _HalfWidth(self.ids, halfwidth, geoms)
        self._groups = groups
        complex_ = any(gr.kind == "shapely" or (gr.kind == "polygon" and gr.E > 16) for gr in groups)
        self.small_batch = SMALL_BATCH_COMPLEX if complex_ else SMALL_BATCH  # classify's crossover

        # floors and their envelopes
        self._floor_ids = np.unique(floor)
        nf = self._floor_ids.size
        fenv = np.empty((nf, 4))
        fenv[:, :2], fenv[:, 2:] = np.inf, -np.inf
        for gr in groups:
            s = np.searchsorted(self._floor_ids, gr.floor)
            np.minimum.at(fenv[:, 0], s, gr.ex0)
            np.minimum.at(fenv[:, 1], s, gr.ey0)
            np.maximum.at(fenv[:, 2], s, gr.ex1)
            np.maximum.at(fenv[:, 3], s, gr.ey1)
        self._fenv = fenv
        # base cell size: about the size of a typical fence
        if n:
            allenv = np.concatenate([np.column_stack([gr.ex0, gr.ey0, gr.ex1, gr.ey1]) for gr in groups])
            side = np.sqrt(np.maximum(allenv[:, 2] - allenv[:, 0], 0.1) * np.maximum(allenv[:, 3] - allenv[:, 1], 0.1))
            self._cbase = float(np.clip(np.median(side) * _CBASE, 0.5, 25.0))
        else:
            self._cbase = 1.0
        # grid geometry per key = floor slot * (_NCLS + 1) + class; built lazily
        nk = max(nf, 1) * (_NCLS + 1)
        self._g_built = np.zeros(nk, dtype=bool)
        self._g_ox = np.zeros(nk)
        self._g_oy = np.zeros(nk)
        self._g_inv = np.zeros(nk)
        self._g_nx = np.zeros(nk, dtype=np.int64)
        self._g_ny = np.zeros(nk, dtype=np.int64)
        self._g_off = np.zeros(nk, dtype=np.int64)
        self._ncells = 1  # global cell 0 is the empty cell
        self._gpy: dict[int, tuple] = {}  # the same grid geometry as Python numbers (one-ping path)
        self._slot = {int(f): k for k, f in enumerate(self._floor_ids.tolist())}
        # the small-batch path: per global cell reached so far, its (group, rows, fence ids) with rows
        self._cellpy: dict[int, list[tuple]] = {}


    def __len__(self) -> int:
        return len(self.ids)

    @property
    def floors(self) -> frozenset[int]:
        """Floors that have at least one fence."""
        return frozenset(int(f) for f in self._floor_ids)

    # -- grids
    def _build_grid(self, key: int) -> None:
        slot, k = divmod(key, _NCLS + 1)
        x0, y0, x1, y1 = self._fenv[slot]
        if k == _NCLS:  # everything on the floor, one cell
            grow, ox, oy, inv, nx, ny = 0.0, 0.0, 0.0, 0.0, 1, 1
        else:
            A = float(_ACC[k])
            grow = A * (1 + 1e-9) + 1e-9
            c = max(A * _CELL_FRAC, self._cbase)
            W, H = x1 - x0 + 2 * grow, y1 - y0 + 2 * grow
            while (W / c + 1) * (H / c + 1) > _MAX_CELLS:
                c *= 2
            ox, oy, inv = x0 - grow, y0 - grow, 1.0 / c
            nx, ny = int(W * inv) + 1, int(H * inv) + 1
        off = self._ncells
        ncell = nx * ny
        fl = self._floor_ids[slot]
        for gr in self._groups:
            rows = np.flatnonzero(gr.floor == fl).astype(np.int32)
            if inv:
                ix0 = np.clip(np.floor((gr.ex0[rows] - grow - ox) * inv), 0, nx - 1).astype(np.int64)
                ix1 = np.clip(np.floor((gr.ex1[rows] + grow - ox) * inv), 0, nx - 1).astype(np.int64)
                iy0 = np.clip(np.floor((gr.ey0[rows] - grow - oy) * inv), 0, ny - 1).astype(np.int64)
                iy1 = np.clip(np.floor((gr.ey1[rows] + grow - oy) * inv), 0, ny - 1).astype(np.int64)
                w = ix1 - ix0 + 1
                cnt = w * (iy1 - iy0 + 1)
                tot = int(cnt.sum())
                j = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
                wr = np.repeat(w, cnt)
                cid = (np.repeat(iy0, cnt) + j // wr) * nx + np.repeat(ix0, cnt) + j % wr
                order = np.argsort(cid, kind="stable")
                cf = np.repeat(rows, cnt)[order]
                per_cell = np.bincount(cid, minlength=ncell)
            else:
                cf = rows
                per_cell = np.array([rows.size])
            cs = (int(gr.cs[-1]) + np.cumsum(per_cell)).astype(np.int32)
            gr.cs = np.concatenate([gr.cs, cs])
            gr.cf = np.concatenate([gr.cf, cf])
        self._ncells += ncell
        self._g_ox[key], self._g_oy[key], self._g_inv[key] = ox, oy, inv
        self._g_nx[key], self._g_ny[key], self._g_off[key] = nx, ny, off
        self._g_built[key] = True
        self._gpy[key] = (float(ox), float(oy), float(inv), int(nx), int(ny), int(off))

    def _cells(self, x, y, fl, acc) -> np.ndarray:
        """Global grid cell of every ping (0: no fence can be reached)."""
        nf = self._floor_ids.size
        slot = np.searchsorted(self._floor_ids, fl)
        slot_c = np.minimum(slot, max(nf - 1, 0))
        on = (slot < nf) & (self._floor_ids[slot_c] == fl) & np.isfinite(x) & np.isfinite(y)
        key = slot_c * (_NCLS + 1) + np.searchsorted(_ACC, acc, side="left")
        for kk in np.flatnonzero(np.bincount(key[on], minlength=self._g_built.size)):
            if not self._g_built[kk]:
                self._build_grid(int(kk))
        fx = np.floor((x - self._g_ox[key]) * self._g_inv[key])
        fy = np.floor((y - self._g_oy[key]) * self._g_inv[key])
        nx = self._g_nx[key]
        on &= (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < self._g_ny[key])
        cell = np.zeros(x.size, dtype=np.int64)
        k_on = key[on]
        cell[on] = self._g_off[k_on] + fy[on].astype(np.int64) * nx[on] + fx[on].astype(np.int64)
        return cell

    # -- classification
    def classify_hits(self, x, y, floor, acc) -> Hits:
        """Classify a batch of pings; returns CSR :class:`Hits` (the fast path).

        Arguments as for :meth:`classify`.
        """
        x, y, fl, acc = _validate(x, y, floor, acc)
        n = x.size
        if n == 0 or not self._groups:
            return Hits(np.zeros(n + 1, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0, np.int8))
        if n == 1:
            return self._hits_one(float(x[0]), float(y[0]), int(fl[0]), float(acc[0]))
        cell = self._cells(x, y, fl, acc)
        parts = []
        for gr in self._groups:
            start = gr.cs[cell]
            cnt = gr.cs[cell + 1] - start
            tot = int(cnt.sum())
            if tot == 0:
                continue
            it = np.int32 if gr.cf.size < 2**31 and tot < 2**31 else np.int64
            pi = np.repeat(np.arange(n, dtype=np.int32), cnt)
            pos = np.repeat((start - (np.cumsum(cnt) - cnt)).astype(it), cnt)
            pos += np.arange(tot, dtype=it)
            r = gr.cf[pos]
            code = gr.codes(x[pi], y[pi], acc[pi], r)
            keep = np.flatnonzero(code)
            if keep.size == 0:
                continue
            if keep.size < code.size:
                pi, r, code = pi[keep], r[keep], code[keep]
            parts.append((pi, gr.gidx[r], code))
        return _merge(n, parts)

    def _cell1(self, x: float, y: float, fl: int, acc: float) -> int:
        """One ping's grid cell (0: off every grid: no floor, a non-finite position, or
        outside the floor's grid), its grid built on first use.  ``acc`` is clamped."""
        slot = self._slot.get(fl)
        if slot is None or not (math.isfinite(x) and math.isfinite(y)):
            return 0
        key = slot * (_NCLS + 1) + bisect_left(_ACC_L, acc)
        g = self._gpy.get(key)
        if g is None:
            self._build_grid(key)
            g = self._gpy[key]
        ox, oy, inv, nx, ny, off = g
        fx, fy = math.floor((x - ox) * inv), math.floor((y - oy) * inv)
        return off + fy * nx + fx if 0 <= fx < nx and 0 <= fy < ny else 0

    def _hits_one(self, x: float, y: float, fl: int, acc: float) -> Hits:
        """:meth:`classify_hits` for a batch of one, with as few numpy calls
        as possible (latency at low load).  ``acc`` is already clamped."""
        cell = self._cell1(x, y, fl, acc)
        fences, codes = [], []
        if cell:
            for gr in self._groups:
                s, e = gr.cs[cell], gr.cs[cell + 1]
                if s == e:
                    continue
                r = gr.cf[s:e]
                m = int(e - s)
                code = gr.codes(np.full(m, x), np.full(m, y), np.full(m, acc), r)
                keep = code != 0
                fences.append(gr.gidx[r[keep]])
                codes.append(code[keep])
        if not fences:
            return Hits(np.zeros(2, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0, np.int8))
        fence, code = np.concatenate(fences), np.concatenate(codes)
        return Hits(np.array([0, fence.size], dtype=np.int64), fence, code)

    def classify(self, x, y, floor, acc) -> list[Match]:
        """Classify a batch of pings; returns one :class:`Match` per ping.

        ``x``, ``y``, ``floor`` and ``acc`` are equal-length arrays (or
        sequences).  ``acc`` is the accuracy radius in metres; ``acc <= 0`` is
        a point, ``NaN``/``inf`` straddles every fence it reaches.  Only fences
        on the ping's floor are considered.  Batches of up to
        :attr:`small_batch` pings go through :meth:`classify_small` (same answers).
        """
        if len(x) <= self.small_batch:
            return self.classify_small(x, y, floor, acc)
        hits = self.classify_hits(x, y, floor, acc)
        return self._matches(hits)

    def classify_small(self, x, y, floor, acc) -> list[Match]:
        """:meth:`classify` per ping in plain Python, without numpy's fixed cost per
        call: faster below the crossover (:attr:`small_batch`), slower above it."""
        if x.__class__ is np.ndarray:
            x, y, floor, acc = (np.asarray(v).tolist() for v in (x, y, floor, acc))
        n = len(x)
        if not (len(y) == len(floor) == len(acc) == n):
            raise ValueError("x, y, floor and acc must have equal lengths")
        if not self._groups:
            return [EMPTY_MATCH] * n
        one = self._match1
        return [one(float(xi), float(yi), int(fi), float(ai)) for xi, yi, fi, ai in zip(x, y, floor, acc)]

    def classify_one(self, x: float, y: float, floor: int, acc: float) -> Match:
        """Classify a single ping (see :meth:`classify`)."""
        if not self._groups:
            return EMPTY_MATCH
        return self._match1(float(x), float(y), int(floor), float(acc))

    def _match1(self, x: float, y: float, fl: int, acc: float) -> Match:
        """One ping's :class:`Match`, in plain Python: the cell as :meth:`_hits_one`
        finds it, each candidate's code as its group's ``codes`` computes it."""
        acc = math.inf if acc != acc else (acc if acc > 0.0 else 0.0)  # _validate's clamp
        cell = self._cell1(x, y, fl, acc)
        if not cell:
            return EMPTY_MATCH
        cands = self._cellpy.get(cell)
        if cands is None:
            cands = self._cellpy[cell] = self._cell_candidates(cell)
        ins: list[str] = []
        strad: list[str] = []
        cin: list[str] = []
        aa = acc * acc
        for gr, items in cands:
            if gr is None:  # boxes: _box1 inlined (most fences of a store; no call per candidate)
                for x0, y0, x1, y1, fid in items:
                    mx, u = x - x0, x1 - x
                    mx = u if u < mx else mx
                    my, u = y - y0, y1 - y
                    my = u if u < my else my
                    d_in = my if my < mx else mx
                    if d_in > 0:
                        (strad if d_in < acc else ins).append(fid)
                        cin.append(fid)
                    else:
                        mx = mx if mx < 0.0 else 0.0
                        my = my if my < 0.0 else 0.0
                        if mx * mx + my * my < aa:
                            strad.append(fid)
                continue
            code1 = gr.code1
            for r, fid in items:
                c = code1(x, y, acc, r)
                if c:
                    (ins if c & INSIDE else strad).append(fid)
                    if c & CENTRE_IN:
                        cin.append(fid)
        if not ins and not strad:
            return EMPTY_MATCH
        return Match(ins, strad, cin)

    def _cell_candidates(self, cell: int) -> list[tuple]:
        """A cell's candidates per group: ``(None, [(x0, y0, x1, y1, fence id)])`` for boxes,
        ``(group, [(row, fence id)])`` for the others."""
        out: list[tuple] = []
        ids = self.ids
        for gr in self._groups:
            s, e = int(gr.cs[cell]), int(gr.cs[cell + 1])
            if s == e:
                continue
            rows = gr.cf[s:e]
            fids = [ids[k] for k in gr.gidx[rows].tolist()]
            if gr.kind == "box":
                env = zip(gr.ex0[rows].tolist(), gr.ey0[rows].tolist(), gr.ex1[rows].tolist(), gr.ey1[rows].tolist())
                out.append((None, [(*e4, fid) for e4, fid in zip(env, fids)]))
            else:
                out.append((gr, list(zip(rows.tolist(), fids))))
        return out

    def _matches(self, hits: Hits) -> list[Match]:
        """Lazy :class:`Match` values over ``hits`` (EMPTY_MATCH for pings
        that reach no fence)."""
        indptr = hits.indptr
        n = indptr.size - 1
        out = [EMPTY_MATCH] * n
        if hits.fence.size == 0:
            return out
        batch = _Batch(self._ids_arr, hits)
        new, set_v, set_b, set_r = Match.__new__, _set_v, _set_b, _set_r
        for r in np.flatnonzero(indptr[1:] != indptr[:-1]).tolist():
            m = new(Match)
            set_v(m, None)
            set_b(m, batch)
            set_r(m, r)
            out[r] = m
        return out


def _validate(x, y, floor, acc):
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    fl = np.asarray(floor).ravel()
    acc = np.asarray(acc, dtype=float).ravel()
    n = x.size
    if not (y.size == fl.size == acc.size == n):
        raise ValueError("x, y, floor and acc must have equal lengths")
    acc = np.where(np.isnan(acc), np.inf, np.maximum(acc, 0.0))
    return x, y, fl.astype(np.int64, copy=False), acc


def _merge(n: int, parts: list) -> Hits:
    """Merge per-group (ping, fence, code) lists, each in ping order, into CSR."""
    if not parts:
        return Hits(np.zeros(n + 1, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0, np.int8))
    if len(parts) == 1:
        pi, f, c = parts[0]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(pi, minlength=n), out=indptr[1:])
        return Hits(indptr, f, c)
    counts = [np.bincount(p[0], minlength=n) for p in parts]
    total = np.sum(counts, axis=0)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(total, out=indptr[1:])
    fence = np.empty(int(indptr[-1]), dtype=np.int32)
    code = np.empty(fence.size, dtype=np.int8)
    base = indptr[:-1].copy()
    for (pi, f, c), cn in zip(parts, counts):
        first = np.cumsum(cn) - cn
        pos = (base - first)[pi] + np.arange(pi.size)
        fence[pos] = f
        code[pos] = c
        base += cn
    return Hits(indptr, fence, code)
