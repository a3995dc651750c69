"""The floor room without broker, loop or database: counts from transitions,
staff, crowding and queue state machines, pickups within the step, visit
classes and the hourly aggregate (tests/test_floor_broker.py runs the same
through Mosquitto, SQLite and HTTP)."""

from __future__ import annotations

import copy
import json

import pytest

from edge_agent.pipeline.effects import Event, PickupRow
from edge_agent.pipeline.floor import visit_class, zone_state
from store_config.load import load_store
from store_config.model import ConfigError

from .conftest import BASE_LAYOUT, write_store
from .test_pipeline import T0, make, ping

CHECKOUT = {"type": "Feature", "properties": {"id": "tills", "kind": "checkout", "name": "Tills",
                                              "queue_alert_at": 2, "queue_wait_s": 60},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 15], [8, 15], [8, 20], [0, 20], [0, 15]]]}}
FLOOR_TOML = """
[floor]
sustain_s = 30
publish_s = 2
visit_s = 120
engaged_s = 600

[associates]
token = "t"
"""
PROFILES = [
    {"device": "staff-1", "staff": True},
    {"device": "ada-phone", "loyalty_id": "L-ADA", "first_name": "Ada",
     "consent": {"offers": True, "tracking": True}},
    {"device": "ada-tablet", "loyalty_id": "L-ADA", "consent": {"offers": True, "tracking": True}},
]
IN_PRODUCE = [(12, 7), (18, 7), (12, 13), (18, 13), (11, 6)]


def floor_layout(capacity: int = 4):
    layout = copy.deepcopy(BASE_LAYOUT)
    for f in layout["features"]:
        if f["properties"]["id"] == "produce":
            f["properties"]["capacity"] = capacity
    layout["features"].append(copy.deepcopy(CHECKOUT))
    return layout


@pytest.fixture
def p(tmp_path):
    return make(tmp_path, layout=floor_layout(), profiles=PROFILES, toml_extra=FLOOR_TOML)


def publishes(fx, suffix: str) -> list[dict]:
    return [m.payload for m in fx.publish if m.topic.endswith(suffix)]


def alerts_of(fx, kind: str) -> list[dict]:
    return [m.payload for m in fx.publish if "/alert/" in m.topic and m.payload.get("kind") == kind
            and "state" not in m.payload]


def states_of(fx) -> list[tuple[str, str, str]]:
    return [(m.payload["kind"], m.payload["state"], m.payload["by"]) for m in fx.publish
            if "/alert/" in m.topic and "state" in m.payload]


def events(fx, kind: str) -> list[Event]:
    return [r for r in fx.rows if isinstance(r, Event) and r.kind == kind]


def test_counts_follow_transitions_and_staff_is_never_counted_nor_offered(p):
    fx = p.step([ping(f"s{i}", x, y, T0) for i, (x, y) in enumerate(IN_PRODUCE[:4])]
                + [ping("staff-1", 13, 8, T0)], T0)
    assert p.floor.counts["produce"] == 4
    assert {o.device for o in fx.offers} == {"s0", "s1", "s2", "s3"}  # the associate gets nothing
    snap = p.floor.snapshot(T0)
    assert snap["zones"]["produce"] == {"now": 4, "capacity": 4, "state": "crowded"}
    assert snap["zones"]["aisle-1"] == {"now": 0, "capacity": None, "state": "ok"}
    assert "s0" not in json.dumps(snap)  # counts carry no ids
    p.tick(T0, T0)
    assert p.metrics.zone_occupancy.get("produce") == 4  # set when {R}/floor is published
    p.step([ping("s0", 2, 10, T0 + 1)], T0 + 1)  # out of produce
    assert p.floor.counts["produce"] == 3
    assert p.floor.snapshot(T0 + 1)["zones"]["produce"]["state"] == "ok"  # 3 of 4: below 80 %
    p.forget("s1")  # a forget leaves the count too
    assert p.floor.counts["produce"] == 2


def test_zone_state_thresholds():
    assert [zone_state(n, 10) for n in (0, 7, 8, 9, 10, 11)] == ["ok", "ok", "busy", "busy", "crowded", "crowded"]
    assert zone_state(50, None) == "ok"


def test_floor_is_published_retained_when_changed_at_most_every_publish_s(p):
    p.step([ping("s0", 12, 7, T0)], T0)
    fx = p.tick(T0, T0)
    [snap] = publishes(fx, "/floor")
    assert snap["zones"]["produce"]["now"] == 1
    assert [m.retain for m in fx.publish if m.topic.endswith("/floor")] == [True]
    p.step([ping("s1", 18, 7, T0 + 0.5)], T0 + 0.5)
    assert not publishes(p.tick(T0 + 1, T0 + 1), "/floor")  # changed, but within publish_s
    assert publishes(p.tick(T0 + 2, T0 + 2), "/floor")[0]["zones"]["produce"]["now"] == 2
    assert not publishes(p.tick(T0 + 5, T0 + 5), "/floor")  # unchanged: nothing


def test_crowding_after_sustain_not_before_resolves_below_80_percent_one_per_zone(p):
    p.step([ping(f"s{i}", x, y, T0) for i, (x, y) in enumerate(IN_PRODUCE[:4])], T0)
    assert not alerts_of(p.tick(T0 + 29, T0 + 29), "crowding")
    [a] = alerts_of(p.tick(T0 + 30, T0 + 30), "crowding")
    assert (a["zone"], a["count"], a["capacity"]) == ("produce", 4, 4)
    p.step([ping("s4", 11, 6, T0 + 31)], T0 + 31)  # a fifth: still the same alert
    assert not alerts_of(p.tick(T0 + 70, T0 + 70), "crowding")
    p.step([ping("s4", 2, 10, T0 + 71), ping("s3", 2, 10, T0 + 71)], T0 + 71)  # 3 of 4: 75 %
    fx = p.tick(T0 + 72, T0 + 72)
    assert states_of(fx) == [("crowding", "resolved", "system")]
    assert p.alerts.alerts[a["alert_id"]].state == "resolved"


def test_crowding_resolved_by_hand_while_still_crowded_sustains_again(p):
    p.step([ping(f"s{i}", x, y, T0) for i, (x, y) in enumerate(IN_PRODUCE[:4])], T0)
    [a] = alerts_of(p.tick(T0 + 30, T0 + 30), "crowding")
    p.alerts.resolve(a["alert_id"], "Dana")
    p.take()
    assert not alerts_of(p.tick(T0 + 31, T0 + 31), "crowding")
    assert not alerts_of(p.tick(T0 + 60, T0 + 60), "crowding")
    assert alerts_of(p.tick(T0 + 61, T0 + 61), "crowding")


def test_queue_when_enough_have_waited_long_enough_and_resolves_when_gone(p):
    p.step([ping("q1", 2, 17, T0), ping("q2", 6, 17, T0 + 20)], T0 + 20)
    assert not alerts_of(p.tick(T0 + 60, T0 + 60), "queue")  # q2 has waited 40 s only
    [a] = alerts_of(p.tick(T0 + 80, T0 + 80), "queue")
    assert (a["zone"], a["count"], a["queue_alert_at"]) == ("tills", 2, 2)
    assert "open another till" in a["text"]
    assert not alerts_of(p.tick(T0 + 81, T0 + 81), "queue")
    p.step([ping("q1", 20, 17, T0 + 90)], T0 + 90)  # served, gone
    assert states_of(p.tick(T0 + 91, T0 + 91)) == [("queue", "resolved", "system")]


def test_pickup_arrival_within_the_step_once_per_order_and_claim_tells_the_shopper(p):
    person = p.floor.loyalty_person("L-ADA")
    order, created = p.floor.add_order("O-1", person, "entrance", "Ada")
    assert created
    [row] = [r for r in p.take().rows if isinstance(r, PickupRow)]
    assert row.person == person and "ada" not in row.person.lower()
    # Ada's tablet (same loyalty id) walks in through the entrance: all of it in this step's effects.
    fx = p.step([ping("ada-tablet", 3, 1.5, T0)], T0)
    [a] = alerts_of(fx, "pickup_arrival")
    assert (a["order_id"], a["zone"], a["shopper"]) == ("O-1", "entrance", "Ada")
    assert [m.topic for m in fx.publish if m.payload.get("kind") == "pickup_arrival"] == ["store/S1/alert/all"]
    [n] = publishes(fx, "/notice/ada-tablet")
    assert n["kind"] == "pickup" and n["order_id"] == "O-1" and n["text"]
    [ev] = events(fx, "pickup_arrival")
    assert ev.fields == {"order_id": "O-1", "person": person}  # no position
    assert [r.arrived for r in fx.rows if isinstance(r, PickupRow)] == [T0]
    # Out and back in, or her phone: nothing more for this order.
    p.step([ping("ada-tablet", 24, 10, T0 + 5)], T0 + 5)
    fx = p.step([ping("ada-tablet", 3, 1.5, T0 + 10), ping("ada-phone", 4, 1.5, T0 + 10)], T0 + 10)
    assert not alerts_of(fx, "pickup_arrival") and not publishes(fx, "/notice/ada-tablet")
    # An associate claims: the device hears who is coming.
    p.alerts.claim(a["alert_id"], "Dana")
    [c] = publishes(p.take(), "/notice/ada-tablet")
    assert c["kind"] == "pickup_claimed" and c["order_id"] == "O-1" and "Dana" in c["text"]


def test_pickup_goes_to_the_pickup_role_when_configured(tmp_path):
    p = make(tmp_path, layout=floor_layout(), profiles=PROFILES,
             toml_extra=FLOOR_TOML + '\n[associates.roles]\npickup = ["entrance"]\n')
    p.floor.add_order("O-2", p.floor.person("walk-in-7"), "entrance", None)
    fx = p.step([ping("walk-in-7", 3, 1.5, T0)], T0)
    assert [m.topic for m in fx.publish if m.payload.get("kind") == "pickup_arrival"] == ["store/S1/alert/pickup"]
    assert publishes(fx, "/notice/walk-in-7")[0]["kind"] == "pickup"


def test_visit_classes_events_only_with_tracking_consent_and_the_hourly_aggregate(p):
    assert [visit_class(x, 120, 600) for x in (0, 119, 120, 599, 600)] == [
        "bounce", "bounce", "visit", "visit", "engaged"]
    h0 = (T0 // 3600 + 1) * 3600  # start of an hour
    # anon: 60 s (bounce); ada-phone (tracking consent): 700 s (engaged); staff: not a visit
    p.step([ping("anon", 2, 10, h0), ping("ada-phone", 12, 7, h0), ping("staff-1", 12, 7, h0)], h0)
    p.step([ping("anon", 3, 10, h0 + 60)], h0 + 60)
    for t in range(100, 701, 100):
        p.step([ping("ada-phone", 12, 7, h0 + t)], h0 + t)
    fx = p.tick(h0 + 60 + 121, h0 + 60 + 121)  # anon silent past the timeout (120 s)
    assert p.metrics.visits.get("bounce") == 1
    assert not events(fx, "visit")  # anonymous: no tracking consent
    fx = p.tick(h0 + 700 + 121, h0 + 700 + 121)
    assert p.metrics.visits.get("engaged") == 1
    [v] = events(fx, "visit")
    assert (v.fields["visit_class"], v.fields["length_s"], v.fields["zones"]) == ("engaged", 700.0, ["produce"])
    assert v.device == p.pseudonym("ada-phone")
    assert sum(p.metrics.visits.values.values()) == 2  # the associate's device is not a visit
    fx = p.tick(h0 + 3600 + 1, h0 + 3600 + 1)
    [agg] = events(fx, "visits")
    assert agg.device is None
    assert agg.fields["counts"] == {"bounce": 1, "visit": 0, "engaged": 1}
    assert agg.fields["median_s"] == 380.0 and agg.fields["hour"] == h0


def test_a_new_visit_after_silence_classes_the_old_one(p):
    p.step([ping("d", 2, 10, T0)], T0)
    p.step([ping("d", 2, 10, T0 + 200)], T0 + 200)  # ping after > timeout without a tick in between
    assert p.metrics.visits.get("bounce") == 1


def test_config_errors_name_file_feature_and_field(tmp_path):
    layout = floor_layout()
    layout["features"][1]["properties"]["queue_alert_at"] = 3  # produce is a section
    layout["features"][2]["properties"]["capacity"] = 0
    with pytest.raises(ConfigError) as e:
        load_store(write_store(tmp_path, broker_url="mqtt://127.0.0.1:1", layout=layout,
                               toml_extra="[floor]\nvisit_s = 700\nengaged_s = 600\n"))
    text = str(e.value)
    assert "layout.geojson" in text and '"produce"' in text and "queue_alert_at" in text
    assert '"aisle-1"' in text and "capacity" in text
    assert "[floor]" in text and "engaged_s" in text
    cfg = load_store(write_store(tmp_path, broker_url="mqtt://127.0.0.1:1", layout=floor_layout(),
                                 profiles=PROFILES, toml_extra=FLOOR_TOML + '\n[pos]\ntoken = "pos"\n'))
    tills = cfg.fence("tills")
    assert (tills.queue_alert_at, tills.queue_wait_s, cfg.fence("produce").capacity) == (2, 60.0, 4)
    assert cfg.profiles["staff-1"].staff and cfg.pos.token == "pos" and cfg.floor.sustain_s == 30


def test_a_visit_event_names_no_zone_entered_before_tracking_consent(p):
    """Found by scanning a run: a walk-in without tracking consent entered
    produce, then opted in to tracking and moved to aisle-1; its per-visit
    ``visit`` event listed produce too, a zone from before it consented."""
    from .test_pipeline import Msg
    h0 = (T0 // 3600 + 1) * 3600
    p.step([ping("walk-in", 12, 7, h0)], h0)  # produce, anonymous: no tracking consent
    p.step([Msg("store/S1/consent/walk-in", b'{"tracking": true}', qos=1, received=h0 + 10)], h0 + 10)
    p.step([ping("walk-in", 24, 10, h0 + 20)], h0 + 20)  # aisle-1, with tracking consent
    fx = p.tick(h0 + 20 + 121, h0 + 20 + 121)
    [v] = events(fx, "visit")
    assert "produce" not in v.fields["zones"] and v.fields["zones"] == ["aisle-1"]
