"""Campaign rules through the real broker path: targeting, stock, holdouts,
codes, actions, consent, schedules and reloads (issue 3 acceptance)."""

from __future__ import annotations

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from edge_agent.pipeline.ids import CODE_ALPHABET

pytestmark = pytest.mark.broker

SPOT = {"aisle-1": (24.0, 10.0), "produce": (19.0, 10.0), "between": (21.0, 10.0), "entrance": (3.0, 1.5)}


class Shop:
    """A phone-side view of one store: pings, actions, and markers that prove
    everything published before them was processed."""

    def __init__(self, server, phone, cfg):
        self.server, self.agent, self.phone, self.R = server, server.agent, phone, cfg.root_topic

    @classmethod
    async def open(cls, store_factory, agent_factory, mqtt_client, **kw) -> "Shop":
        cfg = store_factory(**kw)
        server = await agent_factory(cfg)
        shop = cls(server, mqtt_client(), cfg)
        await shop.phone.subscribe(f"{shop.R}/offer/+")
        await shop.phone.subscribe(f"{shop.R}/deadletter")
        return shop

    async def ping(self, device: str, zone: str) -> None:
        x, y = SPOT[zone]
        await self.phone.publish(f"{self.R}/ping/uwb/{device}", {"x": x, "y": y, "acc": 0.5}, qos=0)

    async def walk(self, device: str, *zones: str, step: float = 0.8) -> None:
        """Walk from zone to zone in steps shorter than the pings' accuracy
        (no teleporting: the spoof guard ignores implausible jumps)."""
        x, y = SPOT[zones[0]]
        for z in zones[1:]:
            tx, ty = SPOT[z]
            n = max(1, int(math.ceil(math.hypot(tx - x, ty - y) / step)))
            for i in range(1, n + 1):
                await self.phone.publish(f"{self.R}/ping/uwb/{device}",
                                         {"x": x + (tx - x) * i / n, "y": y + (ty - y) * i / n, "acc": 0.5}, qos=0)
            x, y = tx, ty

    async def offer(self, device: str | None = None) -> dict:
        m = await self.phone.next(f"{self.R}/offer/+")
        if device is not None:
            assert m.topic == f"{self.R}/offer/{device}"
        return json.loads(m.payload)

    async def marker(self, topic: str, qos: int = 0) -> None:
        """Publish garbage on ``topic`` and wait for its dead letter: every
        earlier message on that topic has been processed by then."""
        await self.phone.publish(topic, b"\x00", qos=qos)
        while True:
            dl = await self.phone.next_json(f"{self.R}/deadletter")
            if dl["topic"] == topic:
                return

    async def settle(self, device: str) -> None:
        await self.marker(f"{self.R}/ping/uwb/{device}")

    async def action(self, device: str, offer_id: str, action: str) -> None:
        await self.phone.publish(f"{self.R}/action/{device}", {"offer_id": offer_id, "action": action}, qos=1)

    def no_offers(self) -> bool:
        return self.phone.queues[f"{self.R}/offer/+"].empty()

    def outbox(self, kind: str) -> list[dict]:
        rows = self.agent.ledger.conn.execute("SELECT body FROM outbox WHERE kind = ?", (kind,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def decisions(self, outcome: str, reason: str) -> float:
        return self.agent.metrics.decisions.get(outcome, reason)


async def test_flash_special_reaches_loyalty_820_not_300(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "flash", "title": "Flash special", "zones": ["aisle-1"], "min_loyalty_score": 800},
    ], profiles=[
        {"device": "gold", "loyalty_score": 820},
        {"device": "silver", "loyalty_score": 300},
    ])
    await shop.ping("silver", "aisle-1")
    await shop.ping("gold", "aisle-1")
    offer = await shop.offer("gold")
    assert offer["promotion_id"] == "flash"
    await shop.settle("silver")
    assert shop.no_offers()
    assert shop.decisions("suppressed", "loyalty") == 1
    assert shop.decisions("offered", "offered") == 1


async def test_segments_keep_anonymous_devices_to_open_promotions(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "parents", "title": "Nappies", "zones": ["aisle-1"], "segments": ["parents"], "priority": 9},
        {"id": "open", "title": "Chips", "zones": ["aisle-1"]},
    ], profiles=[{"device": "mum", "segments": ["parents"]}])
    await shop.ping("mum", "aisle-1")
    assert (await shop.offer("mum"))["promotion_id"] == "parents"
    await shop.ping("stranger", "aisle-1")
    assert (await shop.offer("stranger"))["promotion_id"] == "open"
    assert shop.decisions("suppressed", "segment") == 1


async def test_out_of_stock_points_to_alternative_zone_or_is_suppressed(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "turkey", "title": "Turkeys", "zones": ["aisle-1"], "skus": ["turkey"], "requires_stock": True,
         "alternative_zone": "produce"},
        {"id": "pears", "title": "Pears", "zones": ["entrance"], "skus": ["pear"], "requires_stock": True},
    ], inventory={"turkey": 0, "pear": 0})
    await shop.ping("a", "aisle-1")
    offer = await shop.offer("a")
    assert offer["promotion_id"] == "turkey" and offer["alternative_zone"] == "produce"
    assert offer["zone"] == "aisle-1"
    await shop.ping("b", "entrance")
    await shop.settle("b")
    assert shop.no_offers()
    assert shop.decisions("suppressed", "out_of_stock") == 1
    assert [e["promotion_id"] for e in shop.outbox("suppressed")] == ["pears"]


async def test_inventory_update_over_mqtt_flips_the_next_decision(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "chips", "title": "Chips", "skus": ["chips"], "requires_stock": True},
    ], inventory={"chips": 0})
    inv = f"{shop.R}/inventory"
    await shop.ping("a", "aisle-1")
    await shop.settle("a")
    assert shop.no_offers() and shop.decisions("suppressed", "out_of_stock") == 1
    await shop.phone.publish(inv, {"sku": "chips", "qty": 12}, qos=1)
    await shop.marker(inv, qos=1)
    await shop.ping("b", "aisle-1")
    assert (await shop.offer("b"))["promotion_id"] == "chips"
    # A list, as POS sends it, flips it back; an older update does not undo a newer one.
    await shop.phone.publish(inv, [{"sku": "chips", "qty": 0}, {"sku": "salsa", "qty": 4}], qos=1)
    await shop.phone.publish(inv, {"sku": "chips", "qty": 50, "ts": 1_000_000.0}, qos=1)
    await shop.marker(inv, qos=1)
    await shop.ping("c", "aisle-1")
    await shop.settle("c")
    assert shop.no_offers() and shop.decisions("suppressed", "out_of_stock") == 2
    assert shop.agent.inventory["salsa"][0] == 4


async def test_full_holdout_sends_nothing_and_records_would_offer(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "control", "title": "Chips", "zones": ["aisle-1"], "holdout_pct": 100},
    ])
    for d in ("h1", "h2", "h3"):
        await shop.ping(d, "aisle-1")
        await shop.settle(d)
    assert shop.no_offers()
    assert shop.decisions("suppressed", "holdout") == 3
    would = shop.outbox("would_offer")
    assert len(would) == 3 and {e["promotion_id"] for e in would} == {"control"}
    assert all(e["device"].startswith("d_") and e["reason"] == "holdout" for e in would)
    rows = shop.agent.ledger.read_audit()
    assert [r["reason"] for r in rows] == ["holdout"] * 3


async def test_apply_gives_unique_codes_and_the_same_code_again(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client)
    await shop.ping("buyer", "aisle-1")
    chips = await shop.offer("buyer")
    await shop.walk("buyer", "aisle-1", "produce")
    fruit = await shop.offer("buyer")
    assert fruit["promotion_id"] == "fruit-week"
    assert chips["offer_id"] != fruit["offer_id"]
    await shop.action("buyer", chips["offer_id"], "apply")
    c1 = await shop.offer("buyer")
    await shop.action("buyer", fruit["offer_id"], "apply")
    c2 = await shop.offer("buyer")
    await shop.action("buyer", chips["offer_id"], "apply")
    again = await shop.offer("buyer")
    assert c1 == {"offer_id": chips["offer_id"], "code": c1["code"]}
    assert c2["offer_id"] == fruit["offer_id"]
    assert c1["code"] != c2["code"]
    assert again == c1
    for code in (c1["code"], c2["code"]):
        assert len(code) >= 8 and set(code) <= set(CODE_ALPHABET)
        assert not set(code) & set("0O1IL")
    redemptions = shop.outbox("redemption")
    assert sorted(e["code"] for e in redemptions) == sorted([c1["code"], c2["code"]])  # one each, not three


async def test_refused_actions_are_answered_with_a_reason(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client)
    await shop.ping("owner", "aisle-1")
    offer = await shop.offer("owner")
    await shop.action("thief", offer["offer_id"], "apply")
    assert await shop.offer("thief") == {"offer_id": offer["offer_id"], "error": "not_your_offer"}
    await shop.action("owner", "o_nonexistent", "apply")
    assert await shop.offer("owner") == {"offer_id": "o_nonexistent", "error": "unknown_offer"}
    await shop.action("owner", offer["offer_id"], "frobnicate")
    assert await shop.offer("owner") == {"offer_id": offer["offer_id"], "error": "bad_action"}
    assert (await shop.phone.next_json(f"{shop.R}/deadletter"))["reason"] == "schema"
    assert shop.agent.metrics.actions_refused.get("not_your_offer") == 1
    assert shop.agent.ledger.get_offer(offer["offer_id"]).code is None  # the thief got nothing
    assert shop.outbox("redemption") == []


async def test_dismiss_is_recorded(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client)
    await shop.ping("d1", "aisle-1")
    offer = await shop.offer("d1")
    await shop.action("d1", offer["offer_id"], "dismiss")
    await shop.action("d1", offer["offer_id"], "dismiss")  # twice: recorded once
    await shop.marker(f"{shop.R}/action/d1", qos=1)
    assert shop.agent.ledger.get_offer(offer["offer_id"]).action == "dismiss"
    events = shop.outbox("dismissal")
    assert len(events) == 1 and events[0]["offer_id"] == offer["offer_id"]
    assert events[0]["device"] == shop.agent.pseudonym("d1")


async def test_opt_out_over_mqtt_stops_offers_on_the_next_ping(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, profiles=[
        {"device": "fan", "consent": {"offers": True, "tracking": True}},
    ])
    await shop.ping("fan", "aisle-1")
    first = await shop.offer("fan")
    consent = f"{shop.R}/consent/fan"
    await shop.phone.publish(consent, {"offers": False}, qos=1)  # one key: tracking stays as it was
    await shop.marker(consent, qos=1)
    await shop.walk("fan", "aisle-1", "produce")
    await shop.settle("fan")
    assert shop.no_offers()
    agent = shop.agent
    pseudo = agent.pseudonym("fan")
    # The purge dropped the live track, so the walk re-enters aisle-1 before produce: two refusals.
    assert shop.decisions("suppressed", "no_consent") == 2
    _, now = agent.consent_for("fan", pseudo)
    assert now.offers is False and now.tracking is True
    assert agent.ledger.get_offer(first["offer_id"]).zone is None  # stored zones purged
    assert [(e["offers"], e["tracking"]) for e in shop.outbox("consent")] == [(False, True)]
    # An older change arriving late does not undo the opt-out; a newer one does.
    await shop.phone.publish(consent, {"offers": True, "ts": 1_000_000.0}, qos=1)
    await shop.marker(consent, qos=1)
    assert agent.consent_for("fan", pseudo)[1].offers is False
    await shop.phone.publish(consent, {"offers": True}, qos=1)
    await shop.marker(consent, qos=1)
    await shop.walk("fan", "produce", "between", "produce")  # fruit-week was suppressed, never sent: no cooldown
    assert (await shop.offer("fan"))["promotion_id"] == "fruit-week"


async def test_outside_hours_nothing_is_sent(store_factory, agent_factory, mqtt_client):
    h = datetime.now(ZoneInfo("Europe/Prague")).hour
    closed = f"{(h + 11) % 24:02d}:00-{(h + 13) % 24:02d}:00"
    opened = f"{(h - 1) % 24:02d}:00-{(h + 1) % 24:02d}:00"
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "night", "title": "Night owls", "zones": ["aisle-1"], "hours": [closed]},
        {"id": "now", "title": "Right now", "zones": ["produce"], "hours": [opened]},
    ])
    await shop.ping("owl", "aisle-1")
    await shop.settle("owl")
    assert shop.no_offers()
    assert shop.decisions("suppressed", "outside_window") == 1
    await shop.ping("lark", "produce")
    assert (await shop.offer("lark"))["promotion_id"] == "now"


async def test_caps_limit_offers_per_visit(store_factory, agent_factory, mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, toml_extra="""
        [offers]
        per_visit_cap = 1
    """)
    await shop.ping("busy", "aisle-1")
    assert (await shop.offer("busy"))["promotion_id"] == "chips"
    await shop.walk("busy", "aisle-1", "produce")
    await shop.settle("busy")
    assert shop.no_offers()
    assert shop.decisions("suppressed", "cap") == 1


async def test_malformed_promotions_on_reload_are_refused_and_old_ones_serve(store_factory, agent_factory,
                                                                               mqtt_client):
    shop = await Shop.open(store_factory, agent_factory, mqtt_client, toml_extra="""
        [reload]
        poll_s = 0
    """)
    agent = shop.agent
    version = agent.cfg.version
    promos = agent.cfg.files["promotions"]
    with open(promos, "w") as f:
        json.dump([{"id": "chips", "title": "Chips", "zones": ["aisle-1"], "priority": "high"}], f)
    async with aiohttp.ClientSession() as http:
        async with http.post(shop.server.url + "/v1/admin/reload",
                             headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 422
            body = await r.json()
    assert body["ok"] is False and body["version"] == version
    assert any(promos in p and "priority" in p for p in body["problems"])
    assert agent.metrics.config_reloads.get("refused") == 1
    await shop.ping("s", "aisle-1")
    offer = await shop.offer("s")
    assert offer["promotion_id"] == "chips" and offer["title"] == "Chips"
    assert agent.cfg.version == version


async def test_daily_cap_and_holdout_survive_a_restart(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra="""
        [offers]
        daily_cap = 1
    """, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"]},
        {"id": "fruit", "title": "Fruit", "zones": ["produce"]},
        {"id": "control", "title": "Held out", "zones": ["entrance"], "holdout_pct": 100},
    ])
    server = await agent_factory(cfg)
    shop = Shop(server, mqtt_client(), cfg)
    await shop.phone.subscribe(f"{shop.R}/offer/+")
    await shop.phone.subscribe(f"{shop.R}/deadletter")
    await shop.ping("regular", "aisle-1")
    assert (await shop.offer("regular"))["promotion_id"] == "chips"
    await shop.ping("held", "entrance")
    await shop.settle("held")
    await server.stop()
    server2 = await agent_factory(cfg)
    shop2 = Shop(server2, shop.phone, cfg)
    await shop2.walk("regular", "aisle-1", "produce")
    await shop2.ping("held", "entrance")
    await shop2.settle("regular")
    await shop2.settle("held")
    assert shop2.no_offers()
    assert shop2.decisions("suppressed", "cap") == 1  # the day's one offer was before the restart
    # chips (re-entering aisle-1) and control: the holdout record still cools "control" down.
    assert shop2.decisions("suppressed", "cooldown") == 2
    audit = [(r["promotion_id"], r["reason"]) for r in server2.agent.ledger.read_audit()]
    assert ("control", "cooldown") in audit and ("fruit", "cap") in audit
    assert len(shop2.outbox("would_offer")) == 1
