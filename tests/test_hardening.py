"""Issue 22, the second hardening round: one test (or more) per finding, each
tried from outside as the attacker did — through Mosquitto and aiohttp."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from .conftest import TestClient, wait_until
from .hardening_kit import (ADMIN, ARUBA, ASSOC, BIG, IN_AISLE, MERAKI_SECRET, POS, hard_store, meraki_body,
                            meraki_obs, msg, poison_by_surface)

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def hard(tmp_path, mosquitto, agent_factory, mqtt_client):
    cfg = hard_store(tmp_path, mosquitto.url)
    server = await agent_factory(cfg)
    phone = mqtt_client()
    await phone.subscribe(f"{cfg.root_topic}/offer/+")
    return server, phone


def dead(agent, reason: str | None = None) -> float:
    vals = agent.metrics.deadletters.values
    return sum(n for labels, n in vals.items() if reason is None or labels[0] == reason)


async def offer_for(phone: TestClient, R: str, device: str) -> dict:
    while True:
        m = await phone.next(f"{R}/offer/+", timeout=5)
        if m.topic == f"{R}/offer/{device}":
            return json.loads(m.payload)


# -- 1. one bad number drops nobody else's ping ---------------------------------------------------

@pytest.mark.parametrize("surface", sorted(poison_by_surface("R")))
async def test_a_poison_message_beside_a_canary_costs_the_canary_nothing(hard, surface):
    server, phone = hard
    agent = server.agent
    R = agent.root
    poison = [msg(t, p) for t, p in poison_by_surface(R)[surface]]
    canary = msg(f"{R}/ping/uwb/canary-{surface}", IN_AISLE)
    before = dead(agent)
    agent.on_batch([*poison, canary])  # one batch, the poison first
    offer = await offer_for(phone, R, f"canary-{surface}")
    assert offer["zone"] == "aisle-1"
    assert dead(agent) == before + len(poison)  # each poison is its own dead letter, with a reason
    assert not agent.metrics.storage_errors.values


async def test_a_huge_inventory_quantity_is_refused_not_a_failed_commit(hard):
    server, phone = hard
    agent = server.agent
    R = agent.root
    agent.on_batch([msg(f"{R}/inventory", {"sku": "chips", "qty": 10**30}),
                    msg(f"{R}/inventory", {"sku": "apple", "qty": 7})])
    assert not agent.metrics.storage_errors.values and dead(agent, "range") == 1
    assert agent.store.inventory.load() == [("apple", 7, pytest.approx(time.time(), abs=60))]


async def test_meraki_observation_with_a_huge_number_is_skipped_and_the_others_go_on(hard):
    server, _ = hard
    agent = server.agent
    # Meraki sends numbers as strings: 400 digits of one (unquoted, the body is not JSON we take: 400, below).
    body = meraki_body([meraki_obs("aa:00:00:00:00:01", str(BIG), "1"),
                        {"clientMac": "aa:00:00:00:00:02", "locations": [{"lat": str(BIG), "lng": "1",
                                                                          "time": str(BIG)}]},
                        meraki_obs("aa:00:00:00:00:03", 24.0, 10.0)])
    raw = json.dumps(body).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/ingest/meraki", data=raw) as r:
            assert r.status == 202
    await asyncio.wait_for(wait_until(lambda: agent.metrics.pings.get("meraki") == 1), 5)


async def test_the_shop_websocket_survives_a_huge_number_and_deep_json(hard):
    server, _ = hard
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/shop/session") as r:
            s = await r.json()
        url = server.url.replace("http", "ws") + f"/shop/ws?device={s['device']}&token={s['token']}"
        async with http.ws_connect(url) as ws:
            await ws.send_str('{"type": "ping", "x": ' + str(BIG) + ', "y": 10}')
            await ws.send_str('{"type": "consent", "offers": true, "ts": ' + str(BIG) + '}')
            await ws.send_str("[" * 5000 + "]" * 5000)  # within the message limit, deeper than json.loads goes
            reply = await ws.receive_json(timeout=5)
            assert reply["type"] == "error"
            await ws.send_str(json.dumps({"type": "ping", **IN_AISLE}))
            while True:  # the socket still serves: the good ping's offer comes
                m = await ws.receive_json(timeout=5)
                if m.get("zone") == "aisle-1":
                    break


# -- 2. HTTP bodies are read whole ----------------------------------------------------------------

async def raw_post(port: int, path: str, body: bytes, headers: dict[str, str], *, split: int | None = None,
                   pause: float = 0.2) -> tuple[int, bytes]:
    """POST ``body`` over a raw socket; with ``split``, in two TCP writes ``pause`` s apart
    (the pause is the fault under test: a slow client, not a wait for the server)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    first = body if split is None else body[:split]
    writer.write(head.encode() + first)
    await writer.drain()
    if split is not None:
        await asyncio.sleep(pause)
        writer.write(body[split:])
        await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_a_ping_body_in_two_writes_is_read_whole(hard):
    server, phone = hard
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/shop/session") as r:
            s = await r.json()
    body = json.dumps({**IN_AISLE, "pad": "p" * 2000}).encode()
    status, answer = await raw_post(server.port, f"/v1/ping?device={s['device']}&source=uwb", body,
                                    {"Authorization": f"Bearer {s['token']}"}, split=10)
    assert status == 202, answer
    assert (await offer_for(phone, server.agent.root, s["device"]))["zone"] == "aisle-1"


async def test_a_large_meraki_body_and_a_split_aruba_body_are_read_whole(hard):
    server, _ = hard
    agent = server.agent
    obs = [meraki_obs(f"aa:00:00:00:{i // 256:02x}:{i % 256:02x}", 24.0, 10.0) for i in range(3000)]
    body = json.dumps(meraki_body(obs)).encode()
    assert len(body) > 400_000
    status, answer = await raw_post(server.port, "/v1/ingest/meraki", body, {}, split=1000)
    assert status == 202, answer
    await asyncio.wait_for(wait_until(lambda: agent.metrics.pings.get("meraki") == 3000), 10)
    rec = json.dumps({"sta_location_x": 24.0, "sta_location_y": 10.0, "floor_id": "plan-1",
                      "hashed_sta_eth_mac": "ABCDEF", "unit": "METERS"}).encode()
    status, answer = await raw_post(server.port, "/v1/ingest/aruba", rec, ARUBA, split=5)
    assert status == 202, answer


async def test_a_body_over_the_limit_is_413(hard):
    server, _ = hard
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/shop/session") as r:
            s = await r.json()
        async with http.post(server.url + f"/v1/ping?device={s['device']}", data=b"{" + b" " * 70_000 + b"}",
                             headers={"Authorization": f"Bearer {s['token']}"}) as r:
            assert r.status == 413
        async with http.post(server.url + "/v1/ingest/aruba", data=io.BytesIO(b"[" + b" " * (5 << 20) + b"]"),
                             headers=ARUBA) as r:
            assert r.status == 413


# -- 4. headers within a deadline; the unit's file limit -------------------------------------------

async def test_a_connection_that_sends_no_headers_is_closed(tmp_path, mosquitto, agent_factory):
    from dataclasses import replace

    cfg = hard_store(tmp_path, mosquitto.url)
    assert cfg.http.header_timeout_s == 10.0  # the contract's default
    cfg = replace(cfg, http=replace(cfg.http, header_timeout_s=0.5))
    server = await agent_factory(cfg)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the agent
    writer.close()


def test_the_systemd_unit_raises_the_file_limit():
    unit = (ROOT / "deploy" / "edge-agent.service").read_text()
    [line] = [ln for ln in unit.splitlines() if ln.startswith("LimitNOFILE=")]
    assert int(line.split("=")[1]) >= 65536


# -- 5. vendor receivers: the secret first, a rate limit, dead letters shed before offers ----------

def outbox_rows(agent) -> int:
    return agent.ledger.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]


async def test_unauthenticated_vendor_posts_store_nothing(hard):
    server, _ = hard
    agent = server.agent
    before = outbox_rows(agent)
    async with aiohttp.ClientSession() as http:
        for body in (b"not json", b"[" * 5000, json.dumps(meraki_body([], secret="wrong")).encode(),
                     json.dumps({"version": 2, "secret": "nope"}).encode()):
            async with http.post(server.url + "/v1/ingest/meraki", data=body) as r:
                assert r.status == 403
        async with http.post(server.url + "/v1/ingest/aruba", data=b"not json") as r:
            assert r.status == 401
    assert outbox_rows(agent) == before and dead(agent) == 0


async def test_vendor_receivers_are_rate_limited(tmp_path, mosquitto, agent_factory):
    cfg = hard_store(tmp_path, mosquitto.url)
    server = await agent_factory(cfg)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(60):
            async with http.post(server.url + "/v1/ingest/meraki", data=b"junk") as r:
                statuses.append(r.status)
    assert 429 in statuses and statuses[0] == 403
    assert server.agent.metrics.http_limited.get("/v1/ingest/meraki", "source") > 0


def test_dead_letters_are_shed_before_offers():
    from sync.outbox import KIND_CLASS, SHED_ANALYTICS, SHED_NORMAL

    assert KIND_CLASS.get("deadletter") == SHED_ANALYTICS
    assert KIND_CLASS.get("offer", SHED_NORMAL) > KIND_CLASS["deadletter"]


# -- 6 and 9. a storage failure is never a 2xx, and leaves no trace in memory ----------------------

def refuse_writes(agent) -> None:
    """Every write fails, as on a full or read-only disk (test_faults_disk.py fills a real one)."""
    agent.ledger.conn.execute("PRAGMA query_only = 1")


def allow_writes(agent) -> None:
    agent.ledger.conn.execute("PRAGMA query_only = 0")


async def test_admin_pickup_and_purchase_answer_503_while_storage_fails_and_readyz_says_so(hard):
    server, phone = hard
    agent = server.agent
    R = agent.root
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 200
        refuse_writes(agent)
        agent.on_batch([msg(f"{R}/ping/uwb/filler", IN_AISLE)])
        assert agent.metrics.storage_errors.values
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 503 and (await r.json())["storage_ok"] is False
        async with http.post(server.url + "/v1/admin/promotions/chips/pause", headers=ADMIN) as r:
            assert r.status == 503
        big = {"order_id": "o-1", "device": "d-" + "x" * 200, "zone": "aisle-1", "first_name": "A" * 60}
        async with http.post(server.url + "/v1/pickups", json=big, headers=POS) as r:
            assert r.status == 503
        async with http.post(server.url + "/v1/pos/purchase", headers=POS,
                             json={"device": "p" * 200, "skus": ["s" * 100] * 200, "basket_total": 1.0}) as r:
            assert r.status == 503
        allow_writes(agent)
        agent.tick()  # the retry path runs; storage works again
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 200
    # Nothing of the refused requests lingers in memory: chips is live, the order unknown.
    assert not agent.state.campaign.paused.get("chips")
    assert "o-1" not in agent.pipeline.floor.orders
    agent.on_batch([msg(f"{R}/ping/uwb/after", IN_AISLE)])
    assert (await offer_for(phone, R, "after"))["promotion_id"] == "chips"


async def test_a_withheld_offer_leaves_no_cooldown(hard):
    server, phone = hard
    agent = server.agent
    R = agent.root
    refuse_writes(agent)
    agent.on_batch([msg(f"{R}/ping/uwb/shopper", IN_AISLE)])
    assert agent.metrics.storage_errors.values
    assert phone.queues[f"{R}/offer/+"].empty()
    allow_writes(agent)
    agent.on_batch([msg(f"{R}/ping/uwb/shopper", {"x": 2.0, "y": 18.0, "acc": 0.5})])  # out of the aisle
    agent.on_batch([msg(f"{R}/ping/uwb/shopper", IN_AISLE)])  # and back in: the offer it never got
    assert (await offer_for(phone, R, "shopper"))["promotion_id"] == "chips"


# -- 8. forget removes the device's pickup orders and counts them ----------------------------------

async def test_forget_removes_and_counts_pickup_orders(hard):
    server, _ = hard
    agent = server.agent
    async with aiohttp.ClientSession() as http:
        for oid in ("o-1", "o-2"):
            async with http.post(server.url + "/v1/pickups", headers=POS,
                                 json={"order_id": oid, "device": "ada", "zone": "aisle-1",
                                       "first_name": "Ada"}) as r:
                assert r.status == 201
        async with http.delete(server.url + "/v1/admin/devices/ada", headers=ADMIN) as r:
            body = await r.json()
    assert body["removed"]["pickups"] == 2
    assert agent.ledger.conn.execute("SELECT count(*) FROM pickups").fetchone()[0] == 0
    assert not agent.pipeline.floor.orders


# -- 10. a broker username with '/' cannot reach another user's OwnTracks cmd topic ---------------

async def test_a_username_with_a_slash_cannot_publish_an_owntracks_cmd(tmp_path, mosquitto_factory):
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    for user in ("edge-agent", "bob/phone", "bob"):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, "pw"], check=True, capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text((ROOT / "deploy" / "acl").read_text())
    broker = mosquitto_factory(listener_conf=textwrap.dedent(f"""\
        per_listener_settings false
        allow_anonymous false
        password_file {passwd}
        acl_file {acl}
        listener {{port}} 127.0.0.1
        """))
    loop = asyncio.get_running_loop()
    agent = TestClient(broker.url, loop, username="edge-agent", password="pw")
    slash = TestClient(broker.url, loop, username="bob/phone", password="pw")
    bob = TestClient(broker.url, loop, username="bob", password="pw")
    try:
        await agent.subscribe("owntracks/#")
        await slash.publish("owntracks/bob/phone/cmd", {"_type": "cmd", "action": "action"})
        await bob.publish("owntracks/bob/phone", {"_type": "location", "lat": 1, "lon": 1})
        first = await agent.next("owntracks/#")
        assert first.topic == "owntracks/bob/phone"  # bob's own location passes; the cmd never did
        await agent.publish("owntracks/bob/phone/cmd", {"_type": "cmd"})  # the agent still may
        assert (await agent.next("owntracks/#")).topic == "owntracks/bob/phone/cmd"
    finally:
        for c in (agent, slash, bob):
            c.close()


# -- 11. till ts bounds; purchase honours Idempotency-Key -----------------------------------------

async def test_till_timestamps_out_of_bounds_are_400(hard):
    server, _ = hard
    async with aiohttp.ClientSession() as http:
        for path, body in (("/v1/pos/redeem", {"code": "ABCDEFGH", "ts": -10**12}),
                           ("/v1/pos/redeem", {"code": "ABCDEFGH", "ts": time.time() - 30 * 86400}),
                           ("/v1/pos/purchase", {"device": "d", "skus": [], "ts": 1e300}),
                           ("/v1/pos/purchase", {"device": "d", "skus": [], "ts": -1e300})):
            async with http.post(server.url + path, json=body, headers=POS) as r:
                assert r.status == 400, (path, body, r.status)


async def test_purchase_retried_with_one_idempotency_key_is_recorded_once(hard):
    server, _ = hard
    agent = server.agent
    body = {"device": "buyer", "skus": ["chips"], "basket_total": 3.5, "currency": "EUR"}
    answers = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(server.url + "/v1/pos/purchase", json=body,
                                 headers={**POS, "Idempotency-Key": "till-7-0042"}) as r:
                answers.append((r.status, await r.json()))
        async with http.post(server.url + "/v1/pos/purchase", json=body, headers=POS) as r:
            assert r.status == 202  # no key: a second basket
    assert answers[0][0] == 202 and all(a == answers[0] for a in answers)
    assert agent.ledger.conn.execute("SELECT count(*) FROM purchases").fetchone()[0] == 2
    events = agent.ledger.conn.execute("SELECT count(*) FROM outbox WHERE kind = 'purchase'").fetchone()[0]
    assert events == 2


# -- 12. long device ids ---------------------------------------------------------------------------

async def test_a_device_id_too_long_to_forget_is_a_dead_letter_and_never_logged(hard, caplog):
    server, phone = hard
    agent = server.agent
    R = agent.root
    long_id = "L" * 9000
    with caplog.at_level(logging.DEBUG):
        agent.on_batch([msg(f"{R}/ping/uwb/{long_id}", IN_AISLE), msg(f"{R}/ping/uwb/short", IN_AISLE)])
        assert (await offer_for(phone, R, "short"))["zone"] == "aisle-1"
    assert dead(agent, "too_large") == 1
    assert agent.pseudonym(long_id) not in {r[0] for r in agent.ledger.conn.execute("SELECT device FROM offers")}
    assert "LLLLLLLLLLLLLLLL" not in caplog.text
    async with aiohttp.ClientSession() as http:
        async with http.delete(server.url + "/v1/admin/devices/" + "d" * 256, headers=ADMIN) as r:
            assert r.status == 200


# -- 13. deep JSON and huge numbers are 400, never 500 --------------------------------------------

DEEP = b"[" * 20_000 + b"]" * 20_000  # within the 64 KB body limit
HUGE = ('{"code": "ABCDEFGH", "order_id": "o", "zone": "aisle-1", "device": "d", "skus": [], '
        '"associate": "a", "basket_total": ' + str(BIG) + ', "ts": ' + str(BIG) + '}').encode()


@pytest.mark.parametrize("path,headers", [
    ("/v1/pos/redeem", POS), ("/v1/pos/purchase", POS), ("/v1/pickups", POS),
    ("/v1/alerts/a-1/claim", ASSOC), ("/v1/ingest/aruba", ARUBA), ("/v1/ingest/meraki", {}),
])
async def test_deep_json_and_huge_numbers_are_400(hard, path, headers):
    server, _ = hard
    async with aiohttp.ClientSession() as http:
        for body in (DEEP, HUGE):
            if path.endswith("meraki"):
                body = body.replace(b"[", b'{"secret": "' + MERAKI_SECRET.encode() + b'", "a": [', 1)
            async with http.post(server.url + path, data=body, headers=headers) as r:
                assert r.status == 400, (path, body[:40], r.status, await r.text())


async def test_purchase_ledger_row_survives_a_restart_only_when_answered_202(hard):
    """The other side of 6: a 202 means the row is on disk."""
    server, _ = hard
    agent = server.agent
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/pos/purchase", headers=POS,
                             json={"device": "d", "skus": ["chips"], "basket_total": 2.0}) as r:
            assert r.status == 202
    other = sqlite3.connect(agent.ledger.path)
    try:
        assert other.execute("SELECT count(*) FROM purchases").fetchone()[0] == 1
    finally:
        other.close()
