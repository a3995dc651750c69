"""Property-based tests: every codec and config parser either returns a value
or raises its own error type (PayloadError / ConfigError) — never anything
else, whatever the input."""

from __future__ import annotations

import json

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.pipeline import codecs
from edge_agent.pipeline.codecs import PayloadError
from store_config.load import parse_inventory, parse_layout, parse_profiles, parse_promotions
from store_config.model import Anchor, ConfigError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
ping_keys = st.sampled_from(["x", "y", "lat", "lon", "acc", "floor", "ts", "seq", "beacons", "coords", "timestamp",
                             "device", "mock", "_type", "tst", "latitude", "longitude", "accuracy", "id", "rssi"])
ping_like = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ping_keys, children, max_size=6),
    max_leaves=25,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=300))
def test_decode_object_never_crashes_on_bytes(data):
    try:
        obj = codecs.decode_object(data)
    except PayloadError as exc:
        assert exc.reason in {"decode", "schema", "too_large"}
    else:
        assert isinstance(obj, dict)


@FAST
@given(st.dictionaries(ping_keys, ping_like, max_size=8), st.booleans())
def test_parse_ping_and_owntracks_raise_only_payload_errors(obj, as_msgpack):
    raw = msgpack.packb(obj, default=str) if as_msgpack else json.dumps(obj, default=str).encode()
    try:
        decoded = codecs.decode_object(raw)
        ping = codecs.parse_ping(decoded, device="d", source="wifi", received=1.7e9)
    except PayloadError as exc:
        assert exc.reason in {"decode", "schema", "range", "no_position", "too_large", "clock_skew"}
    else:
        for v in (ping.x, ping.y, ping.lat, ping.lon, ping.acc):
            assert v is None or v == v  # never NaN
    try:
        ot = codecs.parse_owntracks(obj, user="u", device="d", received=1.7e9)
    except PayloadError as exc:
        assert obj.get("_type") == "location"  # other message types are ignored, never refused
        assert exc.reason in {"schema", "range", "no_position", "clock_skew"}, exc
    else:
        if obj.get("_type") != "location":
            assert ot is None
        else:
            assert ot.device == "owntracks:u:d" and ot.lat == ot.lat and ot.lon == ot.lon  # never NaN


@FAST
@given(json_values)
def test_config_parsers_raise_only_config_errors(obj):
    anchor = Anchor(49.0, 16.0, 10.0)
    for fn, kw in ((parse_layout, {"anchor": anchor}), (parse_promotions, {"timezone": "Europe/Prague"}),
                   (parse_profiles, {}), (parse_inventory, {})):
        try:
            fn(obj, file="f.json", **kw)
        except ConfigError as exc:
            assert exc.problems and all(p.file == "f.json" for p in exc.problems)


feature = st.fixed_dictionaries({
    "type": st.just("Feature"),
    "properties": st.dictionaries(st.sampled_from(["id", "kind", "floor", "radius_m", "dwell_s", "skus", "category"]),
                                  json_values, max_size=5),
    "geometry": st.one_of(json_values, st.fixed_dictionaries({
        "type": st.sampled_from(["Polygon", "Point", "MultiPolygon", "LineString"]),
        "coordinates": json_values})),
})


@FAST
@given(st.lists(feature, max_size=4), st.booleans())
def test_layout_parser_on_feature_shaped_garbage(features, local):
    obj = {"type": "FeatureCollection", "features": features}
    if local:
        obj["frame"] = "local"
    try:
        parse_layout(obj, file="layout.geojson", anchor=Anchor(49.0, 16.0, 0.0))
    except ConfigError as exc:
        assert all(str(p) for p in exc.problems)
