"""The store floor through a real Mosquitto, SQLite and HTTP: occupancy and
staff, crowding and queue alerts, pickup arrivals (within a second of the
ping, the claim, once per order, across a restart), visit classes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from edge_agent.service import Agent
from tests.test_alerts import Clock, marker
from tests.test_floor import FLOOR_TOML, IN_PRODUCE, PROFILES, floor_layout

pytestmark = pytest.mark.broker

TOKEN = "t"  # [associates] token in FLOOR_TOML
POS = "pos-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POS_AUTH = {"Authorization": f"Bearer {POS}"}
TOML = FLOOR_TOML + f'\n[pos]\ntoken = "{POS}"\n'


@pytest.fixture
def make_store(store_factory):
    def make(**kw):
        kw.setdefault("layout", floor_layout())
        kw.setdefault("profiles", PROFILES)
        kw.setdefault("toml_extra", TOML)
        return store_factory(**kw)
    return make


def outbox(agent, kind: str) -> list[dict]:
    agent.ledger.commit()
    return [json.loads(b) for (b,) in agent.ledger.conn.execute(
        "SELECT body FROM outbox WHERE kind = ? ORDER BY rowid", (kind,))]


async def _on_a_clock(make_store, agent_factory, mqtt_client):
    """An agent on a clock of its own and a phone on its alerts (their queue) and dead letters:
    (agent, phone, root topic, clock, alerts)."""
    cfg = make_store()
    clock = Clock()
    server = await agent_factory(cfg, agent=Agent(cfg, clock=clock))
    phone = mqtt_client()
    R = cfg.root_topic
    alerts = await phone.subscribe(f"{R}/alert/#")
    await phone.subscribe(f"{R}/deadletter")
    return server.agent, phone, R, clock, alerts


async def _four_in_produce(make_store, agent_factory, mqtt_client):
    """:func:`_on_a_clock`, with four shoppers in produce (capacity 4)."""
    agent, phone, R, clock, alerts = await _on_a_clock(make_store, agent_factory, mqtt_client)
    for i, (x, y) in enumerate(IN_PRODUCE[:4]):
        await phone.publish(f"{R}/ping/uwb/s{i}", {"x": x, "y": y, "acc": 0.5}, qos=0)
    await marker(phone, R)
    return agent, phone, R, clock, alerts


async def _one_leaves_and_it_resolves(agent, phone, R: str, a: dict) -> None:
    """s0 leaves produce (3 of 4, below 80 %): the next tick resolves crowding alert ``a`` itself."""
    await phone.publish(f"{R}/ping/uwb/s0", {"x": 2.0, "y": 10.0, "acc": 0.5}, qos=0)
    await marker(phone, R)
    agent.tick()
    st = await phone.next_json(f"{R}/alert/#")
    assert (st["alert_id"], st["state"], st["by"]) == (a["alert_id"], "resolved", "system")
    assert [r["state"] for r in outbox(agent, "alert")] == ["open", "resolved"]


async def test_four_shoppers_and_an_associate_the_floor_says_four(make_store, agent_factory, mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    floor_q = await phone.subscribe(f"{R}/floor")
    offers = await phone.subscribe(f"{R}/offer/+")
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/staff-1", {"x": 13.0, "y": 8.0, "acc": 0.5}, qos=0)
    for i, (x, y) in enumerate(IN_PRODUCE[:4]):
        await phone.publish(f"{R}/ping/uwb/shopper-{i}", {"x": x, "y": y, "acc": 0.5}, qos=0)
    got = set()
    for _ in range(4):
        got.add((await phone.next(f"{R}/offer/+")).topic.rsplit("/", 1)[1])
    await marker(phone, R)
    assert got == {f"shopper-{i}" for i in range(4)} and offers.empty()  # the associate's device: no offer

    # {R}/floor (retained) catches up within publish_s + a tick
    async def floor_says(n: int) -> dict:
        while True:
            snap = json.loads((await asyncio.wait_for(floor_q.get(), 10)).payload)
            if snap["zones"]["produce"]["now"] == n:
                return snap
    snap = await floor_says(4)
    assert snap["zones"]["produce"] == {"now": 4, "capacity": 4, "state": "crowded"}
    late = mqtt_client()  # retained: a page or a board that connects later gets it at once
    await late.subscribe(f"{R}/floor")
    assert json.loads((await late.next(f"{R}/floor")).payload)["zones"]["produce"]["now"] == 4
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/floor") as r:
            assert r.status == 401
        async with http.get(f"{server.url}/v1/floor", headers=AUTH) as r:
            body = await r.json()
        assert body["zones"]["produce"] == {"now": 4, "capacity": 4, "state": "crowded"}
        assert set(body) == {"ts", "zones"} and "shopper" not in json.dumps(body)
        async with http.get(f"{server.url}/metrics") as r:
            assert 'edge_zone_occupancy{zone="produce"} 4' in await r.text()
        async with http.get(f"{server.url}/v1/floor/map", headers=AUTH) as r:
            m = await r.json()
        assert m["zones"]["produce"]["rings"] and len(m["zones"]["produce"]["rings"]) == 2  # the hole
        assert m["zones"]["tills"]["kind"] == "checkout"
    await phone.publish(f"{R}/ping/uwb/shopper-0", {"x": 2.0, "y": 10.0, "acc": 0.5}, qos=0)  # leaves
    assert (await floor_says(3))["zones"]["produce"]["state"] == "ok"


async def test_crowding_fires_after_sustain_not_before_and_resolves_itself(make_store, agent_factory,
                                                                           mqtt_client):
    agent, phone, R, clock, alerts = await _four_in_produce(make_store, agent_factory, mqtt_client)
    clock.t += 29
    agent.tick()
    await marker(phone, R)
    assert alerts.empty()  # not before sustain_s
    clock.t += 1
    agent.tick()
    m = await phone.next(f"{R}/alert/#")
    a = json.loads(m.payload)
    assert m.topic == f"{R}/alert/all"
    assert (a["kind"], a["zone"], a["count"], a["capacity"]) == ("crowding", "produce", 4, 4)
    clock.t += 5
    agent.tick()
    await _one_leaves_and_it_resolves(agent, phone, R, a)


async def test_queue_alert_at_the_tills_and_resolves_when_the_queue_is_gone(make_store, agent_factory,
                                                                          mqtt_client):
    agent, phone, R, clock, alerts = await _on_a_clock(make_store, agent_factory, mqtt_client)
    for dev, x in (("q1", 2.0), ("q2", 6.0)):
        await phone.publish(f"{R}/ping/uwb/{dev}", {"x": x, "y": 17.0, "acc": 0.5}, qos=0)
    await marker(phone, R)
    clock.t += 59
    agent.tick()
    await marker(phone, R)
    assert alerts.empty()  # queue_wait_s = 60
    clock.t += 1
    agent.tick()
    a = await phone.next_json(f"{R}/alert/#")
    assert (a["kind"], a["zone"], a["count"]) == ("queue", "tills", 2)
    await phone.publish(f"{R}/ping/uwb/q1", {"x": 12.0, "y": 7.0, "acc": 0.5}, qos=0)  # served
    await marker(phone, R)
    agent.tick()
    st = await phone.next_json(f"{R}/alert/#")
    assert (st["kind"], st["state"], st["by"]) == ("queue", "resolved", "system")


async def test_pickup_arrival_within_a_second_claim_once_per_order_and_a_restart(make_store, agent_factory,
                                                                                mqtt_client):
    cfg = make_store()
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/#")
    notices = await phone.subscribe(f"{R}/notice/+")
    await phone.subscribe(f"{R}/deadletter")
    order = {"order_id": "O-77", "loyalty_id": "L-ADA", "zone": "entrance", "first_name": "Ada"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/pickups", json=order) as r:
            assert r.status == 401
        async with http.post(f"{server.url}/v1/pickups", json=order, headers=AUTH) as r:
            assert r.status == 401  # the associates' token is not the tills'
        async with http.post(f"{server.url}/v1/pickups", json={**order, "zone": "nowhere"}, headers=POS_AUTH) as r:
            assert r.status == 422
        async with http.post(f"{server.url}/v1/pickups", json=order, headers=POS_AUTH) as r:
            assert r.status == 201
            assert (await r.json())["state"] == "waiting"
        async with http.post(f"{server.url}/v1/pickups", json={**order, "zone": "produce"}, headers=POS_AUTH) as r:
            assert r.status == 409
        # Another order, for a device, survives a restart before its shopper comes.
        async with http.post(f"{server.url}/v1/pickups", json={"order_id": "O-78", "device": "bob-phone",
                                                               "zone": "entrance"}, headers=POS_AUTH) as r:
            assert r.status == 201

        # Ada's phone walks in: alert and notice within a second of the ping.
        t0 = time.monotonic()
        await phone.publish(f"{R}/ping/uwb/ada-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
        m = await asyncio.wait_for(phone.queues[f"{R}/alert/#"].get(), 1.0)
        n = await asyncio.wait_for(notices.get(), 1.0)
        assert time.monotonic() - t0 < 1.0
        a = json.loads(m.payload)
        assert m.topic == f"{R}/alert/all"  # no `pickup` role configured
        assert (a["kind"], a["order_id"], a["zone"], a["shopper"]) == ("pickup_arrival", "O-77", "entrance", "Ada")
        assert n.topic == f"{R}/notice/ada-phone"
        note = json.loads(n.payload)
        assert (note["kind"], note["order_id"]) == ("pickup", "O-77") and note["text"]

        # An associate claims it: the shopper hears who is coming.
        async with http.post(f"{server.url}/v1/alerts/{a['alert_id']}/claim", json={"associate": "Dana"},
                             headers=AUTH) as r:
            assert r.status == 200
        assert (await phone.next_json(f"{R}/alert/#"))["state"] == "claimed"
        c = json.loads((await asyncio.wait_for(notices.get(), 5)).payload)
        assert c["kind"] == "pickup_claimed" and c["order_id"] == "O-77" and "Dana" in c["text"]

        # A second arrival of the same order raises nothing (her tablet too).
        await phone.publish(f"{R}/ping/uwb/ada-phone", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
        await phone.publish(f"{R}/ping/uwb/ada-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
        await phone.publish(f"{R}/ping/uwb/ada-tablet", {"x": 4.0, "y": 1.5, "acc": 0.5}, qos=0)
        await marker(phone, R)
        assert notices.empty()
        assert agent.metrics.alerts.get("pickup_arrival") == 1

        [ev] = outbox(agent, "pickup_arrival")
        assert ev["order_id"] == "O-77" and ev["person"] and "zone" not in ev and "x" not in ev
        rows = agent.ledger.conn.execute("SELECT * FROM pickups").fetchall()
        stored = json.dumps(rows) + json.dumps(outbox(agent, "alert")) + json.dumps([ev])
        for raw in ("ada-phone", "ada-tablet", "bob-phone", "L-ADA"):
            assert raw not in stored

    # Restart: O-78 is still waiting, O-77 stays arrived (never again).
    await server.stop()
    server2 = await agent_factory(cfg)
    assert set(server2.agent.pipeline.floor.orders) == {"O-77", "O-78"}
    await phone.publish(f"{R}/ping/uwb/ada-tablet", {"x": 40.0, "y": 40.0, "acc": 0.5}, qos=0)  # out
    await phone.publish(f"{R}/ping/uwb/ada-tablet", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
    await phone.publish(f"{R}/ping/uwb/bob-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
    n = await asyncio.wait_for(notices.get(), 5)
    assert n.topic == f"{R}/notice/bob-phone" and json.loads(n.payload)["order_id"] == "O-78"
    b = await phone.next_json(f"{R}/alert/#")
    assert (b["kind"], b["order_id"], b["shopper"]) == ("pickup_arrival", "O-78",
                                                        server2.agent.pseudonym("bob-phone"))
    await marker(phone, R)
    assert notices.empty()
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{server2.url}/v1/pickups/O-78", headers=POS_AUTH) as r:
            assert r.status == 204
        async with http.delete(f"{server2.url}/v1/pickups/O-78", headers=POS_AUTH) as r:
            assert r.status == 404
    assert set(server2.agent.pipeline.floor.orders) == {"O-77"}


async def test_visit_classes_from_scripted_silences(make_store, agent_factory, mqtt_client):
    # The pings' own clock ([tracking] clock = "ping"): lengths are exactly the script's.
    cfg = make_store(toml_extra=TOML + '\n[tracking]\nclock = "ping"\n')
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/deadletter")
    h0 = (time.time() // 3600 - 3) * 3600  # an hour three hours ago

    async def ping(dev: str, t: float) -> None:
        await phone.publish(f"{R}/ping/uwb/{dev}", {"x": 12.0, "y": 7.0, "acc": 0.5, "ts": h0 + t}, qos=0)

    # anon-1: 30 s (bounce); anon-2: 200 s (visit); ada-phone (tracking consent): 650 s (engaged);
    # staff-1 (an associate's device: never a visit) keeps pinging and so moves the clock on.
    for t in range(0, 651, 10):
        if t <= 30:
            await ping("anon-1", t)
        if t <= 200:
            await ping("anon-2", t)
        await ping("ada-phone", t)
        await ping("staff-1", t)
    await ping("staff-1", 650 + 121)  # everyone else silent past the timeout
    await marker(phone, R)
    agent.tick()
    assert {k[0]: v for k, v in agent.metrics.visits.values.items()} == {"bounce": 1, "visit": 1, "engaged": 1}
    [v] = outbox(agent, "visit")  # only the device with tracking consent
    assert v["device"] == agent.pseudonym("ada-phone")
    assert (v["visit_class"], v["length_s"], v["zones"]) == ("engaged", 650.0, ["produce"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as r:
            text = await r.text()
    assert 'edge_visits_total{class="engaged"} 1' in text and 'edge_visits_total{class="bounce"} 1' in text
    for t in [*range(771 + 100, 3600, 100), 3600]:  # the associate works on; the hour ends
        await ping("staff-1", t)
    await marker(phone, R)
    agent.tick()
    [agg] = outbox(agent, "visits")
    assert agg["device"] is None and agg["hour"] == h0
    assert agg["counts"] == {"bounce": 1, "visit": 1, "engaged": 1} and agg["median_s"] == 200.0


async def test_a_crowding_alert_whose_commit_failed_is_raised_once_storage_is_back(make_store, agent_factory,
                                                                                   mqtt_client):
    """The tick that raised a crowding alert could not store it (a full disk): nothing was
    published, yet the floor held it as the zone's one open alert, so once storage was back no
    crowding alert ever reached the associates (and it could never resolve either)."""
    agent, phone, R, clock, _ = await _four_in_produce(make_store, agent_factory, mqtt_client)
    clock.t += 30
    # The outbox takes no row, as on a disk that just filled up (test_faults_disk.py fills a real one):
    # SQLite refuses the insert with an OperationalError, as it does a full or failing disk (a RAISE in
    # the trigger would be a constraint, which the agent rightly takes for a bad row, not the disk).
    agent.ledger.conn.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON main.outbox "
                              "BEGIN INSERT INTO disk_is_full VALUES (1); END")
    agent.tick()  # crowding is due, but its alert cannot be stored
    assert agent.metrics.storage_errors.values
    agent.ledger.conn.execute("DROP TRIGGER temp.full")
    clock.t += 1
    agent.tick()  # storage works again
    a = await phone.next_json(f"{R}/alert/#")
    assert (a["kind"], a["zone"], a["count"], a["capacity"]) == ("crowding", "produce", 4, 4)
    await _one_leaves_and_it_resolves(agent, phone, R, a)


async def test_a_collection_answered_503_leaves_the_order_and_its_arrival_as_they_were(make_store, agent_factory,
                                                                                       mqtt_client):
    """``DELETE /v1/pickups/{id}`` answered 503 (nothing stored) put the order back, but its arrival alert had
    already been forgotten as the order's: the associate who claimed it then never told the shopper."""
    cfg = make_store()
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/alert/#")
    notices = await phone.subscribe(f"{R}/notice/+")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/pickups", headers=POS_AUTH, json={
                "order_id": "O-9", "device": "bob-phone", "zone": "entrance"}) as r:
            assert r.status == 201
        await phone.publish(f"{R}/ping/uwb/bob-phone", {"x": 3.0, "y": 1.5, "acc": 0.5}, qos=0)
        a = await phone.next_json(f"{R}/alert/#")
        assert (a["kind"], a["order_id"]) == ("pickup_arrival", "O-9")
        assert json.loads((await asyncio.wait_for(notices.get(), 5)).payload)["kind"] == "pickup"
        agent.ledger.conn.execute("PRAGMA query_only = 1")  # every write fails, as on a full disk
        async with http.delete(f"{server.url}/v1/pickups/O-9", headers=POS_AUTH) as r:
            assert r.status == 503
        agent.ledger.conn.execute("PRAGMA query_only = 0")
        agent.tick()  # storage works again
        assert "O-9" in agent.pipeline.floor.orders
        async with http.post(f"{server.url}/v1/alerts/{a['alert_id']}/claim", json={"associate": "Dana"},
                             headers=AUTH) as r:
            assert r.status == 200
        c = json.loads((await asyncio.wait_for(notices.get(), 5)).payload)
        assert (c["kind"], c["order_id"]) == ("pickup_claimed", "O-9") and "Dana" in c["text"]
