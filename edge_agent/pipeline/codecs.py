"""Bytes in, :class:`Ping` out — or a :class:`PayloadError` with a reason.

Every payload format the agent takes becomes the same ``Ping``; nothing after
this module knows which app or vendor sent it.  Reasons are the dead-letter
reasons of the contract (``decode``, ``schema``, ``range``, ``no_position``,
``too_large``, ``clock_skew``, ``unknown_source``, ``device_mismatch``).

Pure: no I/O, no clock reads (``received`` is a parameter).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import msgpack
import orjson

from store_config.model import EdgeError

SOURCES = frozenset({"wifi", "ble", "html5", "gps", "uwb"})
MAX_COORD_M = 100_000.0  # a local coordinate beyond 100 km is not in a store
MAX_ACC_M = 100_000.0
MAX_BEACONS = 64
MAX_DEVICE_LEN = 128  # longer ids could not be named in a forget or export URL


class Message(Protocol):
    """A transport message as the pipeline reads it (``transport.mqtt.Message`` is one)."""

    topic: str
    payload: bytes
    qos: int
    received: float
    retain: bool


class PayloadError(EdgeError):
    """A payload that cannot be used; ``reason`` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(slots=True)
class Ping:
    """One location observation of one device, in whatever frame it came."""

    device: str
    source: str
    received: float
    x: float | None = None
    y: float | None = None
    lat: float | None = None
    lon: float | None = None
    beacons: tuple[tuple[str, float], ...] | None = None
    acc: float | None = None
    floor: int | None = None
    ts: float | None = None
    seq: int | None = None
    mock: bool = False
    raw: bytes | None = None  # the payload as received, for a later dead letter


UTF8_BOM = b"\xef\xbb\xbf"


def decode_object(payload: bytes, *, max_bytes: int = 16384) -> dict[str, Any]:
    """JSON (a payload starting with ``{``) or msgpack map → dict."""
    obj = decode_value(payload, max_bytes=max_bytes)
    if obj.__class__ is not dict:
        raise PayloadError("schema", f"expected an object, got {type(obj).__name__}")
    return obj


def decode_value(payload: bytes, *, max_bytes: int = 16384) -> Any:
    """JSON or msgpack → whatever it holds (``decode_object`` wants a map;
    inventory also takes a list)."""
    if len(payload) > max_bytes:
        raise PayloadError("too_large", f"{len(payload)} bytes > {max_bytes}")
    if not payload:
        raise PayloadError("decode", "empty payload")
    if payload[:3] == UTF8_BOM:  # some HTTP clients and editors prepend one to JSON
        payload = payload[3:]
    first = payload[:1]
    if first == b"{":
        try:
            obj = orjson.loads(payload)  # the hot path: strict RFC 8259, fast
        except orjson.JSONDecodeError:
            obj = _json_lenient(payload)  # NaN/Infinity literals reach the range check
    elif first in (b"[", b" ", b"\t", b"\r", b"\n"):  # JSON (an array is valid JSON of the wrong shape)
        obj = _json_lenient(payload.lstrip())
    else:
        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, max_str_len=max_bytes, max_bin_len=max_bytes)
        except Exception as exc:  # msgpack raises several unrelated types
            try:  # a JSON scalar ("42", "true", a string) is JSON of the wrong shape, not garbage
                obj = json.loads(payload)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise PayloadError("decode", f"neither JSON nor msgpack: {type(exc).__name__}") from exc
            _no_lone_surrogate(obj, payload)
    return obj


def _json_lenient(payload: bytes) -> Any:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError("decode", f"invalid JSON: {exc}") from exc
    _no_lone_surrogate(obj, payload)
    return obj


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_lone_surrogate(obj: Any, payload: bytes) -> None:
    """Python's json takes a ``\\ud800`` escape with no partner (orjson does not);
    such a string is not UTF-8, and SQLite cannot store it: the whole batch's
    commit would fail.  Refused here, as the message's own ``decode``."""
    if _SURROGATE_ESCAPE.search(payload) is None:
        return
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError) as exc:
        raise PayloadError("decode", "a string holds a lone UTF-16 surrogate (not UTF-8)") from exc


def _num(obj: Mapping[str, Any], key: str, *, required: bool = False) -> float | None:
    return number(obj.get(key), key, required=required)


def number(v: Any, key: str, *, required: bool = False) -> float | None:
    """A finite float from a JSON number, or ``PayloadError``: ``range`` for NaN,
    ±inf and integers too large for a float (JSON has no limit on digits),
    ``schema`` for anything that is not a number, ``no_position`` when missing
    and ``required``."""
    cls = v.__class__
    if cls is float:
        if v - v != 0.0:  # NaN or ±inf
            raise PayloadError("range", f"'{key}' is not finite")
        return v
    if cls is int:
        try:
            return float(v)
        except OverflowError:
            raise PayloadError("range", f"'{key}' is too large") from None
    if v is None:
        if required:
            raise PayloadError("no_position", f"missing '{key}'")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        # The contract's numbers are JSON numbers: a string is refused, with a hint
        # (vendor adapters such as Meraki's convert their own documented quirks).
        hint = " (a string: send it as a JSON number)" if isinstance(v, str) else ""
        raise PayloadError("schema", f"'{key}' is not a number{hint}")
    try:
        v = float(v)
    except OverflowError:
        raise PayloadError("range", f"'{key}' is too large") from None
    if not math.isfinite(v):
        raise PayloadError("range", f"'{key}' is not finite")
    return v


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    raw = obj.get(key)
    if raw is None or raw.__class__ is int:
        return raw
    v = _num(obj, key)
    if v is None:
        return None
    if v != int(v):
        raise PayloadError("schema", f"'{key}' must be an integer")
    return int(v)


def check_device(device: str) -> str:
    """A device id from a topic: at most ``MAX_DEVICE_LEN`` characters."""
    if len(device) > MAX_DEVICE_LEN:
        raise PayloadError("too_large", f"device id over {MAX_DEVICE_LEN} characters")
    return device


def parse_ping(
    obj: Mapping[str, Any],
    *,
    device: str,
    source: str,
    received: float,
    max_future_skew_s: float = 300.0,
) -> Ping:
    """Validate one decoded ping object (native, HTML5 GeolocationPosition)."""
    ping = Ping(device=device, source=source, received=received)
    coords = obj.get("coords")
    if coords is not None and isinstance(coords, dict):
        # A serialised HTML5 GeolocationPosition.
        ping.lat = _num(coords, "latitude", required=True)
        ping.lon = _num(coords, "longitude", required=True)
        ping.acc = _num(coords, "accuracy")
        ts_ms = _num(obj, "timestamp")
        ping.ts = ts_ms / 1000.0 if ts_ms is not None else None
        ping.floor = _int(obj, "floor")
    elif coords is not None:
        raise PayloadError("schema", "'coords' must be an object")
    else:
        get = obj.get
        if "x" in obj or "y" in obj:
            # the hot path: a finite float is taken as it is, anything else through number()
            x, y = get("x"), get("y")
            ping.x = x if x.__class__ is float and x - x == 0.0 else number(x, "x", required=True)
            ping.y = y if y.__class__ is float and y - y == 0.0 else number(y, "y", required=True)
        elif "lat" in obj or "lon" in obj:
            ping.lat = _num(obj, "lat", required=True)
            ping.lon = _num(obj, "lon", required=True)
        elif "beacons" in obj:
            ping.beacons = _beacons(obj["beacons"])
        else:
            raise PayloadError("no_position", "no x/y, lat/lon or beacons")
        acc, ts = get("acc"), get("ts")
        ping.acc = acc if acc.__class__ is float and acc - acc == 0.0 else number(acc, "acc")
        floor, seq = get("floor"), get("seq")
        ping.floor = floor if floor is None or floor.__class__ is int else _int(obj, "floor")
        ping.ts = ts if ts.__class__ is float and ts - ts == 0.0 else number(ts, "ts")
        ping.seq = seq if seq is None or seq.__class__ is int else _int(obj, "seq")
    # Mock-location flags as apps report them (Android Location.isMock()).
    mock = obj.get("mock")
    if mock is None:
        mock = obj.get("mocked", obj.get("isMock"))
    ping.mock = bool(mock) if isinstance(mock, bool) else False
    _check_ranges(ping, received, max_future_skew_s)
    return ping


def _beacons(raw: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, list) or not raw:
        raise PayloadError("schema", "'beacons' must be a non-empty list")
    if len(raw) > MAX_BEACONS:
        raise PayloadError("too_large", f"{len(raw)} beacons > {MAX_BEACONS}")
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            raise PayloadError("schema", "each beacon needs a string 'id' and a numeric 'rssi'")
        rssi = _num(item, "rssi")
        if rssi is None:
            raise PayloadError("schema", "each beacon needs a numeric 'rssi'")
        if not -150.0 <= rssi <= 20.0:
            raise PayloadError("range", f"rssi {rssi} out of range")
        out.append((item["id"].lower(), rssi))
    return tuple(out)


def _check_ranges(ping: Ping, received: float, max_future_skew_s: float) -> None:
    if ping.lat is not None and not -90.0 <= ping.lat <= 90.0:
        raise PayloadError("range", f"lat {ping.lat} out of range")
    if ping.lon is not None and not -180.0 <= ping.lon <= 180.0:
        raise PayloadError("range", f"lon {ping.lon} out of range")
    if ping.x is not None and (abs(ping.x) > MAX_COORD_M or abs(ping.y) > MAX_COORD_M):
        raise PayloadError("range", "x/y beyond 100 km of the anchor")
    if ping.acc is not None and not 0.0 <= ping.acc <= MAX_ACC_M:
        raise PayloadError("range", f"acc {ping.acc} out of range")
    if ping.floor is not None and not -20 <= ping.floor <= 200:
        raise PayloadError("range", f"floor {ping.floor} out of range")
    if ping.ts is not None:
        if ping.ts < 0:
            raise PayloadError("range", "negative ts")
        if ping.ts > received + max_future_skew_s:
            if abs(ping.ts / 1000.0 - received) <= max_future_skew_s + 86400.0:
                raise PayloadError("clock_skew", f"ts {ping.ts:.0f} looks like milliseconds: send epoch seconds")
            raise PayloadError("clock_skew", f"ts {ping.ts - received:.0f} s in the future")


def parse_owntracks(obj: Mapping[str, Any], *, user: str, device: str, received: float,
                    max_future_skew_s: float = 300.0) -> Ping | None:
    """A real OwnTracks message; ``None`` for ``_type``s other than location."""
    if obj.get("_type") != "location":
        return None
    ping = Ping(device=check_device(f"owntracks:{user}:{device}"), source="owntracks", received=received)
    ping.lat = _num(obj, "lat", required=True)
    ping.lon = _num(obj, "lon", required=True)
    ping.acc = _num(obj, "acc")
    ping.ts = _num(obj, "tst")
    _check_ranges(ping, received, max_future_skew_s)
    return ping


def owntracks_cmd(device: str, offer: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """An offer for the stock OwnTracks app: its documented ``cmd`` ``action``
    message (a notification plus HTML in the Featured tab) on the device's own
    cmd topic (remote commands must be enabled).  Returns ``(topic, message)``."""
    _, user, dev = device.split(":", 2)
    esc = html.escape
    content = f"<h2>{esc(offer['title'])}</h2><p>{esc(offer['message'] or '')}</p>"
    if offer.get("alternative_zone"):
        content += f"<p>Out of stock here: find it at {esc(offer['alternative_zone'])}.</p>"
    content += f"<p><small>Offer {esc(offer['offer_id'])}</small></p>"
    return f"owntracks/{user}/{dev}/cmd", {"_type": "cmd", "action": "action", "notification": offer["title"],
                                          "content": content, "tst": int(offer["ts"])}


# -- a message's topic and payload to a ping (the pipeline's routes)
def decode_topic_ping(m: Message, rest: str, root: str, cfg: Any) -> Ping:
    """``{root}/ping/{source}/{device}`` (``rest`` is the topic after ``root/``):
    the topic checked, the payload decoded and parsed."""
    parts = rest.split("/")
    if len(parts) != 3 or not parts[2]:
        raise PayloadError("topic", f"ping topic must be {root}/ping/{{source}}/{{device}} "
                                    f"(3 levels after the store id, got {len(parts)}"
                                    f"{'' if parts[-1] else ', the last one empty'})")
    source, device = parts[1], check_device(parts[2])
    if source not in SOURCES:
        raise PayloadError("unknown_source", f"source {source!r}")
    payload, max_bytes = m.payload, cfg.ingest.max_payload_bytes
    obj = None
    if payload[:1] == b"{" and len(payload) <= max_bytes:  # decode_object's hot path, inlined
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass  # decode_object decides (NaN literals, or the refusal)
    if obj is None:
        obj = decode_object(payload, max_bytes=max_bytes)
    claimed = obj.get("device")
    if claimed is not None and claimed != device:
        raise PayloadError("device_mismatch", "payload device differs from the topic's")
    ping = parse_ping(obj, device=device, source=source, received=m.received,
                      max_future_skew_s=cfg.tracking.max_future_skew_s)
    ping.raw = m.payload  # kept for a dead letter after positioning (e.g. no known beacon)
    return ping


def decode_owntracks_topic(m: Message, cfg: Any) -> Ping | None:
    """``owntracks/{user}/{device}``: an OwnTracks location (None for its other subtopics)."""
    parts = m.topic.split("/")
    if len(parts) != 3:
        return None  # owntracks/+/+ only; cmd/event subtopics are not pings
    obj = decode_object(m.payload, max_bytes=cfg.ingest.max_payload_bytes)
    return parse_owntracks(obj, user=parts[1], device=parts[2], received=m.received,
                           max_future_skew_s=cfg.tracking.max_future_skew_s)
