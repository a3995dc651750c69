"""`edge-agent check` finds the real mistake: one error for a systematic
layout problem (with the distance and the likely cause), feature numbers from
1 with the id, unclosed rings refused, no false outline warnings.  Pure:
store_config.check on copies of the sample store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geometry.frames import LocalFrame
from store_config import check, sample_path
from store_config.load import parse_layout
from store_config.model import Anchor, ConfigError

SAMPLE = sample_path().parent
ANCHOR = Anchor(lat=49.1875, lon=16.6130, bearing=12.5)  # the sample's [store.anchor]
N_FEATURES = 49  # in the sample layout (outline, 19 fences, 29 beacons)


def _map(coords, fn):
    """Apply ``fn(x, y) -> [x, y]`` to every position of a GeoJSON coordinate array."""
    if isinstance(coords[0], (int, float)):
        return fn(*coords)
    return [_map(c, fn) for c in coords]


def sample_layout() -> dict:
    return json.loads((SAMPLE / "layout.geojson").read_text(encoding="utf-8"))


def to_wgs84(layout: dict, *, decimals: int | None = None, swap: bool = False, dlat: float = 0.0) -> dict:
    """The local sample layout converted to WGS84 [lon, lat] on the sample anchor
    (as a careful author would), optionally rounded, swapped or shifted north."""
    frame = LocalFrame(ANCHOR.lat, ANCHOR.lon, ANCHOR.bearing)

    def conv(x, y):
        lon, lat = frame.to_wgs84(x, y)
        lat += dlat
        if decimals is not None:
            lon, lat = round(lon, decimals), round(lat, decimals)
        return [lat, lon] if swap else [lon, lat]

    out = dict(layout)
    del out["frame"]
    out["features"] = [{**f, "geometry": {**f["geometry"], "coordinates": _map(f["geometry"]["coordinates"], conv)}}
                       for f in layout["features"]]
    return out


@pytest.fixture
def store(tmp_path: Path):
    """Write a layout into a copy of the sample store; returns check()'s result."""

    def write(layout: dict):
        d = tmp_path / "store"
        shutil.copytree(SAMPLE, d, dirs_exist_ok=True)
        (d / "layout.geojson").write_text(json.dumps(layout), encoding="utf-8")
        cfg, problems = check(d / "store.toml")
        return cfg, problems, str(d / "layout.geojson")

    return write


def errors(problems):
    return [p for p in problems if p.severity == "error"]


# ---------------------------------------------------------------------------
# a layout far from its anchor: one error, the likely cause


def test_metres_without_frame_local_is_one_error_with_the_frame_hint(store):
    layout = sample_layout()
    del layout["frame"]
    cfg, problems, file = store(layout)
    assert cfg is None
    [e] = errors(problems)
    assert (e.file, e.where, e.field) == (file, "layout", "features")
    assert e.message == (
        f"all {N_FEATURES} features lie 2,688 km to 5,893 km from the store anchor; the numbers look like metres, "
        'not longitude/latitude (coordinates in metres? add "frame": "local" to the FeatureCollection)')


def test_swapped_lat_lon_is_one_error_saying_so(store):
    cfg, problems, file = store(to_wgs84(sample_layout(), swap=True))
    [e] = errors(problems)
    assert (e.file, e.where, e.field) == (file, "layout", "features")
    assert e.message == (
        f"all {N_FEATURES} features lie 4,657 km from the store anchor; with latitude and longitude swapped they "
        "would lie within 50 m of it (lat/lon swapped? GeoJSON positions are [longitude, latitude]; "
        "[store.anchor] is lat 49.1875, lon 16.613)")


def test_layout_elsewhere_is_one_error_asking_about_the_anchor(store):
    cfg, problems, file = store(to_wgs84(sample_layout(), dlat=0.5))  # ~56 km north
    [e] = errors(problems)
    assert (e.where, e.field) == ("layout", "features")
    assert e.message == (
        f"all {N_FEATURES} features lie 55.6 km from the store anchor, close together around lat 49.68755, "
        "lon 16.61330 (anchor wrong? [store.anchor] is lat 49.1875, lon 16.613)")
    assert "metres" not in e.message


def test_one_stray_feature_gets_its_own_error_without_the_metres_hint(store):
    layout = to_wgs84(sample_layout())
    wine = next(f for f in layout["features"] if f["properties"].get("id") == "wine")
    wine["geometry"]["coordinates"] = _map(wine["geometry"]["coordinates"], lambda lon, lat: [lon + 1.0, lat])
    cfg, problems, file = store(layout)
    [e] = errors(problems)
    assert (e.file, e.where, e.field) == (file, 'feature "wine"', "geometry")
    assert e.message == "lies 72.9 km from the store anchor (unlike the rest of the layout: check its coordinates)"


def test_out_of_range_feature_among_good_ones_is_named_alone():
    ok = {"type": "Feature", "properties": {"id": "ok"}, "geometry": {"type": "Point", "coordinates": [16.613,
                                                                                                        49.1875]}}
    layout = {"type": "FeatureCollection", "features": [
        {**ok, "properties": {"id": "a", "radius_m": 1}},
        {**ok, "properties": {"id": "b", "radius_m": 1}},
        {"type": "Feature", "properties": {"id": "typo", "radius_m": 1},
         "geometry": {"type": "Point", "coordinates": [16.613, 491.875]}},
    ]}
    with pytest.raises(ConfigError) as ei:
        parse_layout(layout, file="layout.geojson", anchor=ANCHOR)
    [p] = ei.value.problems
    assert (p.where, p.field) == ('feature "typo"', "geometry")
    assert p.message == "longitude/latitude out of range (unlike the rest of the layout: check its coordinates)"


def test_local_frame_too_far_says_local_coordinates_are_metres(store):
    layout = sample_layout()  # millimetres instead of metres
    for f in layout["features"]:
        f["geometry"]["coordinates"] = _map(f["geometry"]["coordinates"], lambda x, y: [x * 1000, y * 1000])
    cfg, problems, file = store(layout)
    [e] = errors(problems)
    assert (e.where, e.field) == ("layout", "features")
    assert e.message == (
        "46 of 49 features lie 15.0 km to 50.0 km from the store anchor, more than 10 km "
        '("frame": "local" coordinates are metres from the store anchor)')


# ---------------------------------------------------------------------------
# feature numbers count from 1 and carry the id


def test_feature_numbers_count_from_one_and_name_the_id():
    beacon = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}}
    square = {"type": "Polygon", "coordinates": [[[0, 0], [3, 0], [3, 3], [0, 3], [0, 0]]]}
    layout = {"type": "FeatureCollection", "frame": "local", "features": [
        {**beacon, "properties": {"id": "b-1", "kind": "beacon", "beacon_id": "ab:1:2"}},
        {**beacon, "properties": {"kind": "beacon", "beacon_id": "AB:1:2"}},
        {"type": "Feature", "properties": {"id": "dup"}, "geometry": square},
        {"type": "Feature", "properties": {"id": "dup"}, "geometry": square},
        {"type": "Feature", "properties": {"kind": "aisle"}, "geometry": square},
    ]}
    with pytest.raises(ConfigError) as ei:
        parse_layout(layout, file="layout.geojson", anchor=ANCHOR)
    got = {(p.where, p.field, p.message) for p in ei.value.problems}
    assert got == {
        ("feature #2", "beacon_id", "duplicate beacon 'ab:1:2' (also feature #1 (id \"b-1\"))"),
        ('feature "dup"', "id", "duplicate id 'dup' (feature #4; also feature #3)"),
        ("feature #5", "id", "is required"),
    }


# ---------------------------------------------------------------------------
# unclosed rings


def test_unclosed_rings_are_refused_naming_file_feature_and_field(store):
    layout = sample_layout()
    by_id = {f["properties"].get("id"): f for f in layout["features"]}
    by_id["produce"]["geometry"]["coordinates"][0].pop()  # outer ring open
    by_id["bakery"]["geometry"] = {"type": "Polygon", "coordinates": [
        [[1, 17], [9, 17], [9, 23], [1, 23], [1, 17]], [[3, 19], [5, 19], [5, 21], [3, 21]]]}  # hole open
    by_id["dairy"]["geometry"] = {"type": "MultiPolygon", "coordinates": [
        [[[10, 25], [19, 25], [19, 29.5], [10, 29.5], [10, 25]]],
        [[[20, 25], [29, 25], [29, 29.5], [20, 29.5]]]]}  # second polygon open
    cfg, problems, file = store(layout)
    assert cfg is None
    got = {(p.file, p.where, p.field, p.message) for p in errors(problems)}
    tail = "(a GeoJSON ring must end with its first position)"
    assert got == {
        (file, 'feature "produce"', "geometry", f"the outer ring is not closed: it starts at [1, 5] but ends at "
                                                f"[1, 15] {tail}"),
        (file, 'feature "bakery"', "geometry", f"hole #1 is not closed: it starts at [3, 19] but ends at [3, 21] "
                                               f"{tail}"),
        (file, 'feature "dairy"', "geometry", f"polygon #2, the outer ring, is not closed: it starts at [20, 25] "
                                              f"but ends at [20, 29.5] {tail}"),
    }


# ---------------------------------------------------------------------------
# the outline


@pytest.mark.parametrize("decimals", [None, 7, 6])
def test_wgs84_sample_has_no_false_outline_warnings(store, decimals):
    """The sample converted to WGS84 (as written by tools that round to 7 or 6
    decimals) is as clean as the local one: fences drawn along the outline's
    edge stick out by rounding noise only."""
    cfg, problems, _ = store(to_wgs84(sample_layout(), decimals=decimals))
    assert cfg is not None
    assert [p for p in problems if "outline" in p.message] == []
    _, local_problems = check(sample_path())
    assert sorted((p.severity, p.where, p.field) for p in problems) == sorted(
        (p.severity, p.where, p.field) for p in local_problems)


def test_a_fence_really_outside_the_outline_is_still_warned(store):
    layout = sample_layout()
    entrance = next(f for f in layout["features"] if f["properties"].get("id") == "entrance")
    entrance["geometry"]["coordinates"] = [[[1, -1], [8, -1], [8, 2], [1, 2], [1, -1]]]  # 1 m out of the door
    cfg, problems, file = store(layout)
    [w] = [p for p in problems if "outline" in p.message]
    assert (w.file, w.where, w.field, w.severity) == (file, 'feature "entrance"', "geometry", "warning")
    assert w.message == ("lies outside the store outline (33 % of it, up to 1 m beyond); check its coordinates "
                         "(and the anchor)")
