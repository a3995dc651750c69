"""QoS 0 messages take the transport's short path past paho's message objects;
what they hand on is the same as paho's path, and everything else still goes through paho."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.transport.mqtt import MqttClient
from store_config.model import MqttConfig

pytestmark = pytest.mark.broker


async def _received(mosquitto, mqtt_client, protocol: str, *, fast: bool):
    """What on_batch gets for a retained QoS 0, a QoS 0 with a non-ASCII topic and a
    binary payload, and a QoS 1 message (acknowledged by hand, as the agent does)."""
    phone = mqtt_client()
    await phone.publish("f/kept", b"old", qos=0, retain=True)
    got: list = []
    done = asyncio.Event()
    client: MqttClient | None = None

    def on_batch(msgs):
        for m in msgs:
            got.append(m)
            if m.qos:
                client.ack(m.mid, m.qos)
            if m.topic == "f/last":
                done.set()

    client = MqttClient(MqttConfig(url=mosquitto.url, protocol=protocol),
                        client_id=f"fast-{protocol}-{fast}", subscriptions=[("f/#", 1)], on_batch=on_batch)
    short: list[str] = []
    if fast:
        inner = client.client.fast_message
        client.client.fast_message = lambda topic, payload, retain: (short.append(topic), inner(topic, payload, retain))
    else:
        client.client.fast_message = None  # paho's own path, for the comparison
    await client.start()
    try:
        await asyncio.wait_for(client.subscribed.wait(), 10)
        await phone.publish("f/zóna/ü", b"\x00\xff{\"x\":1}", qos=0)
        await phone.publish("f/one", b"q1", qos=1)
        await phone.publish("f/last", b"", qos=0)
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await client.stop()
        await phone.publish("f/kept", b"", qos=0, retain=True)  # clear the retained message
    return [(m.topic, m.payload, m.qos, m.mid > 0, m.retain) for m in got], short


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_qos0_messages_arrive_as_paho_hands_them_on(mosquitto, mqtt_client, protocol):
    fast, short = await _received(mosquitto, mqtt_client, protocol, fast=True)
    # MQTT 3.1.1's QoS 0 messages took the short path; QoS 1 and all of MQTT 5 went through paho
    assert short == (["f/kept", "f/zóna/ü", "f/last"] if protocol == "3.1.1" else [])
    assert fast == [
        ("f/kept", b"old", 0, False, True),
        ("f/zóna/ü", b"\x00\xff{\"x\":1}", 0, False, False),
        ("f/one", b"q1", 1, True, False),
        ("f/last", b"", 0, False, False),
    ]
    assert fast == (await _received(mosquitto, mqtt_client, protocol, fast=False))[0]
