"""Broker faults: the agent reconnects, resubscribes, says `online` again and
serves; offers published while the broker is away are delivered after it
comes back (same offer id), or dropped and counted once they expire."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from edge_agent.transport.mqtt import Message
from store_config import load_store

from .conftest import TestClient, wait_until, write_store

pytestmark = pytest.mark.broker


async def test_broker_restart_mid_load(tmp_path, mosquitto_factory, agent_factory, mqtt_client):
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    phone = mqtt_client(broker.url)
    await phone.subscribe(f"{R}/offer/+")
    for i in range(50):
        await phone.publish(f"{R}/ping/wifi/load-{i}", {"x": 2.0, "y": 18.0, "acc": 1.0}, qos=0)
    await phone.publish(f"{R}/ping/uwb/before", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    assert (await phone.next_json(f"{R}/offer/+"))["zone"] == "aisle-1"
    connects = agent.mqtt.connects

    await asyncio.to_thread(broker.restart)
    # The agent reconnects (with backoff), resubscribes and publishes `online` again.
    await asyncio.wait_for(wait_until(lambda: agent.mqtt.connects > connects and agent.mqtt.subscribed.is_set()), 20)
    watcher = mqtt_client(broker.url)
    await watcher.subscribe(f"{R}/status")
    assert (await watcher.next(f"{R}/status")).payload == b"online"
    await watcher.subscribe(f"{R}/offer/+")
    await watcher.publish(f"{R}/ping/uwb/after", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    offer = await watcher.next_json(f"{R}/offer/+", timeout=10)
    assert offer["zone"] == "aisle-1"


async def test_offer_while_broker_down_is_delivered_after_reconnect(tmp_path, mosquitto_factory, agent_factory):
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    # A persistent-session phone (clean_session=False): its QoS 1 offer waits for it in the broker.
    async with aiohttp.ClientSession() as http:  # the store page's device session (POST /v1/ping needs it)
        async with http.post(server.url + "/v1/shop/session") as r:
            session = await r.json()
    device = session["device"]
    phone = TestClient(broker.url, asyncio.get_running_loop(), client_id="offline-phone", clean_session=False)
    try:
        await phone.subscribe(f"{R}/offer/{device}")
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(wait_until(lambda: not agent.mqtt.connected.is_set()), 10)
        # A ping arrives by HTTP while the broker is down: the offer is committed and queued, not lost.
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/v1/ping", params={"device": device, "source": "uwb"},
                                 json={"x": 24.0, "y": 10.0, "acc": 0.5},
                                 headers={"Authorization": f"Bearer {session['token']}"}) as r:
                assert r.status == 202
        offer_id, delivered = agent.ledger.conn.execute("SELECT offer_id, delivered FROM offers").fetchone()
        assert delivered == 0
        await asyncio.to_thread(broker.start)
        offer = await phone.next_json(f"{R}/offer/{device}", timeout=20)
        assert offer["offer_id"] == offer_id  # the same offer, not a second one
        await asyncio.wait_for(wait_until(lambda: agent.ledger.get_offer(offer_id).delivered), 10)
        assert agent.metrics.offers_expired.get() == 0
        assert phone.queues[f"{R}/offer/{device}"].empty()
    finally:
        phone.close()


async def test_undeliverable_offer_expires_and_is_counted(tmp_path, mosquitto_factory, agent_factory):
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    await asyncio.to_thread(broker.stop)
    await asyncio.wait_for(wait_until(lambda: not agent.mqtt.connected.is_set()), 10)
    agent.on_batch([Message(f"{R}/ping/uwb/p", json.dumps({"x": 24.0, "y": 10.0, "acc": 0.5}).encode(),
                            0, 0, time.time())])
    assert agent.wire.in_flight
    expires = next(iter(agent.wire.in_flight.values())).expires
    assert agent.expire_offers(expires - 1) == 0
    assert agent.expire_offers(expires) == 1
    agent.ledger.commit()
    assert agent.metrics.offers_expired.get() == 1
    assert agent.ledger.undelivered(time.time()) == []  # never re-sent after a restart


async def test_an_offer_held_while_paho_keeps_unwritten_packets_of_a_lost_connection_lands(
        tmp_path, mosquitto_factory, agent_factory):
    """A frozen broker lets the agent's writes pile up in paho; when the connection then
    dies, paho keeps them until it reconnects.  A batch with offers in that window still
    gets its second commit (send_now must not write to the closed socket and raise)."""
    import signal

    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    broker.proc.send_signal(signal.SIGSTOP)
    big = b"x" * (1 << 20)
    for _ in range(64):  # more than the loopback's send and receive buffers take
        agent.mqtt.publish(f"{R}/filler", big, qos=0)
        agent.mqtt.send_now()
    assert agent.mqtt.client.want_write()
    broker.proc.kill()
    await asyncio.to_thread(broker.proc.wait)
    await asyncio.wait_for(wait_until(lambda: not agent.mqtt.connected.is_set()), 10)
    assert agent.mqtt.client.want_write() and agent.mqtt.client.socket() is None  # paho's leftovers
    agent.on_batch([Message(f"{R}/ping/uwb/p", json.dumps({"x": 24.0, "y": 10.0, "acc": 0.5}).encode(),
                            0, 0, time.time())])
    [p] = agent.wire.in_flight.values()
    assert agent.ledger.get_offer(p.offer_id) is not None  # written into its table, not left pending
    assert agent.ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_an_offer_expired_while_the_broker_was_away_is_not_sent_when_it_is_back(
        tmp_path, mosquitto_factory, agent_factory, protocol):
    """Offers are "re-sent after a reconnect while unacknowledged, given up at their expiry"
    (docs/operations.md, "Broker down").  paho keeps every unacknowledged QoS 1 publish and
    re-sends it on reconnect on its own, so an offer the agent gave up on still reached the
    phone once the broker was back (found by this audit: stop the broker, offer, expire, start)."""
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    from dataclasses import replace
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, protocol=protocol))
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    phone = TestClient(broker.url, asyncio.get_running_loop(), client_id=f"late-phone-{protocol}", clean_session=False)
    try:
        await phone.subscribe(f"{R}/offer/+")
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(wait_until(lambda: not agent.mqtt.connected.is_set()), 10)
        agent.on_batch([Message(f"{R}/ping/uwb/gone", json.dumps({"x": 24.0, "y": 10.0, "acc": 0.5}).encode(),
                                0, 0, time.time())])
        [p] = agent.wire.in_flight.values()
        assert agent.expire_offers(p.expires) == 1
        connects = agent.mqtt.connects
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(wait_until(lambda: agent.mqtt.connects > connects and agent.mqtt.subscribed.is_set()),
                               20)
        # a fresh offer after the reconnect: anything re-sent on reconnect arrives before it
        shopper = TestClient(broker.url, asyncio.get_running_loop())
        try:
            await shopper.publish(f"{R}/ping/uwb/fresh", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
        finally:
            shopper.close()
        first = await phone.next_json(f"{R}/offer/+", timeout=10)
        assert first["offer_id"] != p.offer_id
        assert phone.queues[f"{R}/offer/+"].empty()
        assert [m.topic for m in phone.all] == [f"{R}/offer/fresh"]
    finally:
        phone.close()
