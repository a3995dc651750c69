"""Positions from raw BLE beacon sightings (iBeacon / Eddystone).

The model: a beacon's RSSI at distance ``d`` is ``tx_power - 10 n log10(d)``
plus log-normal shadowing, i.e. Gaussian noise of ``rssi_sigma_db`` dB.
With three or more beacons (on the strongest one's floor) the position is
the *maximum-likelihood* point under that model, found by two vectorised
grid searches: 11 × 11 points around the strongest beacon (out to 1.5 times
its range + 1 m), then as many around the best of them at a quarter of the
spacing.  The residuals are in dB, where the noise really is Gaussian and the same for a
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

__all__ = ["rssi_to_distance", "distinct_readings", "locate", "locate_detail"]

GRID_N = 11  # points per side of each grid search
_AXIS = np.arange(GRID_N, dtype=float) - (GRID_N - 1) / 2


def rssi_to_distance(rssi: float, tx_power: float, n: float = 2.0) -> float:
    """Log-distance model: ``d = 10 ** ((tx_power - rssi) / (10 n))`` metres.

    ``tx_power`` is the calibrated RSSI at 1 m; ``n`` the path-loss exponent.
    """
    return 10.0 ** ((tx_power - rssi) / (10.0 * n))


def distinct_readings(readings: Iterable[tuple[str, float]], known: Mapping[str, Any]) -> tuple[dict[str, float], int]:
    """``{beacon id (lower-case): strongest finite RSSI}`` of the known beacons
    and the number of readings that named an unknown one."""
    best: dict[str, float] = {}
    unknown = 0
    for bid, rssi in readings:
        key = str(bid).lower()
        if key not in known:
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
    return best, unknown


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
    best, unknown = distinct_readings(readings, beacons)
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
    # Two vectorised grid searches: GRID_N x GRID_N points around the strongest beacon, out to
    # 1.5x its range + 1 m (the truth lies within), then as many around the best of them at a
    # quarter of the spacing (the result is within an eighth of a coarse cell, 0.06-0.5 m).
    b0x, b0y, d0 = pts[0][0], pts[0][1], pts[0][2]
    half = min(1.5 * d0 + 1.0, 4.0 * (GRID_N - 1) / 2)
    cell = max(2.0 * half / (GRID_N - 1), 0.5)
    arr = np.array([p[:2] + p[3:] for p in pts])  # x, y, tx, rssi
    bxs, bys, c = arr[:, 0], arr[:, 1], arr[:, 2] - arr[:, 3]
    px, py = b0x, b0y
    for spacing in (cell, cell / 4.0):
        ax = _AXIS * spacing
        dx2 = (px + ax[:, None] - bxs) ** 2  # (GRID_N, beacons)
        dy2 = (py + ax[:, None] - bys) ** 2
        r2 = np.maximum(dy2[:, None, :] + dx2[None, :, :], 0.01)  # (y, x, beacons)
        k = int(np.argmin(((c - h * np.log(r2)) ** 2).sum(axis=2)))
        py, px = py + float(ax[k // GRID_N]), px + float(ax[k % GRID_N])
    # Fisher information J'J / sigma^2 at the estimate (ranges under 0.5 m clamped: the model fails there)
    a11 = a12 = a22 = 0.0
    for x, y, _, _, _ in pts:
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
