"""The HTTP uplink against a real aiohttp server playing central (tests/central.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.central import PRIVATE, barrier, central, sync_toml, until, walk  # noqa: F401 (fixture)

pytestmark = pytest.mark.broker


def pending_keys(agent) -> set[str]:
    return {body["key"] for _, body in agent.ledger.outbox.peek(100_000)}


async def test_central_down_at_start_then_up_every_event_once(store_factory, agent_factory, mqtt_client, central):
    cfg = store_factory(toml_extra=sync_toml(central, encoding="msgpack"))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    for i in range(20):
        await walk(phone, R, f"shopper-{i}")
    await barrier(phone, R)
    recorded = pending_keys(agent)
    kinds = {body["kind"] for _, body in agent.ledger.outbox.peek(100_000)}
    assert {"transition", "offer", "deadletter"} <= kinds
    await central.start()
    await until(agent, lambda: agent.ledger.outbox.pending() == 0)
    assert recorded <= set(central.events)
    assert all(n == 1 for n in central.copies.values()), "an event arrived twice"
    assert {d.content_type for d in central.deliveries} == {"application/msgpack"}
    assert "edge_outbox_pending 0" in agent.metrics.render()
    assert agent.metrics.last_sync.values[()] > 0
    # Privacy on the way out: pseudonyms only, no coordinates, no raw ids.
    for ev in central.events.values():
        assert {"key", "kind", "ts", "store", "device"} <= set(ev)
        assert ev["device"] is None or ev["device"].startswith("d_")
        assert not PRIVATE & set(ev)
        if ev["kind"] == "offer":
            assert {"offer_id", "promotion_id", "zone"} <= set(ev)
    assert "shopper-" not in json.dumps(list(central.events.values()))


async def test_500_then_timeout_then_200_backs_off_and_delivers(store_factory, agent_factory, mqtt_client,
                                                                  central):
    await central.start()
    central.script.extend([500, "hang"])
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    for i in range(5):
        await walk(phone, R, f"p{i}")
    await barrier(phone, R)
    recorded = pending_keys(agent)
    await until(agent, lambda: recorded <= set(central.events) and agent.ledger.outbox.pending() == 0)
    assert agent.metrics.sync_errors.get("http_5xx") == 1
    assert agent.metrics.sync_errors.get("timeout") == 1
    first = central.deliveries[0]
    assert first.status == 500
    # The retried batch is the same batch: same events, same Idempotency-Key.
    retried = [d for d in central.deliveries if d.keys == first.keys]
    assert len(retried) == 2 and {d.idempotency_key for d in retried} == {first.idempotency_key}
    assert first.idempotency_key in central.seen_idempotency


@pytest.mark.parametrize("status", [500, 502, 504, 429])
async def test_retry_after_is_honoured_on_every_retried_status(store_factory, agent_factory, mqtt_client, central,
                                                               status):
    # Our own backoff waits at most 1 s before the first retry: a retry 3 s later is central's Retry-After.
    await central.start()
    central.script.append((status, {"Retry-After": "3"}))
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    phone = mqtt_client()
    await walk(phone, cfg.root_topic, "patient-1")
    await central.wait_for(lambda: len(central.deliveries) >= 2, timeout=15)
    first, retry = central.deliveries[:2]
    assert first.status == status and retry.keys == first.keys
    assert retry.idempotency_key == first.idempotency_key
    assert retry.at - first.at >= 2.9
    await until(server.agent, lambda: set(first.keys) <= set(central.events))


async def test_400_batch_is_set_aside_and_reported(store_factory, agent_factory, mqtt_client, central):
    await central.start()
    central.script.append(400)
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    aside = asyncio.Event()
    agent.sync.listeners.append(lambda kind, data: kind == "set_aside" and aside.set())
    await walk(phone, R, "refused-1")
    await asyncio.wait_for(aside.wait(), 10)
    refused = central.deliveries[0]
    assert refused.status == 400
    assert agent.metrics.sync_errors.get("rejected") == 1
    n_aside = agent.ledger.outbox.aside_count()
    assert n_aside == len(refused.keys)
    assert f"edge_outbox_set_aside {n_aside}" in agent.metrics.render()
    rows = agent.ledger.conn.execute("SELECT key, status, error FROM outbox_aside").fetchall()
    assert {r[0] for r in rows} == set(refused.keys) and {r[1] for r in rows} == {400}
    # ...and the uplink goes on with later events.
    await walk(phone, R, "later-1")
    await barrier(phone, R)
    recorded = pending_keys(agent)
    await until(agent, lambda: recorded <= set(central.events))
    assert not set(refused.keys) & set(central.events)


async def test_401_batch_is_set_aside_then_requeued_once_fixed(store_factory, agent_factory, mqtt_client, central):
    import aiohttp

    await central.start()
    central.script.append(401)
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    aside = asyncio.Event()
    agent.sync.listeners.append(lambda kind, data: kind == "set_aside" and aside.set())
    await walk(phone, R, "wrong-token-1")
    await asyncio.wait_for(aside.wait(), 10)
    refused = central.deliveries[0]
    assert refused.status == 401 and agent.metrics.sync_errors.get("auth") == 1
    assert agent.ledger.outbox.aside_count() == len(refused.keys)
    # The operator fixes the token, then requeues: every parked event arrives, once.
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/admin/outbox/requeue") as r:
            assert r.status == 401
        async with http.post(server.url + "/v1/admin/outbox/requeue",
                             headers={"Authorization": "Bearer admin-secret"}) as r:
            assert (await r.json())["requeued"] == len(refused.keys)
    await until(agent, lambda: set(refused.keys) <= set(central.events))
    assert agent.ledger.outbox.aside_count() == 0
    # ...under a new Idempotency-Key: a central that keeps its answer to a key would refuse it again unread
    again = [d for d in central.deliveries[1:] if set(d.keys) & set(refused.keys)]
    assert again and all(d.idempotency_key != refused.idempotency_key for d in again)


async def test_outbox_bound_sheds_analytics_first_never_redemptions_or_consent(
        store_factory, agent_factory, mqtt_client, central):
    # Central is down; a tiny bound (about 31 KB) forces shedding.
    cfg = store_factory(toml_extra=sync_toml(central, max_outbox_mb=0.03))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    shed = asyncio.Event()
    agent.sync.listeners.append(lambda kind, data: kind == "shed" and shed.set())
    codes = []
    for i in range(3):
        await phone.subscribe(f"{R}/offer/buyer-{i}")
        await walk(phone, R, f"buyer-{i}")
        offer = await phone.next_json(f"{R}/offer/buyer-{i}")
        await phone.publish(f"{R}/action/buyer-{i}", {"offer_id": offer["offer_id"], "action": "apply"})
        codes.append((await phone.next_json(f"{R}/offer/buyer-{i}"))["code"])
        await phone.publish(f"{R}/consent/buyer-{i}", {"offers": True, "tracking": False})
    for round_ in range(10):
        for i in range(4):
            await walk(phone, R, f"walker-{i}")
    await barrier(phone, R)
    await asyncio.wait_for(shed.wait(), 10)
    # Analytics go first: shedding transitions was enough, nothing else was shed.
    assert agent.metrics.outbox_shed.get("transition") > 0
    assert {kind for (kind,) in agent.metrics.outbox_shed.values} == {"transition"}
    kept = {body["kind"] for _, body in agent.ledger.outbox.peek(100_000)}
    assert "redemption" in kept and "consent" in kept
    # Central comes up: every redemption and consent change arrives.
    await central.start()
    await until(agent, lambda: agent.ledger.outbox.pending() == 0)
    got = [e for e in central.events.values() if e["kind"] == "redemption"]
    assert sorted(e["code"] for e in got) == sorted(codes)
    assert central.kinds().get("consent") == 3
