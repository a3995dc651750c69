"""The layout section: ``layout.geojson`` (a GeoJSON FeatureCollection) into
fences, beacons and the store outline, in the store's local frame.

Simple shapes (points, hole-free polygons) are built in bulk and every
check that can be is vectorised (see BENCHMARKS.md, "Start-up with 10,000
fences"); the results and errors are the same as building them one by one
(``tests/test_config_layout_bulk.py``).  Pure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
import shapely.geometry

from ._checks import ID_RE, Collector, raise_if, type_name
from .model import FENCE_KINDS, Anchor, Beacon, Fence

__all__ = ["parse_layout", "raw_fence_ids", "MAX_LAYOUT_EXTENT_M"]

# A layout point farther than this from the anchor is almost certainly a
# frame mix-up (local metres read as lon/lat, or the wrong anchor).
MAX_LAYOUT_EXTENT_M = 10_000.0


def _where_feature(i: int, props: Any) -> str:
    """Where a problem is: ``feature "aisle-2"``, or ``feature #3`` (counted
    from 1, as an editor counts) when the feature has no id."""
    if isinstance(props, dict) and isinstance(props.get("id"), str) and props["id"]:
        return f'feature "{props["id"]}"'
    return f"feature #{i + 1}"


def _feature_ref(i: int, feature: Any) -> str:
    """A feature named in a message: ``feature #3 (id "aisle-2")``, or
    ``feature #3`` when it has no id (counted from 1)."""
    props = feature.get("properties") if isinstance(feature, dict) else None
    if isinstance(props, dict) and isinstance(props.get("id"), str) and props["id"]:
        return f'feature #{i + 1} (id "{props["id"]}")'
    return f"feature #{i + 1}"


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


# Every feature property the loader reads (fences, beacons, the outline).
FEATURE_KEYS = frozenset({
    "id", "name", "kind", "floor", "category", "skus", "dwell_s", "assist", "capacity", "queue_alert_at",
    "queue_wait_s", "radius_m", "outline", "beacon_id", "tx_power",
})

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


def _unclosed(gtype: str, coords: list) -> str | None:
    """The problem with the first ring of a Polygon or MultiPolygon that does
    not end where it starts (RFC 7946 3.1.6), or None."""
    polys = [coords] if gtype == "Polygon" else coords
    for k, rings in enumerate(polys):
        for r, ring in enumerate(rings):
            if ring[0] != ring[-1]:
                name = "the outer ring" if r == 0 else f"hole #{r}"
                if gtype == "MultiPolygon":
                    name = f"polygon #{k + 1}, {name},"
                return (f"{name} is not closed: it starts at {ring[0]} but ends at {ring[-1]} "
                        "(a GeoJSON ring must end with its first position)")
    return None


def _build_deferred(c: Collector, parsed: list[dict], deferred: list[tuple[int, str]], features: list) -> None:
    """Build the simple shapes of the first pass in bulk: points in one call,
    hole-free polygons in one call per ring length (refusing open rings, as
    :func:`_unclosed` does for the others)."""
    groups: dict[object, list[int]] = {}
    for k, _ in deferred:
        e = parsed[k]
        coords = features[e["i"]]["geometry"]["coordinates"]
        key = "Point" if e["gtype"] == "Point" else len(coords[0])
        groups.setdefault(key, []).append(k)
    for key, ks in groups.items():
        coords = [features[parsed[k]["i"]]["geometry"]["coordinates"] for k in ks]
        arr = np.array(coords, dtype=float)
        if key == "Point":
            geoms = shapely.points(arr)
        else:
            rings = arr[:, 0]
            for j in np.flatnonzero((rings[:, 0] != rings[:, -1]).any(axis=1)).tolist():
                e = parsed[ks[j]]
                c.err(e["where"], "geometry", _unclosed("Polygon", coords[j]))
                e["geom"] = None
            geoms = shapely.polygons(rings)
        for k, g in zip(ks, geoms):
            e = parsed[k]
            if e["geom"] is _DEFERRED:  # not dropped meanwhile
                e["geom"] = g


def _dist(m: float) -> str:
    """A distance for a message: ``35 m``, ``12.4 km``, ``1,191 km``."""
    if m < 1000:
        return f"{m:.0f} m"
    return f"{m / 1000:.1f} km" if m < 100_000 else f"{m / 1000:,.0f} km"


def _dist_range(d: np.ndarray) -> str:
    lo, hi = _dist(float(d.min())), _dist(float(d.max()))
    return lo if lo == hi else f"{lo} to {hi}"


def _lonlat_spread(lonlat: np.ndarray) -> tuple[float, float, float]:
    """``(lat, lon, radius_m)``: the median position of WGS84 coordinates and
    how far the farthest lies from it."""
    from geometry.frames import LocalFrame

    lon, lat = np.median(lonlat[:, 0]), np.median(lonlat[:, 1])
    x, y = LocalFrame(float(lat), float(lon)).to_local(lonlat[:, 0], lonlat[:, 1])
    return float(lat), float(lon), float(np.hypot(x, y).max())


def _far_message(head: str, plural: bool, raw: np.ndarray, oor: np.ndarray, frame: Any, anchor: Anchor,
                 *, local: bool, isolated: bool) -> str:
    """Why coordinates ``raw`` (as written in the file; ``oor`` marks those
    out of longitude/latitude range) lie too far from the anchor, after
    ``head`` ("lies 12 km from the store anchor").  Hints, first that fits:
    lat/lon swapped (swapping puts them near the anchor); one stray feature
    among good ones (``isolated``); numbers that are metres, not lon/lat
    (small, and out of range or spread wider than a store); a wrong anchor
    (the features lie close together); else no guess."""
    limit = f"more than {MAX_LAYOUT_EXTENT_M / 1000:g} km"
    if local:
        return f'{head}, {limit} ("frame": "local" coordinates are metres from the store anchor)'
    they = "they" if plural else "it"
    sw_lon, sw_lat = raw[:, 1], raw[:, 0]
    if (np.abs(sw_lat) <= 90).all() and (np.abs(sw_lon) <= 180).all():
        x, y = frame.to_local(sw_lon, sw_lat)
        d = np.hypot(x, y)
        if d.max() <= MAX_LAYOUT_EXTENT_M:
            return (f"{head}; with latitude and longitude swapped {they} would lie within {_dist(float(d.max()))} "
                    f"of it (lat/lon swapped? GeoJSON positions are [longitude, latitude]; [store.anchor] is "
                    f"lat {anchor.lat:g}, lon {anchor.lon:g})")
    if isolated:
        return f"{head} (unlike the rest of the layout: check its coordinates)"
    spread = math.inf if oor.any() else _lonlat_spread(raw)[2]
    if spread > MAX_LAYOUT_EXTENT_M and np.abs(raw).max() <= MAX_LAYOUT_EXTENT_M:
        return (f"{head}; {'the numbers look' if plural else 'its numbers look'} like metres, not longitude/latitude "
                '(coordinates in metres? add "frame": "local" to the FeatureCollection)')
    if spread <= MAX_LAYOUT_EXTENT_M:
        lat, lon, _ = _lonlat_spread(raw)
        return (f"{head}, {'close together ' if plural else ''}around lat {lat:.5f}, lon {lon:.5f} (anchor wrong? "
                f"[store.anchor] is lat {anchor.lat:g}, lon {anchor.lon:g})")
    if oor.any():
        return (f"{head} (values up to {np.abs(raw).max():,.0f}: GeoJSON coordinates are WGS84 [longitude, "
                'latitude], or local metres with "frame": "local")')
    return f"{head}, {limit} (check the coordinates and [store.anchor])"


def _place(c: Collector, entries: list[dict], anchor: Anchor, local: bool) -> None:
    """Move ``entries``' shapes to the local frame (WGS84: every coordinate in
    one vectorised call) and drop those more than MAX_LAYOUT_EXTENT_M from the
    anchor.  When most features are that far (a systematic mistake: metres
    without ``"frame": "local"``, lat/lon swapped, a wrong anchor) the layout
    gets one error saying which; otherwise each stray feature gets its own."""
    geoms = np.array([e["geom"] for e in entries], dtype=object)
    raw, owner = shapely.get_coordinates(geoms, return_index=True)
    frame = None
    if local:
        xy = raw
        oor = np.zeros(len(raw), dtype=bool)
    else:
        from geometry.frames import LocalFrame  # local import: geometry is only needed for WGS84

        frame = LocalFrame(anchor.lat, anchor.lon, anchor.bearing)
        oor = (np.abs(raw[:, 0]) > 180) | (np.abs(raw[:, 1]) > 90)
        ok = ~oor
        xy = np.zeros_like(raw)
        x, y = frame.to_local(raw[ok, 0], raw[ok, 1])
        xy[ok, 0], xy[ok, 1] = x, y
        for e, g in zip(entries, shapely.set_coordinates(geoms.copy(), xy)):
            e["geom"] = g
    dist = np.hypot(xy[:, 0], xy[:, 1])
    dist[oor] = np.inf
    far = np.zeros(len(entries), dtype=bool)
    far[owner[dist > MAX_LAYOUT_EXTENT_M]] = True
    far_idx = np.flatnonzero(far).tolist()
    if not far_idx:
        return
    reach = np.zeros(len(entries))  # each feature's farthest point from the anchor
    np.maximum.at(reach, owner, dist)
    n, k = len(entries), len(far_idx)
    systematic = k > n / 2

    if systematic and k > 1:
        mask = far[owner]
        subject = f"{k} of {n} features" if k < n else "both features" if n == 2 else f"all {n} features"
        head = (f"{subject} are out of longitude/latitude range" if oor[mask].any()
                else f"{subject} lie {_dist_range(reach[far])} from the store anchor")
        c.err("layout", "features", _far_message(head, True, raw[mask], oor[mask], frame, anchor, local=local,
                                                 isolated=False))
    else:
        for j in far_idx:
            mask = owner == j
            head = ("longitude/latitude out of range" if oor[mask].any()
                    else f"lies {_dist(float(reach[j]))} from the store anchor")
            c.err(entries[j]["where"], "geometry", _far_message(head, False, raw[mask], oor[mask], frame, anchor,
                                                                local=local, isolated=not systematic))
    for j in far_idx:
        entries[j]["geom"] = None


def _geometry(c: Collector, geom_obj: Any, gtype: Any, where: str) -> Any:
    """A feature's shape as written (not yet in the local frame): a shapely
    geometry, ``_DEFERRED`` for a simple shape built later in bulk, or None
    (the problem recorded)."""
    if not isinstance(geom_obj, dict):
        c.err(where, "geometry", f"must be a GeoJSON geometry object, not {type_name(geom_obj)}")
    elif not isinstance(gtype, str) or gtype not in _DEPTH:
        c.err(where, "geometry", f"type {gtype!r} is not supported (use Polygon, MultiPolygon, "
                                 "or Point with radius_m / kind 'beacon')")
    elif not _coords_ok(geom_obj.get("coordinates"), _DEPTH[gtype]):
        c.err(where, "geometry", f"coordinates are not a valid {gtype} (finite numbers, "
                                 "[x, y] positions, non-empty rings)")
    elif _simple_shape(gtype, geom_obj["coordinates"]):
        return _DEFERRED  # built (and its ring checked) in _build_deferred, with the others of its shape
    elif gtype != "Point" and (unclosed := _unclosed(gtype, geom_obj["coordinates"])):
        c.err(where, "geometry", unclosed)
    else:
        try:
            return shapely.force_2d(shapely.geometry.shape(geom_obj))
        except Exception as exc:  # shapely raises various errors on malformed input
            c.err(where, "geometry", f"cannot build {gtype}: {exc}")
    return None


def _beacon(c: Collector, entry: dict, props: dict, seen: dict[str, int], features: list) -> None:
    """A ``kind: "beacon"`` Point: ``beacon_id`` (unique) and ``tx_power``."""
    where, gtype, i = entry["where"], entry["gtype"], entry["i"]
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
        elif bid in seen:
            j = seen[bid]
            c.err(where, "beacon_id", f"duplicate beacon {bid!r} (also {_feature_ref(j, features[j])})")
        else:
            seen[bid] = i
    entry["beacon_id"] = bid
    entry["tx_power"] = c.number(props, "tx_power", where, default=-59.0, minimum=-127, maximum=20)


def _fence(c: Collector, entry: dict, props: dict, kind: Any, seen_ids: dict[str, int]) -> None:
    """A fence's properties: ``id`` (unique), ``kind``, ``name``, ``category``,
    ``skus``, ``dwell_s``, ``assist`` and, for a Point, ``radius_m``."""
    where, gtype, i = entry["where"], entry["gtype"], entry["i"]
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
        c.err(where, "id", f"duplicate id {fid!r} (feature #{i + 1}; also feature #{seen_ids[fid] + 1})")
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
    _floor_props(c, props, where, kind, entry)
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


def _floor_props(c: Collector, props: dict, where: str, kind: Any, entry: dict) -> None:
    """``capacity`` (people, any fence) and, on ``checkout`` fences, ``queue_alert_at`` /
    ``queue_wait_s`` (see DESIGN.md "The store floor")."""
    entry["capacity"] = c.integer(props, "capacity", where, default=None, minimum=1)
    entry["queue_alert_at"] = c.integer(props, "queue_alert_at", where, default=None, minimum=1)
    entry["queue_wait_s"] = c.number(props, "queue_wait_s", where, default=120.0, positive=True)
    if "queue_alert_at" in props and kind != "checkout":
        c.err(where, "queue_alert_at", f"only a 'checkout' fence has a queue, not a {kind!r} fence")
        entry["queue_alert_at"] = None
    elif "queue_wait_s" in props and "queue_alert_at" not in props:
        c.warn(where, "queue_wait_s", "ignored without queue_alert_at")


def _assemble(c: Collector, parsed: list[dict]) -> tuple[list[Fence], list[Beacon], list]:
    """The fences, beacons and outline parts of the parsed features (shapes in
    the local frame): polygons checked for validity and area, circles
    buffered, all vectorised."""
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
            circle=circle, assist=bool(e["assist"]), capacity=e["capacity"],
            queue_alert_at=e["queue_alert_at"], queue_wait_s=e["queue_wait_s"],
        ))
    return fences, beacons, outlines


def parse_layout(obj: Any, *, file: str, anchor: Anchor, strict: bool = True,
                 warnings: list | None = None):
    """Parse a GeoJSON FeatureCollection into ``(fences, beacons, outline)``.

    A top-level ``"frame": "local"`` means coordinates are local metres;
    otherwise they are RFC 7946 WGS84 ``[lon, lat]`` and are converted with
    :class:`geometry.frames.LocalFrame` on the anchor (all coordinates in one
    vectorised call).  ``outline`` is the union of the features with
    ``kind: "outline"`` or ``outline: true`` (None when there are none).
    An unknown property is an error naming the nearest known one (``knd``
    would make the feature an ``other`` fence without a word); a warning
    with ``strict=False`` (a bundle from central).  Warnings go to ``warnings``
    when given.
    Raises :class:`ConfigError` listing every problem.
    """
    c = Collector(file)
    where_top = "layout"
    if not isinstance(obj, dict):
        c.err(where_top, "", f"must be a GeoJSON FeatureCollection object, not {type_name(obj)}")
        raise_if(c.problems)
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
        c.unknown_keys(props, FEATURE_KEYS, where, strict=strict)
        geom_obj = feat.get("geometry")
        gtype = geom_obj.get("type") if isinstance(geom_obj, dict) else None
        kind = props.get("kind", "other")
        is_outline = kind == "outline" or props.get("outline") is True
        is_beacon = kind == "beacon"
        if "outline" in props and not isinstance(props["outline"], bool):
            c.err(where, "outline", f"must be true or false, not {type_name(props['outline'])}")

        geom = _geometry(c, geom_obj, gtype, where)
        if geom is _DEFERRED:
            deferred.append((len(parsed), where))
        entry: dict[str, Any] = {"i": i, "where": where, "geom": geom, "gtype": gtype,
                                 "floor": c.integer(props, "floor", where, default=0)}
        if is_beacon:
            _beacon(c, entry, props, seen_beacons, features)
        elif is_outline:
            entry["role"] = "outline"
            if gtype not in (None, "Polygon", "MultiPolygon"):
                c.err(where, "geometry", f"the store outline must be a Polygon or MultiPolygon, not {gtype}")
                entry["geom"] = None
        else:
            _fence(c, entry, props, kind, seen_ids)
        parsed.append(entry)

    _build_deferred(c, parsed, deferred, features)

    # To local metres in one vectorised call; one error for a layout that is
    # systematically far from the anchor, else one per stray feature.
    with_geom = [e for e in parsed if e["geom"] is not None]
    if with_geom:
        _place(c, with_geom, anchor, local)
    fences, beacons, outlines = _assemble(c, parsed)
    if warnings is not None:
        warnings.extend(c.warnings)
    raise_if(c.problems)
    outline = None
    if outlines:
        outline = outlines[0] if len(outlines) == 1 else shapely.union_all(outlines)
    return tuple(fences), tuple(beacons), outline


def raw_fence_ids(layout: Any) -> set[str] | None:
    """Every string ``properties.id`` in a raw layout (None when unusable)."""
    if not isinstance(layout, dict) or not isinstance(layout.get("features"), list):
        return None
    ids = set()
    for feat in layout["features"]:
        props = feat.get("properties") if isinstance(feat, dict) else None
        if isinstance(props, dict) and isinstance(props.get("id"), str):
            ids.add(props["id"])
    return ids

