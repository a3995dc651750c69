"""Zones from the positioning stores already run (issue 13), through the real
broker: Wi-Fi-, HTML5- and BLE-grade fixes of simulated shoppers, published
as phones and location engines would, judged by the agent's fused tracker.

The ping clock (``[tracking] clock = "ping"``) lets a minute of fixes run in a
moment; the fixes themselves come from tests/fusion_scenarios.py (seeded)."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
from shapely.geometry import box, mapping

from .fusion_scenarios import aisle_fixes, aisle_layout, browse_fixes, pass_by_fixes, sample, walk

pytestmark = pytest.mark.broker

T0 = time.time() - 7200.0  # fixes carry their own ts (ping clock), all in the past


def layout_of(fences: list[tuple[str, str, object]]) -> dict:
    return {"type": "FeatureCollection", "frame": "local", "features": [
        {"type": "Feature", "properties": {"id": fid, "kind": kind}, "geometry": mapping(g)}
        for fid, kind, g in fences]}


def promos_for(ids: list[str]) -> list[dict]:
    return [{"id": f"p-{z}", "title": z, "message": "", "zones": [z], "cooldown_s": 86400} for z in ids]


async def run_fixes(store_factory, agent_factory, mqtt_client, fences, shoppers, source, acc, offers=None):
    """Publish every shopper's fixes in time order; return {device: [events]}
    of the ``{R}/event/{device}`` transitions, once all were processed.
    ``offers``: a dict to fill with {device: [offer payloads]}."""
    cfg = store_factory(layout=layout_of(fences), promotions=promos_for([f[0] for f in fences]),
                        toml_extra='[tracking]\nclock = "ping"\npublish_events = true\n')
    await agent_factory(cfg)
    R = cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/event/+")
    await phone.subscribe(f"{R}/offer/+")
    fixes = sorted((T0 + off + float(t), dev, float(x), float(y))
                   for dev, off, (ts, xs, ys) in shoppers for t, x, y in zip(ts, xs, ys))
    for ts, dev, x, y in fixes:
        phone.client.publish(f"{R}/ping/{source}/{dev}",
                             json.dumps({"x": x, "y": y, "acc": acc, "ts": ts}).encode(), qos=0)
    # A precise fix after all the others: its transition proves every earlier fix was processed.
    fid, _, g = fences[0]
    p = g.representative_point()
    await phone.publish(f"{R}/ping/uwb/sentinel", {"x": p.x, "y": p.y, "acc": 0.1, "ts": fixes[-1][0] + 1}, qos=1)
    out: dict[str, list[dict]] = {}
    while True:
        msg = await phone.next(f"{R}/event/+", timeout=30)
        dev = msg.topic.rsplit("/", 1)[1]
        if dev == "sentinel":
            break
        out.setdefault(dev, []).append(json.loads(msg.payload))
    if offers is not None:  # the sentinel's own offer comes after every earlier one
        while True:
            msg = await phone.next(f"{R}/offer/+", timeout=30)
            dev = msg.topic.rsplit("/", 1)[1]
            if dev == "sentinel":
                break
            offers.setdefault(dev, []).append(json.loads(msg.payload))
    return out


def first_enter(evs: list[dict], zone: str) -> float | None:
    ts = [e["ts"] for e in evs if e["event"] == "enter" and e["zone"] == zone]
    return min(ts) if ts else None


@pytest.mark.parametrize("tech,zone,sigma,acc,dwell,max_delay", [
    ("wifi", box(20, 20, 32, 30), 3.5, 8.0, 45.0, 20.0),   # a 12 m x 10 m section
    ("html5", box(10, 10, 40, 30), 8.0, 16.0, 90.0, 30.0),  # a 30 m x 20 m department, a longer dwell
])
async def test_coarse_fixes_place_browsers_in_their_zone_and_not_passers_by(
        store_factory, agent_factory, mqtt_client, tech, zone, sigma, acc, dwell, max_delay):
    n = 12
    browsers, truth = [], {}
    for i in range(n):
        t, fx, fy, t_in, t_leave = browse_fixes(100 + i, zone, sigma=sigma, every=2.0, dwell=dwell)
        browsers.append((f"b{i}", i * 7.0, (t, fx, fy)))
        truth[f"b{i}"] = (T0 + i * 7.0 + t_in, T0 + i * 7.0 + t_leave)
    passers = [(f"p{i}", i * 5.0, pass_by_fixes(200 + i, zone, sigma=sigma, every=2.0, gap=3.0)) for i in range(n)]
    offers: dict[str, list[dict]] = {}
    got = await run_fixes(store_factory, agent_factory, mqtt_client, [("zone", "section", zone)],
                          browsers + passers, tech, acc, offers=offers)
    delays, offered = [], []
    for dev, (t_in, t_leave) in truth.items():
        te = first_enter(got.get(dev, []), "zone")
        if te is not None and te <= t_leave + 1e-6:
            delays.append(te - t_in)
        to = min((o["ts"] for o in offers.get(dev, [])), default=None)
        if to is not None and to <= t_leave + 1e-6:
            offered.append(to - t_in)
    assert len(delays) >= 10, f"{len(delays)} of {n} browsers placed in the zone while browsing"
    assert statistics.median(delays) < max_delay
    # what a store sees: the offer, while she browses
    assert len(offered) >= 10 and statistics.median(offered) < max_delay, offered
    passed_in = [d for d, *_ in passers if first_enter(got.get(d, []), "zone") is not None]
    assert len(passed_in) <= 2, passed_in
    assert len([d for d, *_ in passers if offers.get(d)]) <= 2


async def test_ble_fixes_place_a_browser_in_her_aisle_not_its_neighbour(store_factory, agent_factory, mqtt_client):
    aisles, _ = aisle_layout()  # five 2 m aisles between 1.2 m shelves; the agent infers the shelves
    fences = [(a.id, "aisle", a.geometry) for a in aisles]
    shoppers, own = [], {}
    for k, a in enumerate(aisles):
        x0, y0, x1, y1 = a.geometry.bounds
        cx = (x0 + x1) / 2
        rng = np.random.default_rng(300 + k)
        knots = walk([(cx, 1.5), (cx, y0 - 1.0), (cx, y0 + 6), (cx + 0.2, y0 + 8), (cx, y0 - 1.0), (cx, 1.5)],
                     [1.1, 1.1, 0.4, 1.1, 1.1], [0, 0, 10, 10, 0, 0])
        t, _, _, fx, fy = sample(knots, 1.0, rng, 1.5)
        shoppers.append((f"s{k}", k * 3.0, (t, fx, fy)))
        own[f"s{k}"] = k
    got = await run_fixes(store_factory, agent_factory, mqtt_client, fences, shoppers, "ble", 3.0)
    for dev, k in own.items():
        zones = {e["zone"] for e in got.get(dev, []) if e["event"] == "enter"}
        assert aisles[k].id in zones, (dev, zones)
        neighbours = {aisles[j].id for j in (k - 1, k + 1) if 0 <= j < len(aisles)}
        assert not zones & neighbours, (dev, zones)


async def test_ble_fixes_place_eight_browsers_in_their_own_aisles(store_factory, agent_factory, mqtt_client):
    # Eight shoppers, each browsing two spots in one of five 2 m aisles (fixes sigma 1.5 m, acc 3,
    # 1 Hz): at least 7 get their own aisle while browsing, and none is put in a neighbour.
    fences_, shelves = layout = aisle_layout()
    fences = [(a.id, "aisle", a.geometry) for a in fences_]
    shoppers, own = [], {}
    for i in range(8):
        k = i % 5
        t, fx, fy, t_leave = aisle_fixes(500 + i, k, layout=layout)
        shoppers.append((f"s{i}", i * 4.0, (t, fx, fy)))
        own[f"s{i}"] = (k, T0 + i * 4.0 + t_leave)
    got = await run_fixes(store_factory, agent_factory, mqtt_client, fences, shoppers, "ble", 3.0)
    placed = []
    for dev, (k, t_leave) in own.items():
        evs = got.get(dev, [])
        if first_enter(evs, fences_[k].id) is not None and first_enter(evs, fences_[k].id) <= t_leave + 1e-6:
            placed.append(dev)
        neighbours = {fences_[j].id for j in (k - 1, k + 1) if 0 <= j < len(fences_)}
        assert not {e["zone"] for e in evs if e["event"] == "enter"} & neighbours, (dev, evs)
    assert len(placed) >= 7, placed
