"""Sync building blocks on real SQLite files, without servers."""

from __future__ import annotations

import email.utils
import json

import pytest

from edge_agent.storage.ledger import Ledger
from store_config import load_store
from store_config.model import ConfigError
from sync.downlink import build_config
from sync.pseudonym import write_atomically
from sync.retention import enforce_bound, purge
from sync.uplink_http import backoff_delay, retry_after
from sync.wire import decode, encode, idempotency_key, outgoing

from .conftest import write_store


def test_backoff_is_exponential_from_1s_with_jitter_capped_at_30s():
    assert [backoff_delay(n, 1.0) for n in (1, 2, 3, 4, 5, 6, 7, 20)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert [backoff_delay(n, 0.0) for n in (1, 2, 6)] == [0.5, 1, 15]


def test_retry_after_seconds_and_http_date():
    assert retry_after("7", 0.0) == 7.0
    assert retry_after(None, 0.0) is None and retry_after("soon", 0.0) is None
    assert retry_after(email.utils.formatdate(1000.0 + 42, usegmt=True), 1000.0) == pytest.approx(42, abs=1)


def test_idempotency_key_is_stable_for_the_same_batch():
    a = [{"key": "S:1:1"}, {"key": "S:1:2"}]
    assert idempotency_key(a) == idempotency_key([dict(e) for e in a])
    assert idempotency_key(a) != idempotency_key(a[:1])


def test_outgoing_drops_positions_and_raw_payloads():
    ev = {"key": "k", "kind": "deadletter", "device": "d_x", "x": 1, "lat": 2, "payload_b64": "AA", "topic": "t/raw"}
    assert outgoing(ev) == {"key": "k", "kind": "deadletter", "device": "d_x"}
    for enc in ("json", "msgpack"):
        data, ctype = encode({"events": [ev]}, enc)
        assert decode(data, ctype) == {"events": [ev]}
    with pytest.raises(ValueError):
        decode(b"\xc1", "application/msgpack")


def test_bound_sheds_transitions_then_ordinary_never_redemptions_or_consent(tmp_path):
    led = Ledger(tmp_path / "e.sqlite3", store_id="S1")
    for i in range(200):
        led.event("transition", i, "d_a", event="enter", zone="aisle-1")
        if i % 10 == 0:
            led.event("offer", i, "d_a", offer_id=f"o{i}", promotion_id="p", zone="z")
            led.event("redemption", i, "d_a", offer_id=f"o{i}", code="ABCDEFGH")
            led.event("consent", i, "d_a", offers=True, tracking=False)
    led.commit()
    rows, size = led.outbox.size_estimate()
    assert rows == 260
    res = enforce_bound(led.outbox, size / 2)
    led.commit()
    assert set(res.dropped) == {"transition"} and not res.stuck
    left = [b for _, b in led.outbox.peek(1000)]
    assert sum(b["kind"] == "transition" for b in left) < 200
    assert min(b["ts"] for b in left if b["kind"] == "transition") > 0  # oldest went first
    # A bound so small only the never-shed events are left: kept, reported as stuck.
    res = enforce_bound(led.outbox, 1)
    led.commit()
    assert res.stuck
    assert {b["kind"] for _, b in led.outbox.peek(1000)} == {"redemption", "consent"}
    assert led.outbox.pending() == 40


def test_retention_deletes_old_audit_offers_and_set_aside(tmp_path):
    led = Ledger(tmp_path / "e.sqlite3", store_id="S1")
    day = 86400.0
    now = 100 * day
    led.audit([(now - 40 * day, "d_a", "enter", "z", "p", "offered", "offered", None),
               (now - 1 * day, "d_a", "enter", "z", "p", "offered", "offered", None)])
    led.add_offer("old", "d_a", "p", "z", now - 40 * day, now - 40 * day + 900, {})
    led.add_offer("new", "d_a", "p", "z", now - 1 * day, now, {})
    ev = led.event("offer", now - 40 * day, "d_a")
    led.commit()
    seq = led.outbox.peek(10)[0][0]
    led.begin()
    led.outbox.set_aside([seq], status=400, error="bad", now=now - 31 * day)
    counts = purge(led.conn, now=now, retention_s=30 * day, keep_offers_s=day)
    led.commit()
    assert counts == {"audit": 1, "offers": 1, "outbox_aside": 1}  # no position_retention_s: no transitions key
    assert led.get_offer("new") and not led.get_offer("old")
    assert ev.key


def test_position_retention_deletes_old_transitions_only(tmp_path):
    led = Ledger(tmp_path / "e.sqlite3", store_id="S1")
    hour = 3600.0
    now = 1000 * hour
    led.event("transition", now - 25 * hour, "d_a", event="enter", zone="z")  # older than a day
    led.event("transition", now - 23 * hour, "d_a", event="exit", zone="z")
    led.event("offer", now - 25 * hour, "d_a", offer_id="o1")  # not a position: retention_days applies
    led.event("transition", now - 48 * hour, "d_b", event="enter", zone="z")
    led.commit()
    aside = [seq for seq, b in led.outbox.peek(10) if b["device"] == "d_b"]
    led.begin()
    led.outbox.set_aside(aside, status=400, error="bad", now=now - hour)
    counts = purge(led.conn, now=now, retention_s=30 * 86400.0, keep_offers_s=86400.0,
                   position_retention_s=86400.0)
    led.commit()
    assert counts["transitions"] == 2
    left = [(b["kind"], b["ts"]) for _, b in led.outbox.peek(10)]
    assert left == [("transition", now - 23 * hour), ("offer", now - 25 * hour)]
    assert led.outbox.aside_count() == 0


def test_bundle_validated_against_the_rest_of_the_config(tmp_path):
    base = load_store(write_store(tmp_path, broker_url=None))
    layout = {"type": "FeatureCollection", "frame": "local", "features": [
        {"type": "Feature", "properties": {"id": "entrance", "kind": "entrance"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [6, 0], [6, 3], [0, 3], [0, 0]]]}}]}
    # The layout drops `produce`, which the running promotion fruit-week names: refused.
    with pytest.raises(ConfigError) as exc:
        build_config(base, {"layout": layout})
    assert "produce" in str(exc.value)
    cfg = build_config(base, {"layout": layout, "promotions": [{"id": "w", "title": "W", "zones": ["entrance"]}]})
    assert [f.id for f in cfg.fences] == ["entrance"] and [p.id for p in cfg.promotions] == ["w"]
    assert cfg.version != base.version
    assert build_config(base, {"inventory": {"apple": 3}}).inventory == {"apple": 3}


@pytest.mark.parametrize("gtype", [[], {"a": 1}])
def test_bundle_layout_with_a_geometry_type_that_is_not_a_string_is_refused(tmp_path, gtype):
    import copy

    from .conftest import BASE_LAYOUT

    base = load_store(write_store(tmp_path, broker_url=None))
    layout = copy.deepcopy(BASE_LAYOUT)
    layout["features"][1]["geometry"]["type"] = gtype
    with pytest.raises(ConfigError) as exc:
        build_config(base, {"layout": layout})
    assert "geometry" in str(exc.value) and "not supported" in str(exc.value)


def test_write_atomically_replaces_whole(tmp_path):
    p = tmp_path / "bundle.json"
    write_atomically(p, json.dumps({"a": 1}).encode())
    write_atomically(p, json.dumps({"a": 2}).encode())
    assert json.loads(p.read_text()) == {"a": 2}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bundle.json"]


def test_openapi_describes_the_paths_and_event_kinds_the_agent_uses():
    import yaml  # PyYAML (the test extra)
    from pathlib import Path

    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.1")
    central = {p for p, item in doc["paths"].items() if "servers" not in item}  # the rest: the gateway's own
    assert central == {"/v1/stores/{store_id}/events", "/v1/stores/{store_id}/bundle"}
    assert set(doc["paths"]) - central >= {"/v1/pos/redeem", "/v1/pos/purchase", "/v1/admin/report",
                                           "/v1/admin/promotions/{id}/pause", "/v1/admin/promotions/{id}/resume"}
    kinds = doc["components"]["schemas"]["EventBase"]["properties"]["kind"]["enum"]
    assert set(kinds) == {"transition", "offer", "suppressed", "would_offer", "redemption", "dismissal", "alert",
                          "consent", "deadletter", "forget", "conversion", "purchase", "pickup_arrival", "visit",
                          "visits", "guardrail"}


def test_docs_describe_the_event_keys_and_decisions_the_agent_sends(tmp_path):
    import re
    from pathlib import Path

    import yaml  # PyYAML (the test extra)

    docs = Path(__file__).resolve().parent.parent / "docs"
    led = Ledger(tmp_path / "e.sqlite3", store_id="S042")
    real = led.event("offer", 1.0, "d_x").key
    led.close()
    ops = (docs / "operations.md").read_text()
    api = yaml.safe_load((docs / "openapi.yaml").read_text())
    examples = re.findall(r'"key": "([^"]+)"', ops)
    examples += api["components"]["schemas"]["EventBase"]["properties"]["key"]["examples"]
    examples += [e["key"] for e in api["paths"]["/v1/stores/{store_id}/events"]["post"]["requestBody"]["content"]
                 ["application/json"]["example"]["events"]]
    assert examples and all(e.count(":") == real.count(":") for e in examples), (examples, real)
    # A suppression of a device without tracking consent carries no zone (null).
    decision = api["components"]["schemas"]["Decision"]["allOf"][1]["properties"]
    assert "null" in decision["zone"]["type"]


@pytest.mark.parametrize("url, clean, host", [
    ("mqtts://edge%40s1:p%3Ass@broker.example.com:8883", "mqtts://broker.example.com:8883", "broker.example.com"),
    ("mqtt://u:p@[fd00::17]:1884", "mqtt://[fd00::17]:1884", "fd00::17"),  # an IPv6 literal keeps its brackets
    ("mqtt://[::1]", "mqtt://[::1]", "::1"),
])
def test_the_uplinks_broker_url_loses_its_login_and_nothing_else(url, clean, host):
    from edge_agent.transport.mqtt import parse_url
    from sync.uplink_mqtt import uplink_mqtt_config

    cfg = uplink_mqtt_config(url)
    assert cfg.url == clean and parse_url(cfg.url)[0] == host
    assert (cfg.username, cfg.password) == (("edge@s1", "p:ss") if "%40" in url else
                                           ("u", "p") if "u:p@" in url else (None, None))
