"""What the hardening tests share (issue 22): one store with every ingest
surface switched on, its tokens, a message as the transport hands it over,
and poison payloads — each the shape an attacker sent from outside."""

from __future__ import annotations

import json
import time
from .conftest import write_store
from .test_pipeline import Msg  # a message as the MQTT transport hands it to the agent

ADMIN = {"Authorization": "Bearer admin-secret"}
POS = {"Authorization": "Bearer till-secret"}
ASSOC = {"Authorization": "Bearer assoc-secret"}
ARUBA = {"Authorization": "Bearer ale-token"}
MERAKI_SECRET = "merakisecret"
BIG = int("1" + "0" * 400)  # a 400-digit integer: json.loads takes it, float() does not

TOML = f"""
[ingest]
owntracks = true

[pos]
token = "till-secret"

[associates]
token = "assoc-secret"

[sources.meraki]
secret = "{MERAKI_SECRET}"
validator = "v"

[sources.aruba]
topic = "ale/location"
token = "ale-token"

[[floorplans]]
id = "plan-1"
name = "Ground"
origin = [0, 0]
"""

def hard_store(tmp_path, broker_url: str, **kw):
    from store_config import load_store

    return load_store(write_store(tmp_path, broker_url=broker_url, toml_extra=TOML + kw.pop("toml_extra", ""),
                                  **kw))


def msg(topic: str, payload, *, qos: int = 0, retain: bool = False, received: float | None = None) -> Msg:
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return Msg(topic, payload, qos, 0, time.time() if received is None else received, retain)


IN_AISLE = {"x": 24.0, "y": 10.0, "acc": 0.5}  # aisle-1: the `chips` promotion


def meraki_body(observations: list, secret: str = MERAKI_SECRET) -> dict:
    return {"version": "3.0", "secret": secret, "type": "WiFi",
            "data": {"networkId": "N_1", "observations": observations}}


def meraki_obs(mac: str, x, y) -> dict:
    return {"clientMac": mac, "locations": [{"x": x, "y": y, "variance": 1.0, "floorPlanId": "plan-1",
                                             "time": time.time()}]}


def poison_by_surface(R: str) -> dict[str, list[tuple[str, bytes]]]:
    """Per MQTT surface: (topic, payload) that once raised past the codecs."""
    big = str(BIG)
    return {
        "ping_json": [(f"{R}/ping/wifi/evil", f'{{"x": {big}, "y": 10}}'.encode())],
        "ping_html5": [(f"{R}/ping/html5/evil", f'{{"coords": {{"latitude": {big}, "longitude": 1}}}}'.encode())],
        "ping_beacons": [(f"{R}/ping/ble/evil", f'{{"beacons": [{{"id": "u:1:0", "rssi": {big}}}]}}'.encode())],
        "ping_ts": [(f"{R}/ping/wifi/evil", f'{{"x": 1, "y": 1, "ts": {big}}}'.encode())],
        "consent": [(f"{R}/consent/evil", f'{{"offers": true, "ts": {big}}}'.encode())],
        "inventory": [(f"{R}/inventory", f'{{"sku": "chips", "qty": {big}}}'.encode()),
                      (f"{R}/inventory", b'{"sku": "chips", "qty": 1000000000000000000000000000000}')],
        "action": [(f"{R}/action/evil", f'{{"offer_id": {big}, "action": "apply"}}'.encode())],
        "owntracks": [("owntracks/evil/phone", f'{{"_type": "location", "lat": {big}, "lon": 1}}'.encode()),
                      ("owntracks/evil/phone", f'{{"_type": "location", "lat": 1, "lon": 1, "tst": {big}}}'.encode())],
        "aruba": [("ale/location", f'{{"sta_location_x": {big}, "sta_location_y": 1, "floor_id": "plan-1", '
                                   f'"hashed_sta_eth_mac": "AB"}}'.encode())],
    }
