"""The MQTT uplink to a second Mosquitto playing central (QoS 1, persistent session)."""

from __future__ import annotations

import asyncio
import json
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.central import PRIVATE, barrier, produced_keys, sync_toml, until, walk
from tests.conftest import free_port

pytestmark = pytest.mark.broker


class CentralConsumer:
    """Central's side of the broker: a persistent-session QoS 1 subscriber that records events by key."""

    def __init__(self, url: str, store_id: str, loop: asyncio.AbstractEventLoop):
        host, port = url.split("://")[1].split(":")
        self.loop = loop
        self.copies: dict[str, int] = {}
        self.events: dict[str, dict] = {}
        self.topics: set[str] = set()
        self.changed = asyncio.Event()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"central-{free_port()}",
                                  clean_session=False)
        self.client.on_connect = lambda c, *a: c.subscribe(f"central/{store_id}/events/#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not subscribed.wait(5):
            raise RuntimeError("central consumer could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        ev = json.loads(msg.payload)
        self.loop.call_soon_threadsafe(self._record, msg.topic, ev)

    def _record(self, topic: str, ev: dict) -> None:
        self.topics.add(topic)
        self.copies[ev["key"]] = self.copies.get(ev["key"], 0) + 1
        self.events.setdefault(ev["key"], ev)
        self.changed.set()

    async def wait_for(self, pred, timeout: float = 15.0) -> None:
        async def loop():
            while not pred():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)

    def close(self) -> None:
        # disconnect first: it wakes the network thread, which then ends at once; loop_stop
        # first waits out the thread's select (up to 1 s per client)
        self.client.disconnect()
        self.client.loop_stop()


async def test_mqtt_uplink_exactly_once_by_key_across_central_broker_restart(
        store_factory, agent_factory, mqtt_client, mosquitto_factory):
    central_broker = mosquitto_factory()
    cfg = store_factory(toml_extra=sync_toml(None, transport="mqtt", mqtt_url=central_broker.url, batch_size=50))
    consumer = CentralConsumer(central_broker.url, cfg.store_id, asyncio.get_running_loop())
    try:
        server = await agent_factory(cfg)
        agent = server.agent
        phone = mqtt_client()
        R = cfg.root_topic
        for i in range(10):
            await walk(phone, R, f"m{i}")
        await barrier(phone, R)
        first = produced_keys(agent)
        await consumer.wait_for(lambda: first <= set(consumer.events))
        # Central's broker restarts (sessions persist); events keep coming meanwhile.
        await asyncio.to_thread(central_broker.stop)
        for i in range(10, 20):
            await walk(phone, R, f"m{i}")
        await barrier(phone, R)
        assert agent.ledger.outbox.pending() > 0  # held in the outbox while central's broker is down
        await asyncio.to_thread(central_broker.start)
        everything = produced_keys(agent)
        await consumer.wait_for(lambda: everything <= set(consumer.events), timeout=20)
        await until(agent, lambda: agent.ledger.outbox.pending() == 0)
        assert set(consumer.events) == everything
        # At least once on the wire; a duplicate is only ever a re-sent in-flight message (DUP), same key.
        assert sum(consumer.copies.values()) - len(consumer.copies) <= cfg.sync.batch_size
        kinds = {ev["kind"] for ev in consumer.events.values()}
        assert {"transition", "offer", "deadletter"} <= kinds
        assert consumer.topics <= {f"central/{cfg.store_id}/events/{k}" for k in kinds}
        for ev in consumer.events.values():
            assert not PRIVATE & set(ev)
            assert ev["device"] is None or ev["device"].startswith("d_")
    finally:
        consumer.close()
