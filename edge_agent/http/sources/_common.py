"""What the vendor adapters share: lenient numbers and times, floor-plan
lookup, per-store device pseudonyms and a per-source record counter."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Iterable

from aiohttp import web

from store_config.model import FloorPlan

from edge_agent.metrics import Counter
from ..shop.limits import Buckets


def num(v: Any) -> float | None:
    """A finite float from a number or a numeric string; ``None`` for a
    missing, empty, ``"NaN"`` or otherwise unusable value (vendors send all of
    these for "no fix")."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None
    if not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return v if math.isfinite(v) else None


def parse_time(v: Any) -> float | None:
    """Epoch seconds from ISO 8601 (``"2019-11-28T14:27:46Z"``) or from epoch
    seconds/milliseconds given as a number or a numeric string."""
    n = num(v)
    if n is not None:
        return n / 1000.0 if n > 1e11 else n
    if isinstance(v, str) and v.strip():
        s = v.strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    return None


class Plans:
    """``[[floorplans]]`` indexed by id and by name (a vendor's ids are
    matched case-insensitively: Aruba sends hex ids in either case)."""

    __slots__ = ("by_id", "by_name")

    def __init__(self, plans: Iterable[FloorPlan]):
        self.by_id: dict[str, FloorPlan] = {}
        self.by_name: dict[str, FloorPlan] = {}
        for p in plans:
            if p.id is not None:
                self.by_id[p.id.lower()] = p
            if p.name is not None:
                self.by_name[p.name.lower()] = p

    def match(self, id: Any = None, name: Any = None) -> FloorPlan | None:
        if isinstance(id, (str, int)) and not isinstance(id, bool):
            p = self.by_id.get(str(id).lower())
            if p is not None:
                return p
        if isinstance(name, str):
            return self.by_name.get(name.lower())
        return None


_PLANS_CACHE: dict[int, tuple[Any, Plans]] = {}


def plans_for(cfg) -> Plans:
    """The floor-plan index of one config (built once per config object)."""
    hit = _PLANS_CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    plans = Plans(cfg.floorplans)
    if len(_PLANS_CACHE) > 16:
        _PLANS_CACHE.clear()
    _PLANS_CACHE[id(cfg)] = (cfg, plans)
    return plans


def device_id(agent, vendor: str, raw: str) -> str:
    """``"{vendor}:" + keyed pseudonym`` of a vendor's client id (a MAC, or
    a MAC the vendor already hashed).  Stable per store (the store's
    pseudonym key); the raw value never leaves this function."""
    return f"{vendor}:{agent.pseudonym(vendor + ':' + raw.strip().lower())}"


LIMITS: web.AppKey[Buckets] = web.AppKey("vendor_limits", Buckets)


def add_limits(app: web.Application) -> None:
    """One table of token buckets for every receiver of ``app`` (see :func:`limited`)."""
    app[LIMITS] = Buckets(10.0, 20.0)  # the rates are the config's, read at each request


def limited(request, path: str) -> None:
    """429 past ``[http] vendor_rate`` posts per second per client address on a
    receiver (bursts of twice that), counted in ``edge_http_limited_total{path,by="source"}``.
    Checked first, before the secret and the body."""
    from edge_agent.http.base import AGENT

    agent = request.app[AGENT]
    buckets = request.app[LIMITS]
    buckets.rate = rate = agent.cfg.http.vendor_rate  # [http]: as started (a reload keeps it until a restart)
    buckets.burst = 2 * rate
    if not buckets.take(f"{path} {request.remote}", agent.clock()):
        agent.metrics.http_limited.inc(path, "source")
        raise web.HTTPTooManyRequests(text='{"error": "rate_limited"}', content_type="application/json",
                                      headers={"Retry-After": str(max(1, round(1 / rate)))})


def records_counter(agent) -> Counter:
    """``edge_source_records_total{source, result}``: every vendor record
    (Meraki observation, Aruba location record) by what became of it:
    ``accepted`` or the reason it was skipped."""
    m = agent.metrics
    c = getattr(m, "source_records", None)
    if c is None:
        c = Counter("edge_source_records_total",
                    "Vendor location records (Meraki observations, Aruba records) by source and result.",
                    ("source", "result"))
        m.source_records = c  # Metrics.all() renders every Counter attribute
    return c
