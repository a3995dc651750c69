"""QoS 0 messages take the transport's short path past paho's message objects;
what they hand on is the same as paho's path, and everything else still goes through paho.
QoS 1 publishes of offers take a short path too: what they queue is paho's, byte for byte."""

from __future__ import annotations

import asyncio
import socket

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.transport.mqtt import MqttClient, _Client
from store_config.model import MqttConfig
from tests.conftest import TestClient, wait_until


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


@pytest.mark.broker
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


# -- QoS 1 publishes on the short path (an offer's: MqttClient.publish_qos1)

def _queued(client: _Client, mid: int) -> tuple:
    m = client._out_messages[mid]
    [pkt] = [p for p in client._out_packet if p["mid"] == mid] or [None]
    return ((m.topic, m.payload, m.qos, m.retain, m.dup, m.state, m.properties), client._inflight_messages,
            None if pkt is None else (pkt["command"], pkt["qos"], pkt["pos"], pkt["to_process"], bytes(pkt["packet"])))


def _unwritten_client(protocol) -> _Client:
    """A client that counts as connected, with the transport's write callback (nothing written)."""
    c = _Client(CallbackAPIVersion.VERSION2, client_id="q1", protocol=protocol)
    c._sock = socket.socket()
    c.on_socket_register_write = lambda *a: None
    return c


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
@pytest.mark.parametrize("size", [0, 100, 20_000, 2_200_000])  # remaining length in 1, 2, 3 and 4 bytes
def test_a_short_qos1_publish_queues_what_paho_queues(protocol, size):
    """The same packet, byte for byte, and the same message state and in-flight count as paho's
    ``publish(qos=1)`` -- what its PUBACK handling and its re-send after a reconnect read."""
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    out = []
    for short in (False, True):
        c = _unwritten_client(protocol)
        try:
            mid = c.publish_qos1("store/S/offer/zóna", payload) if short else \
                c.publish("store/S/offer/zóna", payload, qos=1).mid
            out.append(_queued(c, mid))
        finally:
            c._sock.close()
    assert out[0] == out[1]


def test_a_short_qos1_publish_leaves_to_paho_what_is_not_the_common_case():
    """Not connected, the in-flight limit reached, a wildcard topic, a full queue: paho's own publish
    (queued for the reconnect, queued behind the limit, refused, not queued) -- never a packet of ours."""
    c = _Client(CallbackAPIVersion.VERSION2, client_id="q1")
    mid = c.publish_qos1("o/a", b"1")  # no socket
    assert c._out_messages[mid].state == paho.mqtt_ms_publish and not c._out_packet
    c = _unwritten_client(paho.MQTTv311)
    try:
        c.max_inflight_messages_set(1)
        c.publish_qos1("o/b", b"2")  # _messages_reconnect_reset_out would count it; here: one in flight
        assert c._inflight_messages == 1
        mid = c.publish_qos1("o/c", b"3")
        assert c._out_messages[mid].state == paho.mqtt_ms_queued and c._inflight_messages == 1
        with pytest.raises(ValueError):
            c.publish_qos1("o/#", b"4")
    finally:
        c._sock.close()
    c = _unwritten_client(paho.MQTTv311)
    try:
        c.max_queued_messages_set(1)
        c.publish_qos1("o/a", b"1")
        c.publish_qos1("o/b", b"2")  # paho's answer to a full queue: not queued
        assert [m.payload for m in c._out_messages.values()] == [b"1"]
    finally:
        c._sock.close()


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_short_qos1_publishes_arrive_are_acknowledged_and_resent_after_a_lost_connection(
        mosquitto_factory, protocol):
    """Through a real Mosquitto: delivered and PUBACKed (paho reports the mid, forgets the message);
    one whose PUBACK never came -- the broker frozen, the connection then lost -- is re-sent by paho
    on the reconnect, marked DUP, and acknowledged then."""
    import signal

    broker = mosquitto_factory()
    phone = TestClient(broker.url, asyncio.get_running_loop())
    acked: list[int] = []
    got_ack = asyncio.Event()

    def on_published(mid: int) -> None:
        acked.append(mid)
        got_ack.set()

    client = MqttClient(MqttConfig(url=broker.url, protocol=protocol), client_id=f"short-q1-{protocol}",
                        subscriptions=[], on_batch=lambda msgs: None, on_published=on_published)
    await client.start()
    try:
        await phone.subscribe("o/#", qos=1)
        await asyncio.wait_for(client.connected.wait(), 10)
        first = client.publish_qos1("o/first", b'{"n":1}')
        assert (await phone.next("o/#")).payload == b'{"n":1}'
        await asyncio.wait_for(wait_until(lambda: first in acked), 10)
        assert first not in client.client._out_messages and client.client._inflight_messages == 0

        broker.proc.send_signal(signal.SIGSTOP)
        try:
            got_ack.clear()
            second = client.publish_qos1("o/second", b'{"n":2}')
            client.send_now()
            connects = client.connects
            client.client.socket().shutdown(socket.SHUT_RDWR)  # the connection is lost before any PUBACK
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(wait_until(lambda: client.connects > connects and second in acked), 20)
        assert second not in client.client._out_messages and client.client._inflight_messages == 0
        payloads = []
        while not phone.queues["o/#"].empty():
            payloads.append((await phone.next("o/#")).payload)
        if not payloads:  # the frozen broker's copy may have been lost with the connection: the re-send came
            payloads.append((await phone.next("o/#")).payload)
        assert set(payloads) == {b'{"n":2}'}
    finally:
        await client.stop()
        phone.close()
