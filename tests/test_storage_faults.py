"""Disk faults: a full disk, a locked database and a corrupt file give a clear
error; the agent keeps serving what it safely can and recovers; nothing
already recorded is lost."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest

from edge_agent.pipeline.effects import Audit, Effects, Event, OfferOut, OfferRow
from store_config import load_store

from .conftest import wait_until, write_store

pytestmark = pytest.mark.broker


@pytest.fixture
async def shop(store_factory, agent_factory, mqtt_client):
    """An agent on a fresh store and a phone subscribed to its offers: (agent, phone, root topic)."""
    cfg = store_factory()
    server = await agent_factory(cfg)
    phone = mqtt_client()
    await phone.subscribe(f"{cfg.root_topic}/offer/+")
    return server.agent, phone, cfg.root_topic


async def test_disk_full_withholds_unrecorded_offers(shop, caplog):
    agent, phone, R = shop
    await phone.publish(f"{R}/ping/uwb/early", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    early = await phone.next_json(f"{R}/offer/+")
    # The disk fills up (SQLite's own SQLITE_FULL path).
    pages = agent.ledger.conn.execute("PRAGMA page_count").fetchone()[0]
    agent.ledger.conn.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.ERROR, logger="edge_agent"):
        for i in range(30):  # enough writes to need a new page
            await phone.publish(f"{R}/ping/uwb/late-{i}", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
        await asyncio.wait_for(wait_until(lambda: agent.metrics.storage_errors.values), 5)
    assert any("storage error" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
    agent.ledger.conn.execute("PRAGMA max_page_count = 1073741823")
    await phone.publish(f"{R}/ping/uwb/after", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    await asyncio.wait_for(wait_until(lambda: any(m.topic.endswith("/after") for m in phone.all)), 5)
    # Every offer that reached a phone has its ledger row (the early one included).
    published = [m for m in phone.all if "/offer/" in m.topic]
    import json
    for m in published:
        assert agent.ledger.get_offer(json.loads(m.payload)["offer_id"]) is not None
    assert agent.ledger.get_offer(early["offer_id"]) is not None


async def test_read_only_storage_keeps_qos1_for_retry_and_recovers(shop):
    agent, phone, R = shop
    agent.ledger.conn.execute("PRAGMA query_only = 1")  # the filesystem went read-only
    await phone.publish(f"{R}/consent/late", {"offers": False, "ts": 1.0}, qos=1)
    await asyncio.wait_for(wait_until(lambda: agent._retry), 5)
    assert agent._storage_down
    await phone.publish(f"{R}/ping/uwb/ro", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    await asyncio.wait_for(wait_until(lambda: agent.metrics.pings.get("uwb") == 1), 5)
    assert phone.queues[f"{R}/offer/+"].empty()  # no offer without a record
    agent.ledger.conn.execute("PRAGMA query_only = 0")
    agent.tick()  # the retry: applied, committed, then acknowledged
    assert not agent._retry and not agent._storage_down
    row = agent.ledger.conn.execute("SELECT offers FROM consent WHERE device = ?",
                                    (agent.pseudonym("late"),)).fetchone()
    assert row == (0,)
    await phone.publish(f"{R}/ping/uwb/after-recovery", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    offer = await phone.next_json(f"{R}/offer/+")
    assert agent.ledger.get_offer(offer["offer_id"]) is not None


async def test_locked_database_is_an_error_not_a_hang(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    other = sqlite3.connect(agent.ledger.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        phone = mqtt_client()
        await phone.subscribe(f"{R}/offer/+")
        await phone.publish(f"{R}/ping/uwb/locked", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
        await asyncio.wait_for(wait_until(lambda: agent.metrics.storage_errors.values), 10)
        assert phone.queues[f"{R}/offer/+"].empty()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await phone.publish(f"{R}/ping/uwb/unlocked", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    assert (await phone.next_json(f"{R}/offer/+", timeout=5))["zone"] == "aisle-1"


async def test_corrupt_database_is_moved_aside(tmp_path, mosquitto, agent_factory, mqtt_client):
    cfg = load_store(write_store(tmp_path, broker_url=mosquitto.url))
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / "edge.sqlite3").write_bytes(b"this is not a database" * 100)
    server = await agent_factory(cfg)
    aside = [p for p in cfg.data_dir.iterdir() if ".corrupt-" in p.name]
    assert aside and aside[0].read_bytes().startswith(b"this is not a database")
    assert server.agent.metrics.storage_errors.get("corrupt") == 1
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/+")
    await phone.publish(f"{R}/ping/uwb/fresh", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    assert (await phone.next_json(f"{R}/offer/+"))["zone"] == "aisle-1"


async def _offer_whose_second_commit_fails(agent, phone, R: str, device: str) -> dict:
    """``device`` enters and gets an offer while SQLite refuses audit rows (trigger
    ``refuse_audit``, left in place): the pending record's commit works, the second
    one fails.  The offer as the phone got it, once the failure is counted."""
    agent.ledger.conn.execute("CREATE TEMP TRIGGER refuse_audit BEFORE INSERT ON audit "  # an OperationalError,
                              "BEGIN INSERT INTO disk_gone VALUES (1); END")  # as from a failing disk
    await phone.publish(f"{R}/ping/uwb/{device}", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    offer = await phone.next_json(f"{R}/offer/+")  # it was recorded (pending) before it left
    await asyncio.wait_for(wait_until(lambda: agent.metrics.storage_errors.values), 5)
    return offer


async def test_a_second_commit_that_fails_leaves_the_offer_out_and_its_rows_land_with_the_next(shop):
    agent, phone, R = shop
    offer = await _offer_whose_second_commit_fails(agent, phone, R, "held")
    assert agent.ledger.get_offer(offer["offer_id"]) is None
    assert agent.ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (1,)
    agent.ledger.conn.execute("DROP TRIGGER refuse_audit")
    # the next commit (the tracker's tick, every second) writes the record first
    await asyncio.wait_for(wait_until(lambda: agent.ledger.get_offer(offer["offer_id"]) is not None), 5)
    assert [a["offer_id"] for a in agent.ledger.read_audit(device=agent.pseudonym("held"))
            if a["offer_id"]] == [offer["offer_id"]]
    assert any(e.get("offer_id") == offer["offer_id"] for _, e in agent.ledger.outbox.peek(100))
    assert agent.ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    assert not agent._storage_down


async def test_an_action_on_an_offer_whose_rows_are_still_pending_finds_it(shop):
    agent, phone, R = shop
    offer = await _offer_whose_second_commit_fails(agent, phone, R, "quick")
    agent.ledger.conn.execute("DROP TRIGGER refuse_audit")
    # the phone applies at once, before the tracker's tick would have written the record
    await phone.publish(f"{R}/action/quick", {"offer_id": offer["offer_id"], "action": "apply"}, qos=1)
    answer = await phone.next_json(f"{R}/offer/+")
    assert answer["offer_id"] == offer["offer_id"] and "code" in answer, answer
    assert agent.ledger.get_offer(offer["offer_id"]).code == answer["code"]


async def test_a_ledger_found_corrupt_at_the_second_commit_is_replaced_and_the_held_rows_land_in_the_new_one(
        shop):
    agent, phone, R = shop
    # An index of the audit table now points at page 1: SQLite calls the file corrupt
    # (SQLITE_CORRUPT) when the second commit writes the audit row; the pending record's write works.
    conn = agent.ledger.conn
    [index] = conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'audit' "
                           "AND sql IS NOT NULL LIMIT 1").fetchall()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_schema SET rootpage = 1 WHERE name = ?", index)
    conn.execute(f"PRAGMA schema_version = {conn.execute('PRAGMA schema_version').fetchone()[0] + 1}")
    conn.execute("PRAGMA writable_schema = OFF")
    old = agent.ledger
    await phone.publish(f"{R}/ping/uwb/corrupt-late", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    offer = await phone.next_json(f"{R}/offer/+")  # it was in the (old) file before it left
    await asyncio.wait_for(wait_until(lambda: agent.metrics.storage_errors.get("corrupt")), 5)
    assert agent.ledger is not old
    # the offer is out: the fresh ledger knows it, and central hears of it
    assert agent.ledger.get_offer(offer["offer_id"]) is not None
    assert any(e.get("offer_id") == offer["offer_id"] for _, e in agent.ledger.outbox.peek(100))
    assert [a["offer_id"] for a in agent.ledger.read_audit(device=agent.pseudonym("corrupt-late"))
            if a["offer_id"]] == [offer["offer_id"]]


async def test_a_dismissal_whose_commit_failed_is_counted_once_by_the_guardrail(
        store_factory, agent_factory, mqtt_client):
    """Audit h2: a dismissal whose batch failed to commit is retried whole; its
    first, uncommitted count stayed in memory, so one real dismissal of two
    offers read as 2/2 and tripped a 0.5 guardrail that 1/2 does not pass."""
    cfg = store_factory(promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"],
         "guardrails": {"max_dismiss_rate": 0.5, "min_exposures": 2}}])
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    offers = []
    for d, xy in (("g1", (24.0, 10.0)), ("g2", (24.0, 10.0))):
        await phone.publish(f"{R}/ping/uwb/{d}", {"x": xy[0], "y": xy[1], "acc": 0.5}, qos=0)
        offers.append(await phone.next_json(f"{R}/offer/+"))
    assert {o["promotion_id"] for o in offers} == {"chips"}
    agent.ledger.conn.execute("PRAGMA query_only = 1")  # the filesystem went read-only
    await phone.publish(f"{R}/action/g1", {"offer_id": offers[0]["offer_id"], "action": "dismiss"}, qos=1)
    await asyncio.wait_for(wait_until(lambda: agent._retry), 5)
    agent.ledger.conn.execute("PRAGMA query_only = 0")
    agent.tick()  # the retry: applied, committed, then acknowledged
    assert not agent._retry
    assert agent.ledger.get_offer(offers[0]["offer_id"]).action == "dismiss"
    assert agent.state.campaign.dismissals["chips"] == 1
    assert not agent.state.campaign.is_paused(next(p for p in agent.cfg.promotions if p.id == "chips"))
    rows = agent.ledger.conn.execute("SELECT count(*) FROM outbox WHERE kind = 'guardrail'").fetchone()
    assert rows == (0,)


def _offer_with_a_row_no_table_takes(agent, R: str, device: str, bad: str) -> tuple[Effects, str]:
    """A published batch with a row msgpack keeps in the pending record but no table takes (a
    bug's stand-in): bytes where the outbox takes JSON, or a list SQLite cannot bind."""
    now = time.time()
    pseudo, oid = agent.pseudonym(device), f"o_poison_{device}"
    payload = {"offer_id": oid, "promotion_id": "chips", "zone": "aisle-1", "title": "t", "message": "m",
               "sku": None, "ts": now, "expires": now + 600}
    rows = [OfferRow(oid, pseudo, "chips", "aisle-1", now, now + 600, payload, topic_device=device),
            Audit(now, pseudo, "enter", "aisle-1", "chips", "offered", "offered", oid),
            Event("offer", now, pseudo, {"offer_id": oid})]
    rows.append(Event("offer", now, pseudo, {"offer_id": oid, "blob": b"\x00"}) if bad == "Event" else
                Audit(now, pseudo, "dwell", ["a", "list"], "chips", "suppressed", "cooldown"))
    return Effects(rows=rows, offers=[OfferOut(device, payload, now)]), oid


@pytest.mark.parametrize("bad, error", [("Event", "TypeError"), ("Audit", "ProgrammingError")])
async def test_a_row_no_table_takes_in_a_published_batch_costs_that_row_only(shop, caplog, bad, error):
    """The offer is out before its second commit; that commit fails on a row (not on the disk).
    Nothing of it stays half-written for the next commit, the record is written row by row
    with the next commit -- the bad row left out, logged and counted -- and later offers go on."""
    agent, phone, R = shop
    fx, oid = _offer_with_a_row_no_table_takes(agent, R, "poison", bad)
    with caplog.at_level(logging.ERROR, logger="edge_agent"):
        assert agent.commit_effects(fx)
        assert (await phone.next_json(f"{R}/offer/+"))["offer_id"] == oid  # it was recorded before it left
        assert not agent.ledger.in_transaction  # nothing half-written waits for the next commit
        assert agent.ledger.get_offer(oid) is None
        assert agent.ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (1,)
        # the next batch: the record first, row by row, then the new offer
        await phone.publish(f"{R}/ping/uwb/after", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
        after = await phone.next_json(f"{R}/offer/+")
    assert agent.ledger.get_offer(oid) is not None and agent.ledger.get_offer(after["offer_id"]) is not None
    assert [a["event"] for a in agent.ledger.read_audit(device=agent.pseudonym("poison"))] == ["enter"]
    assert agent.ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    assert [e.get("blob") for _, e in agent.ledger.outbox.peek(1000) if e.get("offer_id") == oid] == [None]
    assert agent.metrics.internal_errors.get(error) == 2  # the second commit, then the row
    assert not agent.metrics.storage_errors.values and not agent._storage_down and not agent._unsettled
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"second commit of a batch failed ({error}" in m for m in lines)
    assert any(f"a {bad} row left out ({error})" in m for m in lines)


async def test_a_row_no_table_takes_in_a_batch_without_offers_leaves_none_of_its_rows(store_factory,
                                                                                    agent_factory, mqtt_client):
    """Before the fix the failed batch's first rows stayed in the open transaction, and the next
    commit wrote them: now the batch raises (the transport logs it) and leaves nothing."""
    cfg = store_factory()
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    now = time.time()
    bad = Effects(rows=[Audit(now, "d_half", "enter", "aisle-1", "chips", "suppressed", "cooldown"),
                        Event("transition", now, "d_half", {"blob": b"\x00"})])
    with pytest.raises(TypeError):
        agent.commit_effects(bad)
    assert not agent.ledger.in_transaction
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    await phone.publish(f"{R}/ping/uwb/next", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    await phone.next_json(f"{R}/offer/+")
    assert agent.ledger.read_audit(device="d_half") == []


async def test_a_row_no_table_takes_in_a_tick_is_logged_as_a_bug_not_taken_for_the_disk(shop, caplog):
    """The tick's commit refuses a bad row and re-raises it (a SQLite ProgrammingError here); the
    ticker must not read that as a storage error (storage_ok 0, /readyz 503 until the next probe)."""
    agent, phone, R = shop
    ticked = asyncio.Event()
    tick = agent.pipeline.tick

    def bad_tick(now, wall):
        fx = tick(now, wall)
        if not ticked.is_set():
            fx.rows.append(Audit(wall, "d_x", "dwell", ["a", "list"], "chips", "suppressed", "cooldown"))
            ticked.set()
        return fx

    agent.pipeline.tick = bad_tick
    with caplog.at_level(logging.ERROR, logger="edge_agent"):
        await asyncio.wait_for(ticked.wait(), 5)  # the ticker runs once a second
    assert any(r.getMessage() == "tracker tick failed" for r in caplog.records)
    assert not agent.metrics.storage_errors.values and not agent._storage_down
    assert not agent.ledger.in_transaction
