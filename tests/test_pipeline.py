"""The pure batch core: messages and state in, effects out — no broker, no
event loop, no database (tests/test_core_path.py runs the same path through
Mosquitto and SQLite)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from edge_agent.pipeline.effects import Audit, ConsentRow, Event, Forget, OfferRow
from edge_agent.metrics import Metrics
from edge_agent.pipeline import Pipeline, State, build_runtime
from edge_agent.service import Agent
from store_config.load import load_store
from sync.pseudonym import Pseudonymizer

from .conftest import write_store

T0 = 1_763_800_000.0
PSEUDO = Pseudonymizer(b"k" * 32)


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int = 0
    mid: int = 0
    received: float = T0
    retain: bool = False


class NoOffers:
    def get_offer(self, offer_id):
        return None


def make(tmp_path, **kw) -> Pipeline:
    cfg = load_store(write_store(tmp_path, broker_url="mqtt://127.0.0.1:1", store_id="S1", **kw))
    state = State(build_runtime(cfg), pseudonym=PSEUDO.device, fraction=PSEUDO.fraction)
    return Pipeline(state, metrics=Metrics(), offers=NoOffers())


def ping(device: str, x: float, y: float, t: float, acc: float = 0.5) -> Msg:
    return Msg(f"store/S1/ping/uwb/{device}", json.dumps({"x": x, "y": y, "acc": acc}).encode(), received=t)


def offers_in(fx) -> list[dict]:
    return [o.payload for o in fx.offers]


def test_a_walk_into_a_fence_gives_one_offer_and_its_rows(tmp_path):
    p = make(tmp_path)
    assert not p.step([ping("d1", 2, 10, T0)], T0).offers  # outside every fence
    fx = p.step([ping("d1", 12, 7, T0 + 1)], T0 + 1)  # into produce
    [offer] = offers_in(fx)
    assert offer["promotion_id"] == "fruit-week" and offer["zone"] == "produce"
    assert fx.offers[0].device == "d1"  # the raw id names the topic only
    rows = {type(r) for r in fx.rows}
    assert OfferRow in rows and Audit in rows
    assert [e.kind for e in fx.rows if isinstance(e, Event)] == ["offer"]  # anonymous: no tracking consent
    stored = [r for r in fx.rows if isinstance(r, OfferRow)][0]
    assert stored.device == PSEUDO.device("d1") and stored.offer_id == offer["offer_id"]
    # staying inside: no second offer
    assert not p.step([ping("d1", 13, 7, T0 + 2)], T0 + 2).offers


def test_a_repeat_within_the_cooldown_gives_none(tmp_path):
    p = make(tmp_path)
    assert offers_in(p.step([ping("d1", 12, 7, T0)], T0))
    p.step([ping("d1", 2, 10, T0 + 10)], T0 + 10)  # out
    fx = p.step([ping("d1", 12, 7, T0 + 20)], T0 + 20)  # back in, well within cooldown_s 3600
    assert not fx.offers
    assert [(a.promotion_id, a.reason) for a in fx.rows if isinstance(a, Audit)] == [("fruit-week", "cooldown")]


def test_opted_out_consent_gives_no_position_bearing_effect(tmp_path):
    p = make(tmp_path, profiles=[{"device": "d1", "consent": {"offers": True, "tracking": True}}])
    fx = p.step([Msg("store/S1/consent/d1", b'{"offers": false, "tracking": false}', qos=1)], T0)
    assert ConsentRow(PSEUDO.device("d1"), False, False, T0) in fx.rows and Forget(PSEUDO.device("d1")) in fx.rows
    assert len(fx.acks) == 1  # acknowledged once committed
    fx = p.step([ping("d1", 2, 10, T0 + 1), ping("d1", 12, 7, T0 + 2)], T0 + 2)
    assert not fx.offers
    assert not [e for e in fx.rows if isinstance(e, Event) and e.kind == "transition"]
    assert all(a.zone is None for a in fx.rows if isinstance(a, Audit))
    assert not [m for m in fx.publish if "/event/" in m.topic]


def test_a_malformed_ping_is_a_dead_letter_effect(tmp_path):
    p = make(tmp_path)
    fx = p.step([Msg("store/S1/ping/uwb/d1", b"{not json")], T0)
    [dl] = [m for m in fx.publish if m.topic == "store/S1/deadletter"]
    assert dl.payload["reason"] == "decode"
    assert [e.fields["reason"] for e in fx.rows if isinstance(e, Event)] == ["decode"]


class FailingStore:
    """A store whose disk is full: every write raises, as SQLite does."""

    path = "full-disk.sqlite3"

    def apply(self, rows):
        raise sqlite3.OperationalError("database or disk is full")

    hold = apply  # a batch that publishes writes its rows as one pending record first

    def commit(self):
        raise AssertionError("never reached")

    def rollback(self):
        pass


class RolledBack:
    path = "full-disk.sqlite3"

    def rollback(self):
        pass


class Wire:
    def __init__(self):
        self.sent = []
        self.acked = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append(topic)
        return len(self.sent)

    def ack(self, mid, qos):
        self.acked.append(mid)


def test_a_storage_failure_withholds_the_offer_and_keeps_qos1_for_retry(tmp_path):
    cfg = load_store(write_store(tmp_path, broker_url="mqtt://127.0.0.1:1", store_id="S1"))
    agent = Agent(cfg, clock=lambda: T0)
    agent.pseudo = PSEUDO
    agent.store, agent.ledger, agent.mqtt = FailingStore(), RolledBack(), Wire()
    consent = Msg("store/S1/consent/d2", b'{"offers": true}', qos=1, mid=7)
    agent.on_batch([ping("d1", 12, 7, T0), consent])
    assert agent.mqtt.sent == [] and agent.mqtt.acked == []  # no offer without its record, no ack
    assert agent._retry == [consent] and agent._storage_down
    assert agent.metrics.storage_errors.values[("OperationalError",)] == 1


def dead_reasons(fx) -> list[tuple[str, str]]:
    return [(m.payload["reason"], m.payload["detail"]) for m in fx.publish if m.topic.endswith("/deadletter")]


def test_every_dropped_input_is_a_dead_letter_with_its_own_reason(tmp_path):
    p = make(tmp_path)
    cases = [
        (Msg("store/S1/ping/uwb/d1/extra", b'{"x": 1, "y": 1}'), "topic"),
        (Msg("store/S1/ping/uwb/d1", b'{"x": 12, "y": 7, "floor": 3}'), "floor"),
        (Msg("store/S1/ping/uwb/d1", b'{"x": "12", "y": 7}'), "schema"),
        (Msg("store/S1/ping/uwb/d1", b'42'), "schema"),
        (Msg("store/S1/ping/uwb/d1", b'"hello"'), "schema"),
        (Msg("store/S1/ping/uwb/d1", json.dumps({"x": 12, "y": 7, "ts": T0 * 1000}).encode()), "clock_skew"),
    ]
    for msg, reason in cases:
        fx = p.step([msg], T0)
        [(got, detail)] = dead_reasons(fx)
        assert got == reason, (msg, detail)
        assert not fx.offers
    assert p.metrics.deadletters.values[("topic",)] == 1 and p.metrics.deadletters.values[("floor",)] == 1


def test_dead_letter_details_say_what_to_fix(tmp_path):
    p = make(tmp_path)
    [(_, detail)] = dead_reasons(p.step([Msg("store/S1/ping/uwb/d1", b'{"x": "12", "y": 7}')], T0))
    assert "JSON number" in detail
    ms = json.dumps({"x": 12, "y": 7, "ts": T0 * 1000}).encode()
    [(_, detail)] = dead_reasons(p.step([Msg("store/S1/ping/uwb/d1", ms)], T0))
    assert "milliseconds" in detail


def test_a_json_ping_with_a_byte_order_mark_is_used(tmp_path):
    p = make(tmp_path)
    fx = p.step([Msg("store/S1/ping/uwb/d1", b'\xef\xbb\xbf{"x": 12, "y": 7, "acc": 0.5}')], T0)
    assert not dead_reasons(fx) and [o.payload["zone"] for o in fx.offers] == ["produce"]
