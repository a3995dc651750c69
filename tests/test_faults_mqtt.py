"""Fault injection, MQTT: a poisoned message — retained, or QoS 1 waiting in
the agent's persistent session — is dead-lettered once and acknowledged; it
never comes back at every reconnect, and a shopper beside it gets the offer."""

from __future__ import annotations

import asyncio

import pytest

from store_config import load_store

from .conftest import wait_until, write_store
from .hardening_kit import BIG, IN_AISLE, TOML

pytestmark = pytest.mark.broker


async def test_a_poisoned_retained_and_queued_message_is_dead_lettered_once(tmp_path, mosquitto_factory,
                                                                            agent_factory, mqtt_client):
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url, toml_extra=TOML))
    R = cfg.root_topic
    # First start: the agent's persistent session exists from now on.
    server = await agent_factory(cfg)
    await server.stop()
    phone = mqtt_client(broker.url)
    await phone.subscribe(f"{R}/offer/+")
    await phone.subscribe(f"{R}/deadletter", qos=0)
    poison = '{"offers": false, "ts": ' + str(BIG) + '}'
    await phone.publish(f"{R}/consent/evil", poison, qos=1, retain=True)  # the broker's memory
    await phone.publish(f"{R}/inventory", '{"sku": "chips", "qty": ' + str(BIG) + '}', qos=1)  # queued

    server = await agent_factory(cfg)
    agent = server.agent
    await phone.publish(f"{R}/ping/uwb/canary", IN_AISLE, qos=1)  # (pings are QoS 0 to the agent: not queued)
    offer = await phone.next_json(f"{R}/offer/+", timeout=10)
    assert offer["zone"] == "aisle-1"
    reasons = sorted([(await phone.next_json(f"{R}/deadletter"))["reason"] for _ in range(2)])
    assert reasons == ["range", "range"]
    assert not agent._retry and not agent.metrics.storage_errors.values
    # Acknowledged: a restart gets the retained one again (that is what retained means) and
    # dead-letters it again, once; the queued one is gone for good.
    await server.stop()
    server = await agent_factory(cfg)
    agent = server.agent
    assert (await phone.next_json(f"{R}/deadletter"))["topic"] == f"{R}/consent/evil"
    await phone.publish(f"{R}/ping/uwb/canary-2", IN_AISLE, qos=1)
    assert (await phone.next_json(f"{R}/offer/+", timeout=10))["zone"] == "aisle-1"
    assert agent.metrics.deadletters.get("range") == 1
    await phone.publish(f"{R}/consent/evil", b"", qos=1, retain=True)  # clear the retained poison
    await asyncio.wait_for(wait_until(lambda: agent.metrics.deadletters.get("decode") == 1), 5)
