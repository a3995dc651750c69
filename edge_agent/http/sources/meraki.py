"""Cisco Meraki Scanning API v3 webhooks → pings.

``GET /v1/ingest/meraki`` answers the configured ``validator`` (Meraki checks
it before it posts); ``POST /v1/ingest/meraki`` takes a v3 body::

    {"version": "3.0", "secret": "...", "type": "WiFi" | "BLE" | "Bluetooth",
     "data": {"networkId": "L_...", "reportingAps": [...],          # BLE bodies
              "observations": [{"clientMac": "...", "locations": [
                  {"x": "8.59", "y": "11.40", "lat": 60.05, "lng": 6.09,
                   "variance": 1.51, "floorPlanId": "g_...", "floorPlanName": "...",
                   "time": "2019-11-28T14:27:46Z", "nearestApTags": [], "rssiRecords": [...]}],
                  "latestRecord": {"time": "...", "nearestApMac": "...", "nearestApRssi": "-47"},
                  "ipv4": ..., "ssid": ..., "os": ..., "manufacturer": ...}]}}

A body with the wrong ``secret`` gets 403; one that is not a v3 body gets 400
with a reason (and a dead letter whose payload is left out: it carries client
MACs).  Otherwise the observations go through :meth:`Agent.ingest_pings` — the
same pipeline as every other ping — and the answer is 202 once they are
committed (503 when storage refuses them: never a 2xx for what is not on disk).

Per observation the freshest ``locations[]`` entry is used: ``x``/``y`` on a
floor plan configured in ``[[floorplans]]`` (matched by ``floorPlanId``, then
``floorPlanName``), else ``lat``/``lng``; with no usable location, the
position of ``latestRecord.nearestApMac`` from ``[sources.meraki.aps]`` (or
from the body's ``reportingAps`` lat/lng) with accuracy ``ap_acc``.
``variance`` is taken as metres of accuracy (Meraki describes it in metres:
"~2 m to 2.5 m" in v3), never below ``min_acc``.  Numbers may come as strings.

The device id is ``"meraki:" + pseudonym(clientMac)``; the MAC itself is never
stored, logged or published.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any, Callable, Mapping

import orjson
from aiohttp import web

from edge_agent.pipeline.codecs import PayloadError, Ping, _check_ranges
from edge_agent.http.base import AGENT, read_body
from edge_agent.transport.mqtt import Message
from ._common import device_id, limited, num, parse_time, plans_for, records_counter, Plans

log = logging.getLogger("edge_agent.http.sources.meraki")

PATH = "/v1/ingest/meraki"
MAX_BODY = 8 * 1024 * 1024  # Meraki posts one body per network per minute; big stores send a few MB
TYPES = {"wifi": "WiFi", "ble": "BLE", "bluetooth": "BLE"}


def _major(version: Any) -> int | None:
    v = num(version)
    if v is None and isinstance(version, str):
        v = num(version.split(".")[0])
    return int(v) if v is not None else None


def check_body(obj: Any, secret: str) -> tuple[int, str, str]:
    """``(status, reason, detail)`` for a decoded body: 202 when usable."""
    if not isinstance(obj, dict):
        return 400, "schema", "body must be a JSON object"
    given = obj.get("secret")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
        return 403, "forbidden", "wrong secret"
    if _major(obj.get("version")) != 3:
        return 400, "schema", f"unsupported version {obj.get('version')!r} (Scanning API v3 only)"
    if not isinstance(obj.get("type"), str) or obj["type"].lower() not in TYPES:
        return 400, "schema", "'type' must be 'WiFi', 'BLE' or 'Bluetooth'"
    data = obj.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("observations"), list):
        return 400, "schema", "'data.observations' must be a list"
    return 202, "", ""


def _freshest(locations: Any) -> Mapping | None:
    if not isinstance(locations, list):
        return None
    best, best_t = None, None
    for loc in locations:
        if not isinstance(loc, dict):
            continue
        t = parse_time(loc.get("time"))
        if best is None or (t is not None and (best_t is None or t >= best_t)):
            best, best_t = loc, t
    return best


def parse_observations(obj: Mapping, *, plans: Plans, aps: Mapping[str, Mapping], ap_acc: float,
                       min_acc: float, wifi_acc: float, received: float, max_future_skew_s: float,
                       device: Callable[[str], str]) -> tuple[list[Ping], dict[str, int]]:
    """A checked v3 body → ``(pings, {skip reason: count})``.  Pure."""
    data = obj["data"]
    reporting: dict[str, tuple[float, float]] = {}
    listed = data.get("reportingAps")
    for ap in listed if isinstance(listed, list) else ():  # anything else is no list of APs: ignored
        if isinstance(ap, dict) and isinstance(ap.get("mac"), str):
            lat, lng = num(ap.get("lat")), num(ap.get("lng"))
            if lat is not None and lng is not None:
                reporting[ap["mac"].lower()] = (lat, lng)
    pings: list[Ping] = []
    skipped: dict[str, int] = {}
    for ob in data["observations"]:
        try:
            pings.append(_one(ob, plans=plans, aps=aps, reporting=reporting, ap_acc=ap_acc, min_acc=min_acc,
                              wifi_acc=wifi_acc, received=received, skew=max_future_skew_s, device=device))
        except PayloadError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
    return pings, skipped


def _one(ob: Any, *, plans, aps, reporting, ap_acc, min_acc, wifi_acc, received, skew, device) -> Ping:
    if not isinstance(ob, dict):
        raise PayloadError("schema", "observation is not an object")
    mac = ob.get("clientMac")
    if not isinstance(mac, str) or not mac.strip():
        raise PayloadError("schema", "observation without 'clientMac'")
    ping = Ping(device=device(mac), source="meraki", received=received)
    loc = _freshest(ob.get("locations"))
    placed = False
    if loc is not None:
        fp = loc.get("floorPlan") if isinstance(loc.get("floorPlan"), dict) else {}
        x = num(loc.get("x"))
        y = num(loc.get("y"))
        if x is None or y is None:
            x, y = num(fp.get("x")), num(fp.get("y"))
        plan = plans.match(loc.get("floorPlanId") or fp.get("id"), loc.get("floorPlanName") or fp.get("name"))
        variance = num(loc.get("variance"))
        acc = max(variance if variance is not None and variance > 0 else wifi_acc, min_acc)
        if plan is not None and x is not None and y is not None:
            ping.x, ping.y = plan.transform.to_local(x, y)
            ping.floor = plan.floor
            placed = True
        else:
            lat, lng = num(loc.get("lat")), num(loc.get("lng"))
            if lat is not None and lng is not None and not (lat == 0 and lng == 0):
                ping.lat, ping.lon = lat, lng
                ping.floor = plan.floor if plan is not None else None
                placed = True
        if placed:
            ping.acc = acc
            ping.ts = parse_time(loc.get("time"))
    if not placed:
        lr = ob.get("latestRecord") if isinstance(ob.get("latestRecord"), dict) else {}
        ap_mac = lr.get("nearestApMac")
        ap_mac = ap_mac.lower() if isinstance(ap_mac, str) else None
        if ap_mac in aps:
            ap = aps[ap_mac]
            ping.x, ping.y, ping.floor = ap["x"], ap["y"], ap["floor"]
        elif ap_mac in reporting:
            ping.lat, ping.lon = reporting[ap_mac]
        else:
            raise PayloadError("no_position", "no location and no known nearest AP")
        ping.acc = ap_acc
        ping.ts = parse_time(lr.get("time"))
    _check_ranges(ping, received, skew)
    return ping


# -- HTTP ---------------------------------------------------------------------


def _conf(request: web.Request):
    agent = request.app[AGENT]
    conf = agent.cfg.sources.get("meraki")
    if conf is None:
        raise web.HTTPNotFound(text="Meraki ingest is not configured ([sources.meraki] in store.toml)\n")
    return agent, conf


async def get_validator(request: web.Request) -> web.Response:
    """Meraki's validation request: answer the validator string, as text."""
    _, conf = _conf(request)
    return web.Response(text=conf["validator"], content_type="text/plain")


_SECRET = re.compile(rb'"secret"\s*:\s*"((?:[^"\\]|\\.){0,512})"')


def carries_secret(body: bytes, secret: str) -> bool:
    """Does the raw body hold ``"secret": "<secret>"``?  Checked before the body is
    parsed (Meraki puts its secret inside the JSON): what fails here is
    answered 403 having cost no parse and stored nothing.  The first and the last
    MiB are searched: the top-level ``secret`` sits before or after ``data`` (the
    only big value), and a relay that sorts keys puts it after."""
    want = secret.encode()
    window = 1 << 20
    spans = [(0, window)] if len(body) <= window else [(0, window), (len(body) - window, len(body))]
    for m in (m for start, end in spans for m in _SECRET.finditer(body, start, end)):
        try:  # compared as the JSON text it spells: "\u0026", "\/" and raw UTF-8 are the same secret
            given = json.loads(b'"' + m.group(1) + b'"')
        except ValueError:
            continue
        if hmac.compare_digest(given.encode("utf-8", "surrogatepass"), want):
            return True
    return False


def _forbidden(agent) -> web.Response:
    records_counter(agent).inc("meraki", "forbidden")
    log.warning("Meraki post without the right secret refused")
    return web.json_response({"accepted": False, "reason": "forbidden"}, status=403)


async def post_observations(request: web.Request) -> web.Response:
    agent, conf = _conf(request)
    limited(request, PATH)
    received = agent.clock()
    body = await read_body(request, MAX_BODY)  # whole, however it arrives; 413 past the limit
    if not carries_secret(body, conf["secret"]):
        return _forbidden(agent)
    try:
        obj = orjson.loads(body)  # strict: deep nesting and huge numbers are refused
    except orjson.JSONDecodeError:
        return _reject(agent, received, 400, "decode", "body is not JSON (or nests too deep, or a number is "
                                                       "out of range)")
    status, reason, detail = check_body(obj, conf["secret"])
    if status == 403:
        return _forbidden(agent)
    if status != 202:
        return _reject(agent, received, status, reason, detail)
    # The observations go through the pipeline before the answer: a 2xx means they are on disk.
    if not _process(agent, obj, received):
        raise web.HTTPServiceUnavailable(text="storage unavailable; nothing was taken, retry\n")
    return web.json_response({"accepted": True, "observations": len(obj["data"]["observations"])}, status=202)


def _reject(agent, received: float, status: int, reason: str, detail: str) -> web.Response:
    # The body is left out of the dead letter: Meraki bodies carry client MACs.
    agent.deadletter(Message(f"{agent.root}/ingest/meraki", b"", 0, 0, received), reason, detail)
    agent.ingest_pings([])  # commits the dead-letter event
    return web.json_response({"accepted": False, "reason": reason, "detail": detail}, status=status)


def _process(agent, obj: Mapping, received: float) -> bool:
    """Run a body's observations through the pipeline; False when storage failed."""
    if agent.ledger is None:  # stopped meanwhile
        return False
    cfg = agent.cfg
    conf = cfg.sources.get("meraki")
    if conf is None:
        return True
    counter = records_counter(agent)
    try:
        pings, skipped = parse_observations(
            obj, plans=plans_for(cfg), aps=conf.get("aps", {}), ap_acc=conf.get("ap_acc", 10.0),
            min_acc=conf.get("min_acc", 1.0), wifi_acc=cfg.tracking.default_acc.get("wifi", 8.0),
            received=received, max_future_skew_s=cfg.tracking.max_future_skew_s,
            device=lambda mac: device_id(agent, "meraki", mac))
        for reason, n in skipped.items():
            counter.inc("meraki", reason, n=n)
        if pings:
            counter.inc("meraki", "accepted", n=len(pings))
        return agent.ingest_pings(pings)
    except Exception:
        log.exception("processing a Meraki body failed")
        return True  # a failure the adapter did not foresee (logged), not a storage refusal


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, get_validator)
    app.router.add_post(PATH, post_observations)
