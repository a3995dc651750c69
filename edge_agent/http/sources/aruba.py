"""Aruba ALE (Analytics and Location Engine) location records → pings.

Taken over MQTT (``[sources.aruba] topic``, e.g. from a bridge that relays
ALE's ZeroMQ ``location`` feed, or ALE's REST answers) and over HTTP
(``POST /v1/ingest/aruba``, ``Authorization: Bearer <[sources.aruba] token>``).
A payload is JSON: one record, a list of records, ALE's REST shape
``{"Location_result": [{"msg": {...}, "ts": ...}]}`` or the feed's
``{"location": {...}, "timestamp": ...}`` — or a list of those.  A record::

    {"sta_location_x": 412.5, "sta_location_y": "96.0", "error_level": 9,
     "unit": "FEET",                       # METERS | FEET | PIXELS (or 0 | 1 | 2)
     "campus_id": "08FB...", "building_id": "24C7...", "floor_id": "D635...",
     "hashed_sta_eth_mac": "A09B5D8F...", "associated": true,
     "loc_algorithm": "ALGORITHM_TRIANGULATION", "longitude": ..., "latitude": ...}

``floor_id`` (or ``floor_id_string``) picks the ``[[floorplans]]`` entry whose
``id`` matches; ``x``/``y`` are mapped in the record's ``unit`` (the plan's
``units`` when the record has none; pixels use the plan's ``scale``);
``error_level`` is a radius in the same unit and becomes the accuracy in
metres (never below ``min_acc``).  With no matching plan, the record's
``latitude``/``longitude`` are used when present.  The device id is
``"aruba:" + pseudonym(hashed_sta_eth_mac)`` (ALE's hash, keyed again with the
store's key; ``sta_eth_mac.addr`` when ALE runs without anonymisation).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import orjson
from aiohttp import web

from geometry.floorplans import UNITS

from edge_agent.pipeline.codecs import PayloadError, Ping, _check_ranges
from edge_agent.http.base import AGENT, bearer_ok, read_body
from edge_agent.transport.mqtt import Message
from ._common import Plans, device_id, limited, num, parse_time, plans_for, records_counter

log = logging.getLogger("edge_agent.http.sources.aruba")

PATH = "/v1/ingest/aruba"
MAX_BODY = 4 * 1024 * 1024
UNIT_ENUM = {0: "metres", 1: "feet", 2: "pixels"}  # ALE's protobuf measurement_unit


def records(obj: Any) -> list[tuple[Mapping, Any]]:
    """Every ``(record, wrapper timestamp)`` in a decoded payload."""
    out: list[tuple[Mapping, Any]] = []
    items = obj if isinstance(obj, list) else [obj]
    for it in items:
        if not isinstance(it, dict):
            raise PayloadError("schema", "expected ALE location records (JSON objects)")
        if isinstance(it.get("Location_result"), list):
            for r in it["Location_result"]:
                if not isinstance(r, dict):
                    raise PayloadError("schema", "Location_result items must be objects")
                out.append((r["msg"] if isinstance(r.get("msg"), dict) else r, r.get("ts")))
        elif isinstance(it.get("location"), dict):
            out.append((it["location"], it.get("timestamp", it.get("ts"))))
        elif isinstance(it.get("msg"), dict):
            out.append((it["msg"], it.get("ts")))
        elif "sta_location_x" in it or "hashed_sta_eth_mac" in it:
            out.append((it, it.get("timestamp", it.get("ts"))))
        else:
            raise PayloadError("schema", "not an ALE location record (no sta_location_x)")
    return out


def _unit(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return UNIT_ENUM.get(v)
    if isinstance(v, str):
        return UNITS.get(v.strip().lower())
    return None


def _raw_device(rec: Mapping) -> str:
    h = rec.get("hashed_sta_eth_mac")
    if isinstance(h, str) and h.strip():
        return h
    mac = rec.get("sta_eth_mac")
    addr = mac.get("addr") if isinstance(mac, dict) else mac
    if isinstance(addr, str) and addr.strip():
        return addr
    raise PayloadError("schema", "record without 'hashed_sta_eth_mac' (or 'sta_eth_mac')")


def parse_payload(obj: Any, *, plans: Plans, min_acc: float, wifi_acc: float, received: float,
                  max_future_skew_s: float, device: Callable[[str], str]) -> tuple[list[Ping], dict[str, int]]:
    """A decoded payload → ``(pings, {skip reason: count})``.  Raises
    :class:`PayloadError` when the payload holds no ALE records at all."""
    pings: list[Ping] = []
    skipped: dict[str, int] = {}
    for rec, wrapper_ts in records(obj):
        try:
            pings.append(_one(rec, wrapper_ts, plans=plans, min_acc=min_acc, wifi_acc=wifi_acc,
                              received=received, skew=max_future_skew_s, device=device))
        except PayloadError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
    return pings, skipped


def _one(rec: Mapping, wrapper_ts: Any, *, plans, min_acc, wifi_acc, received, skew, device) -> Ping:
    ping = Ping(device=device(_raw_device(rec)), source="aruba", received=received)
    floor_id = rec.get("floor_id", rec.get("floor_id_string"))
    plan = plans.match(floor_id)
    unit = _unit(rec.get("unit")) if rec.get("unit") is not None else None
    if rec.get("unit") is not None and unit is None:
        raise PayloadError("schema", f"unknown unit {rec.get('unit')!r}")
    x, y = num(rec.get("sta_location_x")), num(rec.get("sta_location_y"))
    err = num(rec.get("error_level"))
    if plan is not None and x is not None and y is not None:
        try:
            ping.x, ping.y = plan.transform.to_local(x, y, unit)
            acc = plan.transform.distance(err, unit) if err is not None and err > 0 else wifi_acc
        except ValueError as exc:  # pixels on a plan without a scale
            raise PayloadError("schema", str(exc)) from None
        ping.floor = plan.floor
    else:
        lat, lon = num(rec.get("latitude")), num(rec.get("longitude"))
        if lat is None or lon is None or (lat == 0 and lon == 0):
            if plan is None:
                raise PayloadError("unknown_floorplan", "floor_id not in [[floorplans]] and no latitude/longitude")
            raise PayloadError("no_position", "no sta_location_x/y")
        ping.lat, ping.lon = lat, lon
        acc = err * (0.3048 if unit == "feet" else 1.0) if err and unit in ("metres", "feet") else wifi_acc
    ping.acc = max(acc, min_acc)
    ts = parse_time(wrapper_ts if wrapper_ts is not None else rec.get("timestamp"))
    ping.ts = ts
    _check_ranges(ping, received, skew)
    return ping


# -- the two transports -----------------------------------------------------------


def _decode(payload: bytes) -> Any:
    if len(payload) > MAX_BODY:
        raise PayloadError("too_large", f"{len(payload)} bytes > {MAX_BODY}")
    try:
        return orjson.loads(payload)  # strict: deep nesting and huge numbers are refused
    except orjson.JSONDecodeError as exc:
        raise PayloadError("decode", f"invalid JSON: {exc}") from None


def _parse(agent, obj: Any, received: float) -> tuple[list[Ping], dict[str, int]]:
    cfg = agent.cfg
    conf = cfg.sources.get("aruba", {})
    pings, skipped = parse_payload(
        obj, plans=plans_for(cfg), min_acc=conf.get("min_acc", 1.0),
        wifi_acc=cfg.tracking.default_acc.get("wifi", 8.0), received=received,
        max_future_skew_s=cfg.tracking.max_future_skew_s, device=lambda raw: device_id(agent, "aruba", raw))
    counter = records_counter(agent)
    for reason, n in skipped.items():
        counter.inc("aruba", reason, n=n)
    if pings:
        counter.inc("aruba", "accepted", n=len(pings))
    return pings, skipped


def mqtt_route(agent) -> tuple[str, int, Callable[[Message], list[Ping]]] | None:
    """``(topic filter, qos, decoder)`` when ``[sources.aruba] topic`` is set.
    The decoder raises :class:`PayloadError` (→ dead letter) only when no
    record in the message could be used."""
    conf = agent.cfg.sources.get("aruba")
    if not conf or not conf.get("topic"):
        return None

    def decode(m: Message) -> list[Ping]:
        pings, skipped = _parse(agent, _decode(m.payload), m.received)
        if not pings and skipped:
            reason = next(iter(skipped))
            raise PayloadError(reason, f"no usable ALE record ({', '.join(f'{k}: {v}' for k, v in skipped.items())})")
        return pings

    return conf["topic"], 0, decode


async def post_records(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    conf = agent.cfg.sources.get("aruba")
    if conf is None:
        raise web.HTTPNotFound(text="Aruba ingest is not configured ([sources.aruba] in store.toml)\n")
    limited(request, PATH)
    if not bearer_ok(request, conf.get("token")):  # before the body is read: an unauthenticated post stores nothing
        raise web.HTTPUnauthorized(text="[sources.aruba] token required\n", headers={"WWW-Authenticate": "Bearer"})
    received = agent.clock()
    body = await read_body(request, MAX_BODY)  # whole, however it arrives; 413 past the limit
    msg = Message(f"{agent.root}/ingest/aruba", body, 0, 0, received)
    try:
        pings, skipped = _parse(agent, _decode(body), received)
    except PayloadError as exc:
        agent.deadletter(msg, exc.reason, exc.detail)
        agent.ingest_pings([])
        return web.json_response({"accepted": 0, "reason": exc.reason, "detail": exc.detail}, status=400)
    if not agent.ingest_pings(pings):  # not on disk: never a 2xx
        raise web.HTTPServiceUnavailable(text="storage unavailable; nothing was taken, retry\n")
    status = 202 if pings or not skipped else 422
    return web.json_response({"accepted": len(pings), "skipped": skipped}, status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, post_records)
