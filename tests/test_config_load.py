"""store_config.load: the sample loads; every kind of broken input is named."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import shapely
from pyproj import CRS, Transformer

from store_config import ConfigError, Problem, StoreConfig, check, load_store, sample_path
from store_config.load import (
    cross_check,
    parse_hours,
    parse_inventory,
    parse_layout,
    parse_profiles,
    parse_promotions,
)
from store_config.model import Anchor

ANCHOR = Anchor(lat=49.1875, lon=16.6130, bearing=12.5)


# ---------------------------------------------------------------------------
# helpers


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A writable copy of the sample store; returns the store.toml path."""
    dst = tmp_path / "store"
    shutil.copytree(sample_path().parent, dst)
    return dst / "store.toml"


def read_json(p: Path):
    return json.loads(p.read_text(encoding="utf-8"))


def write_json(p: Path, obj) -> None:
    p.write_text(json.dumps(obj), encoding="utf-8")


def problems_of(fn, *args, **kw) -> list[Problem]:
    with pytest.raises(ConfigError) as ei:
        fn(*args, **kw)
    assert ei.value.problems, "ConfigError without problems"
    return ei.value.problems


def find(problems: list[Problem], *, where: str | None = None, field: str | None = None,
         contains: str | None = None) -> Problem:
    for p in problems:
        if where is not None and p.where != where:
            continue
        if field is not None and p.field != field:
            continue
        if contains is not None and contains not in p.message:
            continue
        return p
    raise AssertionError(f"no problem with where={where!r} field={field!r} contains={contains!r} in:\n"
                         + "\n".join(map(str, problems)))


def square(x0, y0, size, **props):
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x0 + size, y0], [x0 + size, y0 + size],
                                                         [x0, y0 + size], [x0, y0]]]},
    }


def local_fc(*features):
    return {"type": "FeatureCollection", "frame": "local", "features": list(features)}


# ---------------------------------------------------------------------------
# the sample


def test_sample_loads():
    cfg = load_store(sample_path())
    assert isinstance(cfg, StoreConfig)
    assert cfg.store_id == "S042" and cfg.name == "Brno Centre" and cfg.timezone == "Europe/Prague"
    assert cfg.anchor == Anchor(49.1875, 16.6130, 12.5)
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.http.listen == "127.0.0.1:8080" and cfg.http.admin_token == "change-me-admin"
    assert cfg.associates.token == "change-me-associates"
    assert cfg.ingest.owntracks is True
    assert cfg.data_dir.is_absolute() and cfg.data_dir.name == "var"
    assert cfg.warnings == ()
    ids = {f.id for f in cfg.fences}
    for fid in ("entrance", "checkouts", "produce", "bakery", "dairy", "meat-deli", "wine", "back-room",
                "coffee-display", "new-endcap", "seasonal-display"):
        assert fid in ids
    aisles = [f for f in cfg.fences if f.kind == "aisle"]
    assert len(aisles) == 6
    for a in aisles:  # ~2 m x 14 m, walkable gaps between them
        minx, miny, maxx, maxy = a.geometry.bounds
        assert maxx - minx == pytest.approx(2) and maxy - miny == pytest.approx(14)
    for a, b in zip(aisles, aisles[1:]):
        assert a.geometry.distance(b.geometry) > 0.5
    circles = sorted(f.circle[2] for f in cfg.fences if f.circle)
    assert circles == [0.9, 1.2, 1.5]
    assert cfg.fence("wine").assist and cfg.fence("wine").dwell_s == 20
    assert cfg.fence("back-room").kind == "staff_only"
    assert len(cfg.beacons) >= 8 and all(b.beacon_id.count(":") == 2 for b in cfg.beacons)
    assert cfg.outline is not None and cfg.outline.area == pytest.approx(1200)
    for f in cfg.fences:
        assert cfg.outline.covers(f.geometry), f.id
    assert cfg.inventory["turkey-whole-4kg"] == 0
    turkey = next(p for p in cfg.promotions if p.requires_stock)
    assert turkey.alternative_zone == "meat-deli"
    assert any(p.min_loyalty_score == 800 for p in cfg.promotions)
    assert any(p.holdout_pct == 20 for p in cfg.promotions)
    assert any(p.hours for p in cfg.promotions)
    assert any(p.associate_alert for p in cfg.promotions)
    assert any("families" in p.segments for p in cfg.promotions)
    assert any(p.trigger == "dwell" and "wine" in p.zones for p in cfg.promotions)
    assert any(p.categories == ("coffee",) for p in cfg.promotions)
    vip = [p for p in cfg.profiles.values() if p.vip]
    assert vip and vip[0].first_name and vip[0].consent.name_to_staff
    assert any(not p.consent.offers for p in cfg.profiles.values())
    assert any(not p.consent.tracking for p in cfg.profiles.values())
    assert len(cfg.version) == 12 and cfg.version == load_store(sample_path()).version


def test_config_is_frozen():
    cfg = load_store(sample_path())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.store_id = "X"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.inventory["x"] = 1  # type: ignore[index]


def test_version_ignores_formatting_but_not_content(store: Path):
    v0 = load_store(store).version
    inv = store.parent / "inventory.json"
    data = read_json(inv)
    inv.write_text(json.dumps(dict(reversed(list(data.items()))), indent=7), encoding="utf-8")
    assert load_store(store).version == v0
    data["milk-1l"] += 1
    write_json(inv, data)
    assert load_store(store).version != v0


def test_defaults_and_optional_files(tmp_path: Path):
    write_json(tmp_path / "l.geojson", local_fc(square(0, 0, 5, id="a")))
    write_json(tmp_path / "p.json", [{"id": "p", "title": "T", "zones": ["a"]}])
    (tmp_path / "store.toml").write_text(
        '[store]\nid = "S1"\ntimezone = "UTC"\nlayout = "l.geojson"\npromotions = "p.json"\n'
        "[store.anchor]\nlat = 1\nlon = 2\nbearing = -90\n[data]\ndir = \"d\"\n"
    )
    cfg = load_store(tmp_path / "store.toml")
    assert cfg.mqtt.url is None  # embedded broker
    assert cfg.anchor.bearing == 270.0
    assert cfg.data_dir == (tmp_path / "d").resolve()
    assert cfg.profiles == {} and cfg.inventory == {}
    assert cfg.tracking.default_acc["html5"] == 25.0 and cfg.tracking.clock == "receive"
    assert cfg.offers.ttl_s == 900.0 and cfg.promotions[0].cooldown_s == 3600.0
    f = cfg.fences[0]
    assert f.kind == "other" and f.floor == 0


def test_all_sections_parse(store: Path):
    text = store.read_text()
    text = text.replace('url = "mqtt://127.0.0.1:1883"',
                        'url = "mqtts://broker.local"\nusername = "u"\npassword = "p"\nprotocol = "5"\nkeepalive = 10')
    text += """
[tracking]
clock = "ping"
timeout_s = 60
publish_events = true
sustained_pings = 2
[tracking.default_acc]
ble = 2.5
[offers]
ttl_s = 600
per_visit_cap = 2
min_gap_s = 30
daily_cap = 5
[privacy]
anonymous_offers = false
anonymous_tracking = true
position_retention_s = 3600
[sync]
central_url = "https://central.example/api"
token = "t"
interval_s = 2
transport = "http"
encoding = "msgpack"
batch_size = 100
max_outbox_mb = 64
[sources.meraki]
secret = "s"
validator = "v"
"""
    store.write_text(text)
    cfg = load_store(store)
    assert cfg.mqtt.url == "mqtts://broker.local" and cfg.mqtt.protocol == "5" and cfg.mqtt.keepalive == 10
    assert cfg.tracking.clock == "ping" and cfg.tracking.publish_events and cfg.tracking.sustained_pings == 2
    assert cfg.tracking.default_acc["ble"] == 2.5 and cfg.tracking.default_acc["wifi"] == 8.0
    assert cfg.offers.per_visit_cap == 2 and cfg.offers.daily_cap == 5
    assert cfg.privacy.anonymous_tracking and not cfg.privacy.anonymous_offers
    assert cfg.sync.encoding == "msgpack" and cfg.sync.batch_size == 100
    assert cfg.sources["meraki"]["secret"] == "s"
    assert cfg.associates.roles["wine-desk"] == ("wine",)


# ---------------------------------------------------------------------------
# WGS84 layouts


def _to_wgs84(x: float, y: float, anchor: Anchor) -> list[float]:
    """Independent inverse: local (x, y) -> [lon, lat] via pyproj aeqd + rotation."""
    aeqd = CRS.from_proj4(f"+proj=aeqd +lat_0={anchor.lat} +lon_0={anchor.lon} +datum=WGS84 +units=m")
    inv = Transformer.from_crs(aeqd, "EPSG:4326", always_xy=True)
    b = math.radians(anchor.bearing)
    e = x * math.cos(b) + y * math.sin(b)
    n = -x * math.sin(b) + y * math.cos(b)
    lon, lat = inv.transform(e, n)
    return [lon, lat]


def test_wgs84_layout_lands_where_local_equivalent_is():
    anchor = Anchor(lat=49.1875, lon=16.6130, bearing=33.0)
    ring = [(5, 5), (17, 5), (17, 9), (5, 9), (5, 5)]
    local = local_fc(
        {"type": "Feature", "properties": {"id": "a"},
         "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}},
        {"type": "Feature", "properties": {"id": "d", "radius_m": 1.5},
         "geometry": {"type": "Point", "coordinates": [20, 3]}},
        {"type": "Feature", "properties": {"kind": "beacon", "beacon_id": "AB:1:2"},
         "geometry": {"type": "Point", "coordinates": [10, 10]}},
    )
    wgs = copy.deepcopy(local)
    del wgs["frame"]
    wgs["features"][0]["geometry"]["coordinates"] = [[_to_wgs84(x, y, anchor) for x, y in ring]]
    wgs["features"][1]["geometry"]["coordinates"] = _to_wgs84(20, 3, anchor)
    wgs["features"][2]["geometry"]["coordinates"] = _to_wgs84(10, 10, anchor)

    fl, bl, _ = parse_layout(local, file="l", anchor=anchor)
    fw, bw, _ = parse_layout(wgs, file="w", anchor=anchor)
    assert shapely.get_coordinates(fw[0].geometry) == pytest.approx(shapely.get_coordinates(fl[0].geometry), abs=1e-3)
    assert fw[0].geometry.area == pytest.approx(48, abs=1e-2)
    cx, cy, r = fw[1].circle
    assert (cx, cy, r) == pytest.approx((20, 3, 1.5), abs=1e-3)
    assert (bw[0].x, bw[0].y) == pytest.approx((10, 10), abs=1e-3)
    assert bw[0].beacon_id == "ab:1:2"


def test_local_coordinates_without_frame_are_caught():
    fc = local_fc(square(10, 20, 5, id="a"))
    del fc["frame"]
    fc["features"][0]["geometry"]["coordinates"] = [[[200, 5], [205, 5], [205, 10], [200, 5]]]
    probs = problems_of(parse_layout, fc, file="layout.geojson", anchor=ANCHOR)
    assert "frame" in find(probs, where='feature "a"', field="geometry").message


# ---------------------------------------------------------------------------
# broken layouts


def test_layout_problems_all_reported_with_names():
    fc = local_fc(
        square(0, 0, 3, kind="aisle"),                          # #1: missing id
        square(0, 0, 3, id="dup"),
        square(5, 0, 3, id="dup"),                              # duplicate id
        square(0, 5, 3, id="bad-kind", kind="shelf"),           # bad kind
        {"type": "Feature", "properties": {"id": "bowtie"},     # self-intersecting
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]}},
        square(0, 9, 3, id="bad floor", floor="one"),           # bad id chars + wrong type
        square(0, 9, 3, id="all"),                              # reserved
        {"type": "Feature", "properties": {"id": "line"},
         "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}},
        {"type": "Feature", "properties": {"id": "dot"}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
        {"type": "Feature", "properties": {"id": "neg", "radius_m": -1},
         "geometry": {"type": "Point", "coordinates": [1, 1]}},
        square(0, 20, 3, id="types", skus="sku-1", dwell_s=0, assist="yes", category=7),
        {"type": "Feature", "properties": {"kind": "beacon", "beacon_id": "nope"},
         "geometry": {"type": "Point", "coordinates": [1, 1]}},
    )
    probs = problems_of(parse_layout, fc, file="layout.geojson", anchor=ANCHOR)
    assert all(p.file == "layout.geojson" and p.severity == "error" for p in probs)
    find(probs, where="feature #1", field="id", contains="required")
    find(probs, where='feature "dup"', field="id", contains="duplicate")
    find(probs, where='feature "bad-kind"', field="kind")
    find(probs, where='feature "bowtie"', field="geometry", contains="Self-intersection")
    find(probs, where='feature "bad floor"', field="id")
    find(probs, where='feature "bad floor"', field="floor", contains="integer")
    find(probs, where='feature "all"', field="id", contains="reserved")
    find(probs, where='feature "line"', field="geometry", contains="LineString")
    find(probs, where='feature "dot"', field="radius_m")
    find(probs, where='feature "neg"', field="radius_m")
    for field in ("skus", "dwell_s", "assist", "category"):
        find(probs, where='feature "types"', field=field)
    find(probs, where="feature #12", field="beacon_id")
    assert len(probs) >= 15


def test_layout_polygon_with_hole_and_multipolygon():
    outer = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]
    fc = local_fc(
        {"type": "Feature", "properties": {"id": "ring", "floor": 1},
         "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
        {"type": "Feature", "properties": {"id": "multi"},
         "geometry": {"type": "MultiPolygon", "coordinates": [[[[20, 0], [22, 0], [22, 2], [20, 0]]],
                                                              [[[30, 0], [32, 0], [32, 2], [30, 0]]]]}},
        {"type": "Feature", "properties": {"outline": True}, "geometry": {"type": "Polygon", "coordinates": [
            [[-1, -1], [40, -1], [40, 20], [-1, 20], [-1, -1]]]}},
    )
    fences, beacons, outline = parse_layout(fc, file="l", anchor=ANCHOR)
    assert [f.id for f in fences] == ["ring", "multi"]
    assert fences[0].geometry.area == pytest.approx(96) and fences[0].floor == 1
    assert fences[1].geometry.geom_type == "MultiPolygon"
    assert outline is not None and outline.area == pytest.approx(41 * 21)


def test_layout_not_a_feature_collection():
    probs = problems_of(parse_layout, [1, 2], file="l", anchor=ANCHOR)
    assert probs[0].file == "l"


# ---------------------------------------------------------------------------
# promotions, profiles, inventory


def test_promotions_parse_times_and_hours():
    promos = parse_promotions([
        {"id": "a", "title": "A", "starts": "2025-12-01T08:00:00", "ends": "2025-12-24T20:00:00+00:00",
         "hours": ["08:00-12:00", "22:00-02:00", "20:00-24:00"], "trigger": "dwell", "priority": 3},
    ], file="p.json", timezone="Europe/Prague")
    p = promos[0]
    assert p.starts == datetime(2025, 12, 1, 8, tzinfo=ZoneInfo("Europe/Prague"))
    assert p.ends == datetime(2025, 12, 24, 20, tzinfo=timezone.utc)
    assert p.hours == ((480, 720), (1320, 120), (1200, 1440))
    assert p.trigger == "dwell" and p.priority == 3 and p.cooldown_s == 3600.0


@pytest.mark.parametrize("hours", [["8-12"], ["08:00-12:60"], ["24:00-08:00"], ["08:00-08:00"], "08:00-12:00",
                                   [830]])
def test_bad_hours(hours):
    assert parse_hours(hours)[1] is not None
    probs = problems_of(parse_promotions, [{"id": "h", "title": "H", "hours": hours}], file="p.json",
                        timezone="UTC")
    find(probs, where='promotion "h"', field="hours")


def test_promotion_problems_all_reported():
    warnings: list[Problem] = []
    probs = problems_of(parse_promotions, [
        {"title": "no id"},
        {"id": "dup", "title": "x"},
        {"id": "dup", "title": "y"},
        {"id": "untitled"},
        {"id": "types", "title": "t", "zones": "aisle-1", "trigger": "exit", "priority": 1.5, "cooldown_s": -1,
         "holdout_pct": 120, "requires_stock": "yes", "starts": "tomorrow", "min_loyalty_score": "high"},
        {"id": "order", "title": "t", "starts": "2025-02-01", "ends": "2025-01-01"},
        "not an object",
        {"id": "typo", "title": "t", "segmnets": ["vip"]},
    ], file="promotions.json", timezone="Europe/Prague", warnings=warnings)
    assert all(p.file == "promotions.json" for p in probs)
    find(probs, where="promotion #0", field="id", contains="required")
    find(probs, where='promotion "dup"', field="id", contains="duplicate")
    find(probs, where='promotion "untitled"', field="title")
    for field in ("zones", "trigger", "priority", "cooldown_s", "holdout_pct", "requires_stock", "starts",
                  "min_loyalty_score"):
        find(probs, where='promotion "types"', field=field)
    find(probs, where='promotion "order"', field="ends")
    find(probs, where="promotion #6")
    e = find(probs, where='promotion "typo"', field="segmnets", contains="did you mean `segments`?")
    assert e.severity == "error"


def test_promotions_bad_timezone():
    probs = problems_of(parse_promotions, [], file="p", timezone="Mars/Olympus")
    find(probs, field="timezone")


def test_cross_check_unknown_zones():
    fences, _, _ = parse_layout(local_fc(square(0, 0, 4, id="wine")), file="l", anchor=ANCHOR)
    promos = parse_promotions([{"id": "p1", "title": "t", "zones": ["wine", "beer"], "alternative_zone": "cellar"}],
                              file="promotions.json", timezone="UTC")
    probs = cross_check(fences, promos, file="promotions.json")
    assert "beer" in find(probs, where='promotion "p1"', field="zones").message
    assert "cellar" in find(probs, where='promotion "p1"', field="alternative_zone").message
    assert len(probs) == 2


def test_profiles():
    profs = parse_profiles([
        {"device": "d1", "consent": {"offers": False}},
        {"device": "d2", "vip": True, "first_name": "Ann", "loyalty_score": 900, "segments": ["x"]},
        {"device": "owntracks:bob:phone"},
    ], file="profiles.json")
    assert profs["d1"].consent.offers is False and profs["d1"].consent.tracking is True
    assert profs["d1"].consent.name_to_staff is False
    assert profs["d2"].vip and profs["d2"].loyalty_score == 900 and profs["d2"].segments == ("x",)
    assert profs["owntracks:bob:phone"].consent.offers is True


def test_profile_problems():
    probs = problems_of(parse_profiles, [
        {"loyalty_id": "L1"},
        {"device": "a"},
        {"device": "a"},
        {"device": "b", "consent": {"offers": "no"}, "loyalty_score": "lots", "vip": 1, "segments": [1]},
        {"device": "c/d"},
    ], file="profiles.json")
    find(probs, where="profile #0", field="device", contains="required")
    find(probs, where='profile "a"', field="device", contains="duplicate")
    for field in ("offers", "loyalty_score", "vip", "segments"):
        find(probs, where='profile "b"', field=field)
    find(probs, where='profile "c/d"', field="device")


def test_inventory():
    assert parse_inventory({"a": 3, "b": 0}, file="i") == {"a": 3, "b": 0}
    probs = problems_of(parse_inventory, {"a": -1, "b": "3", "c": 1.5, "d": None, "e": True}, file="inventory.json")
    for sku in "abcde":
        find(probs, where=f'sku "{sku}"')
    problems_of(parse_inventory, [1], file="inventory.json")


# ---------------------------------------------------------------------------
# store.toml


def test_missing_store_toml(tmp_path: Path):
    probs = problems_of(load_store, tmp_path / "nope.toml")
    assert "nope.toml" in probs[0].file


def test_bad_toml_syntax(tmp_path: Path):
    (tmp_path / "s.toml").write_text("[store\nid=")
    probs = problems_of(load_store, tmp_path / "s.toml")
    assert "TOML" in probs[0].message


def test_bad_timezone_and_missing_file(store: Path):
    text = store.read_text().replace('"Europe/Prague"', '"Europe/Brno"').replace(
        'inventory = "inventory.json"', 'inventory = "stock.json"')
    store.write_text(text)
    probs = problems_of(load_store, store)
    assert find(probs, where="[store]", field="timezone").file == str(store)
    assert "stock.json" in find(probs, where="[store]", field="inventory").message


def test_store_toml_wrong_types_and_ranges(store: Path):
    text = store.read_text()
    text = text.replace("lat = 49.1875", "lat = 95").replace("lon = 16.6130", 'lon = "16.6"')
    text = text.replace('url = "mqtt://127.0.0.1:1883"', 'url = "http://broker:1883"\nprotocol = "4"\nkeepalive = "30"')
    text = text.replace('listen = "127.0.0.1:8080"', 'listen = "8080"')
    text = text.replace("owntracks = true", "owntracks = \"yes\"\nmax_payload_bytes = -5")
    text += '\n[tracking]\nclock = "wall"\ntimeout_s = 0\n[tracking.default_acc]\nble = -1\n[offers]\nttl_s = "15m"\n'
    text += '[sync]\ncentral_url = "ftp://x"\ntransport = "mqtt"\n'
    store.write_text(text)
    probs = problems_of(load_store, store)
    expected = [("[store.anchor]", "lat"), ("[store.anchor]", "lon"), ("[mqtt]", "url"), ("[mqtt]", "protocol"),
                ("[mqtt]", "keepalive"), ("[http]", "listen"), ("[ingest]", "owntracks"),
                ("[ingest]", "max_payload_bytes"), ("[tracking]", "clock"), ("[tracking]", "timeout_s"),
                ("[tracking.default_acc]", "ble"), ("[offers]", "ttl_s"), ("[sync]", "central_url"),
                ("[sync]", "mqtt_url")]
    for where, field in expected:
        assert find(probs, where=where, field=field).file == str(store)


def test_unknown_keys_are_errors(store: Path):
    store.write_text(store.read_text() + '\n[offers]\nttl = 5\n[mystery]\nx = 1\n')
    probs = problems_of(load_store, store)
    e = find(probs, where="[offers]", field="ttl", contains="did you mean `ttl_s`?")
    assert e.severity == "error"
    find(probs, where="[mystery]", contains="unknown section")


def test_load_store_reports_every_file(store: Path):
    """One ConfigError lists problems from store.toml and from every file."""
    d = store.parent
    store.write_text(store.read_text().replace('id = "S042"', 'id = "S/042"'))
    layout = read_json(d / "layout.geojson")
    layout["features"][3]["properties"]["kind"] = "shelf"
    layout["features"][4]["properties"].pop("id")
    write_json(d / "layout.geojson", layout)
    promos = read_json(d / "promotions.json")
    promos[0]["zones"] = ["nowhere"]
    promos[1]["hours"] = ["25:00-26:00"]
    write_json(d / "promotions.json", promos)
    profs = read_json(d / "profiles.json")
    profs[1]["device"] = profs[0]["device"]
    write_json(d / "profiles.json", profs)
    inv = read_json(d / "inventory.json")
    inv["milk-1l"] = -3
    write_json(d / "inventory.json", inv)

    probs = problems_of(load_store, store)
    files = {Path(p.file).name for p in probs}
    assert files == {"store.toml", "layout.geojson", "promotions.json", "profiles.json", "inventory.json"}
    find(probs, where="[store]", field="id")
    find(probs, field="kind", contains="shelf")
    find(probs, where="feature #5", field="id")
    assert "nowhere" in find(probs, where=f'promotion "{promos[0]["id"]}"', field="zones").message
    find(probs, where=f'promotion "{promos[1]["id"]}"', field="hours")
    find(probs, where=f'profile "{profs[0]["device"]}"', field="device", contains="duplicate")
    find(probs, where='sku "milk-1l"')
    # the message lists them all too
    with pytest.raises(ConfigError) as ei:
        load_store(store)
    assert "shelf" in str(ei.value) and "nowhere" in str(ei.value)


def test_bad_json_file(store: Path):
    (store.parent / "profiles.json").write_text("[{")
    probs = problems_of(load_store, store)
    assert Path(probs[0].file).name == "profiles.json" and "JSON" in probs[0].message


def test_role_with_unknown_zone(store: Path):
    store.write_text(store.read_text().replace('butcher = ["meat-deli"]', 'butcher = ["meat"]'))
    probs = problems_of(load_store, store)
    find(probs, where="[associates.roles]", field="butcher", contains="meat")


def test_check_never_raises(store: Path, tmp_path: Path):
    cfg, probs = check(tmp_path / "missing.toml")
    assert cfg is None and probs and probs[0].severity == "error"
    cfg, probs = check(store, tech="uwb")
    assert cfg is not None and all(p.severity == "warning" for p in probs)


def test_acc_scale_takes_every_source_a_ping_is_counted_under(store: Path):
    # `[tracking.acc_scale]` scales a source's acc by the source a ping is counted under
    # (edge_pings_total{source}: the adapters' meraki, aruba and owntracks included), and
    # `survey fit` prints the factor for a surveyed Meraki or OwnTracks feed: no warning
    # may call those sources unknown; a typo still gets one.
    store.write_text(store.read_text() + "\n[tracking.acc_scale]\nwifi = 1.4\nmeraki = 1.7\naruba = 2.0\n"
                     "owntracks = 1.2\nwiif = 3\n")
    cfg = load_store(store)
    assert dict(cfg.tracking.acc_scale) == {"wifi": 1.4, "meraki": 1.7, "aruba": 2.0, "owntracks": 1.2, "wiif": 3}
    flagged = [w.field for w in cfg.warnings if w.where == "[tracking.acc_scale]"]
    assert flagged == ["wiif"]


@pytest.mark.parametrize("section, key", [("http", "admin_token"), ("sync", "token"), ("associates", "token"),
                                          ("delivery", "webhook_token"), ("pos", "token")])
def test_a_token_with_a_line_break_or_a_space_is_refused_by_name(store: Path, section: str, key: str):
    """A token travels in an Authorization header: a pasted line break (a TOML multi-line string) or a space
    broke every request it went into (the sync uplink's every flush); now the config says which key."""
    text = store.read_text()

    def with_key(value: str) -> str:  # the section's key set to value (the section added when missing)
        lines, out, inside, done = text.splitlines(), [], False, False
        for line in lines:
            if line.startswith("["):
                inside = line.strip() == f"[{section}]"
            if inside and line.split("=")[0].strip() == key:
                continue
            out.append(line)
            if inside and line.startswith("[") and not done:
                out.append(f"{key} = {value}")
                done = True
        return "\n".join(out) + ("" if done else f"\n[{section}]\n{key} = {value}") + "\n"

    for bad in ('"""s3cret\n"""', '"two words"'):
        store.write_text(with_key(bad))
        find(problems_of(load_store, store), where=f"[{section}]", field=key, contains="one word")
    store.write_text(with_key('"s3cret-Token_1.~+/="'))
    assert load_store(store) is not None
