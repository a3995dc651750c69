"""Load and validate a store configuration.

:func:`load_store` reads ``store.toml`` and the files it references and
returns one frozen :class:`~store_config.model.StoreConfig`, or raises
:class:`~store_config.model.ConfigError` listing *every* problem found (each a
:class:`~store_config.model.Problem` naming file, object and field).

The parsers (:func:`parse_layout`, :func:`parse_promotions`,
:func:`parse_profiles`, :func:`parse_inventory`, :func:`cross_check`) take
already-parsed JSON values so that central bundles and hot reloads validate
exactly the same way.

Pure: no clock reads, no sockets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import tomllib
import urllib.parse
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
import shapely
import shapely.geometry

from ._checks import ID_RE, Collector, type_name
from ._sources import parse_floorplans, parse_sources
from .model import (
    DEFAULT_ACC,
    FENCE_KINDS,
    SOURCES,
    Anchor,
    AssociatesConfig,
    Beacon,
    ConfigError,
    Consent,
    Fence,
    HttpConfig,
    IngestConfig,
    MqttConfig,
    OffersConfig,
    PrivacyConfig,
    Problem,
    Profile,
    Promotion,
    ReloadConfig,
    StoreConfig,
    SyncConfig,
    TrackingConfig,
)

__all__ = [
    "load_store",
    "parse_layout",
    "parse_promotions",
    "parse_profiles",
    "parse_inventory",
    "cross_check",
    "config_version",
    "check_timezone",
]

# A layout point farther than this from the anchor is almost certainly a
# frame mix-up (local metres read as lon/lat, or the wrong anchor).
MAX_LAYOUT_EXTENT_M = 10_000.0


# ---------------------------------------------------------------------------
# helpers


def _raise_if(problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(problems)


@functools.lru_cache(maxsize=1)
def _zone_keys() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(tz: Any) -> str | None:
    """Return an error message when ``tz`` is not a valid zoneinfo key."""
    if not isinstance(tz, str) or not tz:
        return f"must be an IANA time zone name such as 'Europe/Prague', not {type_name(tz)}"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {tz!r} (use an IANA name such as 'Europe/Prague')"
    if tz not in _zone_keys() and tz != "UTC":
        # ZoneInfo accepts some odd keys (e.g. lowercase on case-insensitive
        # file systems); insist on a canonical key.
        return f"unknown time zone {tz!r} (use an IANA name such as 'Europe/Prague')"
    return None


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_version(parts: Mapping[str, Any]) -> str:
    """A short stable hash (sha256 hex[:12]) of the canonical content of
    ``parts`` (name -> parsed file content).  Formatting and key order in the
    files do not change it; any value does."""
    return hashlib.sha256(_canonical(dict(parts)).encode("utf-8")).hexdigest()[:12]


def _where_feature(i: int, props: Any) -> str:
    if isinstance(props, dict) and isinstance(props.get("id"), str) and props["id"]:
        return f'feature "{props["id"]}"'
    return f"feature #{i}"


def _where_obj(kind: str, i: int, obj: Any, key: str) -> str:
    if isinstance(obj, dict) and isinstance(obj.get(key), str) and obj[key]:
        return f'{kind} "{obj[key]}"'
    return f"{kind} #{i}"


# ---------------------------------------------------------------------------
# layout


def _pos_ok(p: Any) -> bool:
    """A GeoJSON position: a list of 2 or 3 finite numbers (not booleans)."""
    if not isinstance(p, list) or not 2 <= len(p) <= 3:
        return False
    for c in p:
        t = type(c)
        if t is float:
            if c - c != 0.0:  # NaN or infinity
                return False
        elif t is int:
            if not -1e300 < c < 1e300:
                return False
        elif not (isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)):
            return False
    return True


def _coords_ok(coords: Any, depth: int) -> bool:
    """Check a GeoJSON coordinate array of the given nesting depth
    (0 = a position) holds finite numbers."""
    if depth == 0:
        return _pos_ok(coords)
    if not isinstance(coords, list) or not coords:
        return False
    if depth == 1:
        return all(map(_pos_ok, coords))
    return all(_coords_ok(c, depth - 1) for c in coords)


_DEPTH = {"Point": 0, "Polygon": 2, "MultiPolygon": 3}
_DEFERRED = object()


def _simple_shape(gtype: str, coords: list) -> bool:
    """A 2-D Point, or a hole-free 2-D Polygon with a closed-able ring of at
    least 4 positions: shapes that can be built in bulk (coordinates already
    checked by :func:`_coords_ok`)."""
    if gtype == "Point":
        return len(coords) == 2
    if gtype == "Polygon" and len(coords) == 1:
        ring = coords[0]
        return len(ring) >= 4 and all(len(p) == 2 for p in ring)
    return False


def _build_deferred(c: Collector, parsed: list[dict], deferred: list[tuple[int, str]], features: list,
                    local: bool) -> None:
    """Build the simple shapes of the first pass in bulk: points in one call,
    hole-free polygons in one call per ring length."""
    groups: dict[object, list[int]] = {}
    for k, _ in deferred:
        e = parsed[k]
        coords = features[e["i"]]["geometry"]["coordinates"]
        key = "Point" if e["gtype"] == "Point" else len(coords[0])
        groups.setdefault(key, []).append(k)
    for key, ks in groups.items():
        coords = [features[parsed[k]["i"]]["geometry"]["coordinates"] for k in ks]
        arr = np.array(coords, dtype=float)
        geoms = shapely.points(arr) if key == "Point" else shapely.polygons(arr[:, 0])
        for k, g in zip(ks, geoms):
            e = parsed[k]
            if e["geom"] is _DEFERRED:  # not dropped meanwhile
                e["geom"] = g
    if not local:
        for k, where in deferred:
            g = parsed[k]["geom"]
            if g is None:
                continue
            xy = shapely.get_coordinates(g)
            if (np.abs(xy[:, 0]) > 180).any() or (np.abs(xy[:, 1]) > 90).any():
                c.err(where, "geometry", "longitude/latitude out of range (coordinates in metres? "
                                         "add \"frame\": \"local\" to the FeatureCollection)")
                parsed[k]["geom"] = None


def parse_layout(obj: Any, *, file: str, anchor: Anchor):
    """Parse a GeoJSON FeatureCollection into ``(fences, beacons, outline)``.

    A top-level ``"frame": "local"`` means coordinates are local metres;
    otherwise they are RFC 7946 WGS84 ``[lon, lat]`` and are converted with
    :class:`geometry.frames.LocalFrame` on the anchor (all coordinates in one
    vectorised call).  ``outline`` is the union of the features with
    ``kind: "outline"`` or ``outline: true`` (None when there are none).
    Raises :class:`ConfigError` listing every problem.
    """
    c = Collector(file)
    where_top = "layout"
    if not isinstance(obj, dict):
        c.err(where_top, "", f"must be a GeoJSON FeatureCollection object, not {type_name(obj)}")
        _raise_if(c.problems)
    if obj.get("type") != "FeatureCollection":
        c.err(where_top, "type", f"must be 'FeatureCollection', not {obj.get('type')!r}")
    frame = obj.get("frame", "wgs84")
    if frame not in ("local", "wgs84"):
        c.err(where_top, "frame", f"must be 'local' (metres) or absent (WGS84 lon/lat), not {frame!r}")
        frame = "local"
    local = frame == "local"
    features = obj.get("features")
    if not isinstance(features, list):
        c.err(where_top, "features", f"must be a list of features, not {type_name(features)}")
        features = []

    # First pass: properties and raw (untransformed) shapes.
    # Each entry: (index, where, role, props-derived values, shapely geom)
    parsed: list[dict] = []
    deferred: list[tuple[int, str]] = []  # (index in parsed, where) of simple shapes built in bulk
    seen_ids: dict[str, int] = {}
    seen_beacons: dict[str, int] = {}
    for i, feat in enumerate(features):
        props = feat.get("properties") if isinstance(feat, dict) else None
        where = _where_feature(i, props)
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            c.err(where, "type", "must be a GeoJSON Feature object")
            continue
        if props is None:
            props = {}
        if not isinstance(props, dict):
            c.err(where, "properties", f"must be an object, not {type_name(props)}")
            continue
        geom_obj = feat.get("geometry")
        gtype = geom_obj.get("type") if isinstance(geom_obj, dict) else None
        kind = props.get("kind", "other")
        is_outline = kind == "outline" or props.get("outline") is True
        is_beacon = kind == "beacon"
        if "outline" in props and not isinstance(props["outline"], bool):
            c.err(where, "outline", f"must be true or false, not {type_name(props['outline'])}")

        # geometry
        geom = None
        if not isinstance(geom_obj, dict):
            c.err(where, "geometry", f"must be a GeoJSON geometry object, not {type_name(geom_obj)}")
        elif gtype not in _DEPTH:
            c.err(where, "geometry", f"type {gtype!r} is not supported (use Polygon, MultiPolygon, "
                                     "or Point with radius_m / kind 'beacon')")
        elif not _coords_ok(geom_obj.get("coordinates"), _DEPTH[gtype]):
            c.err(where, "geometry", f"coordinates are not a valid {gtype} (finite numbers, "
                                     "[x, y] positions, non-empty rings)")
        elif _simple_shape(gtype, geom_obj["coordinates"]):
            geom = _DEFERRED  # built below, vectorised with the others of its shape
            deferred.append((len(parsed), where))
        else:
            try:
                geom = shapely.force_2d(shapely.geometry.shape(geom_obj))
            except Exception as exc:  # shapely raises various errors on malformed input
                c.err(where, "geometry", f"cannot build {gtype}: {exc}")
        if geom is not None and geom is not _DEFERRED and not local and gtype is not None:
            coords = shapely.get_coordinates(geom)
            if (np.abs(coords[:, 0]) > 180).any() or (np.abs(coords[:, 1]) > 90).any():
                c.err(where, "geometry", "longitude/latitude out of range (coordinates in metres? "
                                         "add \"frame\": \"local\" to the FeatureCollection)")
                geom = None

        entry: dict[str, Any] = {"i": i, "where": where, "geom": geom, "gtype": gtype}
        floor = c.integer(props, "floor", where, default=0)
        entry["floor"] = floor

        if is_beacon:
            entry["role"] = "beacon"
            if gtype is not None and gtype != "Point":
                c.err(where, "geometry", f"a beacon must be a Point, not {gtype}")
            bid = c.string(props, "beacon_id", where, required=True, nonempty=True)
            if bid is not None:
                bid = bid.strip().lower()
                parts = bid.split(":")
                ok = len(parts) == 3 and parts[0] and all(p.isdigit() and int(p) <= 65535 for p in parts[1:])
                if not ok:
                    c.err(where, "beacon_id", f"must be 'uuid:major:minor' (major/minor 0–65535), not {bid!r}")
                    bid = None
                elif bid in seen_beacons:
                    c.err(where, "beacon_id", f"duplicate beacon {bid!r} (also feature #{seen_beacons[bid]})")
                else:
                    seen_beacons[bid] = i
            entry["beacon_id"] = bid
            entry["tx_power"] = c.number(props, "tx_power", where, default=-59.0, minimum=-127, maximum=20)
            parsed.append(entry)
            continue

        if is_outline:
            entry["role"] = "outline"
            if gtype not in (None, "Polygon", "MultiPolygon"):
                c.err(where, "geometry", f"the store outline must be a Polygon or MultiPolygon, not {gtype}")
                entry["geom"] = None
            parsed.append(entry)
            continue

        entry["role"] = "fence"
        fid = props.get("id")
        if fid is None:
            c.err(where, "id", "is required")
        elif not isinstance(fid, str):
            c.err(where, "id", f"must be a string, not {type_name(fid)}")
            fid = None
        elif not ID_RE.fullmatch(fid):
            c.err(where, "id", f"{fid!r} may only contain letters, digits, '.', '_' and '-'")
            fid = None
        elif fid == "all":
            c.err(where, "id", "'all' is reserved (it is the alert audience for everyone)")
            fid = None
        elif fid in seen_ids:
            c.err(where, "id", f"duplicate id {fid!r} (also feature #{seen_ids[fid]})")
            fid = None
        else:
            seen_ids[fid] = i
        entry["id"] = fid
        if not isinstance(kind, str) or kind not in FENCE_KINDS:
            c.err(where, "kind", f"must be one of {', '.join(FENCE_KINDS)} (or 'beacon', 'outline'), "
                                 f"not {kind!r}")
            kind = "other"
        entry["kind"] = kind
        entry["name"] = c.string(props, "name", where, default="")
        entry["category"] = c.string(props, "category", where, default=None, nonempty=True)
        entry["skus"] = c.str_list(props, "skus", where)
        entry["dwell_s"] = c.number(props, "dwell_s", where, default=None, positive=True)
        entry["assist"] = c.boolean(props, "assist", where, default=False)
        radius = None
        if gtype == "Point":
            if "radius_m" not in props:
                c.err(where, "radius_m", "a Point fence needs radius_m > 0 (or kind 'beacon')")
            else:
                radius = c.number(props, "radius_m", where, default=None, required=True, positive=True)
            if radius is None:
                entry["geom"] = None
        elif "radius_m" in props:
            c.warn(where, "radius_m", f"ignored on a {gtype}")
        entry["radius"] = radius
        parsed.append(entry)

    _build_deferred(c, parsed, deferred, features, local)

    # Convert everything to local metres in one vectorised call.
    with_geom = [e for e in parsed if e["geom"] is not None]
    if with_geom and not local:
        from geometry.frames import LocalFrame  # local import: geometry is only needed for WGS84

        frame_obj = LocalFrame(anchor.lat, anchor.lon, anchor.bearing)

        def _to_local(xy: np.ndarray) -> np.ndarray:
            x, y = frame_obj.to_local(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        converted = shapely.transform(np.array([e["geom"] for e in with_geom], dtype=object), _to_local)
        for e, g in zip(with_geom, converted):
            e["geom"] = g
    if with_geom:  # extent check, vectorised over every coordinate
        xy, owner = shapely.get_coordinates(np.array([e["geom"] for e in with_geom], dtype=object),
                                            return_index=True)
        far = np.zeros(len(with_geom), dtype=bool)
        far[owner[np.hypot(xy[:, 0], xy[:, 1]) > MAX_LAYOUT_EXTENT_M]] = True
        for k in np.flatnonzero(far).tolist():
            e = with_geom[k]
            hint = (" (coordinates in metres? add \"frame\": \"local\")" if not local
                    else " (WGS84 coordinates? remove \"frame\": \"local\")")
            c.err(e["where"], "geometry", f"lies more than {MAX_LAYOUT_EXTENT_M / 1000:g} km from the "
                                          f"store anchor{hint}")
            e["geom"] = None
    # validity, area and circle polygons, vectorised
    polys = [e for e in parsed if e["geom"] is not None and e["gtype"] in ("Polygon", "MultiPolygon")]
    if polys:
        arr = np.array([e["geom"] for e in polys], dtype=object)
        for e, ok, area in zip(polys, shapely.is_valid(arr).tolist(), shapely.area(arr).tolist()):
            e["valid"], e["area"] = ok, area
    circ = [e for e in parsed if e["role"] == "fence" and e["geom"] is not None and e["gtype"] == "Point"
            and e.get("radius") is not None]
    if circ:
        bufs = shapely.buffer(np.array([e["geom"] for e in circ], dtype=object),
                              np.array([e["radius"] for e in circ], dtype=float), quad_segs=32)
        for e, b in zip(circ, bufs):
            e["disc"] = b

    fences: list[Fence] = []
    beacons: list[Beacon] = []
    outlines = []
    for e in parsed:
        g = e["geom"]
        where = e["where"]
        if e["role"] == "beacon":
            if g is not None and e["beacon_id"] and e["floor"] is not None and e["tx_power"] is not None:
                beacons.append(Beacon(beacon_id=e["beacon_id"], x=float(g.x), y=float(g.y),
                                      floor=e["floor"], tx_power=e["tx_power"]))
            continue
        if g is not None and e["gtype"] in ("Polygon", "MultiPolygon"):
            if not e["valid"]:
                c.err(where, "geometry", f"invalid polygon: {shapely.is_valid_reason(g)}")
                g = None
            elif not e["area"] > 0:
                c.err(where, "geometry", "polygon is empty (zero area)")
                g = None
        if e["role"] == "outline":
            if g is not None:
                outlines.append(g)
            continue
        circle = None
        if g is not None and e["gtype"] == "Point" and e["radius"] is not None:
            circle = (float(g.x), float(g.y), float(e["radius"]))
            g = e["disc"]
        if g is None or e["id"] is None:
            continue
        fences.append(Fence(
            id=e["id"], kind=e["kind"], floor=e["floor"] if e["floor"] is not None else 0, geometry=g,
            name=e["name"] or "", category=e["category"], skus=e["skus"], dwell_s=e["dwell_s"],
            circle=circle, assist=bool(e["assist"]),
        ))
    _raise_if(c.problems)
    outline = None
    if outlines:
        outline = outlines[0] if len(outlines) == 1 else shapely.union_all(outlines)
    return tuple(fences), tuple(beacons), outline


# ---------------------------------------------------------------------------
# promotions

_PROMO_KEYS = frozenset({
    "id", "title", "message", "zones", "categories", "skus", "trigger", "segments",
    "min_loyalty_score", "starts", "ends", "hours", "requires_stock", "alternative_zone",
    "priority", "cooldown_s", "holdout_pct", "associate_alert", "vip_only",
})


def _parse_hhmm(s: str, *, is_end: bool) -> int | None:
    parts = s.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= len(p) <= 2 for p in parts):
        return None
    h, m = int(parts[0]), int(parts[1])
    if h == 24 and m == 0 and is_end:
        return 1440
    if h > 23 or m > 59:
        return None
    return h * 60 + m


def parse_hours(value: Any) -> tuple[tuple[tuple[int, int], ...], str | None]:
    """Parse ``["08:00-12:00", "22:00-02:00"]`` into ``((480, 720), (1320, 120))``.

    Minutes are store-local minutes since midnight.  ``24:00`` is allowed as
    an end (→ 1440).  A window whose end is before its start wraps midnight
    and is kept as given: ``(1320, 120)`` means 22:00 until 02:00 the next
    day, so a consumer tests ``start <= m < end`` when ``start < end`` and
    ``m >= start or m < end`` otherwise.  Returns ``(windows, error)``.
    """
    if not isinstance(value, list):
        return (), f"must be a list of 'HH:MM-HH:MM' strings, not {type_name(value)}"
    out = []
    for item in value:
        if not isinstance(item, str) or item.count("-") != 1:
            return (), f"{item!r} is not a window like '08:00-12:00'"
        a, b = item.split("-")
        start, end = _parse_hhmm(a, is_end=False), _parse_hhmm(b, is_end=True)
        if start is None or end is None:
            return (), f"{item!r} is not a window like '08:00-12:00' (hours 00–23, minutes 00–59, 24:00 as end)"
        if start == end:
            return (), f"{item!r} is an empty window (start equals end)"
        out.append((start, end))
    return tuple(out), None


def _parse_dt(value: Any, tz: ZoneInfo | None) -> tuple[datetime | None, str | None]:
    if not isinstance(value, str):
        return None, f"must be an ISO 8601 date-time string, not {type_name(value)}"
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, f"{value!r} is not an ISO 8601 date-time (e.g. '2025-12-01T08:00:00+01:00')"
    if dt.tzinfo is None and tz is not None:
        dt = dt.replace(tzinfo=tz)
    return dt, None


def parse_promotions(obj: Any, *, file: str, timezone: str,
                     warnings: list[Problem] | None = None) -> tuple[Promotion, ...]:
    """Parse a list of promotion objects.

    ``starts``/``ends`` without an offset are store-local time (``timezone``
    attached).  ``hours`` windows are described in :func:`parse_hours`.
    Unknown keys are reported as warnings in ``warnings`` when given (a typo
    such as ``segmnets`` would otherwise silently widen the audience).
    """
    c = Collector(file)
    tz_err = check_timezone(timezone)
    tz = None
    if tz_err:
        c.err("store", "timezone", tz_err)
    else:
        tz = ZoneInfo(timezone)
    if not isinstance(obj, list):
        c.err("promotions", "", f"must be a list of promotion objects, not {type_name(obj)}")
        _raise_if(c.problems)
    out: list[Promotion] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(obj):
        where = _where_obj("promotion", i, p, "id")
        if not isinstance(p, dict):
            c.err(where, "", f"must be an object, not {type_name(p)}")
            continue
        n_before = len(c.problems)
        c.unknown_keys(p, _PROMO_KEYS, where)
        pid = c.string(p, "id", where, required=True, nonempty=True)
        if pid is not None:
            if pid in seen:
                c.err(where, "id", f"duplicate id {pid!r} (also promotion #{seen[pid]})")
            else:
                seen[pid] = i
        title = c.string(p, "title", where, required=True, nonempty=True)
        message = c.string(p, "message", where, default="")
        zones = c.str_list(p, "zones", where)
        categories = c.str_list(p, "categories", where)
        skus = c.str_list(p, "skus", where)
        segments = c.str_list(p, "segments", where)
        trigger = c.string(p, "trigger", where, default="enter", choices=("enter", "dwell"))
        min_loyalty = c.number(p, "min_loyalty_score", where, default=None)
        starts = ends = None
        for key in ("starts", "ends"):
            if p.get(key) is not None:
                dt, err = _parse_dt(p[key], tz)
                if err:
                    c.err(where, key, err)
                elif key == "starts":
                    starts = dt
                else:
                    ends = dt
        if starts is not None and ends is not None and starts >= ends:
            c.err(where, "ends", f"must be after starts ({p['starts']} → {p['ends']})")
        hours: tuple = ()
        if p.get("hours") is not None:
            hours, err = parse_hours(p["hours"])
            if err:
                c.err(where, "hours", err)
        requires_stock = c.boolean(p, "requires_stock", where)
        alternative_zone = c.string(p, "alternative_zone", where, default=None, nonempty=True)
        priority = c.integer(p, "priority", where, default=0)
        cooldown_s = c.number(p, "cooldown_s", where, default=3600.0, minimum=0)
        holdout_pct = c.number(p, "holdout_pct", where, default=0.0, minimum=0, maximum=100)
        associate_alert = c.boolean(p, "associate_alert", where)
        vip_only = c.boolean(p, "vip_only", where)
        if len(c.problems) > n_before or pid is None or title is None:
            continue
        out.append(Promotion(
            id=pid, title=title, message=message, zones=zones, categories=categories, skus=skus,
            trigger=trigger, segments=segments, min_loyalty_score=min_loyalty, starts=starts, ends=ends,
            hours=hours, requires_stock=requires_stock, alternative_zone=alternative_zone,
            priority=priority, cooldown_s=cooldown_s, holdout_pct=holdout_pct,
            associate_alert=associate_alert, vip_only=vip_only,
        ))
    if warnings is not None:
        warnings.extend(c.warnings)
    _raise_if(c.problems)
    return tuple(out)


def cross_check(fences: Iterable[Fence], promotions: Iterable[Promotion], *, file: str) -> list[Problem]:
    """Errors for promotions whose ``zones`` or ``alternative_zone`` name a
    fence the layout does not have."""
    return _cross_check_ids({f.id for f in fences}, promotions, file=file)


def _raw_fence_ids(layout: Any) -> set[str] | None:
    """Every string ``properties.id`` in a raw layout (None when unusable)."""
    if not isinstance(layout, dict) or not isinstance(layout.get("features"), list):
        return None
    ids = set()
    for feat in layout["features"]:
        props = feat.get("properties") if isinstance(feat, dict) else None
        if isinstance(props, dict) and isinstance(props.get("id"), str):
            ids.add(props["id"])
    return ids


def _cross_check_raw(ids: set[str], raw: list, *, file: str) -> list[Problem]:
    problems = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            continue
        where = _where_obj("promotion", i, p, "id")
        zones = p.get("zones")
        if isinstance(zones, list):
            missing = [z for z in zones if isinstance(z, str) and z not in ids]
            if missing:
                problems.append(Problem(file, where, "zones", f"unknown fence id(s): {', '.join(missing)}"))
        alt = p.get("alternative_zone")
        if isinstance(alt, str) and alt and alt not in ids:
            problems.append(Problem(file, where, "alternative_zone", f"unknown fence id {alt!r}"))
    return problems


def _cross_check_ids(ids: set[str], promotions: Iterable[Promotion], *, file: str) -> list[Problem]:
    problems = []
    for p in promotions:
        where = f'promotion "{p.id}"'
        missing = [z for z in p.zones if z not in ids]
        if missing:
            problems.append(Problem(file, where, "zones", f"unknown fence id(s): {', '.join(missing)}"))
        if p.alternative_zone is not None and p.alternative_zone not in ids:
            problems.append(Problem(file, where, "alternative_zone",
                                    f"unknown fence id {p.alternative_zone!r}"))
    return problems


# ---------------------------------------------------------------------------
# profiles and inventory

_PROFILE_KEYS = frozenset({"device", "loyalty_id", "consent", "segments", "loyalty_score", "vip", "first_name"})
_CONSENT_KEYS = frozenset({"offers", "tracking", "name_to_staff"})


def parse_profiles(obj: Any, *, file: str, warnings: list[Problem] | None = None) -> dict[str, Profile]:
    """Parse a list of profile objects into ``{device: Profile}``.  Missing
    consent keys default to offers=True, tracking=True, name_to_staff=False."""
    c = Collector(file)
    if not isinstance(obj, list):
        c.err("profiles", "", f"must be a list of profile objects, not {type_name(obj)}")
        _raise_if(c.problems)
    out: dict[str, Profile] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(obj):
        where = _where_obj("profile", i, p, "device")
        if not isinstance(p, dict):
            c.err(where, "", f"must be an object, not {type_name(p)}")
            continue
        n_before = len(c.problems)
        c.unknown_keys(p, _PROFILE_KEYS, where)
        device = c.string(p, "device", where, required=True, nonempty=True)
        if device is not None:
            if any(ch in device for ch in "/+#") or any(ch.isspace() for ch in device):
                c.err(where, "device", f"{device!r} must not contain '/', '+', '#' or spaces (used in topics)")
            elif device in seen:
                c.err(where, "device", f"duplicate device {device!r} (also profile #{seen[device]})")
            else:
                seen[device] = i
        loyalty_id = c.string(p, "loyalty_id", where, default=None)
        consent = Consent(offers=True, tracking=True, name_to_staff=False)
        raw = p.get("consent")
        if raw is not None:
            if not isinstance(raw, dict):
                c.err(where, "consent", f"must be an object {{offers, tracking, name_to_staff}}, not {type_name(raw)}")
            else:
                c.unknown_keys(raw, _CONSENT_KEYS, where)
                consent = Consent(
                    offers=c.boolean(raw, "offers", where, default=True),
                    tracking=c.boolean(raw, "tracking", where, default=True),
                    name_to_staff=c.boolean(raw, "name_to_staff", where, default=False),
                )
        segments = c.str_list(p, "segments", where)
        loyalty_score = c.number(p, "loyalty_score", where, default=0.0)
        vip = c.boolean(p, "vip", where)
        first_name = c.string(p, "first_name", where, default=None)
        if len(c.problems) > n_before or device is None:
            continue
        out[device] = Profile(device=device, loyalty_id=loyalty_id, consent=consent, segments=segments,
                              loyalty_score=loyalty_score, vip=vip, first_name=first_name)
    if warnings is not None:
        warnings.extend(c.warnings)
    _raise_if(c.problems)
    return out


def parse_inventory(obj: Any, *, file: str) -> dict[str, int]:
    """Parse ``{sku: qty}`` with non-negative integer quantities."""
    c = Collector(file)
    if not isinstance(obj, dict):
        c.err("inventory", "", f"must be an object {{sku: qty}}, not {type_name(obj)}")
        _raise_if(c.problems)
    out: dict[str, int] = {}
    for sku, qty in obj.items():
        where = f'sku "{sku}"'
        if not sku.strip():
            c.err(where, "sku", "must not be empty")
            continue
        if isinstance(qty, float) and qty.is_integer():
            qty = int(qty)
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 0:
            c.err(where, "qty", f"must be a non-negative integer, not {type_name(qty)} {qty!r}")
            continue
        out[sku] = qty
    _raise_if(c.problems)
    return out


# ---------------------------------------------------------------------------
# store.toml

_SECTIONS: dict[str, frozenset[str]] = {
    "store": frozenset({"id", "name", "timezone", "layout", "promotions", "profiles", "inventory", "anchor"}),
    "mqtt": frozenset({"url", "username", "password", "client_id", "protocol", "tls_ca", "tls_cert", "tls_key",
                       "tls_insecure", "keepalive"}),
    "http": frozenset({"listen", "admin_token", "tls_cert", "tls_key"}),
    "data": frozenset({"dir"}),
    "tracking": frozenset({"clock", "timeout_s", "publish_events", "sustained_pings", "default_acc",
                           "max_future_skew_s", "max_speed_mps"}),
    "ingest": frozenset({"owntracks", "owntracks_cmd", "max_payload_bytes", "shed_above"}),
    "offers": frozenset({"ttl_s", "per_visit_cap", "min_gap_s", "daily_cap"}),
    "privacy": frozenset({"anonymous_offers", "anonymous_tracking", "position_retention_s"}),
    "sync": frozenset({"central_url", "token", "interval_s", "transport", "mqtt_url", "encoding", "batch_size",
                       "max_outbox_mb", "timeout_s", "retention_days"}),
    "associates": frozenset({"token", "roles", "escalate_after_s", "dedupe_window_s", "assist_dwell_s",
                             "vip_arrival", "stock_out"}),
    "sources": frozenset({"meraki", "aruba", "ble"}),
    "floorplans": frozenset(),  # an array of tables, parsed by _sources.parse_floorplans
    "reload": frozenset({"poll_s"}),
}


def _section(c: Collector, doc: dict, name: str) -> dict:
    v = doc.get(name, {})
    if not isinstance(v, dict):
        c.err(f"[{name}]", "", f"must be a table, not {type_name(v)}")
        return {}
    c.unknown_keys(v, _SECTIONS[name], f"[{name}]")
    return v


def _check_mqtt_url(c: Collector, where: str, key: str, url: Any) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str):
        c.err(where, key, f"must be a string like 'mqtt://host:1883', not {type_name(url)}")
        return None
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as exc:
        c.err(where, key, f"{url!r} is not a valid URL ({exc})")
        return None
    if u.scheme not in ("mqtt", "mqtts"):
        c.err(where, key, f"scheme must be mqtt:// or mqtts://, not {u.scheme + '://' if u.scheme else 'none'}")
        return None
    if not u.hostname:
        c.err(where, key, f"{url!r} has no host")
        return None
    if port is not None and port == 0:
        c.err(where, key, "port must be 1–65535")
        return None
    return url


def _file_key(c: Collector, base: Path, where: str, key: str, value: Any) -> str | None:
    """A file path from store.toml: relative to the toml file; must exist."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        c.err(where, key, f"must be a file path string, not {type_name(value)}")
        return None
    p = (base / value).resolve()
    if not p.is_file():
        c.err(where, key, f"file not found: {p}")
        return None
    return str(p)


def _parse_listen(c: Collector, value: str | None) -> str:
    if value is None:
        return HttpConfig.listen
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        c.err("[http]", "listen", f"must be 'host:port' such as '127.0.0.1:8080', not {value!r}")
        return HttpConfig.listen
    if host.startswith("[") != host.endswith("]"):
        c.err("[http]", "listen", f"bad IPv6 host in {value!r} (use '[::1]:8080')")
    return value


def _load_json(c: Collector, path: Path, key: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        c.err("[store]", key, f"cannot read {path}: {exc.strerror or exc}")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        c.problems.append(Problem(str(path), f"line {exc.lineno} column {exc.colno}", "",
                                  f"not valid JSON: {exc.msg}"))
        return None


def load_store(path: str | Path) -> StoreConfig:
    """Load ``store.toml`` and the files it names; validate everything once.

    Returns a frozen :class:`StoreConfig` (``warnings`` holds non-fatal
    problems such as unknown keys) or raises :class:`ConfigError` listing
    every error found in every file.
    """
    path = Path(path)
    toml_file = str(path)
    c = Collector(toml_file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(toml_file, "", "", f"cannot read store config: {exc.strerror or exc}")]) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(toml_file, "", "", f"not valid TOML: {exc}")]) from None
    base = path.resolve().parent
    warnings: list[Problem] = []

    for name in doc:
        if name not in _SECTIONS:
            c.warn(f"[{name}]", "", "unknown section (ignored)")

    # [store] -------------------------------------------------------------
    st = _section(c, doc, "store")
    if "store" not in doc:
        c.err("[store]", "", "section is required")
    store_id = c.string(st, "id", "[store]", required=True, nonempty=True)
    if store_id is not None and not ID_RE.fullmatch(store_id):
        c.err("[store]", "id", f"{store_id!r} may only contain letters, digits, '.', '_' and '-' (used in topics)")
        store_id = None
    name = c.string(st, "name", "[store]", default=None)
    timezone = c.string(st, "timezone", "[store]", required=True, nonempty=True)
    tz_ok = False
    if timezone is not None:
        err = check_timezone(timezone)
        if err:
            c.err("[store]", "timezone", err)
        else:
            tz_ok = True
    anchor_t = st.get("anchor")
    anchor = None
    if not isinstance(anchor_t, dict):
        c.err("[store.anchor]", "", "section is required (lat, lon, bearing)" if anchor_t is None
              else f"must be a table, not {type_name(anchor_t)}")
    else:
        c.unknown_keys(anchor_t, {"lat", "lon", "bearing"}, "[store.anchor]")
        lat = c.number(anchor_t, "lat", "[store.anchor]", required=True, minimum=-90, maximum=90)
        lon = c.number(anchor_t, "lon", "[store.anchor]", required=True, minimum=-180, maximum=180)
        bearing = c.number(anchor_t, "bearing", "[store.anchor]", default=0.0)
        if lat is not None and lon is not None and bearing is not None:
            anchor = Anchor(lat=lat, lon=lon, bearing=bearing % 360.0)

    files: dict[str, Path | None] = {}
    for key, required in (("layout", True), ("promotions", True), ("profiles", False), ("inventory", False)):
        rel = c.string(st, key, "[store]", required=required, nonempty=True)
        files[key] = None
        if rel is not None:
            p = base / rel
            if not p.is_file():
                c.err("[store]", key, f"file not found: {p}")
            else:
                files[key] = p

    # other sections ----------------------------------------------------------
    m = _section(c, doc, "mqtt")
    W = "[mqtt]"
    proto = m.get("protocol", "3.1.1")
    if proto == 5 or proto == "5" or proto == "5.0":
        proto = "5"
    elif proto not in ("3.1.1",):
        c.err(W, "protocol", f"must be '3.1.1' or '5', not {proto!r}")
        proto = "3.1.1"
    mqtt = MqttConfig(
        url=_check_mqtt_url(c, W, "url", m.get("url")),
        username=c.string(m, "username", W),
        password=c.string(m, "password", W),
        client_id=c.string(m, "client_id", W, nonempty=True),
        protocol=proto,
        tls_ca=_file_key(c, base, W, "tls_ca", m.get("tls_ca")),
        tls_cert=_file_key(c, base, W, "tls_cert", m.get("tls_cert")),
        tls_key=_file_key(c, base, W, "tls_key", m.get("tls_key")),
        tls_insecure=c.boolean(m, "tls_insecure", W),
        keepalive=c.integer(m, "keepalive", W, default=30, minimum=1, maximum=65535),
    )
    if ("tls_cert" in m) != ("tls_key" in m):
        c.err(W, "tls_key" if "tls_cert" in m else "tls_cert", "tls_cert and tls_key go together")
    if mqtt.password is not None and mqtt.username is None:
        c.err(W, "username", "is required when password is set")

    h = _section(c, doc, "http")
    W = "[http]"
    http = HttpConfig(
        listen=_parse_listen(c, c.string(h, "listen", W, nonempty=True)),
        admin_token=c.string(h, "admin_token", W, nonempty=True),
        tls_cert=_file_key(c, base, W, "tls_cert", h.get("tls_cert")),
        tls_key=_file_key(c, base, W, "tls_key", h.get("tls_key")),
    )
    if ("tls_cert" in h) != ("tls_key" in h):
        c.err(W, "tls_key" if "tls_cert" in h else "tls_cert", "tls_cert and tls_key go together")

    d = _section(c, doc, "data")
    data_rel = c.string(d, "dir", "[data]", default="var", nonempty=True)
    data_dir = (base / data_rel).resolve()
    if data_dir.exists() and not data_dir.is_dir():
        c.err("[data]", "dir", f"{data_dir} exists and is not a directory")

    t = _section(c, doc, "tracking")
    W = "[tracking]"
    acc = dict(DEFAULT_ACC)
    dacc = t.get("default_acc", {})
    if not isinstance(dacc, dict):
        c.err("[tracking.default_acc]", "", f"must be a table source -> metres, not {type_name(dacc)}")
    else:
        for src in dacc:
            if src not in SOURCES:
                c.warn("[tracking.default_acc]", src, f"unknown source (known: {', '.join(SOURCES)})")
            v = c.number(dacc, src, "[tracking.default_acc]", default=None, positive=True)
            if v is not None:
                acc[src] = v
    tracking = TrackingConfig(
        clock=c.string(t, "clock", W, default="receive", choices=("receive", "ping")),
        timeout_s=c.number(t, "timeout_s", W, default=120.0, positive=True),
        default_acc=MappingProxyType(acc),
        publish_events=c.boolean(t, "publish_events", W, default=False),
        max_future_skew_s=c.number(t, "max_future_skew_s", W, default=300.0, positive=True),
        sustained_pings=c.integer(t, "sustained_pings", W, default=3, minimum=0),
        max_speed_mps=c.number(t, "max_speed_mps", W, default=50.0, positive=True),
    )

    g = _section(c, doc, "ingest")
    ingest = IngestConfig(
        owntracks=c.boolean(g, "owntracks", "[ingest]", default=False),
        owntracks_cmd=c.boolean(g, "owntracks_cmd", "[ingest]", default=True),
        max_payload_bytes=c.integer(g, "max_payload_bytes", "[ingest]", default=16384, minimum=64),
        shed_above=c.integer(g, "shed_above", "[ingest]", default=5000, minimum=1),
    )

    o = _section(c, doc, "offers")
    W = "[offers]"
    offers = OffersConfig(
        ttl_s=c.number(o, "ttl_s", W, default=900.0, positive=True),
        per_visit_cap=c.integer(o, "per_visit_cap", W, default=0, minimum=0),
        min_gap_s=c.number(o, "min_gap_s", W, default=0.0, minimum=0),
        daily_cap=c.integer(o, "daily_cap", W, default=0, minimum=0),
    )

    pv = _section(c, doc, "privacy")
    W = "[privacy]"
    privacy = PrivacyConfig(
        anonymous_offers=c.boolean(pv, "anonymous_offers", W, default=True),
        anonymous_tracking=c.boolean(pv, "anonymous_tracking", W, default=False),
        position_retention_s=c.number(pv, "position_retention_s", W, default=86400.0, minimum=0),
    )

    s = _section(c, doc, "sync")
    W = "[sync]"
    central_url = c.string(s, "central_url", W, nonempty=True)
    if central_url is not None:
        u = urllib.parse.urlsplit(central_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            c.err(W, "central_url", f"must be an http:// or https:// URL, not {central_url!r}")
            central_url = None
    transport = c.string(s, "transport", W, default="http", choices=("http", "mqtt"))
    sync_mqtt_url = _check_mqtt_url(c, W, "mqtt_url", s.get("mqtt_url"))
    if transport == "mqtt" and s.get("mqtt_url") is None:
        c.err(W, "mqtt_url", "is required when transport = \"mqtt\"")
    sync = SyncConfig(
        central_url=central_url,
        token=c.string(s, "token", W, nonempty=True),
        interval_s=c.number(s, "interval_s", W, default=5.0, positive=True),
        transport=transport,
        mqtt_url=sync_mqtt_url,
        encoding=c.string(s, "encoding", W, default="json", choices=("json", "msgpack")),
        batch_size=c.integer(s, "batch_size", W, default=500, minimum=1),
        max_outbox_mb=c.number(s, "max_outbox_mb", W, default=256.0, positive=True),
        timeout_s=c.number(s, "timeout_s", W, default=10.0, positive=True),
        retention_days=c.number(s, "retention_days", W, default=30.0, positive=True),
    )

    a = _section(c, doc, "associates")
    W = "[associates]"
    roles: dict[str, tuple[str, ...]] = {}
    raw_roles = a.get("roles", {})
    if not isinstance(raw_roles, dict):
        c.err(W, "roles", f"must be a table role -> list of zone ids, not {type_name(raw_roles)}")
    else:
        for role in raw_roles:
            if not ID_RE.fullmatch(role) or role in ("all", "claim"):
                c.err("[associates.roles]", role, "role names may only contain letters, digits, '.', '_', '-' "
                                                  "and must not be 'all' or 'claim' (topics {R}/alert/all, "
                                                  "{R}/alert/claim)")
                continue
            zones = c.str_list(raw_roles, role, "[associates.roles]")
            roles[role] = zones
    associates = AssociatesConfig(
        token=c.string(a, "token", W, nonempty=True),
        roles=MappingProxyType(roles),
        escalate_after_s=c.number(a, "escalate_after_s", W, default=120.0, positive=True),
        dedupe_window_s=c.number(a, "dedupe_window_s", W, default=900.0, minimum=0),
        assist_dwell_s=c.number(a, "assist_dwell_s", W, default=180.0, positive=True),
        vip_arrival=c.boolean(a, "vip_arrival", W, default=True),
        stock_out=c.boolean(a, "stock_out", W, default=True),
    )

    rl = _section(c, doc, "reload")
    reload_cfg = ReloadConfig(poll_s=c.number(rl, "poll_s", "[reload]", default=2.0, minimum=0))

    src = _section(c, doc, "sources")
    sources = parse_sources(c, src)
    floorplans = parse_floorplans(c, doc.get("floorplans"))

    # referenced files ----------------------------------------------------
    parts: dict[str, Any] = {"store.toml": doc}
    problems = list(c.problems)
    warnings.extend(c.warnings)
    fences: tuple[Fence, ...] = ()
    beacons: tuple[Beacon, ...] = ()
    outline = None
    promotions: tuple[Promotion, ...] = ()
    profiles: dict[str, Profile] = {}
    inventory: dict[str, int] = {}
    layout_ok = False

    def run(key, fn):
        p = files.get(key)
        if p is None:
            return None
        lc = Collector(str(p))
        obj = _load_json(lc, p, key)
        problems.extend(lc.problems)
        if obj is None:
            return None
        parts[key] = obj
        try:
            return fn(obj, str(p))
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    if anchor is not None:
        res = run("layout", lambda obj, f: parse_layout(obj, file=f, anchor=anchor))
        if res is not None:
            fences, beacons, outline = res
            layout_ok = True
    # When the layout has errors, still check references against the ids it names.
    fence_ids = {f.id for f in fences} if layout_ok else _raw_fence_ids(parts.get("layout"))
    res = run("promotions", lambda obj, f: parse_promotions(obj, file=f, timezone=timezone if tz_ok else "UTC",
                                                             warnings=warnings))
    if res is not None:
        promotions = res
    if fence_ids is not None and isinstance(parts.get("promotions"), list):
        # on the raw list, so references are checked even when a promotion has other errors
        problems.extend(_cross_check_raw(fence_ids, parts["promotions"], file=str(files["promotions"])))
    res = run("profiles", lambda obj, f: parse_profiles(obj, file=f, warnings=warnings))
    if res is not None:
        profiles = res
    res = run("inventory", lambda obj, f: parse_inventory(obj, file=f))
    if res is not None:
        inventory = res
    if fence_ids is not None:
        ids = fence_ids
        for role, zones in roles.items():
            missing = [z for z in zones if z not in ids]
            if missing:
                problems.append(Problem(toml_file, "[associates.roles]", role,
                                        f"unknown fence id(s): {', '.join(missing)}"))
            if role in ids:
                warnings.append(Problem(toml_file, "[associates.roles]", role,
                                        "role has the same name as a fence; alerts to either share a topic",
                                        severity="warning"))

    _raise_if(problems)
    assert store_id is not None and timezone is not None and anchor is not None
    return StoreConfig(
        path=path.resolve(),
        store_id=store_id,
        name=name if name is not None else store_id,
        timezone=timezone,
        anchor=anchor,
        fences=fences,
        beacons=beacons,
        promotions=promotions,
        profiles=MappingProxyType(profiles),
        inventory=MappingProxyType(inventory),
        mqtt=mqtt,
        http=http,
        tracking=tracking,
        ingest=ingest,
        offers=offers,
        privacy=privacy,
        sync=sync,
        associates=associates,
        reload=reload_cfg,
        data_dir=data_dir,
        outline=outline,
        warnings=tuple(warnings),
        version=config_version(parts),
        sources=MappingProxyType(sources),
        floorplans=floorplans,
        files=MappingProxyType({"store": toml_file, **{k: str(v) for k, v in files.items() if v is not None}}),
    )
