"""Positions from raw BLE beacon sightings (iBeacon / Eddystone).

A log-distance path-loss model turns each RSSI into a distance; the position
is a weighted centroid (weights ``1/d**2``) of the strongest known beacons,
refined by weighted least squares on the ranges when three or more beacons
were read (the centroid alone leans towards the nearest beacon).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

__all__ = ["rssi_to_distance", "locate", "locate_detail"]


def rssi_to_distance(rssi: float, tx_power: float, n: float = 2.0) -> float:
    """Log-distance model: ``d = 10 ** ((tx_power - rssi) / (10 n))`` metres.

    ``tx_power`` is the calibrated RSSI at 1 m; ``n`` the path-loss exponent.
    """
    return 10.0 ** ((tx_power - rssi) / (10.0 * n))


def locate_detail(
    readings: Iterable[tuple[str, float]],
    beacons: Mapping[str, Any],
    *,
    n: float = 2.0,
    strongest: int = 4,
    min_acc: float = 1.5,
) -> tuple[tuple[float, float, int, float] | None, int]:
    """Like :func:`locate`, also returning how many readings named unknown
    beacons: ``(result or None, unknown_count)``.

    Beacon ids are matched lower-cased.  Readings with a non-finite RSSI are
    ignored (not counted as unknown).  A beacon read several times keeps its
    strongest reading.
    """
    best: dict[str, float] = {}
    unknown = 0
    for bid, rssi in readings:
        key = str(bid).lower()
        if key not in beacons:
            unknown += 1
            continue
        try:
            r = float(rssi)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(r):
            continue
        if key not in best or r > best[key]:
            best[key] = r
    if not best:
        return None, unknown
    chosen = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[: max(1, int(strongest))]
    pts = []
    for bid, rssi in chosen:
        b = beacons[bid]
        d = max(rssi_to_distance(rssi, float(b.tx_power), n), 1e-3)
        pts.append((float(b.x), float(b.y), d, b))
    floor = int(pts[0][3].floor)
    if len(pts) == 1:
        x, y, d, _ = pts[0]
        return (x, y, floor, max(d, min_acc)), unknown
    wsum = sx = sy = 0.0
    for x, y, d, _ in pts:
        w = 1.0 / (d * d)
        wsum += w
        sx += w * x
        sy += w * y
    cx, cy = sx / wsum, sy / wsum
    if len(pts) >= 3:
        cx, cy = _refine(pts, cx, cy)
    # accuracy: weighted RMS of the mismatch between the estimate's distance
    # to each beacon and that beacon's estimated range
    acc = math.sqrt(_cost(pts, cx, cy) / wsum)
    return (cx, cy, floor, max(acc, min_acc)), unknown


def _cost(pts, px: float, py: float) -> float:
    return sum((math.hypot(px - x, py - y) - d) ** 2 / (d * d) for x, y, d, _ in pts)


def _refine(pts, cx: float, cy: float, iterations: int = 12) -> tuple[float, float]:
    """Weighted least-squares multilateration (Gauss-Newton, weights ``1/d**2``)
    started from the weighted centroid, which is biased towards the nearest
    beacon.  A step is kept only when it lowers the weighted range mismatch and
    stays within the beacons' bounding box grown by the longest range, so
    inconsistent (noisy) ranges fall back to the centroid instead of diverging."""
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    reach = max(p[2] for p in pts)
    lo_x, hi_x, lo_y, hi_y = min(xs) - reach, max(xs) + reach, min(ys) - reach, max(ys) + reach
    px, py = cx, cy
    cost = _cost(pts, px, py)
    for _ in range(iterations):
        a11 = a12 = a22 = g1 = g2 = 0.0
        for x, y, d, _ in pts:
            r = math.hypot(px - x, py - y)
            if r < 1e-9:
                continue
            ux, uy = (px - x) / r, (py - y) / r
            w = 1.0 / (d * d)
            res = r - d
            a11 += w * ux * ux
            a12 += w * ux * uy
            a22 += w * uy * uy
            g1 += w * ux * res
            g2 += w * uy * res
        det = a11 * a22 - a12 * a12
        if det <= 1e-12 * max(a11 * a22, 1e-300):
            break  # (nearly) collinear beacons: no unique fix
        dx = -(a22 * g1 - a12 * g2) / det
        dy = -(a11 * g2 - a12 * g1) / det
        nx, ny = px + dx, py + dy
        if not (lo_x <= nx <= hi_x and lo_y <= ny <= hi_y):
            break
        new = _cost(pts, nx, ny)
        if new >= cost:
            break
        px, py, cost = nx, ny, new
        if math.hypot(dx, dy) < 1e-4:
            break
    return px, py


def locate(
    readings: Iterable[tuple[str, float]],
    beacons: Mapping[str, Any],
    *,
    n: float = 2.0,
    strongest: int = 4,
    min_acc: float = 1.5,
) -> tuple[float, float, int, float] | None:
    """Estimate ``(x, y, floor, acc)`` from ``(beacon_id, rssi)`` readings.

    ``beacons`` maps lower-case ``"uuid:major:minor"`` to objects with ``.x``,
    ``.y``, ``.floor`` and ``.tx_power``; unknown beacons are ignored.  Uses
    the ``strongest`` strongest known readings, weights ``1/d**2``; the floor
    is the strongest beacon's.  ``acc`` (metres) is never below ``min_acc``;
    with one beacon it is that beacon's estimated distance.  ``None`` when no
    known beacon was read.
    """
    return locate_detail(readings, beacons, n=n, strongest=strongest, min_acc=min_acc)[0]
