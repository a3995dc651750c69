"""WGS84 <-> store local frame.

The local frame is metres, origin at the store anchor, ``x`` to the right and
``y`` up on the floor plan.  The conversion is a pyproj azimuthal equidistant
projection centred on the anchor followed by a rotation by the plan bearing.
"""

from __future__ import annotations

import math

import numpy as np
from pyproj import CRS, Transformer

__all__ = ["LocalFrame"]


class LocalFrame:
    """The local frame of one store anchor.

    ``bearing`` is the direction of the plan's +y axis in degrees clockwise
    from true north.  With (e, n) the projected east/north metres and ``b`` the
    bearing in radians::

        x = e*cos b - n*sin b
        y = e*sin b + n*cos b

    Both directions accept floats or numpy arrays and return the same kind.
    """

    __slots__ = ("lat", "lon", "bearing", "_cos", "_sin", "_fwd", "_inv")

    def __init__(self, lat: float, lon: float, bearing: float = 0.0):
        self.lat = float(lat)
        self.lon = float(lon)
        self.bearing = float(bearing)
        b = math.radians(self.bearing)
        self._cos = math.cos(b)
        self._sin = math.sin(b)
        aeqd = CRS.from_proj4(
            f"+proj=aeqd +lat_0={self.lat!r} +lon_0={self.lon!r} +datum=WGS84 +units=m +no_defs"
        )
        self._fwd = Transformer.from_crs("EPSG:4326", aeqd, always_xy=True)
        self._inv = Transformer.from_crs(aeqd, "EPSG:4326", always_xy=True)

    def __repr__(self) -> str:
        return f"LocalFrame(lat={self.lat!r}, lon={self.lon!r}, bearing={self.bearing!r})"

    def to_local(self, lon, lat):
        """WGS84 ``(lon, lat)`` in degrees -> local ``(x, y)`` in metres."""
        e, n = self._fwd.transform(lon, lat)
        c, s = self._cos, self._sin
        return _like(e * c - n * s, lon), _like(e * s + n * c, lon)

    def to_wgs84(self, x, y):
        """Local ``(x, y)`` in metres -> WGS84 ``(lon, lat)`` in degrees."""
        xa = np.asarray(x, dtype=float)
        ya = np.asarray(y, dtype=float)
        c, s = self._cos, self._sin
        e = xa * c + ya * s
        n = -xa * s + ya * c
        lon, lat = self._inv.transform(e, n)
        return _like(lon, x), _like(lat, x)


def _like(value, template):
    """Return a Python float when the caller passed scalars, else an ndarray."""
    if np.ndim(template) == 0:
        return float(value)
    return np.asarray(value, dtype=float)
