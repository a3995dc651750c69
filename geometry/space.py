"""The walkable space of one store floor, and shortest walks through it.

Built from plain shapes the caller hands it (``geometry`` imports nothing of
the project): the store ``outline`` (or, without one, the hull of the
``fences``), the ``obstacles`` (shelves, walls, counters, staff-only areas:
whatever no shopper stands in) and the ``entrance``.

Walkable = outline minus obstacles, shrunk by a body's clearance so walks
keep off walls and shelf edges.  :func:`infer_shelves` derives the shelving
between aisles for layouts that do not draw it (in a layout where aisles are
the corridors, what lies between two aisles is a shelf).  A short doorway
joins the entrance to a point just outside the outline, where shoppers
appear and leave.

Walks are A* over an 8-connected grid graph (``grid_m``, 0.5 m by default)
whose edges stay inside the walkable space, then string-pulled (a corner of
the grid path is dropped when the straight line still stays walkable).

For trackers, :func:`evidence_shapes` grows each fence over the obstacles
next to it (each obstacle point goes to the nearest fence, within
``reach``): a shopper cannot stand on a shelf, so a position estimate whose
uncertainty spills onto the shelf beside an aisle is still evidence for
that aisle and not for the one behind the shelf.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points, unary_union

__all__ = ["CLEARANCE_M", "GRID_M", "Space", "build_space", "evidence_shapes", "infer_shelves"]

CLEARANCE_M = 0.35
GRID_M = 0.5
_SQRT2 = math.sqrt(2.0)


@dataclass
class Space:
    """Walkable space of one floor with its grid graph."""

    floor: int
    walkable: object  # shapely (Multi)Polygon
    obstacles: object  # shapely geometry (may be empty)
    door_outside: tuple[float, float]
    door_inside: tuple[float, float]
    grid_m: float
    xs: np.ndarray = field(repr=False)
    ys: np.ndarray = field(repr=False)
    ok: np.ndarray = field(repr=False)  # (ny, nx) node is walkable
    edges: dict = field(repr=False)  # (j, i) -> list of ((j2, i2), cost)

    def nearest_node(self, x: float, y: float) -> tuple[int, int]:
        """The walkable grid node nearest to (x, y)."""
        jj, ii = np.nonzero(self.ok)
        d = (self.xs[ii] - x) ** 2 + (self.ys[jj] - y) ** 2
        k = int(np.argmin(d))
        return int(jj[k]), int(ii[k])

    def is_walkable(self, x, y) -> np.ndarray:
        """Vectorised: which points ``(x, y)`` (arrays) lie in the walkable space."""
        return shapely.contains_xy(self.walkable, np.asarray(x, float), np.asarray(y, float))

    def covers_line(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        if a == b:
            return bool(shapely.covers(self.walkable, Point(a)))
        return bool(shapely.covers(self.walkable, LineString([a, b])))

    def path(self, a: tuple[float, float], b: tuple[float, float]) -> list[tuple[float, float]]:
        """A walkable polyline from ``a`` to ``b`` (both included)."""
        if self.covers_line(a, b):
            return [a, b]
        s = self.nearest_node(*a)
        g = self.nearest_node(*b)
        nodes = self._astar(s, g)
        pts = [a] + [(float(self.xs[i]), float(self.ys[j])) for j, i in nodes] + [b]
        return self._pull(pts)

    def _astar(self, s: tuple[int, int], g: tuple[int, int]) -> list[tuple[int, int]]:
        gx, gy = self.xs[g[1]], self.ys[g[0]]

        def h(n):
            return math.hypot(self.xs[n[1]] - gx, self.ys[n[0]] - gy)

        best = {s: 0.0}
        prev: dict = {}
        heap = [(h(s), 0.0, s)]
        while heap:
            _, cost, n = heapq.heappop(heap)
            if n == g:
                break
            if cost > best.get(n, math.inf):
                continue
            for m, c in self.edges.get(n, ()):
                nc = cost + c
                if nc < best.get(m, math.inf):
                    best[m] = nc
                    prev[m] = n
                    heapq.heappush(heap, (nc + h(m), nc, m))
        if g not in best:
            raise ValueError("no walkable path between the two points (is a section walled off?)")
        out = [g]
        while out[-1] != s:
            out.append(prev[out[-1]])
        return out[::-1]

    def _pull(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """String pulling: from each kept point jump to the farthest point in sight."""
        out = [pts[0]]
        i = 0
        while i < len(pts) - 1:
            j = len(pts) - 1
            while j > i + 1 and not self.covers_line(pts[i], pts[j]):
                j -= 1
            out.append(pts[j])
            i = j
        return out

    def random_point_in(self, geom, rng, *, margin: float = 0.5, tries: int = 200) -> tuple[float, float] | None:
        """A uniformly random walkable point of ``geom`` at least ``margin`` inside it."""
        area = shapely.intersection(geom.buffer(-margin), self.walkable)
        if area.is_empty:
            area = shapely.intersection(geom, self.walkable)
            if area.is_empty:
                return None
        x0, y0, x1, y1 = area.bounds
        shapely.prepare(area)
        for _ in range(tries):
            x, y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
            if shapely.contains_xy(area, x, y):
                return (x, y)
        p = area.representative_point()
        return (p.x, p.y)


def infer_shelves(aisles: Iterable[object]):
    """The shelving between aisles: the convex hull of the aisle polygons
    less the aisles themselves (empty with fewer than two aisles)."""
    aisles = list(aisles)
    if len(aisles) < 2:
        return shapely.GeometryCollection()
    a = unary_union(aisles)
    shelves = a.convex_hull.difference(a)
    # slivers from touching edges are not shelves
    return shelves.buffer(-1e-3, join_style="mitre").buffer(1e-3, join_style="mitre")


def obstacles_on(fences: Iterable[object], floor: int, extra: Iterable[object] = ()) -> list:
    """The not-walkable shapes of ``floor``: fences (objects with ``kind``,
    ``floor``, ``geometry``) of kind ``staff_only`` or ``obstacle``, the
    ``extra`` shapes, and the shelving inferred between the floor's aisles."""
    on = [f for f in fences if f.floor == floor]
    parts = [f.geometry for f in on if f.kind in ("staff_only", "obstacle")] + list(extra)
    shelves = infer_shelves([f.geometry for f in on if f.kind == "aisle"])
    if not shelves.is_empty:
        parts.append(shelves)
    return parts


def _union(parts: Iterable[object]):
    parts = [p for p in parts if p is not None and not p.is_empty]
    return unary_union(parts) if parts else shapely.GeometryCollection()


def build_space(
    outline,
    obstacles: Iterable[object] = (),
    *,
    fences: Sequence[object] = (),
    entrance=None,
    floor: int = 0,
    clearance: float = CLEARANCE_M,
    grid_m: float = GRID_M,
) -> Space:
    """The walkable :class:`Space` of one floor.

    ``outline``: the store's (Multi)Polygon, or ``None`` (then the convex hull
    of ``fences`` grown by 1 m).  ``obstacles``: geometries no shopper stands
    in (shelves, walls, staff-only areas; see :func:`infer_shelves`).
    ``entrance``: the entrance fence's geometry (the door is drawn from it to
    just outside the outline), or ``None`` (the outline's lower-left corner).
    """
    if outline is None or outline.is_empty:
        if not fences:
            raise ValueError(f"floor {floor} has no outline and no fences")
        outline = unary_union(list(fences)).convex_hull.buffer(1.0)
    obstacles = _union(obstacles)
    walkable = outline.difference(obstacles).buffer(-clearance)
    if walkable.is_empty:
        raise ValueError("nothing is walkable: the outline is smaller than the clearance")

    # the door: the entrance (else the outline's lowest corner) to just outside
    inside_pt = (entrance.representative_point() if entrance is not None
                 else Point(outline.bounds[0] + 1.0, outline.bounds[1] + 1.0))
    edge_pt = nearest_points(outline.exterior if hasattr(outline, "exterior") else outline.boundary, inside_pt)[0]
    dx, dy = edge_pt.x - inside_pt.x, edge_pt.y - inside_pt.y
    d = math.hypot(dx, dy) or 1.0
    outside = (edge_pt.x + 1.5 * dx / d, edge_pt.y + 1.5 * dy / d)
    door = LineString([outside, (inside_pt.x, inside_pt.y)]).buffer(0.6)
    walkable = unary_union([walkable, door])
    # keep the piece that holds the door (islands are unreachable)
    if walkable.geom_type == "MultiPolygon":
        walkable = max(walkable.geoms, key=lambda g: (g.intersects(door), g.area))
    shapely.prepare(walkable)

    x0, y0, x1, y1 = walkable.bounds
    xs = np.arange(math.floor(x0 / grid_m) * grid_m, x1 + grid_m, grid_m)
    ys = np.arange(math.floor(y0 / grid_m) * grid_m, y1 + grid_m, grid_m)
    gx, gy = np.meshgrid(xs, ys)
    ok = shapely.contains_xy(walkable, gx, gy)
    edges: dict = {}
    jj, ii = np.nonzero(ok)
    ny, nx = ok.shape
    cand_a, cand_b, costs = [], [], []
    for dj, di, c in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, _SQRT2), (1, -1, _SQRT2)):
        j2, i2 = jj + dj, ii + di
        valid = (j2 >= 0) & (j2 < ny) & (i2 >= 0) & (i2 < nx)
        valid[valid] &= ok[j2[valid], i2[valid]]
        for a, b in zip(zip(jj[valid].tolist(), ii[valid].tolist()), zip(j2[valid].tolist(), i2[valid].tolist())):
            cand_a.append(a)
            cand_b.append(b)
            costs.append(c * grid_m)
    if cand_a:
        lines = shapely.linestrings(
            np.stack([np.array([[xs[a[1]], ys[a[0]]] for a in cand_a]),
                      np.array([[xs[b[1]], ys[b[0]]] for b in cand_b])], axis=1))
        inside = shapely.covers(walkable, lines)
        for a, b, c, keep in zip(cand_a, cand_b, costs, inside.tolist()):
            if keep:
                edges.setdefault(a, []).append((b, c))
                edges.setdefault(b, []).append((a, c))
    return Space(floor=floor, walkable=walkable, obstacles=obstacles, door_outside=outside,
                 door_inside=(inside_pt.x, inside_pt.y), grid_m=grid_m, xs=xs, ys=ys, ok=ok, edges=edges)


def _areas(geom):
    """The polygons of ``geom`` (a snap-rounded overlay refuses mixed dimensions)."""
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def evidence_shapes(fences: Sequence[object], obstacles, *, reach: float = 1.5, step: float = 0.25) -> list:
    """Each fence grown over the obstacles beside it, for judging a position
    *estimate* (not a raw fix) against fences.

    Every point of ``obstacles`` within ``reach`` metres of a fence goes to
    the nearest such fence (a generalised Voronoi split, from the fences'
    boundaries sampled every ``step`` metres), so the shelf between two
    aisles is split down its middle.  Where a shopper cannot stand, the
    probability mass of an estimate belongs to the walkable place next to
    it: an estimate disc that lies within ``aisle ∪ its half of each shelf``
    says "in this aisle" as surely as a disc within the aisle would, once
    the shelf is known to be empty.  Returns one geometry per fence, in
    order (the fence itself when no obstacle is near); seams are straight
    to within 2 cm.
    """
    fences = list(fences)
    obstacles = obstacles if obstacles is not None else shapely.GeometryCollection()
    if not fences or obstacles.is_empty:
        return fences
    geoms = np.array(fences, dtype=object)
    near = shapely.intersects(shapely.buffer(geoms, reach), obstacles)
    if not near.any():
        return fences
    # boundary samples of the fences near an obstacle (and their neighbours within 2 reach)
    zone = shapely.buffer(obstacles, reach)
    cand = np.flatnonzero(shapely.intersects(geoms, shapely.buffer(zone, reach)))
    pts, owner = [], []
    for k in cand.tolist():
        b = shapely.segmentize(shapely.boundary(geoms[k]), step)
        xy = shapely.get_coordinates(b)
        pts.append(xy)
        owner.append(np.full(len(xy), k))
    xy = np.concatenate(pts)
    owner = np.concatenate(owner)
    xy, uniq = np.unique(np.round(xy, 6), axis=0, return_index=True)
    owner = owner[uniq]
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(xy), extend_to=zone, ordered=True))
    out = list(fences)
    for k in np.flatnonzero(near).tolist():
        mine = cells[owner == k]
        if not mine.size:
            continue
        patch = shapely.intersection(obstacles, shapely.buffer(geoms[k], reach))
        try:
            grab = shapely.union_all(shapely.intersection(mine, patch), grid_size=1e-6)
        except shapely.errors.GEOSException:
            # the floating overlay can fail on the cells' near-degenerate edges ("side location
            # conflict", about 1 random store in 40): made valid, snap-rounded, the patch's areas only
            cells_k = [_areas(c) for c in shapely.make_valid(mine)]
            grab = shapely.union_all(shapely.intersection(cells_k, _areas(shapely.make_valid(patch)), grid_size=1e-6),
                                     grid_size=1e-6)
        grown = shapely.union(geoms[k], grab)
        # keep polygons only (drop stray lines/points of touching edges)
        polys = [g for g in shapely.get_parts(grown) if g.geom_type in ("Polygon", "MultiPolygon") and g.area > 1e-9]
        grown = shapely.union_all(polys) if len(polys) != 1 else polys[0]
        # the Voronoi seams are chains of sample points: straighten them (2 cm), so an
        # aisle and its half shelves come out as the rectangle they are (the fast box test)
        out[k] = shapely.simplify(grown, 0.02)
    return out
