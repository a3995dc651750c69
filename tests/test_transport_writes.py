"""The transport writes a batch's publishes when the batch ends, without a writer
registered with the loop; what the socket does not take then, the loop writes later."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.transport.mqtt import MqttClient
from store_config.model import MqttConfig

pytestmark = pytest.mark.broker

BIG = 512 * 1024  # 40 of these (20 MB) are more than a loopback socket takes at once


async def test_a_batch_that_publishes_more_than_the_socket_takes_delivers_it_all(mosquitto, mqtt_client):
    phone = mqtt_client()
    await phone.subscribe("w/out/+", qos=1)
    batches: list[int] = []
    client: MqttClient | None = None

    def on_batch(msgs):
        batches.append(len(msgs))
        for m in msgs:
            if m.topic == "w/in":
                for i in range(40):
                    client.publish(f"w/out/{i}", bytes([i % 256]) * BIG, qos=0)  # no PUBACK reads to wake us

    client = MqttClient(MqttConfig(url=mosquitto.url), client_id="writes-test",
                        subscriptions=[("w/in", 0)], on_batch=on_batch)
    await client.start()
    try:
        await asyncio.wait_for(client.subscribed.wait(), 10)
        await phone.publish("w/in", b"go", qos=0)
        seen = set()
        while len(seen) < 40:
            m = await phone.next("w/out/+", timeout=30)
            assert len(m.payload) == BIG
            seen.add(m.topic)
        assert batches == [1]  # one batch published all 40: the rest went out through the loop's writer
        assert not client.client.want_write()
        assert not client._writer  # and the writer was taken off again once the socket took the rest
    finally:
        await client.stop()


async def test_a_publish_outside_a_batch_goes_out_through_the_loops_writer(mosquitto, mqtt_client):
    phone = mqtt_client()
    await phone.subscribe("w/tick", qos=1)
    client = MqttClient(MqttConfig(url=mosquitto.url), client_id="writes-test-2", subscriptions=[],
                        on_batch=lambda msgs: None)
    await client.start()
    try:
        await asyncio.wait_for(client.connected.wait(), 10)
        client.publish("w/tick", b"t", qos=1)  # as a tick or an HTTP handler does
        assert (await phone.next("w/tick", timeout=10)).payload == b"t"
    finally:
        await client.stop()
