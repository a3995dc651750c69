"""Associates' alerts through a real Mosquitto: rules, dedupe, claims, escalation, access."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import aiohttp
import pytest

from edge_agent.service import Agent
from tests.conftest import BASE_LAYOUT, BASE_PROMOTIONS

pytestmark = pytest.mark.broker

TOKEN = "assoc-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PROFILES = [
    {"device": "vip-ada-phone", "vip": True, "first_name": "Ada",
     "consent": {"offers": True, "tracking": True, "name_to_staff": True}},
    {"device": "vip-quiet-phone", "vip": True, "first_name": "Bo",
     "consent": {"offers": True, "tracking": True, "name_to_staff": False}},
    {"device": "vip-untracked-phone", "vip": True, "consent": {"offers": True, "tracking": False}},
    {"device": "regular-phone", "vip": False, "first_name": "Cy",
     "consent": {"offers": True, "tracking": True, "name_to_staff": True}},
]
RAW_IDS = [p["device"] for p in PROFILES] + ["anon-shopper-1", "taster-phone"]


def layout_with_assist():
    layout = copy.deepcopy(BASE_LAYOUT)
    for f in layout["features"]:
        if f["properties"]["id"] == "produce":
            f["properties"]["assist"] = True
    return layout


def promotions_with_alert():
    promos = copy.deepcopy(BASE_PROMOTIONS)
    for p in promos:
        if p["id"] == "coffee-tasting":
            p["associate_alert"] = True
    return promos


def associates_toml(escalate_after_s: float = 300, dedupe_window_s: float = 600) -> str:
    return f"""
        [associates]
        token = "{TOKEN}"
        escalate_after_s = {escalate_after_s}
        dedupe_window_s = {dedupe_window_s}
        assist_dwell_s = 0.5

        [associates.roles]
        produce-team = ["produce"]
        """


class Clock:
    """A clock the test moves: the agent's receive time, tracker time and alert time."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def make_store(store_factory):
    def make(**kw):
        kw.setdefault("layout", layout_with_assist())
        kw.setdefault("promotions", promotions_with_alert())
        kw.setdefault("profiles", PROFILES)
        kw.setdefault("inventory", {"apple": 10, "pear": 10, "chips": 10, "espresso": 10})
        kw.setdefault("toml_extra", associates_toml())
        return store_factory(**kw)
    return make


async def marker(phone, R: str) -> None:
    """Everything published before this was processed: a dead letter comes back after it."""
    await phone.publish(f"{R}/ping/uwb/marker", b"\xc1", qos=1)
    await phone.next(f"{R}/deadletter")


async def test_vip_arrival_once_per_window_first_name_only_with_consent(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    alerts = await phone.subscribe(f"{R}/alert/#")
    await phone.subscribe(f"{R}/deadletter")

    # Ada (consents to her name) walks in through the entrance.
    await phone.publish(f"{R}/ping/uwb/vip-ada-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
    m = await phone.next(f"{R}/alert/#")
    assert m.topic == f"{R}/alert/all"  # no role covers the entrance
    a = json.loads(m.payload)
    assert set(a) >= {"alert_id", "kind", "zone", "shopper", "text", "ts"}
    assert (a["kind"], a["zone"], a["shopper"]) == ("vip_arrival", "entrance", "Ada")
    # Wanders to the chips aisle and back through the entrance: same window, no second alert.
    for x, y in ((24.0, 10.0), (8.0, 18.0), (3.0, 1.5), (8.0, 18.0), (3.0, 1.5)):
        await phone.publish(f"{R}/ping/uwb/vip-ada-phone", {"x": x, "y": y, "acc": 0.5}, qos=0)
    # A VIP without name_to_staff whose first fence is an aisle: announced by pseudonym.
    await phone.publish(f"{R}/ping/uwb/vip-quiet-phone", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    b = await phone.next_json(f"{R}/alert/#")
    assert (b["kind"], b["zone"], b["shopper"]) == ("vip_arrival", "aisle-1", agent.pseudonym("vip-quiet-phone"))
    # Not announced: a VIP without tracking consent, a regular shopper.
    await phone.publish(f"{R}/ping/uwb/vip-untracked-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
    await phone.publish(f"{R}/ping/uwb/regular-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
    await marker(phone, R)
    assert alerts.empty()
    assert agent.metrics.alerts.get("vip_arrival") == 2
    agent.ledger.commit()
    rows = [json.loads(b) for (b,) in agent.ledger.conn.execute("SELECT body FROM outbox WHERE kind='alert'")]
    assert [(r["alert_kind"], r["state"]) for r in rows] == [("vip_arrival", "open")] * 2
    assert rows[0]["device"] == agent.pseudonym("vip-ada-phone")
    assert "Ada" not in json.dumps(rows)  # first names stay in the store


async def test_assist_after_threshold_once_per_presence_and_window(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    clock = Clock()
    server = await agent_factory(cfg, agent=Agent(cfg, clock=clock))
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    alerts = await phone.subscribe(f"{R}/alert/#")
    await phone.subscribe(f"{R}/deadletter")
    dev = "anon-shopper-1"

    async def ping(x, y):
        await phone.publish(f"{R}/ping/uwb/{dev}", {"x": x, "y": y, "acc": 0.5}, qos=1)

    await ping(12.0, 7.0)  # into produce (flagged assist)
    await marker(phone, R)
    clock.t += 0.4
    agent.tick()  # not yet: 0.4 s < assist_dwell_s
    await marker(phone, R)
    assert alerts.empty()
    clock.t += 0.2
    agent.tick()
    m = await phone.next(f"{R}/alert/#")
    assert m.topic == f"{R}/alert/produce-team"  # the role that covers produce
    a = json.loads(m.payload)
    assert (a["kind"], a["zone"], a["shopper"]) == ("assist", "produce", agent.pseudonym(dev))
    # Still there, ticks go on; then out and back in, long enough again: one window, one alert.
    clock.t += 5
    await ping(12.0, 8.0)
    agent.tick()
    await ping(8.0, 18.0)
    clock.t += 1
    await ping(12.0, 7.0)
    await marker(phone, R)
    clock.t += 2
    agent.tick()
    await marker(phone, R)
    assert alerts.empty()
    assert agent.metrics.alerts.get("assist") == 1
    # After the window: a new presence alerts again.
    for _ in range(3):  # stay seen (silence timeout is 120 s)
        clock.t += 100
        await ping(12.0, 7.5)
    clock.t += 400
    await ping(8.0, 18.0)
    await ping(12.0, 7.0)
    await marker(phone, R)
    clock.t += 1
    agent.tick()
    assert (await phone.next_json(f"{R}/alert/#"))["kind"] == "assist"
    assert agent.metrics.alerts.get("assist") == 2


async def test_stock_out_of_promoted_sku_once_per_window(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    agent = server.agent
    pos = mqtt_client()
    R = cfg.root_topic
    alerts = await pos.subscribe(f"{R}/alert/#")
    await pos.subscribe(f"{R}/deadletter")
    await pos.publish(f"{R}/inventory", {"sku": "apple", "qty": 0})
    m = await pos.next(f"{R}/alert/#")
    assert m.topic == f"{R}/alert/produce-team"
    a = json.loads(m.payload)
    assert (a["kind"], a["zone"], a["shopper"], a["sku"]) == ("stock_out", "produce", None, "apple")
    await pos.publish(f"{R}/inventory", {"sku": "apple", "qty": 0})  # still 0: no drop
    await pos.publish(f"{R}/inventory", [{"sku": "apple", "qty": 4}, {"sku": "apple", "qty": 0}])  # same window
    await pos.publish(f"{R}/inventory", {"sku": "pear", "qty": 0})  # not promoted
    await pos.publish(f"{R}/inventory", {"sku": "chips", "qty": 3})  # down, not out
    await pos.publish(f"{R}/inventory", {"sku": "apple"})  # malformed: the marker
    await pos.next(f"{R}/deadletter")
    assert alerts.empty()
    await pos.publish(f"{R}/inventory", {"sku": "chips", "qty": 0})
    m = await pos.next(f"{R}/alert/#")
    assert m.topic == f"{R}/alert/all" and json.loads(m.payload)["sku"] == "chips"
    assert agent.metrics.alerts.get("stock_out") == 2


async def test_associate_alert_promotion_alerts_when_the_offer_goes_out(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    alerts = await phone.subscribe(f"{R}/alert/#")
    offers = await phone.subscribe(f"{R}/offer/taster-phone")
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/taster-phone", {"x": 5.0, "y": 12.0, "acc": 0.2}, qos=0)
    offer = await phone.next_json(f"{R}/offer/taster-phone")
    a = await phone.next_json(f"{R}/alert/#")
    assert offer["promotion_id"] == "coffee-tasting"
    assert (a["kind"], a["zone"], a["promotion_id"]) == ("assist", "coffee-display", "coffee-tasting")
    assert a["shopper"] == server.agent.pseudonym("taster-phone")
    # Leave and come back: cooldown, no offer, no alert.
    await phone.publish(f"{R}/ping/uwb/taster-phone", {"x": 8.0, "y": 18.0, "acc": 0.2}, qos=0)
    await phone.publish(f"{R}/ping/uwb/taster-phone", {"x": 5.0, "y": 12.0, "acc": 0.2}, qos=0)
    await marker(phone, R)
    assert alerts.empty() and offers.empty()


async def _stock_out_alert(pos, R: str, sku: str = "apple", flt: str = "alert/#") -> dict:
    await pos.publish(f"{R}/inventory", {"sku": sku, "qty": 0})
    return await pos.next_json(f"{R}/{flt}")


async def test_two_concurrent_claims_exactly_one_wins(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    agent = server.agent
    pos = mqtt_client()
    R = cfg.root_topic
    await pos.subscribe(f"{R}/alert/#")
    a = await _stock_out_alert(pos, R)
    url = f"{server.url}/v1/alerts/{a['alert_id']}/claim"
    async with aiohttp.ClientSession() as http:
        async def claim(who):
            async with http.post(url, json={"associate": who}, headers=AUTH) as r:
                return r.status, await r.json()

        (s1, b1), (s2, b2) = await asyncio.gather(claim("Dana"), claim("Eli"))
        assert sorted((s1, s2)) == [200, 409]
        winner = "Dana" if s1 == 200 else "Eli"
        loser_body = b2 if s1 == 200 else b1
        assert loser_body == {"alert_id": a["alert_id"], "error": "already_claimed", "by": winner}
        ann = await pos.next_json(f"{R}/alert/#")
        assert {k: ann[k] for k in ("alert_id", "kind", "state", "by")} == {
            "alert_id": a["alert_id"], "kind": "stock_out", "state": "claimed", "by": winner}
        # A later claim over MQTT loses too: nothing is announced.
        await pos.subscribe(f"{R}/deadletter")
        await pos.publish(f"{R}/alert/claim", {"alert_id": a["alert_id"], "associate": "Fay"})
        await marker(pos, R)
        assert pos.queues[f"{R}/alert/#"].qsize() == 1  # only our own claim message (it is under alert/#)
        own = json.loads(pos.queues[f"{R}/alert/#"].get_nowait().payload)
        assert own["associate"] == "Fay"
        # Resolve: announced and recorded in the outbox.
        async with http.post(f"{server.url}/v1/alerts/{a['alert_id']}/resolve", json={"associate": winner},
                             headers=AUTH) as r:
            assert r.status == 200 and (await r.json())["state"] == "resolved"
        ann = await pos.next_json(f"{R}/alert/#")
        assert (ann["state"], ann["by"]) == ("resolved", winner)
        async with http.post(url, json={"associate": "Gus"}, headers=AUTH) as r:
            assert r.status == 409
        async with http.post(f"{server.url}/v1/alerts/a_0000000000000000/claim", json={"associate": "Gus"},
                             headers=AUTH) as r:
            assert r.status == 404
        async with http.post(url, json={"associate": ""}, headers=AUTH) as r:
            assert r.status == 400
    agent.ledger.commit()
    states = [json.loads(b)["state"] for (b,) in agent.ledger.conn.execute(
        "SELECT body FROM outbox WHERE kind='alert' ORDER BY rowid")]
    assert states == ["open", "claimed", "resolved"]


async def test_claim_over_mqtt(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    await agent_factory(cfg)
    pos = mqtt_client()
    R = cfg.root_topic
    await pos.subscribe(f"{R}/alert/produce-team")
    await pos.subscribe(f"{R}/deadletter")
    a = await _stock_out_alert(pos, R, flt="alert/produce-team")
    await pos.publish(f"{R}/alert/claim", {"alert_id": a["alert_id"], "associate": "Hana"})
    ann = await pos.next_json(f"{R}/alert/produce-team")
    assert (ann["alert_id"], ann["state"], ann["by"]) == (a["alert_id"], "claimed", "Hana")
    await pos.publish(f"{R}/alert/claim", {"alert_id": "a_ffffffffffffffff", "associate": "Hana"})
    assert (await pos.next_json(f"{R}/deadletter"))["reason"] == "unknown_alert"
    await pos.publish(f"{R}/alert/claim", {"alert_id": a["alert_id"]})
    assert (await pos.next_json(f"{R}/deadletter"))["reason"] == "schema"


async def test_escalation_after_timeout_not_before(make_store, agent_factory, mqtt_client):
    cfg = make_store(toml_extra=associates_toml(escalate_after_s=0.5))
    clock = Clock()  # after the files: an inventory update older than inventory.json would lose
    server = await agent_factory(cfg, agent=Agent(cfg, clock=clock))
    agent = server.agent
    pos = mqtt_client()
    R = cfg.root_topic
    role = await pos.subscribe(f"{R}/alert/produce-team")
    everyone = await pos.subscribe(f"{R}/alert/all")
    await pos.subscribe(f"{R}/deadletter")
    a = await _stock_out_alert(pos, R, flt="alert/produce-team")
    clock.t += 0.49
    agent.tick()
    await marker(pos, R)
    assert agent.alerts.alerts[a["alert_id"]].state == "open"
    assert role.empty() and everyone.empty()
    clock.t += 0.01
    agent.tick()
    ann = await pos.next_json(f"{R}/alert/produce-team")
    assert (ann["alert_id"], ann["state"], ann["by"]) == (a["alert_id"], "escalated", None)
    wider = await pos.next_json(f"{R}/alert/all")  # re-sent to everyone
    assert (wider["alert_id"], wider["kind"], wider["text"]) == (a["alert_id"], "stock_out", a["text"])
    clock.t += 10
    agent.tick()  # escalates once
    await marker(pos, R)
    assert role.empty() and everyone.empty()
    # Claimable after escalation; announced to the role and to everyone.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/alerts/{a['alert_id']}/claim", json={"associate": "Ivo"},
                             headers=AUTH) as r:
            assert r.status == 200
    assert (await pos.next_json(f"{R}/alert/produce-team"))["state"] == "claimed"
    assert (await pos.next_json(f"{R}/alert/all"))["state"] == "claimed"


async def test_escalation_by_the_agents_own_ticker(make_store, agent_factory, mqtt_client):
    cfg = make_store(toml_extra=associates_toml(escalate_after_s=0.5))
    server = await agent_factory(cfg)
    pos = mqtt_client()
    R = cfg.root_topic
    await pos.subscribe(f"{R}/alert/produce-team")
    a = await _stock_out_alert(pos, R, flt="alert/produce-team")
    assert server.agent.alerts.alerts[a["alert_id"]].state == "open"  # right after creation
    ann = await pos.next_json(f"{R}/alert/produce-team", timeout=5)
    assert ann["state"] == "escalated"
    assert ann["ts"] - a["ts"] >= 0.5


async def test_no_raw_device_id_in_any_alert(make_store, agent_factory, mqtt_client):
    cfg = make_store(toml_extra=associates_toml(escalate_after_s=0.5))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/#")
    for dev in RAW_IDS:
        await phone.publish(f"{R}/ping/uwb/{dev}", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)  # entrance
        await phone.publish(f"{R}/ping/uwb/{dev}", {"x": 5.0, "y": 12.0, "acc": 0.2}, qos=0)  # coffee
    await phone.publish(f"{R}/inventory", {"sku": "apple", "qty": 0})
    kinds = set()
    while len(kinds) < 3 or "escalated" not in kinds:
        m = await phone.next(f"{R}/alert/#")
        body = json.loads(m.payload)
        kinds.add(body.get("state") or body["kind"])
    agent.ledger.commit()
    blobs = [m.payload for m in phone.all if "/alert/" in m.topic]
    blobs += [b.encode() for (b,) in agent.ledger.conn.execute("SELECT body FROM outbox WHERE kind='alert'")]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/alerts", headers=AUTH) as r:
            blobs.append(await r.read())
    for raw in RAW_IDS:
        assert not any(raw.encode() in b for b in blobs), raw


async def test_associates_paths_need_the_token(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    pos = mqtt_client()
    R = cfg.root_topic
    await pos.subscribe(f"{R}/alert/#")
    a = await _stock_out_alert(pos, R)
    claim = f"{server.url}/v1/alerts/{a['alert_id']}/claim"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.post(claim, json={"associate": "Mal"}, headers=headers) as r:
                assert r.status == 401
            async with http.get(f"{server.url}/associates", headers=headers) as r:
                assert r.status == 401
                body = await r.text()
                assert a["alert_id"] not in body
                # a newcomer who opens the bare page is told how to get in, never the token itself
                assert "?token=" in body and "[associates] token" in body and TOKEN.split()[-1] not in body
            async with http.get(f"{server.url}/v1/alerts", headers=headers) as r:
                assert r.status == 401
        async with http.post(claim + f"?token={TOKEN}", json={"associate": "Mal"}) as r:
            assert r.status == 401  # ?token= is for page loads and the WebSocket only
        for q in ("", "?token=wrong"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(f"{server.url}/associates/ws{q}")
            assert exc.value.status == 401
        async with http.get(f"{server.url}/associates?token={TOKEN}") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "/associates/ws" in await r.text()
        async with http.get(f"{server.url}/associates", headers=AUTH) as r:
            assert r.status == 200
    assert server.agent.alerts.alerts[a["alert_id"]].state == "open"


async def test_websocket_snapshot_and_live_updates(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    pos = mqtt_client()
    R = cfg.root_topic
    await pos.subscribe(f"{R}/alert/#")
    first = await _stock_out_alert(pos, R, "apple")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}/associates/ws?token={TOKEN}") as ws:
            snap = await ws.receive_json(timeout=5)
            assert snap["type"] == "snapshot"
            assert [x["alert_id"] for x in snap["alerts"]] == [first["alert_id"]]
            second = await _stock_out_alert(pos, R, "chips")
            live = await ws.receive_json(timeout=5)
            assert live["type"] == "alert" and live["alert"]["alert_id"] == second["alert_id"]
            assert live["alert"]["state"] == "open"
            async with http.post(f"{server.url}/v1/alerts/{second['alert_id']}/claim",
                                 json={"associate": "Jo"}, headers=AUTH) as r:
                assert r.status == 200
            st = await ws.receive_json(timeout=5)
            assert (st["type"], st["alert_id"], st["state"], st["by"]) == ("state", second["alert_id"],
                                                                           "claimed", "Jo")


async def test_stock_out_alert_from_a_reloaded_inventory_file(store_factory, agent_factory, mqtt_client):
    """A promoted sku run out by a file reload (or a bundle) alerts too, not only POS updates over MQTT."""
    import json
    import os

    cfg = store_factory(inventory={"apple": 4, "chips": 9}, toml_extra="""
        [associates]
        token = "t"
        [reload]
        poll_s = 0
    """)
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/+")
    inv = cfg.path.parent / "inventory.json"
    inv.write_text(json.dumps({"apple": 0, "chips": 9}))
    st = inv.stat()
    os.utime(inv, (st.st_atime, st.st_mtime + 5))  # newer than anything the agent holds
    ok, problems = server.agent.reload_from_files()
    assert ok, problems
    server.agent.tick()  # commits and publishes what the reload raised
    alert = await phone.next_json(f"{R}/alert/+")
    assert alert["kind"] == "stock_out" and "apple" in alert["text"]
