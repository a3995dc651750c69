"""What real clients send that is easy to get wrong: retained messages,
anonymous devices with events on, msgpack inventory lists, a lowercase
bearer scheme, beacon sightings with no known beacon, a wiped data dir."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import msgpack
import pytest

from edge_agent.storage.ledger import Ledger


@pytest.mark.broker
async def test_stale_retained_ping_is_ignored_fresh_one_is_used(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra="""
        [ingest]
        owntracks = true
    """)
    R = cfg.root_topic
    phone = mqtt_client()
    # The broker remembers positions from before the agent started (OwnTracks publishes retained).
    await phone.publish(f"{R}/ping/uwb/old", {"x": 24.0, "y": 10.0, "acc": 0.5, "ts": time.time() - 3 * 3600},
                        retain=True)
    await phone.publish(f"{R}/ping/uwb/untimed", {"x": 24.0, "y": 10.0, "acc": 0.5}, retain=True)
    await phone.publish(f"{R}/ping/uwb/recent", {"x": 24.0, "y": 10.0, "acc": 0.5, "ts": time.time()}, retain=True)
    await phone.subscribe(f"{R}/offer/+")
    server = await agent_factory(cfg)
    m = await phone.next(f"{R}/offer/+")
    assert m.topic.endswith("/recent")
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/marker", b"x", qos=0)
    await phone.next(f"{R}/deadletter")
    assert phone.queues[f"{R}/offer/+"].empty()
    assert server.agent.metrics.pings_shed.get("retained") == 2
    for dev in ("old", "untimed", "recent"):  # clean the broker for other tests
        await phone.publish(f"{R}/ping/uwb/{dev}", b"", retain=True)


@pytest.mark.broker
async def test_retained_consent_without_ts_never_beats_a_newer_one(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    R = cfg.root_topic
    phone = mqtt_client()
    await phone.publish(f"{R}/consent/c1", {"offers": True}, retain=True)  # an old opt-in the broker kept
    server = await agent_factory(cfg)
    agent = server.agent
    await phone.publish(f"{R}/consent/c1", {"offers": False}, qos=1)  # today's opt-out
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/consent/c1", b"{", qos=1)
    await phone.next(f"{R}/deadletter")
    assert agent.consents[agent.pseudonym("c1")][0].offers is False
    # A reconnect redelivers the retained opt-in: it still does not win.
    agent.on_batch([type(m)(m.topic, m.payload, 1, 0, time.time(), True)
                    for m in [_msg(f"{R}/consent/c1", {"offers": True})]])
    assert agent.consents[agent.pseudonym("c1")][0].offers is False
    await phone.publish(f"{R}/consent/c1", b"", retain=True)


def _msg(topic, obj):
    from edge_agent.transport.mqtt import Message
    return Message(topic, json.dumps(obj).encode(), 1, 0, time.time(), True)


@pytest.mark.broker
async def test_events_published_for_anonymous_devices(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra="""
        [tracking]
        publish_events = true
    """)
    await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/event/anon-1")
    await phone.publish(f"{R}/ping/uwb/anon-1", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    ev = await phone.next_json(f"{R}/event/anon-1")
    assert ev["event"] == "enter" and ev["zone"] == "aisle-1" and isinstance(ev["ts"], float)


@pytest.mark.broker
async def test_inventory_as_msgpack_list_and_lowercase_bearer(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(inventory={"chips": 5})
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.publish(f"{R}/inventory", msgpack.packb([{"sku": "chips", "qty": 0}, {"sku": "apple", "qty": 7}]))
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/inventory", b"{", qos=1)
    await phone.next(f"{R}/deadletter")
    assert agent.inventory["chips"][0] == 0 and agent.inventory["apple"][0] == 7
    async with aiohttp.ClientSession() as http:
        async with http.delete(server.url + "/v1/admin/devices/x",
                               headers={"Authorization": "bearer admin-secret"}) as r:
            assert r.status == 200


@pytest.mark.broker
async def test_unknown_beacon_dead_letter_carries_the_original_payload(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/deadletter")
    raw = json.dumps({"beacons": [{"id": "nobody:1:2", "rssi": -60}]}).encode()
    await phone.publish(f"{R}/ping/ble/lost", raw, qos=0)
    dl = await phone.next_json(f"{R}/deadletter")
    assert dl["reason"] == "no_position" and base64.b64decode(dl["payload_b64"]) == raw


def test_event_keys_differ_after_the_ledger_is_wiped(tmp_path):
    a = Ledger(tmp_path / "a.sqlite3", store_id="S1")
    k1 = a.new_key()
    a.close()
    (tmp_path / "a.sqlite3").unlink()
    b = Ledger(tmp_path / "a.sqlite3", store_id="S1")
    k2 = b.new_key()
    b.close()
    assert k1 != k2 and k1.startswith("S1:") and k1.endswith(":1:1") and k2.endswith(":1:1")
