"""Privacy at rest, checked by scanning rather than believed: no raw device id
in any file the agent writes (SQLite, its WAL, debug logs); a forget removes
every trace and tells central once; the export shows what is kept; an
unacknowledged offer's topic survives a restart only sealed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from edge_agent.storage.ledger import Ledger
from edge_agent.transport.mqtt import Message
from edge_agent.storage.privacy import TopicSealer
from edge_agent.storage.store import Store
from geometry.frames import LocalFrame
from store_config import load_store
from sync.pseudonym import Pseudonymizer

from .central import Central, central  # noqa: F401 - the fixture
from .conftest import TestClient, free_port, wait_until, write_store

ROOT = Path(__file__).resolve().parent.parent
AISLE = {"x": 24.0, "y": 10.0, "acc": 0.5}  # wholly inside aisle-1: the `chips` offer
WALKIN = "walkin-7f3a9c51"
MAC = "aa:bb:cc:11:22:33"
OT_USER, OT_DEVICE = "alice-secret", "pixel-secret"
OT = f"owntracks:{OT_USER}:{OT_DEVICE}"
NEEDLES = [WALKIN, MAC, MAC.replace(":", ""), MAC.replace(":", "-"), OT_USER, OT_DEVICE]
ADMIN = {"Authorization": "Bearer admin-secret"}


def scan(paths: list[Path], needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every needle found (case-insensitive) in any file under ``paths``."""
    hits = []
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                blob = f.read_bytes().lower()
                hits += [(str(f), n) for n in needles if n.lower().encode() in blob]
    return hits


# -- pure ------------------------------------------------------------------------------------------

def test_sealed_topic_opens_only_for_its_offer_and_key():
    s = TopicSealer(b"k" * 32)
    blob = s.seal(MAC, "o_1")
    assert MAC.encode() not in blob and s.seal(MAC, "o_1") != blob  # a fresh nonce each time
    assert s.open(blob, "o_1") == MAC
    assert s.open(blob, "o_2") is None  # bound to its offer: cannot be moved to another row
    assert TopicSealer(b"x" * 32).open(blob, "o_1") is None


def test_a_file_from_before_sealing_is_upgraded_and_vacuumed(tmp_path):
    path = tmp_path / "edge.sqlite3"
    led = Ledger(path, store_id="S1")
    # What the previous version wrote: the raw id in the payload, in clear.
    led.add_offer("o_old", "d_x", "chips", "aisle-1", 1.0, 2e9, {"offer_id": "o_old", "_device": MAC})
    led.add_offer("o_done", "d_y", "chips", "aisle-1", 1.0, 2e9, {"offer_id": "o_done", "_device": WALKIN})
    led.mark_delivered(["o_done"])
    led.commit()
    led.conn.execute("DELETE FROM meta WHERE k = 'topics_sealed'")
    sealer = TopicSealer(b"k" * 32)
    Store(led, sealer)
    row = led.undelivered(0.0)[0]
    assert "_device" not in row.payload and sealer.open(row.sealed, "o_old") == MAC
    assert led.get_offer("o_done").sealed is None
    led.close()
    assert scan([tmp_path], NEEDLES) == []


# -- the scenario, through the real broker, HTTP, SQLite and central -----------------------------

async def _spawn(path: Path, log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent", "--log-level", "debug", "--log-format", "json", "run",
            "--config", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)


async def _online(phone: TestClient, R: str) -> None:
    while (await phone.next(f"{R}/status", timeout=20)).payload != b"online":
        pass


async def _next_code(phone: TestClient, R: str, offer_id: str, known: set[str], codes: dict[str, str]) -> dict:
    """The code for ``offer_id``.  After a crash, offers (same id) and codes (the same
    code: an apply redelivered) may be re-sent first; never a new offer or a new code."""
    while True:
        msg = await phone.next_json(f"{R}/offer/+", timeout=15)
        assert msg["offer_id"] in known, msg
        if "code" not in msg:
            continue
        assert codes.setdefault(msg["offer_id"], msg["code"]) == msg["code"], msg
        if msg["offer_id"] == offer_id:
            return msg


def _store_with_central(tmp_path: Path, broker_url: str, c: Central) -> tuple[Path, int]:
    port = free_port()
    path = write_store(tmp_path, broker_url=broker_url, toml_extra=f"""
        [ingest]
        owntracks = true

        [privacy]
        anonymous_tracking = true

        [sync]
        central_url = "{c.url}"
        token = "{c.token}"
        interval_s = 0.2
        timeout_s = 0.5
    """)
    path.write_text(path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
    return path, port


@pytest.mark.broker
async def test_no_raw_id_on_disk_or_in_debug_logs_after_offers_applies_a_restart_and_a_forget(
        tmp_path, mosquitto, mqtt_client, central):
    await central.start()
    path, port = _store_with_central(tmp_path, mosquitto.url, central)
    cfg = load_store(path)
    R, data = cfg.root_topic, Path(cfg.data_dir)
    logs = [tmp_path / "agent-1.log", tmp_path / "agent-2.log"]
    base = f"http://127.0.0.1:{port}"
    phone = mqtt_client()
    await phone.subscribe(f"{R}/status")
    await phone.subscribe(f"{R}/offer/+")
    lon, lat = LocalFrame(49.1875, 16.6130, 0.0).to_wgs84(24.0, 10.0)
    proc = await _spawn(path, logs[0])
    try:
        await _online(phone, R)
        await phone.publish(f"{R}/ping/uwb/{WALKIN}", AISLE)
        await phone.publish(f"{R}/ping/wifi/{MAC}", AISLE)
        await phone.publish(f"owntracks/{OT_USER}/{OT_DEVICE}",
                            {"_type": "location", "lat": float(lat), "lon": float(lon), "acc": 1, "tst": 1700000000})
        offers = {}
        for _ in range(3):
            m = await phone.next(f"{R}/offer/+")
            offers[m.topic.rsplit("/", 1)[1]] = json.loads(m.payload)
        assert set(offers) == {WALKIN, MAC, OT}
        known = {o["offer_id"] for o in offers.values()}
        await phone.publish(f"{R}/action/{WALKIN}", {"offer_id": offers[WALKIN]["offer_id"], "action": "apply"})
        codes: dict[str, str] = {}
        await _next_code(phone, R, offers[WALKIN]["offer_id"], known, codes)

        # A hard restart: kill -9 leaves the WAL as it was; the broker publishes the will.
        proc.kill()
        await proc.wait()
        assert (await phone.next(f"{R}/status")).payload == b"offline"
        assert scan([data, logs[0]], NEEDLES) == []
        # While the agent is down the MAC phone applies its offer (QoS 1: it waits in the agent's session).
        await phone.publish(f"{R}/action/{MAC}", {"offer_id": offers[MAC]["offer_id"], "action": "apply"}, qos=1)
        proc = await _spawn(path, logs[1])
        await _online(phone, R)
        code = await _next_code(phone, R, offers[MAC]["offer_id"], known, codes)

        pseudo = Pseudonymizer((data / "pseudonym.key").read_bytes()).device(MAC)
        async with aiohttp.ClientSession(headers=ADMIN) as http:
            async with http.get(f"{base}/v1/admin/audit", params={"device": MAC}) as r:
                assert [d["offer_id"] for d in (await r.json())["decisions"]] == [offers[MAC]["offer_id"]]
            async with http.get(f"{base}/v1/admin/devices/{MAC}/export") as r:
                kept = await r.json()
            assert kept["device"] == pseudo
            assert [(o["offer_id"], o["code"]) for o in kept["offers"]] == [(offers[MAC]["offer_id"], code["code"])]
            async with http.delete(f"{base}/v1/admin/devices/{MAC}") as r:
                assert r.status == 200
                gone = await r.json()
            assert gone["device"] == pseudo
            assert gone["removed"]["offers"] == 1 and gone["removed"]["codes"] == 1
            assert gone["removed"]["audit"] == 1
            async with http.get(f"{base}/v1/admin/audit", params={"device": MAC}) as r:
                assert (await r.json())["decisions"] == []
            async with http.get(f"{base}/v1/admin/devices/{MAC}/export") as r:
                after = await r.json()
            assert after["offers"] == after["audit"] == [] and after["consent"] is None
            assert [e["kind"] for e in after["events_pending"]] in ([], ["forget"])  # central may have it already
        await central.wait_for(lambda: central.kinds().get("forget", 0) >= 1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Every file under the data dir (SQLite, WAL, keys) and both debug logs: no raw id anywhere.
    assert {p.name for p in data.iterdir()} >= {"edge.sqlite3", "pseudonym.key", "topic.key"}
    assert scan([data, *logs], NEEDLES) == []
    # The forgotten pseudonym is not in the store's file either (deleted rows are overwritten).
    assert scan([data / "edge.sqlite3"], [pseudo]) == []
    # `edge-agent audit` has nothing for the device.
    r = subprocess.run([sys.executable, "-m", "edge_agent", "audit", "--config", str(path), "--device", MAC,
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout == ""
    # Central heard exactly one forget, carrying the pseudonym and nothing else about the device.
    forgets = [e for e in central.events.values() if e["kind"] == "forget"]
    assert len(forgets) == 1 and central.copies[forgets[0]["key"]] == 1
    assert forgets[0]["device"] == pseudo
    assert set(forgets[0]) <= {"key", "kind", "ts", "store", "device", "boot", "seq"}
    # --log-format json: every line of both logs is one JSON object; debug lines included.
    levels = set()
    for log in logs:
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(rec), line
            levels.add(rec["level"])
    assert {"debug", "info"} <= levels


@pytest.mark.broker
async def test_an_unacknowledged_offer_is_republished_after_a_restart_with_the_same_id(
        tmp_path, mosquitto_factory, agent_factory):
    broker = mosquitto_factory()
    cfg = load_store(write_store(tmp_path, broker_url=broker.url))
    R, data = cfg.root_topic, Path(cfg.data_dir)
    phone = TestClient(broker.url, asyncio.get_running_loop(), client_id="phone-persistent", clean_session=False)
    try:
        await phone.subscribe(f"{R}/offer/{WALKIN}")
        server = await agent_factory(cfg)
        agent = server.agent
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(wait_until(lambda: not agent.mqtt.connected.is_set()), 10)
        # The ping arrives while the broker is away (a vendor feed over HTTP, say): committed, not acknowledged.
        agent.on_batch([Message(f"{R}/ping/uwb/{WALKIN}", json.dumps(AISLE).encode(), 0, 0, agent.clock())])
        offer_id, delivered, sealed = agent.ledger.conn.execute(
            "SELECT offer_id, delivered, sealed FROM offers").fetchone()
        assert delivered == 0 and sealed is not None
        await server.stop()
        assert scan([data], NEEDLES) == []  # at rest only sealed

        await asyncio.to_thread(broker.start)
        server2 = await agent_factory(cfg)
        offer = await phone.next_json(f"{R}/offer/{WALKIN}", timeout=20)
        assert offer["offer_id"] == offer_id and offer["promotion_id"] == "chips"
        led = server2.agent.ledger
        # Acknowledged by the broker: delivered, and the sealed topic deleted.
        await asyncio.wait_for(wait_until(lambda: led.get_offer(offer_id).sealed is None), 10)
        assert led.get_offer(offer_id).delivered
    finally:
        phone.close()


@pytest.mark.broker
async def test_qos1_action_and_consent_sent_while_the_agent_is_down_are_applied_when_it_returns(
        store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    R = cfg.root_topic
    server = await agent_factory(cfg)
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/{WALKIN}")
    await phone.publish(f"{R}/ping/uwb/{WALKIN}", AISLE, qos=0)
    offer = await phone.next_json(f"{R}/offer/{WALKIN}")
    await server.stop()
    # The agent is away; its persistent session keeps QoS 1 messages for it.
    await phone.publish(f"{R}/action/{WALKIN}", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)
    await phone.publish(f"{R}/consent/{WALKIN}", {"offers": False}, qos=1)
    server2 = await agent_factory(cfg)
    code = await phone.next_json(f"{R}/offer/{WALKIN}", timeout=10)
    assert code["offer_id"] == offer["offer_id"] and len(code["code"]) >= 8
    agent = server2.agent
    pseudo = agent.pseudonym(WALKIN)
    await asyncio.wait_for(wait_until(lambda: pseudo in agent.consents), 10)
    assert agent.consents[pseudo][0].offers is False
    assert agent.ledger.get_offer(offer["offer_id"]).code == code["code"]


@pytest.mark.broker
async def test_forget_removes_every_row_of_the_device_and_queues_one_forget_event(store_factory, agent_factory,
                                                                                  mqtt_client):
    cfg = store_factory(toml_extra="""
        [privacy]
        anonymous_tracking = true
    """)
    server = await agent_factory(cfg)
    agent, R = server.agent, cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    for device in (WALKIN, "bystander"):
        await phone.publish(f"{R}/ping/uwb/{device}", AISLE, qos=0)
        offer = await phone.next_json(f"{R}/offer/+")
        await phone.publish(f"{R}/action/{device}", {"offer_id": offer["offer_id"], "action": "apply"})
        await phone.next_json(f"{R}/offer/+")
    await phone.publish(f"{R}/consent/{WALKIN}", {"tracking": True, "offers": True})
    pseudo, other = agent.pseudonym(WALKIN), agent.pseudonym("bystander")
    await asyncio.wait_for(wait_until(lambda: pseudo in agent.consents), 10)
    conn = agent.ledger.conn

    def rows(p):
        return {t: conn.execute(f"SELECT count(*) FROM {t} WHERE device = ?", (p,)).fetchone()[0]
                for t in ("offers", "audit", "consent", "outbox")}

    before = rows(pseudo)
    assert before["offers"] == 1 and before["audit"] >= 1 and before["consent"] == 1 and before["outbox"] >= 4
    kinds = {k for (k,) in conn.execute("SELECT kind FROM outbox WHERE device = ?", (pseudo,))}
    assert {"transition", "offer", "redemption", "consent"} <= kinds
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        async with http.delete(f"{server.url}/v1/admin/devices/{WALKIN}") as r:
            body = await r.json()
    assert body["device"] == pseudo
    assert body["removed"] == {"offers": 1, "codes": 1, "audit": before["audit"], "consent": 1,
                               "outbox": before["outbox"], "outbox_aside": 0, "tracks": 1, "histories": 1,
                               "consent_live": 1, "exposures": 1, "redemptions": 0, "purchases": 0,
                               "attributions": 0, "pickups": 0, "delivery": 0, "alerts": 0}
    after = rows(pseudo)
    assert after == {"offers": 0, "audit": 0, "consent": 0, "outbox": 1}
    assert conn.execute("SELECT kind, cls FROM outbox WHERE device = ?", (pseudo,)).fetchall() == [("forget", 2)]
    assert pseudo not in agent.tracks and pseudo not in agent.histories and WALKIN not in agent.tracks
    assert rows(other)["offers"] == 1  # the bystander is untouched
    # Forgotten means a new device: the next visit gets an offer again (no cooldown remembered).
    await phone.publish(f"{R}/ping/uwb/{WALKIN}", {"x": 2.0, "y": 18.0, "acc": 0.5}, qos=0)
    await phone.publish(f"{R}/ping/uwb/{WALKIN}", AISLE, qos=0)
    assert (await phone.next_json(f"{R}/offer/+"))["promotion_id"] == "chips"


@pytest.mark.broker
async def test_position_retention_runs_on_the_agents_retention_sweep(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra="""
        [privacy]
        anonymous_tracking = true
        position_retention_s = 600
    """)
    server = await agent_factory(cfg)
    agent, R = server.agent, cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    await phone.publish(f"{R}/ping/uwb/{WALKIN}", AISLE, qos=0)
    await phone.next_json(f"{R}/offer/+")
    count = "SELECT count(*) FROM outbox WHERE kind = ?"
    assert agent.ledger.conn.execute(count, ("transition",)).fetchone()[0] == 1
    assert agent.sync.retention(now=agent.clock() + 60)["transitions"] == 0
    assert agent.sync.retention(now=agent.clock() + 601)["transitions"] == 1
    assert agent.ledger.conn.execute(count, ("transition",)).fetchone()[0] == 0
    assert agent.ledger.conn.execute(count, ("offer",)).fetchone()[0] == 1  # not a position: kept


@pytest.mark.broker
async def test_forget_removes_the_open_alerts_naming_the_device(store_factory, agent_factory, mqtt_client):
    """Scanned from a busy run: after a forget, ``GET /v1/alerts`` and the
    associates' WebSocket still showed the forgotten pseudonym as the
    ``shopper`` of its open assist alerts (the alerts live in memory, out of
    the store's reach).  Forget now drops them and counts them."""
    import copy
    from .conftest import BASE_PROMOTIONS
    promos = copy.deepcopy(BASE_PROMOTIONS)
    for p in promos:
        p["associate_alert"] = True
    profiles = [{"device": "tracked", "consent": {"offers": True, "tracking": True}}]
    cfg = store_factory(promotions=promos, profiles=profiles, toml_extra="""
        [associates]
        token = "assoc-secret"
    """)
    server = await agent_factory(cfg)
    agent, R = server.agent, cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/alert/+")
    for device in (WALKIN, "tracked", "bystander"):  # an assist alert each: shopper = the pseudonym
        await phone.publish(f"{R}/ping/uwb/{device}", AISLE, qos=0)
        assert (await phone.next_json(f"{R}/alert/+", timeout=10))["shopper"] == agent.pseudonym(device)
    gone = [agent.pseudonym(WALKIN), agent.pseudonym("tracked")]
    assoc = {"Authorization": "Bearer assoc-secret"}
    async with aiohttp.ClientSession() as http:
        for device in (WALKIN, "tracked"):
            async with http.delete(f"{server.url}/v1/admin/devices/{device}", headers=ADMIN) as r:
                assert (await r.json())["removed"]["alerts"] == 1
        async with http.get(f"{server.url}/v1/alerts", headers=assoc) as r:
            listed = await r.text()
        async with http.ws_connect(f"{server.url}/associates/ws?token=assoc-secret") as ws:
            snapshot = await asyncio.wait_for(ws.receive_str(), 5)
    for blob in (listed, snapshot):
        assert [p for p in gone if p in blob] == [] and agent.pseudonym("bystander") in blob


@pytest.mark.broker
async def test_forget_leaves_no_copy_of_the_pseudonym_in_the_wal(store_factory, agent_factory, mqtt_client):
    """Found by scanning the data dir of a running agent right after a forget:
    the rows were deleted, but the SQLite WAL still held the pages that named
    the pseudonym and the person (until some later checkpoint wrapped it)."""
    profiles = [{"device": WALKIN, "loyalty_id": "L-WALKIN", "consent": {"offers": True, "tracking": True}}]
    cfg = store_factory(profiles=profiles)
    server = await agent_factory(cfg)
    R, data = cfg.root_topic, Path(cfg.data_dir)
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    await phone.publish(f"{R}/ping/uwb/{WALKIN}", AISLE, qos=0)
    offer = await phone.next_json(f"{R}/offer/+", timeout=10)
    await phone.publish(f"{R}/action/{WALKIN}", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)
    code = (await phone.next_json(f"{R}/offer/+", timeout=10))["code"]
    person = Pseudonymizer((data / "pseudonym.key").read_bytes()).person("L-WALKIN")
    # What names the device or its person (the queued forget event itself carries the pseudonym).
    needles = [person, offer["offer_id"], code]
    assert {n for _, n in scan([data], needles)} == set(needles)
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        async with http.delete(f"{server.url}/v1/admin/devices/{WALKIN}") as r:
            assert r.status == 200
    assert scan([data], needles) == []
