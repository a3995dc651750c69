"""A real `edge-agent run` process against a real Mosquitto, MQTT 3.1.1 and 5:
QoS 1 actions, consent and inventory sent while the agent is dead (kill -9)
wait in its persistent session and are applied once it is back."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from store_config import load_store
from tests.conftest import free_port, write_store
from tests.conftest import start_agent_process as start_agent

pytestmark = pytest.mark.broker

AISLE = {"x": 24.0, "y": 10.0, "acc": 0.5}


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_qos1_sent_while_the_agent_is_killed_is_applied_once_after_restart(
        tmp_path, mosquitto, mqtt_client, protocol):
    port = free_port()
    path = write_store(tmp_path, broker_url=mosquitto.url, toml_extra=f"""
        [tracking]
        clock = "receive"
        """)
    text = path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    path.write_text(text.replace("[mqtt]\n", f'[mqtt]\nprotocol = "{protocol}"\n', 1))
    cfg = load_store(path)
    assert cfg.mqtt.protocol == protocol
    R, log = cfg.root_topic, tmp_path / "agent.log"
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    proc = await start_agent(path, port, log)
    try:
        await phone.publish(f"{R}/consent/ph", {"tracking": True}, qos=1)
        await phone.publish(f"{R}/ping/uwb/ph", AISLE, qos=0)
        offer = await phone.next_json(f"{R}/offer/+")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        # the agent is dead: its persistent session keeps these for it
        await phone.publish(f"{R}/action/ph", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)
        await phone.publish(f"{R}/consent/ph", {"offers": False}, qos=1)
        await phone.publish(f"{R}/inventory", {"sku": "chips", "qty": 7}, qos=1)
        proc = await start_agent(path, port, log)
        code = await phone.next_json(f"{R}/offer/+", timeout=20)
        if code == offer:  # killed before it marked the offer delivered: re-sent once, same id (at least once)
            code = await phone.next_json(f"{R}/offer/+", timeout=20)
        assert code["offer_id"] == offer["offer_id"] and len(code["code"]) >= 8
        await phone.publish(f"{R}/action/ph", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)
        assert await phone.next_json(f"{R}/offer/+", timeout=10) == code  # the same code again
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
    db = sqlite3.connect(Path(cfg.data_dir) / "edge.sqlite3")
    try:
        assert db.execute("SELECT offers, tracking FROM consent").fetchall() == [(0, 1)]  # one key: the other stays
        assert db.execute("SELECT qty FROM inventory WHERE sku = 'chips'").fetchall() == [(7,)]
        assert db.execute("SELECT COUNT(*) FROM offers WHERE code IS NOT NULL").fetchone() == (1,)
    finally:
        db.close()
    assert phone.queues[f"{R}/offer/+"].empty()


async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_an_apply_received_but_not_committed_when_killed_is_redelivered_and_redeemed_once(
        tmp_path, mosquitto, mqtt_client, protocol):
    """Acknowledged only after its effect is committed: the ledger is held locked so the
    apply cannot be committed, the agent is killed, the broker redelivers it to the next run."""
    port = free_port()
    path = write_store(tmp_path, broker_url=mosquitto.url)
    text = path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    path.write_text(text.replace("[mqtt]\n", f'[mqtt]\nprotocol = "{protocol}"\n', 1))
    cfg = load_store(path)
    R, log = cfg.root_topic, tmp_path / "agent.log"
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    proc = await start_agent(path, port, log)
    lock = None
    try:
        await phone.publish(f"{R}/ping/uwb/k", AISLE, qos=0)
        offer = await phone.next_json(f"{R}/offer/+")
        lock = sqlite3.connect(Path(cfg.data_dir) / "edge.sqlite3", timeout=10, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the agent's next write waits, then fails
        await phone.publish(f"{R}/action/k", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)

        async def refused() -> None:  # a child process has no event to wait on: poll its metrics
            while await metric(port, "edge_storage_errors_total") < 1:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(refused(), 20)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        lock.rollback()
        lock.close()
        lock = None
        assert phone.queues[f"{R}/offer/+"].empty()  # no code went out uncommitted
        proc = await start_agent(path, port, log)
        code = await phone.next_json(f"{R}/offer/+", timeout=20)
        if code == offer:  # re-sent once with its id: its delivery was not marked before the kill
            code = await phone.next_json(f"{R}/offer/+", timeout=20)
        assert code["offer_id"] == offer["offer_id"] and len(code["code"]) >= 8
        await phone.publish(f"{R}/action/k", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)
        assert await phone.next_json(f"{R}/offer/+", timeout=10) == code
    finally:
        if lock is not None:
            lock.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
    db = sqlite3.connect(Path(cfg.data_dir) / "edge.sqlite3")
    try:
        assert db.execute("SELECT code FROM offers WHERE code IS NOT NULL").fetchall() == [(code["code"],)]
    finally:
        db.close()
