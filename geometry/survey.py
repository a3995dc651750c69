"""Site survey files and the report on a BLE model (pure: lines in, numbers out).

A survey file has one scan with its truth per line (JSON)::

    {"walk": "tue-am", "ts": 1764930000.5, "x": 12.5, "y": 30.1, "floor": 0,
     "beacons": [{"id": "uuid:major:minor", "rssi": -71}, ...]}

``lat``/``lon`` may replace ``x``/``y`` (a ``frame`` converts them);
``floor`` defaults to 0; ``walk`` groups scans taken in one go and is the
unit the report holds out; ``beacons`` may be empty (nothing heard: that is
evidence too).  Blank lines and lines starting with ``#`` are skipped.

Wi-Fi and phone fixes are surveyed the same way: instead of (or beside)
``beacons`` a line carries ``fix``, the engine's fix as it would send it in a
ping (``x``/``y`` or ``lat``/``lon`` or an HTML5 ``coords``; ``acc``,
``floor``), and ``source`` (``wifi`` by default, ``html5`` for ``coords``)::

    {"walk": "tue-am", "ts": 1764930000.5, "x": 12.5, "y": 30.1, "source": "wifi",
     "fix": {"x": 14.1, "y": 27.9, "acc": 6}}

:func:`parse` raises :class:`SurveyError` with ``file:line: message``.
:func:`arrays` lines the scans up against the model's beacons (a beacon not
in the layout is an error naming the line).  :func:`report` scores fixes
against the truth: median and p90 error, how often the claimed ``acc``
covers the truth (per number of beacons heard), and per zone the share of
its scans placed right, wrong or nowhere; :func:`format_report` prints it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .radio import NOMINAL, heard_class

__all__ = ["Scan", "SurveyError", "parse", "arrays", "report", "format_report", "placed_zones", "FIX_SOURCES"]


class SurveyError(ValueError):
    """A bad survey line or set of lines (message: ``file:line: what``)."""


@dataclass(frozen=True, slots=True)
class Scan:
    file: str
    line: int
    walk: str
    ts: float
    x: float
    y: float
    floor: int
    beacons: tuple[tuple[str, float], ...] | None  # None: the line carries no BLE scan
    source: str = ""
    fix: tuple[float, float, int, float] | None = None  # the engine's x, y, floor, acc (NaN: none reported)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _position(d: Mapping[str, Any], where: str, frame, *, missing: str, what: str = "", lat: str = "lat",
              lon: str = "lon", xy: bool = True) -> tuple[float, float]:
    """Local metres from ``x``/``y`` (when ``xy``) or ``lat``/``lon`` through ``frame``: the
    scan's true position and the engine's fix alike (``what`` names which in the errors)."""
    if xy and ("x" in d or "y" in d):
        x, y = _num(d.get("x")), _num(d.get("y"))
        if x is None or y is None:
            raise SurveyError(f"{where}: {what}'x' and 'y' must both be numbers (local metres)")
        return x, y
    if lat not in d and lon not in d:
        raise SurveyError(f"{where}: {missing}")
    la, lo = _num(d.get(lat)), _num(d.get(lon))
    if la is None or lo is None or not (-90 <= la <= 90 and -180 <= lo <= 180):
        raise SurveyError(f"{where}: {what}'{lat}' and '{lon}' must both be numbers in range")
    if frame is None:
        raise SurveyError(f"{where}: {what}'{lat}'/'{lon}' need the store's anchor to convert")
    xs, ys = frame.to_local(np.array([lo]), np.array([la]))
    return float(xs[0]), float(ys[0])


def parse(lines: Iterable[str], file: str, frame=None) -> list[Scan]:
    """Scans of one survey file; ``frame`` (a ``LocalFrame``) converts
    ``lat``/``lon`` lines to local metres."""
    out: list[Scan] = []
    for no, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        where = f"{file}:{no}"
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise SurveyError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise SurveyError(f"{where}: a line must be a JSON object")
        walk = obj.get("walk")
        if not isinstance(walk, str) or not walk:
            raise SurveyError(f"{where}: 'walk' must be a non-empty string (the walk this scan belongs to)")
        ts = _num(obj.get("ts"))
        if ts is None:
            raise SurveyError(f"{where}: 'ts' must be a number (epoch seconds)")
        x, y = _position(obj, where, frame, missing="the true position is missing ('x' and 'y', or 'lat' and 'lon')")
        fl = obj.get("floor", 0)
        if isinstance(fl, bool) or not isinstance(fl, int):
            raise SurveyError(f"{where}: 'floor' must be an integer")
        fix, source = None, ""
        if "fix" in obj:
            fix, source = _fix(obj, where, frame)
        bl = obj.get("beacons")
        if fix is not None and bl is None:
            out.append(Scan(file, no, walk, ts, x, y, int(fl), None, source, fix))
            continue
        if not isinstance(bl, list):
            raise SurveyError(f"{where}: 'beacons' must be a list of {{\"id\", \"rssi\"}} (empty: none heard), "
                              "or 'fix' the engine's fix")
        beacons = []
        for k, b in enumerate(bl):
            if not isinstance(b, dict) or not isinstance(b.get("id"), str) or _num(b.get("rssi")) is None:
                raise SurveyError(f"{where}: beacons[{k}] must be {{\"id\": str, \"rssi\": number}}")
            r = float(b["rssi"])
            if not -130 <= r <= 20:
                raise SurveyError(f"{where}: beacons[{k}] rssi {r:g} is out of range (-130..20 dBm)")
            beacons.append((b["id"].lower(), r))
        out.append(Scan(file, no, walk, ts, x, y, int(fl), tuple(beacons), source, fix))
    return out


FIX_SOURCES = ("wifi", "html5", "gps", "uwb", "meraki", "aruba", "owntracks")  # not ble: the agent places BLE itself


def _fix(obj: Mapping[str, Any], where: str, frame) -> tuple[tuple[float, float, int, float], str]:
    """A line's ``fix`` (the engine's, as a ping carries it) and ``source``."""
    f = obj["fix"]
    if not isinstance(f, dict):
        raise SurveyError(f"{where}: 'fix' must be an object (the engine's fix: x/y or lat/lon, acc)")
    coords = f.get("coords")
    source = obj.get("source", "html5" if coords is not None else "wifi")
    if source not in FIX_SOURCES:
        raise SurveyError(f"{where}: 'source' must be one of {', '.join(FIX_SOURCES)}")
    missing = "the fix has no position ('x' and 'y', 'lat' and 'lon', or 'coords')"
    if coords is not None:
        if not isinstance(coords, dict):
            raise SurveyError(f"{where}: fix 'coords' must be an object (an HTML5 GeolocationPosition)")
        f, acc_key = coords, "accuracy"
        fx, fy = _position(coords, where, frame, missing=missing, what="fix ", lat="latitude", lon="longitude",
                           xy=False)
    else:
        acc_key = "acc"
        fx, fy = _position(f, where, frame, missing=missing, what="fix ")
    acc = f.get(acc_key)
    if acc is not None and (_num(acc) is None or acc < 0):
        raise SurveyError(f"{where}: fix '{acc_key}' must be a number of metres ≥ 0")
    fl = obj["fix"].get("floor", 0)
    if isinstance(fl, bool) or not isinstance(fl, int):
        raise SurveyError(f"{where}: fix 'floor' must be an integer")
    return (fx, fy, int(fl), math.nan if acc is None else float(acc)), source


def arrays(scans: Sequence[Scan], ids: Sequence[str]):
    """``X, Y, F, R, walks, ts`` for :func:`geometry.radio.fit`: ``R`` (scans,
    beacons in ``ids`` order), the strongest reading per beacon, NaN = not
    heard.  A beacon not in ``ids`` raises :class:`SurveyError`."""
    scans = [s for s in scans if s.beacons is not None]  # lines with only a fix are no BLE scan
    col = {b.lower(): j for j, b in enumerate(ids)}
    S = len(scans)
    R = np.full((S, len(ids)), np.nan)
    for i, s in enumerate(scans):
        for bid, r in s.beacons:
            j = col.get(bid)
            if j is None:
                raise SurveyError(f"{s.file}:{s.line}: beacon {bid!r} is not in the layout "
                                  "(add it as a kind \"beacon\" point, or fix the id)")
            if not r <= R[i, j]:  # NaN or weaker
                R[i, j] = r
    X = np.array([s.x for s in scans], dtype=float)
    Y = np.array([s.y for s in scans], dtype=float)
    F = np.array([s.floor for s in scans], dtype=np.int64)
    walks = np.array([s.walk for s in scans])
    ts = np.array([s.ts for s in scans], dtype=float)
    return X, Y, F, R, walks, ts


def placed_zones(zones: Sequence[tuple[str, int, Any]], x, y, floor, acc, *, confidence: float = 0.9):
    """Per fix, the zone it places the device in: the one whose polygon holds
    its disc of ``Φ⁻¹(confidence) · acc / 2`` (the fused tracker's rule for
    one fix), else ``""``.  ``zones``: ``(id, floor, shapely geometry)``."""
    import shapely
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    x, y, acc = (np.asarray(v, dtype=float) for v in (x, y, acc))
    floor = np.asarray(floor)
    out = np.full(x.size, "", dtype=object)
    ok = np.isfinite(x) & np.isfinite(acc)
    pts = shapely.points(np.where(ok, x, 0.0), np.where(ok, y, 0.0))
    for zid, zfl, geom in zones:
        m = ok & (floor == zfl) & shapely.contains_xy(geom, np.where(ok, x, 0.0), np.where(ok, y, 0.0))
        if m.any():
            d = shapely.distance(pts, geom.boundary)
            m &= d >= z * acc / 2.0
            out[m & (out == "")] = zid
    return out


def truth_zones(zones, X, Y, F):
    """Zone holding each true position ("" if none; the first listed wins)."""
    import shapely

    out = np.full(len(X), "", dtype=object)
    for zid, zfl, geom in zones:
        m = (np.asarray(F) == zfl) & shapely.contains_xy(geom, np.asarray(X, float), np.asarray(Y, float))
        out[m & (out == "")] = zid
    return out


def report(X, Y, F, x, y, acc, heard, zones=(), *, confidence: float = 0.9) -> dict:
    """Scores of fixes ``x, y, acc`` (NaN: no fix) against the truth ``X, Y, F``."""
    X, Y, x, y, acc = (np.asarray(v, dtype=float) for v in (X, Y, x, y, acc))
    heard = np.asarray(heard)
    ok = np.isfinite(x) & np.isfinite(acc)
    err = np.hypot(x - X, y - Y)
    out: dict[str, Any] = {"scans": int(X.size), "fixes": int(ok.sum()), "nominal_coverage": round(NOMINAL, 3)}
    if ok.any():
        out["median_error_m"] = round(float(np.median(err[ok])), 2)
        out["p90_error_m"] = round(float(np.percentile(err[ok], 90)), 2)
        out["coverage"] = round(float(np.mean(err[ok] <= acc[ok])), 3)
    cls = heard_class(np.maximum(heard, 1))
    out["by_beacons_heard"] = {}
    for c, name in enumerate(("1", "2", "3+")):
        m = ok & (cls == c)
        if m.any():
            out["by_beacons_heard"][name] = {"scans": int(m.sum()), "median_error_m": round(float(np.median(err[m])), 2),
                                             "median_acc_m": round(float(np.median(acc[m])), 2),
                                             "coverage": round(float(np.mean(err[m] <= acc[m])), 3)}
    zs = list(zones)
    if zs:
        truth = truth_zones(zs, X, Y, F)
        placed = placed_zones(zs, x, y, F, acc, confidence=confidence)
        per = {}
        for zid, _, _ in zs:
            m = truth == zid
            n = int(m.sum())
            if n == 0:
                continue
            right = int(np.sum(placed[m] == zid))
            none = int(np.sum(placed[m] == ""))
            per[zid] = {"scans": n, "right": round(right / n, 3), "wrong": round((n - right - none) / n, 3),
                        "none": round(none / n, 3)}
        out["zones"] = per
    return out


def format_report(rep: Mapping[str, Any], title: str) -> str:
    """The report as plain text (what the CLI prints)."""
    lines = [title, ""]
    if "median_error_m" not in rep:
        return "\n".join(lines + [f"{rep['scans']} scans, no fix (no beacon of the layout heard)"]) + "\n"
    lines.append(f"{rep['fixes']} fixes of {rep['scans']} scans: median error {rep['median_error_m']} m, "
                 f"p90 {rep['p90_error_m']} m; claimed accuracy covers the truth {100 * rep['coverage']:.0f} % "
                 f"(nominal {100 * rep['nominal_coverage']:.0f} %)")
    if rep["by_beacons_heard"]:
        lines.append("")
        lines.append("beacons heard | scans | median error | median acc | coverage")
    for k, v in rep["by_beacons_heard"].items():
        lines.append(f"{k:>13} | {v['scans']:>5} | {v['median_error_m']:>10} m | {v['median_acc_m']:>8} m | "
                     f"{100 * v['coverage']:>6.0f} %")
    if rep.get("zones"):
        lines += ["", "zone | scans | placed right | wrong | not placed"]
        for zid, v in rep["zones"].items():
            lines.append(f"{zid} | {v['scans']} | {100 * v['right']:.0f} % | {100 * v['wrong']:.0f} % | "
                         f"{100 * v['none']:.0f} %")
    return "\n".join(lines) + "\n"
