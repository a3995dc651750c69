"""The simulator's view of the walkable space: the store config's shapes
handed to :mod:`geometry.space`, which the trackers share.

Obstacles are ``staff_only`` fences, features with ``kind: "obstacle"``
(shelves, walls, counters, when the layout draws them) and the *shelving
between aisles* (:func:`geometry.space.infer_shelves`).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from geometry.space import CLEARANCE_M, GRID_M, Space, obstacles_on
from geometry.space import build_space as _build_space

__all__ = ["Space", "build_space", "obstacle_shapes"]


def obstacle_shapes(cfg, floor: int) -> list:
    """The config's not-walkable shapes on ``floor`` (see the module docstring)."""
    extra = [g.geometry for g in getattr(cfg, "obstacles", ()) if getattr(g, "floor", 0) == floor]
    return obstacles_on(cfg.fences, floor, extra)


def build_space(cfg, floor: int = 0, *, clearance: float = CLEARANCE_M, grid_m: float = GRID_M) -> Space:
    """The walkable :class:`Space` of ``floor`` of a loaded store config."""
    fences = [f for f in cfg.fences if f.floor == floor]
    entrance = next((f for f in fences if f.kind == "entrance"), None)
    return _build_space(cfg.outline, obstacle_shapes(cfg, floor), fences=[f.geometry for f in fences],
                        entrance=entrance.geometry if entrance is not None else None,
                        floor=floor, clearance=clearance, grid_m=grid_m)
