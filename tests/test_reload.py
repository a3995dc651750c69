"""Hot reload of promotions, profiles and inventory: file changes, SIGHUP and
the admin endpoint; a bad update is refused and the last good config serves."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from edge_agent import runner
from tests.central import central  # noqa: F401 (fixture)

pytestmark = pytest.mark.broker

POLL_FAST = """
    [reload]
    poll_s = 0.05
"""
POLL_OFF = """
    [reload]
    poll_s = 0
"""
AISLE = {"x": 24.0, "y": 10.0, "acc": 0.5}
WELCOME = {"id": "welcome", "title": "Welcome", "zones": ["entrance"]}


def write_text(path: str | Path, text: str) -> None:
    """Replace a file atomically, as an editor or a deploy tool does."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj))


def reload_events(agent) -> asyncio.Queue:
    q: asyncio.Queue = asyncio.Queue()
    agent.listeners.append(lambda kind, data: q.put_nowait(data) if kind == "reload" else None)
    return q


async def watched_store(store_factory, agent_factory, mqtt_client):
    """An agent polling its files every 0.2 s, its reload events, and a phone on its offers:
    (cfg, agent, events, phone, root topic)."""
    cfg = store_factory(toml_extra=POLL_FAST)
    agent = (await agent_factory(cfg)).agent
    events = reload_events(agent)
    phone = mqtt_client()
    await phone.subscribe(f"{cfg.root_topic}/offer/+")
    return cfg, agent, events, phone, cfg.root_topic


async def test_file_change_goes_live_within_seconds(store_factory, agent_factory, mqtt_client):
    cfg, agent, events, phone, R = await watched_store(store_factory, agent_factory, mqtt_client)
    write_json(cfg.files["promotions"], [{"id": "new-deal", "title": "New deal", "zones": ["aisle-1"]}])
    ev = await asyncio.wait_for(events.get(), 5)
    assert ev["result"] == "ok" and ev["version"] == agent.cfg.version != cfg.version
    assert agent.metrics.config_reloads.get("ok") == 1
    await phone.publish(f"{R}/ping/uwb/p", AISLE, qos=0)
    assert (await phone.next_json(f"{R}/offer/+"))["promotion_id"] == "new-deal"


async def test_bad_file_is_refused_then_a_fixed_one_applies(store_factory, agent_factory, mqtt_client, caplog):
    cfg = store_factory(toml_extra=POLL_FAST)
    server = await agent_factory(cfg)
    agent = server.agent
    events = reload_events(agent)
    layout = cfg.files["layout"]
    bad = json.loads(Path(layout).read_text())
    bad["features"][2]["properties"]["kind"] = "corridor"  # aisle-1
    write_json(layout, bad)
    ev = await asyncio.wait_for(events.get(), 5)
    assert ev["result"] == "refused" and ev["version"] == cfg.version
    assert any(layout in p and 'feature "aisle-1"' in p and "'kind'" in p for p in ev["problems"])
    assert any("reload (file change) refused" in r.getMessage() and "aisle-1" in r.getMessage()
               for r in caplog.records)
    assert agent.metrics.config_reloads.get("refused") == 1
    assert agent.cfg.version == cfg.version
    write_json(cfg.files["promotions"], [{"id": "p2", "title": "P2", "zones": ["aisle-1"]}])
    bad["features"][2]["properties"]["kind"] = "aisle"
    write_json(layout, bad)
    while (ev := await asyncio.wait_for(events.get(), 5))["result"] != "ok":
        pass  # a poll may see the promotions file before the layout is fixed
    assert [p.id for p in agent.cfg.promotions] == ["p2"]


async def test_admin_reload_needs_the_token(store_factory, agent_factory):
    cfg = store_factory(toml_extra=POLL_OFF)
    server = await agent_factory(cfg)
    write_json(cfg.files["promotions"], [{"id": "p9", "title": "P9", "zones": ["produce"]}])
    url = server.url + "/v1/admin/reload"
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as r:
            assert r.status == 401
        async with http.post(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        assert server.agent.cfg.version == cfg.version
        async with http.post(url, headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body == {"ok": True, "version": server.agent.cfg.version, "problems": []}
        assert body["version"] != cfg.version
        async with http.post(url, headers={"Authorization": "Bearer admin-secret"}) as r:
            assert (await r.json())["ok"] is True  # nothing changed: fine, nothing done
    assert server.agent.metrics.config_reloads.get("unchanged") == 1
    assert [p.id for p in server.agent.cfg.promotions] == ["p9"]


async def test_reload_cannot_change_the_store_id(store_factory, agent_factory):
    cfg = store_factory(toml_extra=POLL_OFF)
    server = await agent_factory(cfg)
    toml = Path(cfg.files["store"])
    toml.write_text(toml.read_text().replace(f'id = "{cfg.store_id}"', 'id = "OTHER"'))
    ok, problems = server.agent.reload_from_files()
    assert not ok and "store id" in problems[0]
    assert server.agent.cfg.store_id == cfg.store_id


async def test_restart_only_sections_keep_their_running_values_after_a_reload(store_factory, agent_factory):
    """configuration.md: [mqtt], [http] and [data] changes need a restart (a warning
    says so). A reload that carries such a change applies the rest, but the admin
    token, the rate limits and the data dir stay as started, as the warning says."""
    cfg = store_factory(toml_extra=POLL_OFF)
    server = await agent_factory(cfg)
    toml = Path(cfg.files["store"])
    toml.write_text(toml.read_text().replace('admin_token = "admin-secret"', 'admin_token = "rotated"')
                    .replace('dir = "var"', 'dir = "elsewhere"'))
    write_json(cfg.files["promotions"], [{"id": "p9", "title": "P9", "zones": ["produce"]}])
    url = server.url + "/v1/admin/reload"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 200 and (await r.json())["ok"] is True
        assert [p.id for p in server.agent.cfg.promotions] == ["p9"]  # the rest applied
        async with http.post(url, headers={"Authorization": "Bearer rotated"}) as r:
            assert r.status == 401  # not before a restart
        async with http.post(url, headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 200
    assert server.agent.cfg.http == cfg.http and server.agent.cfg.mqtt == cfg.mqtt
    assert server.agent.cfg.data_dir == cfg.data_dir


async def test_sighup_reloads(store_factory, mqtt_client, monkeypatch):
    cfg = store_factory(toml_extra=POLL_OFF)
    started: asyncio.Queue = asyncio.Queue()

    class Recorded(runner.Server):
        async def start(self):
            await super().start()
            started.put_nowait(self)

    monkeypatch.setattr(runner, "Server", Recorded)
    task = asyncio.create_task(runner.serve(cfg))
    # serve() installs its signal handlers right after start(), before it next yields.
    server = await asyncio.wait_for(started.get(), 10)
    try:
        await asyncio.wait_for(server.agent.mqtt.subscribed.wait(), 10)
        events = reload_events(server.agent)
        write_json(cfg.files["promotions"], [{"id": "hup", "title": "Hup", "zones": ["aisle-1"]}])
        os.kill(os.getpid(), signal.SIGHUP)
        assert (await asyncio.wait_for(events.get(), 5))["result"] == "ok"
        phone = mqtt_client()
        await phone.subscribe(f"{cfg.root_topic}/offer/+")
        await phone.publish(f"{cfg.root_topic}/ping/uwb/h", AISLE, qos=0)
        assert (await phone.next_json(f"{cfg.root_topic}/offer/+"))["promotion_id"] == "hup"
        assert gc.get_freeze_count() > 0  # serve() froze the start-up heap, and the reload froze it again
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 20) == 0
    assert gc.get_freeze_count() == 0  # and serve() left this process's collector as it found it


async def test_file_inventory_never_undoes_a_newer_mqtt_update(store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra=POLL_OFF, inventory={"chips": 5},
                        promotions=[{"id": "chips", "title": "Chips", "skus": ["chips"], "requires_stock": True}])
    inv_file = cfg.files["inventory"]
    hour_ago = time.time() - 3600
    os.utime(inv_file, (hour_ago, hour_ago))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/inventory", {"sku": "chips", "qty": 0, "ts": time.time() - 60}, qos=1)
    await phone.publish(f"{R}/inventory", b"[", qos=1)  # its dead letter: the update before it is done
    await phone.next(f"{R}/deadletter")
    assert agent.inventory["chips"][0] == 0
    # Promotions change; the inventory file (an hour old) does not undo the POS update.
    write_json(cfg.files["promotions"], [{"id": "chips", "title": "Chips!", "skus": ["chips"],
                                          "requires_stock": True}])
    assert agent.reload_from_files() == (True, [])
    assert agent.inventory["chips"][0] == 0
    # A newer file does.
    write_json(inv_file, {"chips": 7})
    assert agent.reload_from_files() == (True, [])
    assert agent.inventory["chips"][0] == 7


async def test_profile_reload_opt_out_applies_but_opt_in_never_undoes_a_device_opt_out(
        store_factory, agent_factory, mqtt_client):
    yes = {"offers": True, "tracking": True}
    cfg = store_factory(toml_extra=POLL_OFF, profiles=[{"device": "a", "consent": yes},
                                                        {"device": "b", "consent": yes}])
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/deadletter")
    await phone.subscribe(f"{R}/offer/a")
    await phone.publish(f"{R}/ping/uwb/a", AISLE, qos=0)
    offer = await phone.next_json(f"{R}/offer/a")
    await phone.publish(f"{R}/consent/b", {"offers": False}, qos=1)
    await phone.publish(f"{R}/consent/b", b"x", qos=1)
    await phone.next(f"{R}/deadletter")
    no = {"offers": False, "tracking": True}
    write_json(cfg.files["profiles"], [{"device": "a", "consent": no}, {"device": "b", "consent": yes}])
    assert agent.reload_from_files() == (True, [])
    assert agent.consent_for("a", agent.pseudonym("a"))[1].offers is False  # the profile's opt-out holds
    assert agent.ledger.get_offer(offer["offer_id"]).zone is None and "a" not in agent.tracks  # and purges
    assert agent.consent_for("b", agent.pseudonym("b"))[1].offers is False  # the device's opt-out holds


async def under_welcome_bundle(store_factory, agent_factory, central):
    """An agent (files not polled) once it applied central's bundle: the base promotions and a
    welcome at the entrance.  (cfg, agent)"""
    from tests.central import sync_toml, until
    from tests.conftest import BASE_PROMOTIONS

    central.set_bundle({"version": "v1", "promotions": BASE_PROMOTIONS + [WELCOME]})
    await central.start()
    cfg = store_factory(toml_extra=sync_toml(central) + POLL_OFF)
    agent = (await agent_factory(cfg)).agent
    await until(agent, lambda: agent.metrics.bundles.get("applied") == 1)
    assert "welcome" in {p.id for p in agent.cfg.promotions}
    return cfg, agent


async def test_file_reload_keeps_central_bundle_on_top(store_factory, agent_factory, central):
    cfg, agent = await under_welcome_bundle(store_factory, agent_factory, central)
    write_json(cfg.files["profiles"], [{"device": "z", "loyalty_score": 5}])
    assert agent.reload_from_files() == (True, [])
    assert "z" in agent.cfg.profiles  # the files' change is live...
    assert "welcome" in {p.id for p in agent.cfg.promotions}  # ...under the bundle's promotions


async def test_a_reload_refused_over_the_bundle_leaves_later_bundles_on_the_running_files(
        store_factory, agent_factory, central):
    from tests.central import until
    from tests.conftest import BASE_LAYOUT, BASE_PROMOTIONS

    cfg, agent = await under_welcome_bundle(store_factory, agent_factory, central)
    # The files drop the entrance that the bundle's promotion names: the reload is refused.
    write_json(cfg.files["layout"], dict(BASE_LAYOUT, features=BASE_LAYOUT["features"][1:]))
    ok, problems = agent.reload_from_files()
    assert not ok and any("entrance" in p for p in problems)
    assert "entrance" in {f.id for f in agent.cfg.fences}  # the last good config serves
    # Central's next bundle fits the running config: it is applied, not judged against the refused files.
    central.set_bundle({"version": "v2", "promotions": BASE_PROMOTIONS + [WELCOME], "inventory": {"chips": 4}})
    await until(agent, lambda: agent.metrics.bundles.get("applied") + agent.metrics.bundles.get("refused") >= 2)
    assert agent.metrics.bundles.get("refused") == 0
    assert agent.inventory["chips"][0] == 4
    assert "entrance" in {f.id for f in agent.cfg.fences}


async def test_turning_owntracks_on_and_off_in_store_toml_applies_on_reload(store_factory, agent_factory,
                                                                           mqtt_client):
    # DESIGN: `[ingest] owntracks = true` also subscribes to owntracks/+/+; the reload
    # promise (configuration.md): only [mqtt], [http] and [data] need a restart.
    from geometry.frames import LocalFrame

    cfg, agent, events, phone, R = await watched_store(store_factory, agent_factory, mqtt_client)
    await phone.subscribe(f"{R}/deadletter")
    lon, lat = LocalFrame(49.1875, 16.6130, 0.0).to_wgs84(24.0, 10.0)
    location = {"_type": "location", "lat": float(lat), "lon": float(lon), "acc": 1,
                "tst": int(time.time()), "tid": "al"}
    toml = Path(cfg.files["store"])
    base = toml.read_text()
    agent.mqtt.subscribed.clear()
    write_text(toml, base + "\n[ingest]\nowntracks = true\n")
    assert (await asyncio.wait_for(events.get(), 5))["result"] == "ok"
    await asyncio.wait_for(agent.mqtt.subscribed.wait(), 5)  # the broker acknowledged owntracks/+/+
    await phone.publish("owntracks/alice/pixel", location)
    m = await phone.next(f"{R}/offer/+")
    assert m.topic == f"{R}/offer/owntracks:alice:pixel"
    assert agent.metrics.pings.get("owntracks") == 1

    write_text(toml, base + "\n[ingest]\nowntracks = false\n")
    assert (await asyncio.wait_for(events.get(), 5))["result"] == "ok"
    await phone.publish("owntracks/bob/phone", location)
    await phone.publish(f"{R}/ping/uwb/marker", {"acc": 1})  # a dead letter: everything before it is handled
    assert (await phone.next_json(f"{R}/deadletter"))["topic"] == f"{R}/ping/uwb/marker"
    assert agent.metrics.pings.get("owntracks") == 1  # turned off: OwnTracks phones are no longer tracked
    assert "owntracks:bob:phone" not in agent.tracks
