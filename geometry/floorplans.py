"""Vendor floor plans → the store's local frame.

Wi-Fi location engines (Cisco Meraki, Aruba ALE) report positions as ``x``/``y``
on *their* floor plan: metres, feet or image pixels, from the plan's own origin
(often the image's top-left corner, with ``y`` growing downwards), rotated
however the plan was drawn.  A :class:`PlanTransform` maps such a point onto the
store's local frame (metres, origin at the anchor, ``x`` right, ``y`` up)::

    m_u = u * k                      # k = metres per plan unit
    m_v = (-v if flip_y else v) * k
    x = origin_x + m_u*cos θ - m_v*sin θ
    y = origin_y + m_u*sin θ + m_v*cos θ

``θ`` (``rotation``) is the angle in degrees, counter-clockwise, from the local
``+x`` axis to the plan's ``+x`` axis; ``origin`` is the local point of the
plan's origin.  Pure: plain numbers in, plain numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["UNITS", "FEET_M", "metres_per_unit", "PlanTransform"]

FEET_M = 0.3048
# Accepted spellings of the three units (both vendors and both Englishes).
UNITS = {
    "metres": "metres", "meters": "metres", "metre": "metres", "meter": "metres", "m": "metres",
    "feet": "feet", "foot": "feet", "ft": "feet",
    "pixels": "pixels", "pixel": "pixels", "px": "pixels",
}


def metres_per_unit(units: str, scale: float | None = None) -> float:
    """Metres in one plan unit; ``scale`` is pixels per metre (pixels only).

    Raises ``ValueError`` for an unknown unit or a pixel plan without a
    positive ``scale``.
    """
    u = UNITS.get(str(units).strip().lower())
    if u is None:
        raise ValueError(f"unknown unit {units!r} (use metres, feet or pixels)")
    if u == "metres":
        return 1.0
    if u == "feet":
        return FEET_M
    if scale is None or not math.isfinite(scale) or scale <= 0:
        raise ValueError("a pixel floor plan needs 'scale' (pixels per metre) > 0")
    return 1.0 / float(scale)


@dataclass(frozen=True, slots=True)
class PlanTransform:
    """Plan coordinates (in ``units``) → local metres; see the module doc."""

    units: str = "metres"
    scale: float | None = None  # pixels per metre, for pixel plans
    origin: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0  # degrees, counter-clockwise from local +x to plan +x
    flip_y: bool = False

    def factor(self, units: str | None = None) -> float:
        """Metres per unit, for ``units`` (default: the plan's own units)."""
        return metres_per_unit(units or self.units, self.scale)

    def to_local(self, u: float, v: float, units: str | None = None) -> tuple[float, float]:
        """Map one plan point to local ``(x, y)`` metres.  ``units`` overrides
        the plan's units (a feed that states its unit per record)."""
        k = self.factor(units)
        mu = u * k
        mv = (-v if self.flip_y else v) * k
        t = math.radians(self.rotation)
        c, s = math.cos(t), math.sin(t)
        return self.origin[0] + mu * c - mv * s, self.origin[1] + mu * s + mv * c

    def to_plan(self, x: float, y: float, units: str | None = None) -> tuple[float, float]:
        """The inverse of :meth:`to_local` (for tests and tools)."""
        k = self.factor(units)
        dx, dy = x - self.origin[0], y - self.origin[1]
        t = math.radians(self.rotation)
        c, s = math.cos(t), math.sin(t)
        mu = dx * c + dy * s
        mv = -dx * s + dy * c
        return mu / k, (-mv if self.flip_y else mv) / k

    def distance(self, d: float, units: str | None = None) -> float:
        """A length on the plan (an error radius) in metres."""
        return abs(d) * self.factor(units)
