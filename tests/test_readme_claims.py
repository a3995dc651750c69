"""What the README promises and nothing else checked, each through the real
broker and HTTP: browser ingest answers, an expired offer's apply, a
dwell-triggered promotion, readiness while the broker is away, the will after
kill -9, the ``device_mismatch`` dead letter."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from edge_agent.service import Agent
from store_config import load_store

from .conftest import wait_until, write_store

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
AISLE = {"x": 24.0, "y": 10.0, "acc": 0.5}


class Clock:
    """The agent's clock, moved by the test (the broker and the loop run on real time)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_post_ping_answers_202_or_400_422_with_the_reason(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    url = server.url + "/v1/ping"
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/shop/session") as r:  # the page's device session
            session = await r.json()
        device, auth = session["device"], {"Authorization": f"Bearer {session['token']}"}
        await phone.subscribe(f"{R}/offer/{device}")
        async with http.post(url, params={"device": device}, json=AISLE, headers=auth) as r:
            assert r.status == 202 and await r.json() == {"accepted": True}
        assert (await phone.next_json(f"{R}/offer/{device}"))["promotion_id"] == "chips"
        cases = [(b"{not json", "decode", 400),  # malformed JSON: 400 on every path
                 (json.dumps({**AISLE, "device": "someone-else"}).encode(), "device_mismatch", 422),
                 (json.dumps({"acc": 3}).encode(), "no_position", 422)]
        for body, reason, status in cases:
            async with http.post(url, params={"device": device}, data=body, headers=auth) as r:
                assert r.status == status, reason
                assert await r.json() == {"accepted": False, "reason": reason}
        async with http.post(url, params={"device": "browser-1"}, json=AISLE, headers=auth) as r:
            assert r.status == 401  # another device's name with this session's token


async def test_device_mismatch_is_a_dead_letter(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/deadletter")
    await phone.subscribe(f"{R}/offer/+")
    await phone.publish(f"{R}/ping/uwb/phone-a", {**AISLE, "device": "phone-b"}, qos=0)
    dead = await phone.next_json(f"{R}/deadletter")
    assert dead["reason"] == "device_mismatch" and dead["topic"] == f"{R}/ping/uwb/phone-a"
    assert server.agent.metrics.deadletters.get("device_mismatch") == 1
    assert phone.queues[f"{R}/offer/+"].empty() and "phone-a" not in server.agent.tracks


async def test_apply_of_an_expired_offer_is_refused_expired(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    clock = Clock()
    server = await agent_factory(cfg, agent=Agent(cfg, clock=clock))
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/late")
    await phone.publish(f"{R}/ping/uwb/late", AISLE, qos=0)
    offer = await phone.next_json(f"{R}/offer/late")
    clock.t = offer["expires"] + 1
    await phone.publish(f"{R}/action/late", {"offer_id": offer["offer_id"], "action": "apply"})
    assert await phone.next_json(f"{R}/offer/late") == {"offer_id": offer["offer_id"], "error": "expired"}
    assert server.agent.ledger.get_offer(offer["offer_id"]).code is None
    assert server.agent.metrics.actions_refused.get("expired") == 1


async def test_a_dwell_triggered_promotion_end_to_end(store_factory, agent_factory, mqtt_client):
    # produce has dwell_s = 5; the promotion fires on dwell only, not on the way in.
    cfg = store_factory(promotions=[{"id": "linger", "title": "Stay a while", "message": "Pears -20 %",
                                     "zones": ["produce"], "trigger": "dwell", "cooldown_s": 3600}])
    clock = Clock()
    await agent_factory(cfg, agent=Agent(cfg, clock=clock))
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/lingerer")
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/lingerer", {"x": 12.0, "y": 7.0, "acc": 0.5}, qos=0)
    await phone.publish(f"{R}/ping/uwb/lingerer", b"\x00", qos=0)  # processed after the ping
    await phone.next(f"{R}/deadletter")
    assert phone.queues[f"{R}/offer/lingerer"].empty()  # entered, not dwelled
    clock.t += 6  # the agent's ticker sees the dwell threshold passed
    offer = await phone.next_json(f"{R}/offer/lingerer", timeout=10)
    assert offer["promotion_id"] == "linger" and offer["zone"] == "produce"


async def test_readyz_is_503_while_the_broker_is_down(tmp_path, mosquitto_factory, agent_factory):
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    server = await agent_factory(cfg)
    agent = server.agent
    async with aiohttp.ClientSession() as http:
        async def ready() -> tuple[int, dict]:
            async with http.get(server.url + "/readyz") as r:
                return r.status, await r.json()

        assert (await ready())[0] == 200
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(wait_until(lambda: not agent.mqtt.connected.is_set()), 10)
        status, body = await ready()
        assert status == 503 and body["broker_connected"] is False and body["config_loaded"] is True
        async with http.get(server.url + "/healthz") as r:
            assert r.status == 200  # alive, just not ready
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(wait_until(lambda: agent.mqtt.connected.is_set()), 20)
        assert (await ready())[0] == 200


async def test_offline_is_published_as_the_will_after_kill_9(tmp_path, mosquitto, mqtt_client):
    path = write_store(tmp_path, broker_url=mosquitto.url)
    R = load_store(path).root_topic
    watcher = mqtt_client()
    await watcher.subscribe(f"{R}/status")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "run", "--config", str(path), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    try:
        while (await watcher.next(f"{R}/status", timeout=20)).payload != b"online":
            pass
        proc.kill()  # SIGKILL: no DISCONNECT, no clean shutdown — only the broker's will is left
        await proc.wait()
        msg = await watcher.next(f"{R}/status", timeout=10)
        assert msg.payload == b"offline"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Retained: a client arriving later reads `offline` at once.
    late = mqtt_client()
    await late.subscribe(f"{R}/status")
    late_msg = await late.next(f"{R}/status")
    assert late_msg.payload == b"offline" and late_msg.retain
