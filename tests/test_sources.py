"""Vendor location feeds through the real agent: Meraki v3 webhooks, Aruba ALE
records (MQTT and HTTP) and raw BLE sightings, over a real Mosquitto."""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
from pathlib import Path

import aiohttp
import pytest

from edge_agent.http.sources._common import device_id
from geometry import beacons as beaconing
from geometry.floorplans import FEET_M
from geometry.frames import LocalFrame
from tests.conftest import BASE_LAYOUT, free_port

pytestmark = pytest.mark.broker

ANCHOR = (49.1875, 16.6130, 0.0)
FRAME = LocalFrame(*ANCHOR)
SECRET = "supersecret"
VALIDATOR = "a30ee592b51f2f382a1e9d2dd0baed8920e8d51a"

MERAKI_TOML = f"""
    [tracking]
    publish_events = true

    [privacy]
    anonymous_tracking = true

    [sources.meraki]
    secret = "{SECRET}"
    validator = "{VALIDATOR}"
    ap_acc = 1.0

    [sources.meraki.aps]
    "aa:aa:aa:44:44:44" = {{ x = 24.0, y = 10.0 }}

    # Meraki x/y: metres from the plan's top-left corner, y down; that corner is local (3, 20).
    [[floorplans]]
    id = "g_643451796760560979"
    name = "3rd Floor"
    origin = [3, 20]
    flip_y = true
"""


def lonlat(x: float, y: float) -> tuple[float, float]:
    lon, lat = FRAME.to_wgs84(x, y)
    return float(lon), float(lat)


def rssi_list(*vals: int) -> list[dict]:
    return [{"apMac": f"aa:aa:aa:{i}{i}:{i}{i}:{i}{i}", "rssi": v} for i, v in enumerate(vals, 1)]


def wifi_body(secret: str = SECRET) -> dict:
    """A v3 WiFi body in the recorded shape (numbers as strings where Meraki sends them)."""
    lon, lat = lonlat(3.0, 1.5)  # inside the entrance
    return {
        "version": "3.0",
        "secret": secret,
        "type": "WiFi",
        "data": {
            "networkId": "L_000000000000000001",
            "observations": [
                {   # freshest location (14:27:46) listed first: (8.59, 11.40) on the plan -> produce
                    "locations": [
                        {"x": "8.591860719528196", "lng": 6.095759658672512, "floorPlanName": "3rd Floor",
                         "rssiRecords": rssi_list(-34, -51, -45), "variance": 1.5097088029182084,
                         "y": "11.404523745521399", "nearestApTags": ["", "API-TEST", "Office", ""],
                         "floorPlanId": "g_643451796760560979", "time": "2019-11-28T14:27:46Z",
                         "lat": 60.053427800388225},
                        {"x": "7.976651798199431", "lng": 6.0957744807924485, "floorPlanName": "3rd Floor",
                         "rssiRecords": rssi_list(-32, -54, -51), "variance": 1.6885258062410806,
                         "y": "10.576847081490314", "nearestApTags": ["", "API-TEST", "Office", ""],
                         "floorPlanId": "g_643451796760560979", "time": "2019-11-28T14:27:21Z",
                         "lat": 60.05342983801672},
                    ],
                    "ipv4": "192.168.0.251", "ssid": ".interwebs", "os": "iOS",
                    "clientMac": "11:22:33:44:55:66",
                    "latestRecord": {"time": "2019-11-28T14:27:46Z", "nearestApMac": "aa:aa:aa:44:44:44",
                                     "nearestApRssi": "-47"},
                    "ipv6": None, "manufacturer": "Apple",
                },
                {   # no location: the nearest AP's configured position (aisle-1)
                    "locations": [], "ipv4": None, "ssid": None, "os": None,
                    "clientMac": "22:33:44:55:66:77",
                    "latestRecord": {"time": 1574951266, "nearestApMac": "AA:AA:AA:44:44:44",
                                     "nearestApRssi": "-47"},
                    "ipv6": None, "manufacturer": "Intel",
                },
                {   # an unknown floor plan and x/y "NaN": lat/lng (strings) -> entrance
                    "locations": [{"x": "NaN", "y": "NaN", "lat": str(lat), "lng": str(lon), "variance": "1.2",
                                   "floorPlanId": "g_other", "time": "2019-11-28T14:27:40Z",
                                   "nearestApTags": [], "rssiRecords": []}],
                    "ipv4": "192.168.0.12", "ssid": ".interwebs", "os": "Android",
                    "clientMac": "33:44:55:66:77:88",
                    "latestRecord": {"time": "2019-11-28T14:27:40Z", "nearestApMac": "aa:aa:aa:11:11:11",
                                     "nearestApRssi": "-60"},
                    "ipv6": None, "manufacturer": "Samsung",
                },
                {   # nothing to place it by: skipped
                    "locations": [], "clientMac": "44:55:66:77:88:99",
                    "latestRecord": {"time": "2019-11-28T14:27:40Z", "nearestApMac": "de:ad:be:ef:00:00",
                                     "nearestApRssi": -93},
                },
            ],
        },
    }


def bluetooth_body() -> dict:
    """A v3 Bluetooth body in the recorded shape (reportingAps, bleBeacons)."""
    ap_lon, ap_lat = lonlat(24.0, 15.0)  # an AP over aisle-1, geo-placed on the Meraki map
    return {
        "version": "3.0", "secret": SECRET, "type": "Bluetooth",
        "data": {
            "networkId": "L_674976994152158449",
            "startTime": "2021-11-23T14:06:56Z", "endTime": "2021-11-23T14:07:56Z",
            "reportingAps": [{"serial": "Q3AJ-T77E-JWZD", "mac": "bb:bb:bb:00:00:01", "name": "",
                              "lng": ap_lon, "tags": [], "floorPlan": None, "lat": ap_lat}],
            "observations": [
                {"locations": [], "name": "",
                 "bleBeacons": [{"rawData": "1bff7500420401806024fce590974d26fce590974c014a0a00000000",
                                 "bleType": "unknown"}],
                 "clientMac": "24:fc:e5:90:97:4d",
                 "latestRecord": {"time": "2021-11-23T14:07:40Z", "nearestApMac": "bb:bb:bb:00:00:01",
                                  "nearestApRssi": -93}},
                {"locations": [{"x": 21.0, "y": "10", "variance": "1.1", "floorPlanName": "3rd floor",
                                "time": "2021-11-23T14:07:41Z", "nearestApTags": [], "rssiRecords": []}],
                 "name": "tag-7", "bleBeacons": [], "clientMac": "24:fc:e5:90:97:4e",
                 "latestRecord": {"time": "2021-11-23T14:07:41Z", "nearestApMac": "bb:bb:bb:00:00:01",
                                  "nearestApRssi": "-80"}},
            ],
        },
    }


MACS = ["11:22:33:44:55:66", "22:33:44:55:66:77", "33:44:55:66:77:88", "44:55:66:77:88:99",
        "24:fc:e5:90:97:4d", "24:fc:e5:90:97:4e"]


def mac_forms(mac: str) -> list[bytes]:
    return [f.encode() for f in (mac.lower(), mac.upper(), mac.replace(":", "").lower(), mac.replace(":", "").upper())]


async def test_meraki_v3_wifi_and_bluetooth_bodies_enter_fences_and_get_offers(
        store_factory, agent_factory, mqtt_client, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = store_factory(toml_extra=MERAKI_TOML, anchor=ANCHOR)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    watcher = mqtt_client()
    await watcher.subscribe("#", qos=0)
    await watcher.subscribe(f"{R}/offer/+")
    await watcher.subscribe(f"{R}/event/+")
    await watcher.subscribe(f"{R}/deadletter")
    dev = {mac: device_id(agent, "meraki", mac) for mac in MACS}
    url = server.url + "/v1/ingest/meraki"

    async with aiohttp.ClientSession() as http:
        # Meraki validates the receiver first.
        async with http.get(url) as r:
            assert r.status == 200
            assert r.content_type == "text/plain"
            assert await r.text() == VALIDATOR
        # A wrong secret is refused, and nothing of it is processed.
        async with http.post(url, json=wifi_body(secret="guess")) as r:
            assert r.status == 403
        async with http.post(url, json=wifi_body()) as r:
            assert r.status == 202
        async with http.post(url, json=bluetooth_body()) as r:
            assert r.status == 202

        offers: dict[str, dict] = {}
        while len(offers) < 4:
            m = await watcher.next(f"{R}/offer/+")
            offers[m.topic.rsplit("/", 1)[1]] = json.loads(m.payload)
        assert offers[dev["11:22:33:44:55:66"]]["promotion_id"] == "fruit-week"   # freshest location
        assert offers[dev["22:33:44:55:66:77"]]["zone"] == "aisle-1"              # nearest AP fallback
        assert offers[dev["24:fc:e5:90:97:4d"]]["zone"] == "aisle-1"              # BLE, reportingAps
        assert offers[dev["24:fc:e5:90:97:4e"]]["zone"] == "aisle-1"              # BLE, floorPlanName
        enters: dict[str, str] = {}
        while len(enters) < 5:
            m = await watcher.next(f"{R}/event/+")
            ev = json.loads(m.payload)
            if ev["event"] == "enter":
                enters[m.topic.rsplit("/", 1)[1]] = ev["zone"]
        assert enters[dev["33:44:55:66:77:88"]] == "entrance"                      # lat/lng strings

        # A malformed body: 400 with a reason, a dead letter without the payload (it carries MACs).
        async with http.post(url, data=b'{"version": "3.0", "secret": "supersecret", "type": "WiFi"}',
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert (await r.json())["reason"] == "schema"
        dl = await watcher.next_json(f"{R}/deadletter")
        assert dl["reason"] == "schema" and dl["payload_b64"] == ""
        async with http.post(url, data=b'{"secret": "supersecret", not json') as r:  # past the secret
            assert r.status == 400 and (await r.json())["reason"] == "decode"
        await watcher.next(f"{R}/deadletter")
        async with http.get(server.url + "/metrics") as r:
            metrics = await r.text()

    # The 403 body (same devices, wrong secret) produced nothing: exactly one offer each.
    assert agent.metrics.decisions.get("offered", "offered") == 4
    assert agent.metrics.pings.get("meraki") == 5
    assert agent.metrics.source_records.get("meraki", "no_position") == 1
    assert agent.metrics.source_records.get("meraki", "forbidden") == 1
    assert 'edge_pings_total{source="meraki"} 5' in metrics
    assert 'edge_deadletters_total{reason="schema"} 1' in metrics

    # The MAC never leaves the adapter: not on the broker, not on disk, not in logs.
    await server.stop()
    published = b"\n".join(m.topic.encode() + b" " + m.payload for m in watcher.all)
    on_disk = b"".join(p.read_bytes() for p in Path(cfg.data_dir).rglob("*") if p.is_file())
    logs = caplog.text.encode()
    assert published and on_disk
    for mac in MACS:
        for form in mac_forms(mac):
            assert form not in published, mac
            assert form not in on_disk, mac
            assert form not in logs, mac


ARUBA_PLANS = """
    [[floorplans]]
    id = "D635A61B06673775ADFF61D70B55785C"   # ALE floor_id; plan in feet, origin top-left, y down
    units = "feet"
    origin = [0, 20]
    flip_y = true

    [[floorplans]]
    id = "pixel-floor"
    units = "pixels"
    scale = 10          # pixels per metre
    origin = [30, 0]
    rotation = 90       # the image's x runs along the store's +y
"""


def ale_record(x, y, *, mac_hash: str, floor_id="D635A61B06673775ADFF61D70B55785C", unit="FEET", err=3):
    return {"sta_location_x": x, "sta_location_y": y, "error_level": err, "associated": True,
            "campus_id": "08FBBBBF81D937759B5DAC4963DFBC1A", "building_id": "24C73B58A1F33C3ABE427485A9977BFF",
            "floor_id": floor_id, "hashed_sta_eth_mac": mac_hash, "loc_algorithm": "ALGORITHM_TRIANGULATION",
            "longitude": 0, "latitude": 0, "altitude": 0, "unit": unit}


async def test_aruba_ale_records_over_mqtt_and_http(store_factory, agent_factory, mqtt_client):
    topic = f"aruba/ale{free_port()}/location"
    cfg = store_factory(anchor=ANCHOR, toml_extra=f"""
        [tracking]
        publish_events = true

        [privacy]
        anonymous_tracking = true

        [sources.aruba]
        topic = "{topic}"
        token = "ale-token"
    """ + ARUBA_PLANS)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    feed = mqtt_client()
    await feed.subscribe(f"{R}/offer/+")
    await feed.subscribe(f"{R}/event/+")
    await feed.subscribe(f"{R}/deadletter")
    h1, h2, h3 = "A09B5D8F99F9BB8034A8ADBBEC11B24494981096", "B19B5D8F99F9BB8034A8ADBBEC11B24494981097", \
        "C29B5D8F99F9BB8034A8ADBBEC11B24494981098"

    # ALE REST shape, feet: local (24, 10) is 24/0.3048 ft right and (20-10)/0.3048 ft down -> aisle-1.
    rest = {"Location_result": [{"msg": ale_record(str(24 / FEET_M), 10 / FEET_M, mac_hash=h1),
                                 "ts": 1434750262}]}
    await feed.publish(topic, rest)
    # Feed shape, a list, PIXELS as the protobuf enum (2): local (12, 7) = pixel (70, 180) -> produce.
    await feed.publish(topic, [{"location": ale_record(70, 180, mac_hash=h2, floor_id="pixel-floor", unit=2,
                                                       err=10), "timestamp": 1434750263}])
    offers = {}
    while len(offers) < 2:
        m = await feed.next(f"{R}/offer/+")
        offers[m.topic.rsplit("/", 1)[1]] = json.loads(m.payload)
    assert offers[device_id(agent, "aruba", h1)]["zone"] == "aisle-1"
    assert offers[device_id(agent, "aruba", h2)]["promotion_id"] == "fruit-week"
    # A payload with no ALE record is a dead letter.
    await feed.publish(topic, {"hello": "world"})
    dl = await feed.next_json(f"{R}/deadletter")
    assert dl["reason"] == "schema"

    url = server.url + "/v1/ingest/aruba"
    rec = ale_record(3 / FEET_M, (20 - 1.5) / FEET_M, mac_hash=h3)  # entrance
    lost = ale_record(1, 1, mac_hash=h1, floor_id="not-configured")
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=rec) as r:
            assert r.status == 401
        async with http.post(url, json=[rec, lost], headers={"Authorization": "Bearer ale-token"}) as r:
            assert r.status == 202
            assert await r.json() == {"accepted": 1, "skipped": {"unknown_floorplan": 1}}
        async with http.post(url, data=b"[1, 2]", headers={"Authorization": "Bearer ale-token"}) as r:
            assert r.status == 400
    while True:
        m = await feed.next(f"{R}/event/+")
        if m.topic.endswith(device_id(agent, "aruba", h3)):
            ev = json.loads(m.payload)
            assert (ev["event"], ev["zone"]) == ("enter", "entrance")
            break
    assert agent.metrics.pings.get("aruba") == 3
    assert agent.metrics.source_records.get("aruba", "unknown_floorplan") == 1


# -- BLE ----------------------------------------------------------------------------

N = 3.0  # the store's measured path-loss exponent, configured in [sources.ble]
TX = -59.0


def rssi_at(d: float, n: float = N) -> float:
    return TX - 10 * n * math.log10(d)


def ble_layout() -> dict:
    layout = copy.deepcopy(BASE_LAYOUT)
    spots = {"b1": (22.5, 6.0), "b2": (25.5, 6.0), "b3": (22.5, 14.0), "b4": (25.5, 14.0), "b5": (5.0, 12.0)}
    for i, (name, (x, y)) in enumerate(spots.items(), 1):
        layout["features"].append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
                                   "properties": {"id": name, "kind": "beacon", "tx_power": TX,
                                                  "beacon_id": f"f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:{i}"}})
    return layout


def sighting(truth: tuple[float, float], ids: list[int]) -> list[dict]:
    spots = {1: (22.5, 6.0), 2: (25.5, 6.0), 3: (22.5, 14.0), 4: (25.5, 14.0), 5: (5.0, 12.0)}
    return [{"id": f"F7826DA6-4FA2-4E98-8024-BC5B71E0893E:1:{i}",
             "rssi": round(rssi_at(math.hypot(spots[i][0] - truth[0], spots[i][1] - truth[1])), 2)} for i in ids]


async def test_ble_four_beacons_place_within_1m_and_one_beacon_cannot_enter_small_fence(
        store_factory, agent_factory, mqtt_client):
    cfg = store_factory(layout=ble_layout(), toml_extra=f"""
        [sources.ble]
        path_loss_exponent = {N}
        rssi_sigma_db = 2.0
        strongest = 4
    """)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    # Position from the agent's own beacon table and configured model: within 1 m of the truth.
    ble = cfg.sources["ble"]
    for truth in ((24.0, 10.0), (23.0, 8.0), (25.0, 12.5)):
        readings = [(b["id"], b["rssi"]) for b in sighting(truth, [1, 2, 3, 4])]
        x, y, floor, acc = beaconing.locate(readings, agent.rt.beacons, n=ble["path_loss_exponent"],
                                            strongest=ble["strongest"])
        assert math.hypot(x - truth[0], y - truth[1]) < 1.0, truth
        assert acc >= 1.5

    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    await phone.subscribe(f"{R}/deadletter")
    # Four beacons in aisle-1 (plus one unknown beacon, counted and ignored) -> enters, gets the offer.
    # The store measured its radio (exponent 3, RSSI within ~2 dB of the curve, which is what these
    # scans are); one scan still claims a few metres (geometry.radio), about as much as the aisle is
    # wide, and a shopper browsing there sends a scan a second: the fused estimate enters within a
    # few.  (Repeating one fingerprint never tightens it below corr_floor of a scan's own sigma.)
    four = sighting((24.0, 10.0), [1, 2, 3, 4]) + [{"id": "00000000-0000-0000-0000-000000000000:9:9", "rssi": -40}]
    t0 = time.time()
    for k in range(12):
        await phone.publish(f"{R}/ping/ble/four", {"beacons": four, "ts": t0 + k}, qos=0)
    m = await phone.next(f"{R}/offer/+")
    assert m.topic.endswith("/four") and json.loads(m.payload)["zone"] == "aisle-1"
    assert agent.metrics.unknown_beacons.get() >= 1

    # One beacon alone, right at the 0.9 m coffee display: its accuracy (the estimated range,
    # never under 1.5 m) is larger than the display, so however often it pings it never enters.
    for d in (0.3, 3.0, 0.3, 0.3, 0.3):
        await phone.publish(f"{R}/ping/ble/lonely", {"beacons": [
            {"id": "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:5", "rssi": round(rssi_at(d), 2)}]}, qos=0)
    await phone.publish(f"{R}/ping/ble/lonely", {"beacons": [{"id": "nope:1:1", "rssi": -50}]}, qos=0)
    dl = await phone.next_json(f"{R}/deadletter")  # processed after every earlier ping
    assert dl["reason"] == "no_position"
    assert phone.queues[f"{R}/offer/+"].empty()
    assert "coffee-display" not in agent.tracks["lonely"].inside
    readings = [("f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:5", rssi_at(3.0))]
    *_, acc = beaconing.locate(readings, agent.rt.beacons, n=N)
    assert acc == pytest.approx(3.0)


async def test_meraki_secret_is_compared_as_json_text_not_as_bytes(store_factory, agent_factory):
    """A body whose ``secret`` is the configured one is taken however its JSON
    spells it: Rails-style ``\\u0026``/``\\u003c`` escapes, an escaped ``\\/``,
    raw UTF-8.  (Found by posting the right secret JSON-escaped: it was 403.)"""
    secret = "p&ss<w>rd/\u00e9"
    cfg = store_factory(anchor=ANCHOR, toml_extra=MERAKI_TOML.replace(f'secret = "{SECRET}"',
                                                                      f'secret = "{secret}"'))
    server = await agent_factory(cfg)
    agent = server.agent
    url = server.url + "/v1/ingest/meraki"
    body = wifi_body(secret="@@SECRET@@")
    body["data"]["observations"] = body["data"]["observations"][:1]
    text = json.dumps(body, ensure_ascii=False)
    spellings = ['p\\u0026ss\\u003cw\\u003erd\\/\u00e9', 'p&ss<w>rd/\u00e9', 'p&ss<w>rd\\/\\u00e9']
    async with aiohttp.ClientSession() as http:
        for spelled in spellings:
            raw = text.replace("@@SECRET@@", spelled).encode()
            async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 202, (spelled, r.status, await r.text())
        wrong = text.replace("@@SECRET@@", 'p\\u0026ss\\u003cw\\u003erd\\/e').encode()
        async with http.post(url, data=wrong, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 403
    assert agent.metrics.source_records.get("meraki", "accepted") == len(spellings)
    assert agent.metrics.source_records.get("meraki", "forbidden") == 1


async def test_meraki_secret_after_a_large_data_object_is_found(store_factory, agent_factory):
    """A relay that re-serialises Meraki's body with sorted keys puts ``secret``
    after ``data``; in a big store that is past the first MiB.  The right secret
    there is still the right secret (found by posting such a body: it was 403)."""
    cfg = store_factory(anchor=ANCHOR, toml_extra=MERAKI_TOML)
    server = await agent_factory(cfg)
    agent = server.agent
    body = wifi_body()
    first = body["data"]["observations"][0]
    obs = []
    for i in range(2500):
        o = copy.deepcopy(first)
        o["clientMac"] = f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        obs.append(o)
    body["data"]["observations"] = obs
    raw = json.dumps(body, sort_keys=True).encode()
    assert raw.index(b'"secret"') > 1 << 20
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/ingest/meraki", data=io.BytesIO(raw),
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 202, await r.text()
        wrong = raw.replace(f'"secret": "{SECRET}"'.encode(), b'"secret": "guess"')
        async with http.post(server.url + "/v1/ingest/meraki", data=io.BytesIO(wrong),
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 403
    assert agent.metrics.source_records.get("meraki", "accepted") == 2500
