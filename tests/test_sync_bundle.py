"""Bundles from central: validated whole, live on the next poll, kept on disk."""

from __future__ import annotations

import copy
import time

import pytest

from tests.central import Central, barrier, central, sync_toml, until  # noqa: F401 (fixture)
from tests.conftest import BASE_PROMOTIONS

pytestmark = pytest.mark.broker

WELCOME = {"id": "welcome", "title": "Welcome", "message": "10 % off today", "zones": ["entrance"],
           "cooldown_s": 3600}


def promo_ids(agent) -> set[str]:
    return {p.id for p in agent.cfg.promotions}


async def refused_with(store_factory, agent_factory, central: Central, caplog) -> list[str]:
    """Start central (its bundle set) and an agent polling it; once the bundle is refused and the
    file's promotions still serve, the downlink's error lines."""
    await central.start()
    agent = (await agent_factory(store_factory(toml_extra=sync_toml(central)))).agent
    await until(agent, lambda: agent.metrics.bundles.get("refused") == 1)
    assert promo_ids(agent) == {p["id"] for p in BASE_PROMOTIONS}
    return [r.getMessage() for r in caplog.records if r.name == "sync.downlink" and r.levelname == "ERROR"]


async def offer_at_entrance(phone, R: str, device: str) -> dict:
    await phone.subscribe(f"{R}/offer/{device}")
    await phone.publish(f"{R}/ping/uwb/{device}", {"x": 3.0, "y": 1.5, "acc": 0.5, "ts": time.time()}, qos=0)
    return await phone.next_json(f"{R}/offer/{device}")


async def test_new_promotion_is_live_on_next_poll(store_factory, agent_factory, mqtt_client, central: Central):
    central.set_bundle({"version": "v1", "promotions": BASE_PROMOTIONS + [WELCOME]})
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    agent = server.agent
    await until(agent, lambda: "welcome" in promo_ids(agent))
    phone = mqtt_client()
    R = cfg.root_topic
    assert (await offer_at_entrance(phone, R, "early-bird"))["promotion_id"] == "welcome"
    assert agent.metrics.bundles.get("applied") == 1
    # Unchanged: the agent asks with the ETag and gets a 304.
    await central.wait_for(lambda: central.bundle_requests[-1] == central.bundle_etag)
    await until(agent, lambda: agent.metrics.bundles.get("unchanged") >= 1)
    # A POS update newer than the next bundle's inventory survives it (newest wins per sku).
    await phone.publish(f"{R}/inventory", {"sku": "apple", "qty": 7, "ts": time.time()})
    await barrier(phone, R)
    v2 = {"version": "v2", "ts": time.time() - 100, "inventory": {"apple": 0, "pear": 3},
          "promotions": BASE_PROMOTIONS + [dict(WELCOME, id="welcome-2", priority=9)]}
    central.set_bundle(v2, msgpack_body=True)
    await until(agent, lambda: "welcome-2" in promo_ids(agent))
    assert "welcome" not in promo_ids(agent)  # the key replaces the whole list
    assert agent.inventory["apple"][0] == 7 and agent.inventory["pear"][0] == 3
    assert {f.id for f in agent.cfg.fences} == {f.id for f in cfg.fences}  # missing key: unchanged


async def test_invalid_bundle_is_refused_and_old_rules_keep_serving(store_factory, agent_factory, mqtt_client,
                                                                    central: Central):
    bad = copy.deepcopy(BASE_PROMOTIONS) + [{"id": "ghost", "title": "Ghost", "zones": ["nowhere"]},
                                            {"id": "untitled", "zones": ["entrance"]}]
    central.set_bundle({"version": "bad", "promotions": bad, "profiles": [{"device": "x/y"}]})
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    agent = server.agent
    refusals = []
    agent.sync.listeners.append(lambda kind, data: kind == "bundle" and refusals.append(data))
    await until(agent, lambda: agent.metrics.bundles.get("refused") == 1)
    await central.wait_for(lambda: len(central.bundle_requests) >= 2)  # polled again: still refused, counted once
    problems = " ".join(refusals[-1]["problems"])
    assert "nowhere" in problems and "untitled" in problems and "x/y" in problems
    assert promo_ids(agent) == {p["id"] for p in BASE_PROMOTIONS}
    assert agent.metrics.bundles.get("refused") == 1
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/still-served")
    await phone.publish(f"{R}/ping/uwb/still-served", {"x": 24.0, "y": 10.0, "acc": 0.5, "ts": time.time()}, qos=0)
    assert (await phone.next_json(f"{R}/offer/still-served"))["promotion_id"] == "chips"


async def test_restart_with_central_down_serves_last_good_bundle(store_factory, agent_factory, mqtt_client,
                                                                 central: Central):
    central.set_bundle({"version": "v1", "promotions": BASE_PROMOTIONS + [WELCOME]})
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    await until(server.agent, lambda: "welcome" in promo_ids(server.agent))
    await server.stop()
    await central.stop()
    server2 = await agent_factory(cfg)  # same files, same data dir; central is down
    agent = server2.agent
    assert "welcome" in promo_ids(agent)  # before it served anything
    assert agent.metrics.bundles.get("restored") == 1
    phone = mqtt_client()
    assert (await offer_at_entrance(phone, cfg.root_topic, "after-restart"))["promotion_id"] == "welcome"
    # When central is back, the saved ETag is sent: 304, nothing re-applied.
    await central.start()
    await central.wait_for(lambda: central.bundle_requests and central.bundle_requests[-1] == central.bundle_etag)


async def test_oversized_bundle_is_refused_with_a_log_that_says_so(store_factory, agent_factory, central: Central,
                                                                  monkeypatch, caplog):
    import sync.downlink

    monkeypatch.setattr(sync.downlink, "MAX_BUNDLE_BYTES", 2000)
    big = [dict(WELCOME, id=f"welcome-{i}") for i in range(40)]
    central.set_bundle({"version": "huge", "promotions": BASE_PROMOTIONS + big})
    refusals = await refused_with(store_factory, agent_factory, central, caplog)
    assert any("2000 bytes" in m and "too large" in m for m in refusals), refusals


async def test_msgpack_bundle_with_binary_in_an_unknown_field_is_kept_on_disk(store_factory, agent_factory,
                                                                              central: Central):
    # msgpack encoders send byte arrays as `bin`; in a field the agent ignores it must not stop the save.
    central.bundle = {"version": "bin", "promotions": BASE_PROMOTIONS + [dict(WELCOME, thumbnail=b"\x89PNG\x00")]}
    central.bundle_msgpack, central.bundle_etag = True, '"bin-1"'
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    await until(server.agent, lambda: "welcome" in promo_ids(server.agent))
    version = server.agent.cfg.version
    await server.stop()
    await central.stop()
    server2 = await agent_factory(cfg)  # central is down: the saved bundle serves
    assert "welcome" in promo_ids(server2.agent) and server2.agent.cfg.version == version
    assert server2.agent.metrics.bundles.get("restored") == 1


async def test_msgpack_bundle_with_a_binary_map_key_is_refused_and_says_where(store_factory, agent_factory,
                                                                              central: Central, caplog):
    # msgpack allows bin map keys; JSON and the store's files never have them.
    central.bundle = {"version": "binkey", "promotions": BASE_PROMOTIONS + [dict(WELCOME) | {b"title": "x"}]}
    central.bundle_msgpack, central.bundle_etag = True, '"binkey-1"'
    errors = await refused_with(store_factory, agent_factory, central, caplog)
    assert any("promotions[3]" in m and "not a string" in m for m in errors), errors


async def test_an_unchanged_bundle_sent_again_with_200_does_not_undo_a_newer_pos_update(
        store_factory, agent_factory, mqtt_client, central: Central):
    # Central ignores If-None-Match: the same bundle (same ETag, no `ts`) comes back with 200 every poll.
    central.ignore_if_none_match = True
    central.set_bundle({"version": "v1", "inventory": {"apple": 5}})
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    agent = server.agent
    await until(agent, lambda: agent.metrics.bundles.get("applied") == 1)
    assert agent.inventory["apple"][0] == 5
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.publish(f"{R}/inventory", {"sku": "apple", "qty": 0, "ts": time.time()})
    await barrier(phone, R)
    assert agent.inventory["apple"][0] == 0
    polls = len(central.bundle_requests)
    await central.wait_for(lambda: len(central.bundle_requests) >= polls + 2)
    assert agent.inventory["apple"][0] == 0  # the POS update is newer than the bundle
    assert agent.metrics.bundles.get("applied") == 1 and agent.metrics.bundles.get("unchanged") >= 1


async def test_the_saved_bundle_holds_no_raw_device_id_and_still_restores_its_profiles(
        store_factory, agent_factory, central: Central):
    """Found by scanning the data dir after a bundle with profiles: bundle.json
    kept every profile's raw ``device`` (the id in its topics) in clear.  Now the
    ids are sealed in the file and opened again when it is restored."""
    from pathlib import Path

    from tests.test_privacy import scan
    raw = "RAWID-bundle-7f3a"
    central.set_bundle({"version": "p1", "profiles": [
        {"device": raw, "loyalty_id": "L-1", "segments": ["gold"], "consent": {"offers": True, "tracking": False}}]})
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central))
    server = await agent_factory(cfg)
    await until(server.agent, lambda: server.agent.metrics.bundles.get("applied") == 1)
    assert raw in server.agent.cfg.profiles
    version = server.agent.cfg.version
    await server.stop()
    await central.stop()
    data = Path(cfg.data_dir)
    assert (data / "bundle.json").exists() and scan([data], [raw]) == []
    server2 = await agent_factory(cfg)  # central is down: the saved bundle serves, profiles included
    agent = server2.agent
    assert agent.metrics.bundles.get("restored") == 1 and agent.cfg.version == version
    assert set(agent.cfg.profiles[raw].segments) == {"gold"}
