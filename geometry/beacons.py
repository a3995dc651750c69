"""Positions from raw BLE beacon sightings (iBeacon / Eddystone).

The model: a beacon's RSSI at distance ``d`` is ``tx_power - 10 n log10(d)``
plus log-normal shadowing, i.e. Gaussian noise of ``rssi_sigma_db`` dB.
With three or more beacons (on the strongest one's floor) the position is
the *maximum-likelihood* point under that model: a coarse search over a 1 m
grid around the strongest beacon (out to 1.5 times its range), then Gauss-Newton on the RSSI residuals.  The
residuals are in dB, where the noise really is Gaussian and the same for a
near and a far beacon (a least-squares fit of ranges started from a
weighted centroid, as before, converged to the nearest local minimum — at
the edge of a grid the mirror image of the truth across the last row of
beacons, up to 3 m off — and leaned towards the side with more beacons).

``acc`` is a 2σ radius from the Fisher information of the fit:
``σ² = rssi_sigma_db² · tr((JᵀJ)⁻¹) / 2`` per axis, ``J`` the derivative of
the modelled RSSIs with respect to the position.  It is small where several
beacons are near and on different sides (an aisle between two shelves that
carry beacons) and large where the nearest beacons are far or all on one
side (a section along a wall on a sparse grid) — what the fused tracker
needs to weigh a fix as it deserves.  Never below ``min_acc``.  One beacon
gives a proximity: its position, with its range as ``acc``; two, the
``1/d²``-weighted centroid with the weighted RMS range mismatch as ``acc``
(the pipeline never fuses either: their error does not average out).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["rssi_to_distance", "locate", "locate_detail"]

GRID_STEP_M = 1.0  # the coarse search's grid before Gauss-Newton refines


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
    strongest: int = 8,
    min_acc: float = 1.5,
    rssi_sigma_db: float = 4.0,
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
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    floor = int(beacons[ranked[0][0]].floor)
    chosen = [kv for kv in ranked if int(beacons[kv[0]].floor) == floor][: max(1, int(strongest))]
    pts = []
    for bid, rssi in chosen:
        b = beacons[bid]
        d = max(rssi_to_distance(rssi, float(b.tx_power), n), 1e-3)
        pts.append((float(b.x), float(b.y), d, float(b.tx_power), rssi))
    if len(pts) == 1:
        x, y, d = pts[0][:3]
        return (x, y, floor, max(d, min_acc)), unknown
    if len(pts) == 2:
        cx, cy = _centroid(pts)
        mismatch = sum((math.hypot(cx - x, cy - y) - d) ** 2 / (d * d) for x, y, d, _, _ in pts)
        acc = math.sqrt(mismatch / sum(1.0 / (d * d) for _, _, d, _, _ in pts))
        return (cx, cy, floor, max(acc, min_acc)), unknown
    x, y, acc = _ml(pts, n, rssi_sigma_db)
    return (x, y, floor, max(acc, min_acc)), unknown


def _centroid(pts) -> tuple[float, float]:
    wsum = sx = sy = 0.0
    for x, y, d, _, _ in pts:
        w = 1.0 / (d * d)
        wsum += w
        sx += w * x
        sy += w * y
    return sx / wsum, sy / wsum


def _ml(pts, n: float, sigma_db: float) -> tuple[float, float, float]:
    """Maximum-likelihood position under log-normal shadowing (see the module
    docstring) and its 2σ accuracy from the Fisher information."""
    a = 10.0 * n / math.log(10.0)  # dB per neper of distance
    h = 0.5 * a
    # coarse search (vectorised): a grid around the strongest beacon, out to 1.5x its range + 1 m
    b0x, b0y, d0 = pts[0][0], pts[0][1], pts[0][2]
    half = math.ceil(min(1.5 * d0 + 1.0, 30.0) / GRID_STEP_M) * GRID_STEP_M
    ax = np.arange(-half, half + 1e-9, GRID_STEP_M)
    gx = (b0x + ax)[None, :, None]
    gy = (b0y + ax)[:, None, None]
    arr = np.array([p[:2] + p[3:] for p in pts])  # x, y, tx, rssi
    r2 = np.maximum((gx - arr[:, 0]) ** 2 + (gy - arr[:, 1]) ** 2, 0.01)
    cost = ((arr[:, 2] - arr[:, 3] - h * np.log(r2)) ** 2).sum(axis=2)
    k = int(np.argmin(cost))
    py, px = float(b0y + ax[k // ax.size]), float(b0x + ax[k % ax.size])
    c0 = float(cost.flat[k])
    obs = [(x, y, t - r) for x, y, _, t, r in pts]  # residual of a beacon at squared range q: c - h ln q
    log = math.log
    # Gauss-Newton on the dB residuals (plain floats: a handful of beacons), steps capped at
    # the grid step and kept only when they lower the cost
    for _ in range(10):
        a11 = a12 = a22 = g1 = g2 = 0.0
        for x, y, c in obs:
            dx, dy = px - x, py - y
            q = max(dx * dx + dy * dy, 0.01)
            res = c - h * log(q)
            jx, jy = -a * dx / q, -a * dy / q
            a11 += jx * jx
            a12 += jx * jy
            a22 += jy * jy
            g1 += jx * res
            g2 += jy * res
        det = a11 * a22 - a12 * a12
        if det <= 1e-12 * max(a11 * a22, 1e-300):
            break  # (nearly) collinear beacons: keep the grid's best
        sx, sy = -(a22 * g1 - a12 * g2) / det, -(a11 * g2 - a12 * g1) / det
        step = math.hypot(sx, sy)
        if step > GRID_STEP_M:
            sx, sy = sx * GRID_STEP_M / step, sy * GRID_STEP_M / step
        nx, ny = px + sx, py + sy
        c1 = 0.0
        for x, y, c in obs:
            r = c - h * log(max((nx - x) ** 2 + (ny - y) ** 2, 0.01))
            c1 += r * r
        if c1 >= c0:
            break
        px, py, c0 = nx, ny, c1
        if step < 0.01:
            break
    # Fisher information J'J / sigma^2 at the estimate (ranges under 0.5 m clamped: the model fails there)
    a11 = a12 = a22 = 0.0
    for x, y, _ in obs:
        dx, dy = px - x, py - y
        q = max(dx * dx + dy * dy, 0.25)
        jx, jy = -a * dx / q, -a * dy / q
        a11 += jx * jx
        a12 += jx * jy
        a22 += jy * jy
    det = a11 * a22 - a12 * a12
    if det <= 1e-12 * max(a11 * a22, 1e-300):
        return px, py, math.inf
    var = sigma_db * sigma_db * (a11 + a22) / det / 2.0  # mean variance per axis
    return px, py, 2.0 * math.sqrt(var)


def locate(
    readings: Iterable[tuple[str, float]],
    beacons: Mapping[str, Any],
    *,
    n: float = 2.0,
    strongest: int = 8,
    min_acc: float = 1.5,
    rssi_sigma_db: float = 4.0,
) -> tuple[float, float, int, float] | None:
    """Estimate ``(x, y, floor, acc)`` from ``(beacon_id, rssi)`` readings.

    ``beacons`` maps lower-case ``"uuid:major:minor"`` to objects with ``.x``,
    ``.y``, ``.floor`` and ``.tx_power``; unknown beacons are ignored.  The
    floor is the strongest beacon's; the fix uses the ``strongest`` strongest
    known readings on that floor (see the module docstring).  ``acc``
    (metres, a 2σ radius) is never below ``min_acc``; with one beacon it is
    that beacon's estimated distance.  ``None`` when no known beacon was read.
    """
    return locate_detail(readings, beacons, n=n, strongest=strongest, min_acc=min_acc,
                         rssi_sigma_db=rssi_sigma_db)[0]
