"""Seeded synthetic shoppers: who arrives when, where they go, how they walk.

* Arrivals are a Poisson process over the first ``ARRIVAL_SHARE`` of the run
  (given the count, the arrival times of a Poisson process are uniform order
  statistics), so most shoppers have time to finish before ``duration``.
* Each shopper has a walking speed in 0.5–1.4 m/s and a shopping list of
  sections, aisles and displays (visited nearest first); at each stop they
  stand 5–60 s — at a display within ``DISPLAY_REACH_M`` of its centre,
  elsewhere at a random walkable spot inside the fence.  Then they queue at a
  checkout (20–90 s) and leave through the entrance to a point outside the
  store.
* Walks follow :class:`simulator.space.Space` (never through staff-only
  areas or shelving).

Everything is drawn from one ``numpy.random.Generator`` seeded from the run
seed, so the same seed gives the same shoppers.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .space import Space

__all__ = ["Shopper", "Stop", "make_shoppers", "SPEED_RANGE", "DWELL_RANGE"]

ARRIVAL_SHARE = 0.6
SPEED_RANGE = (0.5, 1.4)
DWELL_RANGE = (5.0, 60.0)
CHECKOUT_RANGE = (20.0, 90.0)
DISPLAY_REACH_M = 0.5
STOP_KINDS = ("section", "aisle", "display")


@dataclass(frozen=True, slots=True)
class Stop:
    zone: str
    x: float
    y: float
    arrive: float
    leave: float


@dataclass
class Shopper:
    """One shopper's whole visit as a time-stamped polyline (pauses are two
    points at the same place)."""

    index: int
    arrive: float
    speed: float
    stops: list[Stop]
    t: np.ndarray = field(repr=False)  # waypoint times (non-decreasing)
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    floor: int = 0

    @property
    def leave(self) -> float:
        return float(self.t[-1])

    def position(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True positions at times ``ts`` (clamped to the visit)."""
        return np.interp(ts, self.t, self.x), np.interp(ts, self.t, self.y)


class _Walk:
    def __init__(self, start: tuple[float, float], t0: float, speed: float):
        self.t = [t0]
        self.pts = [start]
        self.speed = speed

    @property
    def now(self) -> float:
        return self.t[-1]

    @property
    def here(self) -> tuple[float, float]:
        return self.pts[-1]

    def walk(self, poly: list[tuple[float, float]]) -> None:
        for p in poly[1:]:
            d = math.dist(self.here, p)
            if d <= 1e-9:
                continue
            self.t.append(self.now + d / self.speed)
            self.pts.append(p)

    def wait(self, seconds: float) -> None:
        self.t.append(self.now + seconds)
        self.pts.append(self.here)


def _stop_point(space: Space, fence, rng) -> tuple[float, float] | None:
    if fence.kind == "display" and fence.circle is not None:
        cx, cy, _ = fence.circle
        for _ in range(50):
            r = DISPLAY_REACH_M * math.sqrt(float(rng.uniform()))
            a = float(rng.uniform(0, 2 * math.pi))
            p = (cx + r * math.cos(a), cy + r * math.sin(a))
            if space.walkable.contains(_pt(p)):
                return p
        return None
    return space.random_point_in(fence.geometry, rng)


def _pt(p):
    from shapely.geometry import Point

    return Point(p)


def make_shoppers(cfg, space: Space, *, n: int, duration: float, seed: int) -> list[Shopper]:
    """``n`` shoppers for a run of ``duration`` simulated seconds."""
    rng = np.random.default_rng([seed, 0x5110])
    fences = [f for f in cfg.fences if f.floor == space.floor]
    targets = [f for f in fences if f.kind in STOP_KINDS]
    checkouts = [f for f in fences if f.kind == "checkout"]
    arrivals = np.sort(rng.uniform(0.0, ARRIVAL_SHARE * duration, size=n))
    out = []
    for i, t0 in enumerate(arrivals.tolist()):
        speed = float(rng.uniform(*SPEED_RANGE))
        k = int(rng.integers(2, min(6, len(targets)) + 1)) if targets else 0
        chosen = [targets[j] for j in rng.choice(len(targets), size=k, replace=False)] if k else []
        # the shopping list, nearest first from the door
        points = []
        for f in chosen:
            p = _stop_point(space, f, rng)
            if p is not None:
                points.append((f, p))
        route = []
        here = space.door_inside
        while points:
            j = min(range(len(points)), key=lambda q: math.dist(here, points[q][1]))
            route.append(points.pop(j))
            here = route[-1][1]
        w = _Walk(space.door_outside, t0, speed)
        w.walk(space.path(w.here, space.door_inside))
        stops = []
        for f, p in route:
            w.walk(space.path(w.here, p))
            arrive = w.now
            w.wait(float(rng.uniform(*DWELL_RANGE)))
            stops.append(Stop(f.id, p[0], p[1], arrive, w.now))
        if checkouts:
            co = checkouts[int(rng.integers(len(checkouts)))]
            p = space.random_point_in(co.geometry, rng)
            if p is not None:
                w.walk(space.path(w.here, p))
                arrive = w.now
                w.wait(float(rng.uniform(*CHECKOUT_RANGE)))
                stops.append(Stop(co.id, p[0], p[1], arrive, w.now))
        w.walk(space.path(w.here, space.door_inside))
        w.walk([w.here, space.door_outside])
        w.wait(3.0)  # a few pings outside, so the entrance is left on a ping
        pts = np.array(w.pts)
        out.append(Shopper(index=i, arrive=t0, speed=speed, stops=stops, t=np.array(w.t),
                           x=pts[:, 0], y=pts[:, 1], floor=space.floor))
    return out
