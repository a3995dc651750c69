"""Where a point lies in a store: both frames (local metres and WGS84) and the
fences it is in, innermost first.  Pure (``edge-agent where``)."""

from __future__ import annotations

import shapely

from .model import StoreConfig

__all__ = ["where", "describe"]


def where(cfg: StoreConfig, *, x: float | None = None, y: float | None = None, lat: float | None = None,
          lon: float | None = None, floor: int = 0) -> dict:
    """``{"x", "y", "lat", "lon", "floor", "zones": [{"id", "name", "kind"}]}``:
    give ``x``/``y`` (local metres) or ``lat``/``lon``; zones innermost
    (smallest) first, obstacles aside."""
    from geometry.frames import LocalFrame

    frame = LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing)
    if x is not None and y is not None:
        lon_, lat_ = frame.to_wgs84(x, y)
        lat, lon = float(lat_), float(lon_)
    elif lat is not None and lon is not None:
        x_, y_ = frame.to_local(lon, lat)
        x, y = float(x_), float(y_)
    else:
        raise ValueError("give x and y (local metres) or lat and lon")
    pt = shapely.Point(x, y)
    inside = [f for f in cfg.fences if f.floor == floor and f.kind != "obstacle" and f.geometry.covers(pt)]
    inside.sort(key=lambda f: (f.geometry.area, f.id))
    return {"x": round(float(x), 2), "y": round(float(y), 2), "lat": round(lat, 8), "lon": round(lon, 8),
            "floor": floor, "zones": [{"id": f.id, "name": f.name or f.id, "kind": f.kind} for f in inside]}


def describe(w: dict) -> str:
    """Three lines for a terminal."""
    zones = ", ".join(f"{z['id']} ({z['kind']})" for z in w["zones"]) or "none (outside every fence)"
    return (f"local:  x {w['x']:g}, y {w['y']:g}, floor {w['floor']}\n"
            f"wgs84:  lat {w['lat']:.8f}, lon {w['lon']:.8f}\n"
            f"zones:  {zones}")
