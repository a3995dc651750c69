"""The MQTT uplink (``[sync] transport = "mqtt"``): the outbox to a central broker.

Its own paho client (``edge-agent-{store}-uplink``) on the loop, a
persistent session (``clean_session=False`` / MQTT 5 session expiry), QoS 1.
The client is built by the host's ``mqtt_client`` factory (the composition
root passes the agent's loop-driven client class), so ``sync/`` imports
nothing of ``edge_agent``.

One event per message on ``central/{store_id}/events/{kind}`` (JSON, or
msgpack with ``[sync] encoding = "msgpack"``): one message is one record for
a rule engine (AWS IoT Core rule → Kafka action, EMQX rule engine → Kafka
sink), which can key the record by ``key`` or ``device`` and route by kind
on the topic alone.

Up to ``[sync] batch_size`` messages are in flight; they are published in
``seq`` order from one client, so every device's events keep their order.
A row is deleted only when the broker's PUBACK for it arrives.  Messages in
flight when the connection drops are re-sent by paho (same message ids,
DUP flag) when it reconnects; after a restart of the agent, rows still in
the outbox are published again — central deduplicates by ``key``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from store_config.model import MqttConfig

from .wire import encode, outgoing

if TYPE_CHECKING:  # pragma: no cover
    from .host import SyncHost, UplinkMqttClient

log = logging.getLogger("sync.uplink_mqtt")


def topic_for(store_id: str, kind: str) -> str:
    return f"central/{store_id}/events/{kind}"


def uplink_mqtt_config(url: str) -> MqttConfig:
    """The central broker's settings from ``[sync] mqtt_url`` (``user:password@`` allowed)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # an IPv6 literal keeps its brackets
    clean = parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()
    return MqttConfig(url=clean, username=unquote(parts.username) if parts.username else None,
                      password=unquote(parts.password) if parts.password else None)


class MqttUplink:
    def __init__(self, sync: "SyncHost"):
        self.sync = sync
        self.client: UplinkMqttClient | None = None
        self.inflight: dict[int, int] = {}  # mid -> outbox seq
        self.last_sent = 0  # highest seq published on this connection's lifetime
        self.acked: list[int] = []
        self.wake = asyncio.Event()

    def _on_published(self, mid: int) -> None:
        seq = self.inflight.pop(mid, None)
        if seq is not None:
            self.acked.append(seq)
            self.wake.set()

    async def run(self) -> None:
        cfg = self.sync.cfg
        factory = self.sync.mqtt_client
        assert factory is not None, "Sync.start checks it"
        self.client = factory(uplink_mqtt_config(cfg.sync.mqtt_url), client_id=f"edge-agent-{cfg.store_id}-uplink",
                              subscriptions=[], on_batch=lambda batch: None,
                              on_published=self._on_published, clock=self.sync.clock)
        await self.client.start()
        try:
            while True:
                try:
                    self._settle()
                    if self.client.connected.is_set():
                        self._publish_more()
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:  # storage trouble: try again on the next round
                    log.exception("MQTT uplink round failed")
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=min(self.sync.cfg.sync.interval_s, 1.0))
                except asyncio.TimeoutError:
                    pass
        finally:
            try:
                self._settle()
            finally:
                await self.client.stop()

    def _settle(self) -> None:
        """Delete the rows whose PUBACK arrived (one short transaction)."""
        if not self.acked:
            return
        seqs, self.acked = self.acked, []
        try:
            self.sync.write(lambda led: led.outbox.delete(seqs))
        except sqlite3.Error:
            self.acked[:0] = seqs  # delete them next time; until then they are not re-sent
            raise
        self.sync.metrics.last_sync.set(self.sync.clock())
        self.sync.notify("delivered", {"events": len(seqs), "transport": "mqtt"})

    def _publish_more(self) -> None:
        sync = self.sync
        sc = sync.cfg.sync
        room = sc.batch_size - len(self.inflight)
        if room <= 0:
            return
        led = sync.store
        led.commit()  # only committed rows leave the store
        if not self.inflight:
            self.last_sent = 0  # nothing in flight: start again from the oldest row still pending
        rows = led.outbox.peek_after(self.last_sent, room)
        for seq, body in rows:
            ev = outgoing(body)
            data, _ = encode(ev, sc.encoding)
            mid = self.client.publish(topic_for(sync.cfg.store_id, str(ev.get("kind", "event"))), data, qos=1)
            self.inflight[mid] = seq
            self.last_sent = seq
