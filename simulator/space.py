"""The walkable space of a store and shortest walks through it.

Walkable = the store outline (or, without one, the fences' hull) minus
obstacles, shrunk by a body's clearance so walks keep off walls and shelf
edges.  Obstacles are ``staff_only`` fences and the *shelving between aisles*:
on each floor, the convex hull of the ``aisle`` fences less the aisles
themselves (in a layout where aisles are the corridors, what lies between two
aisles is a shelf).  A short doorway joins the entrance to a point just
outside the outline, where shoppers appear and leave.

Walks are A* over an 8-connected grid graph (``grid_m``, 0.5 m by default)
whose edges stay inside the walkable space, then string-pulled (a corner of
the grid path is dropped when the straight line still stays walkable).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points, unary_union

__all__ = ["Space", "build_space"]

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


def _obstacles(cfg, floor: int):
    parts = [f.geometry for f in cfg.fences if f.floor == floor and f.kind == "staff_only"]
    aisles = [f.geometry for f in cfg.fences if f.floor == floor and f.kind == "aisle"]
    if len(aisles) >= 2:
        a = unary_union(aisles)
        shelves = a.convex_hull.difference(a)
        # slivers from touching edges are not shelves
        shelves = shelves.buffer(-1e-3, join_style="mitre").buffer(1e-3, join_style="mitre")
        if not shelves.is_empty:
            parts.append(shelves)
    return unary_union(parts) if parts else shapely.GeometryCollection()


def build_space(cfg, floor: int = 0, *, clearance: float = CLEARANCE_M, grid_m: float = GRID_M) -> Space:
    """The walkable :class:`Space` of ``floor`` of a loaded store config."""
    fences = [f for f in cfg.fences if f.floor == floor]
    outline = cfg.outline
    if outline is None or outline.is_empty:
        if not fences:
            raise ValueError(f"floor {floor} has no outline and no fences")
        outline = unary_union([f.geometry for f in fences]).convex_hull.buffer(1.0)
    obstacles = _obstacles(cfg, floor)
    walkable = outline.difference(obstacles).buffer(-clearance)
    if walkable.is_empty:
        raise ValueError("nothing is walkable: the outline is smaller than the clearance")

    # the door: the entrance fence (else the outline's lowest point) to just outside
    entrance = next((f for f in fences if f.kind == "entrance"), None)
    inside_pt = (entrance.geometry.representative_point() if entrance is not None
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
