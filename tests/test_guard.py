"""Spoofing and overload: teleports and mock locations never trigger; an
overloaded batch keeps each device's newest ping."""

from __future__ import annotations

import json
import time

import pytest

from edge_agent.pipeline.codecs import Ping
from edge_agent.pipeline.guard import SpoofGuard, shed_stale
from edge_agent.transport.mqtt import Message


def test_teleport_is_rejected_then_reanchored():
    g = SpoofGuard(max_speed=7.0, strikes=3)
    assert g.check("d", 0, 0, 0, 1.0, 100.0) is None
    assert g.check("d", 5, 0, 0, 1.0, 101.0) is None  # 5 m in 1 s: fine
    assert g.check("e", 0, 0, 0, 1.0, None) is None  # no device time: no speed test
    assert g.check("e", 500, 0, 0, 1.0, None) is None
    assert g.check("d", 500, 0, 0, 1.0, 102.0) == "teleport"
    assert g.check("d", 500, 0, 0, 1.0, 102.5) == "teleport"
    assert g.check("d", 500, 0, 0, 1.0, 103.0) is None  # third strike re-anchors
    assert g.check("d", 501, 0, 0, 1.0, 104.0) is None
    assert g.check("d", 0, 0, 1, 1.0, 104.1) is None  # another floor: no speed test
    assert g.check("d", 0, 0, 1, 1.0, 105.0, mock=True) == "mock"


def test_accuracy_widens_the_speed_allowance():
    g = SpoofGuard(max_speed=2.0)
    g.check("d", 0, 0, 0, 25.0, 0.0)
    assert g.check("d", 40, 0, 0, 25.0, 1.0) is None  # within 2 + 25 + 25 m


def test_shed_stale_keeps_newest_per_device():
    pings = [Ping(device=f"d{i % 3}", source="wifi", received=float(i), x=float(i), y=0.0) for i in range(9)]
    kept, shed = shed_stale(pings, limit=5)
    assert shed == 6
    assert [(p.device, p.x) for p in kept] == [("d0", 6.0), ("d1", 7.0), ("d2", 8.0)]
    assert shed_stale(pings, limit=100) == (pings, 0)


@pytest.mark.broker
async def test_spoofed_pings_do_not_trigger(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra="""
        [tracking]
        max_speed_mps = 7
    """)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    await phone.subscribe(f"{R}/deadletter")
    now = time.time()
    await phone.publish(f"{R}/ping/uwb/faker", {"x": 24.0, "y": 10.0, "acc": 0.5, "mock": True}, qos=0)
    await phone.publish(f"{R}/ping/uwb/jumper", {"x": 2.0, "y": 18.0, "acc": 0.5, "ts": now}, qos=0)
    await phone.publish(f"{R}/ping/uwb/jumper", {"x": 24.0, "y": 10.0, "acc": 0.5, "ts": now + 0.5}, qos=0)
    await phone.publish(f"{R}/ping/uwb/jumper", b"!", qos=0)
    await phone.next(f"{R}/deadletter")
    assert phone.queues[f"{R}/offer/+"].empty()
    assert agent.metrics.spoofed.get("mock") == 1
    assert agent.metrics.spoofed.get("teleport") == 1


@pytest.mark.broker
async def test_overloaded_batch_sheds_stale_pings_not_actions(store_factory, agent_factory):
    cfg = store_factory(toml_extra="""
        [ingest]
        shed_above = 10
    """)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    t = time.time()
    msgs = [Message(f"{R}/ping/uwb/crowd-{i % 4}", json.dumps({"x": 2.0, "y": 18.0, "acc": 1}).encode(), 0, 0, t)
            for i in range(40)]
    msgs.append(Message(f"{R}/consent/crowd-1", b'{"offers": false}', 1, 77, t))
    agent.on_batch(msgs)
    assert agent.metrics.pings_shed.get("stale") == 36
    assert agent.metrics.pings.get("uwb") == 4
    assert agent.consents[agent.pseudonym("crowd-1")][0].offers is False


@pytest.mark.parametrize("rest,got", [("ping/wifi", "2"), ("ping/uwb/d6/extra", "4"),
                                     ("ping/uwb/", "3, the last one empty")])
def test_a_ping_topic_with_the_wrong_levels_says_how_many_it_needs(rest, got):
    # the dead letter's detail is what an operator reads: {R}/ping/{source}/{device} is
    # three levels after the store id
    from edge_agent.pipeline.codecs import PayloadError, decode_topic_ping

    m = Message(f"store/S1/{rest}", b'{"x": 1, "y": 1}', 0, 0, time.time(), False)
    with pytest.raises(PayloadError) as e:
        decode_topic_ping(m, rest, "store/S1", None)
    assert e.value.reason == "topic"
    assert f"(3 levels after the store id, got {got})" in e.value.detail
