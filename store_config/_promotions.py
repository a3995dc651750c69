"""The promotions section: ``promotions.json`` (a list of promotion objects),
and the check that the fence ids promotions name exist in the layout.  Pure.
"""

from __future__ import annotations

import math
from datetime import datetime
from types import MappingProxyType
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from ._checks import Collector, check_timezone, raise_if, type_name, where_obj
from ._checks import ID_RE
from .model import Discount, Fence, Guardrails, Problem, Promotion, Scores, Variant

__all__ = ["parse_scores", "parse_promotions", "parse_hours", "cross_check", "cross_check_raw", "never_matching"]


_PROMO_KEYS = frozenset({
    "id", "title", "message", "zones", "categories", "skus", "trigger", "segments",
    "min_loyalty_score", "starts", "ends", "hours", "requires_stock", "alternative_zone",
    "priority", "cooldown_s", "holdout_pct", "associate_alert", "vip_only",
    "variants", "max_offers", "max_redemptions", "paused", "discount", "margin_pct", "guardrails",
})
_VARIANT_KEYS = frozenset({"id", "title", "message", "weight"})


def _parse_variants(c: Collector, p: dict, where: str, title: str | None, message: str,
                    strict: bool = True) -> tuple[Variant, ...]:
    """``variants``: ``[{"id", "title", "message", "weight"}, ...]``; a variant
    without ``title`` / ``message`` takes the promotion's."""
    raw = p.get("variants")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        c.err(where, "variants", f"must be a non-empty list of variant objects, not {type_name(raw)}")
        return ()
    out: list[Variant] = []
    for j, v in enumerate(raw):
        vw = f"{where} variant #{j}"
        if not isinstance(v, dict):
            c.err(vw, "", f"must be an object, not {type_name(v)}")
            continue
        c.unknown_keys(v, _VARIANT_KEYS, vw, strict=strict)
        vid = c.string(v, "id", vw, required=True, nonempty=True)
        if vid is not None and (not ID_RE.fullmatch(vid) or vid == "-"):
            c.err(vw, "id", f"{vid!r} may only contain letters, digits, '.', '_' and '-' (and is not '-')")
            vid = None
        if vid is not None and any(o.id == vid for o in out):
            c.err(vw, "id", f"duplicate variant id {vid!r}")
            vid = None
        vtitle = c.string(v, "title", vw, default=title, nonempty=True)
        vmessage = c.string(v, "message", vw, default=message)
        weight = c.number(v, "weight", vw, default=1.0, positive=True)
        if vid is not None and vtitle is not None:
            out.append(Variant(id=vid, title=vtitle, message=vmessage, weight=weight))
    return tuple(out)


def _parse_discount(c: Collector, p: dict, where: str) -> Discount | None:
    """``discount``: ``{"pct": 20}`` (of the redeemed basket) or ``{"amount": 2.5}``."""
    raw = p.get("discount")
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1 or not set(raw) <= {"pct", "amount"}:
        c.err(where, "discount", 'must be {"pct": 20} or {"amount": 2.5}')
        return None
    if "pct" in raw:
        pct = c.number(raw, "pct", where + " discount", minimum=0, maximum=100, required=True)
        return Discount(pct=pct) if pct is not None else None
    amount = c.number(raw, "amount", where + " discount", minimum=0, required=True)
    return Discount(amount=amount) if amount is not None else None


def _parse_guardrails(c: Collector, p: dict, where: str) -> Guardrails | None:
    """``guardrails``: ``{"max_dismiss_rate": 0.5, "min_exposures": 50}``."""
    raw = p.get("guardrails")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        c.err(where, "guardrails", f"must be an object, not {type_name(raw)}")
        return None
    gw = where + " guardrails"
    c.unknown_keys(raw, {"max_dismiss_rate", "min_exposures"}, gw)
    rate = c.number(raw, "max_dismiss_rate", gw, required=True, minimum=0, maximum=1)
    n = c.integer(raw, "min_exposures", gw, default=50, minimum=1)
    if rate is None or n is None:
        return None
    return Guardrails(max_dismiss_rate=rate, min_exposures=n)


def _parse_hhmm(s: str, *, is_end: bool) -> int | None:
    parts = s.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= len(p) <= 2 for p in parts):
        return None
    h, m = int(parts[0]), int(parts[1])
    if h == 24 and m == 0 and is_end:
        return 1440
    if h > 23 or m > 59:
        return None
    return h * 60 + m


def parse_hours(value: Any) -> tuple[tuple[tuple[int, int], ...], str | None]:
    """Parse ``["08:00-12:00", "22:00-02:00"]`` into ``((480, 720), (1320, 120))``.

    Minutes are store-local minutes since midnight.  ``24:00`` is allowed as
    an end (→ 1440).  A window whose end is before its start wraps midnight
    and is kept as given: ``(1320, 120)`` means 22:00 until 02:00 the next
    day, so a consumer tests ``start <= m < end`` when ``start < end`` and
    ``m >= start or m < end`` otherwise.  Returns ``(windows, error)``.
    """
    if not isinstance(value, list):
        return (), f"must be a list of 'HH:MM-HH:MM' strings, not {type_name(value)}"
    out = []
    for item in value:
        if not isinstance(item, str) or item.count("-") != 1:
            return (), f"{item!r} is not a window like '08:00-12:00'"
        a, b = item.split("-")
        start, end = _parse_hhmm(a, is_end=False), _parse_hhmm(b, is_end=True)
        if start is None or end is None:
            return (), f"{item!r} is not a window like '08:00-12:00' (hours 00–23, minutes 00–59, 24:00 as end)"
        if start == end:
            return (), f"{item!r} is an empty window (start equals end)"
        out.append((start, end))
    return tuple(out), None


def _parse_dt(value: Any, tz: ZoneInfo | None) -> tuple[datetime | None, str | None]:
    if not isinstance(value, str):
        return None, f"must be an ISO 8601 date-time string, not {type_name(value)}"
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, f"{value!r} is not an ISO 8601 date-time (e.g. '2025-12-01T08:00:00+01:00')"
    if dt.tzinfo is None and tz is not None:
        dt = dt.replace(tzinfo=tz)
    return dt, None


def parse_promotions(obj: Any, *, file: str, timezone: str,
                     warnings: list[Problem] | None = None, strict: bool = True) -> tuple[Promotion, ...]:
    """Parse a list of promotion objects.

    ``starts``/``ends`` without an offset are store-local time (``timezone``
    attached).  ``hours`` windows are described in :func:`parse_hours`.
    An unknown key is an error naming the nearest known one (a typo such as
    ``segmnets`` would silently widen the audience, ``zone`` disable the
    promotion); with ``strict=False`` (a bundle from central) it is a warning
    in ``warnings``.  (Whether it can match a fence is :func:`never_matching`'s.)
    """
    c = Collector(file)
    tz_err = check_timezone(timezone)
    tz = None
    if tz_err:
        c.err("store", "timezone", tz_err)
    else:
        tz = ZoneInfo(timezone)
    if not isinstance(obj, list):
        c.err("promotions", "", f"must be a list of promotion objects, not {type_name(obj)}")
        raise_if(c.problems)
    out: list[Promotion] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(obj):
        where = where_obj("promotion", i, p, "id")
        if not isinstance(p, dict):
            c.err(where, "", f"must be an object, not {type_name(p)}")
            continue
        n_before = len(c.problems)
        c.unknown_keys(p, _PROMO_KEYS, where, strict=strict)
        pid = c.string(p, "id", where, required=True, nonempty=True)
        if pid is not None:
            if pid in seen:
                c.err(where, "id", f"duplicate id {pid!r} (also promotion #{seen[pid]})")
            else:
                seen[pid] = i
        title = c.string(p, "title", where, required=True, nonempty=True)
        message = c.string(p, "message", where, default="")
        zones = c.str_list(p, "zones", where)
        categories = c.str_list(p, "categories", where)
        skus = c.str_list(p, "skus", where)
        segments = c.str_list(p, "segments", where)
        trigger = c.string(p, "trigger", where, default="enter", choices=("enter", "dwell"))
        min_loyalty = c.number(p, "min_loyalty_score", where, default=None)
        starts = ends = None
        for key in ("starts", "ends"):
            if p.get(key) is not None:
                dt, err = _parse_dt(p[key], tz)
                if err:
                    c.err(where, key, err)
                elif key == "starts":
                    starts = dt
                else:
                    ends = dt
        if starts is not None and ends is not None and starts >= ends:
            c.err(where, "ends", f"must be after starts ({p['starts']} → {p['ends']})")
        hours: tuple = ()
        if p.get("hours") is not None:
            hours, err = parse_hours(p["hours"])
            if err:
                c.err(where, "hours", err)
        requires_stock = c.boolean(p, "requires_stock", where)
        alternative_zone = c.string(p, "alternative_zone", where, default=None, nonempty=True)
        priority = c.integer(p, "priority", where, default=0)
        cooldown_s = c.number(p, "cooldown_s", where, default=3600.0, minimum=0)
        holdout_pct = c.number(p, "holdout_pct", where, default=0.0, minimum=0, maximum=100)
        associate_alert = c.boolean(p, "associate_alert", where)
        vip_only = c.boolean(p, "vip_only", where)
        variants = _parse_variants(c, p, where, title, message, strict)
        max_offers = c.integer(p, "max_offers", where, default=None, minimum=0)
        max_redemptions = c.integer(p, "max_redemptions", where, default=None, minimum=0)
        paused = c.boolean(p, "paused", where)
        discount = _parse_discount(c, p, where)
        margin_pct = c.number(p, "margin_pct", where, default=None, minimum=0, maximum=100)
        guardrails = _parse_guardrails(c, p, where)
        if len(c.problems) > n_before or pid is None or title is None:
            continue
        out.append(Promotion(
            id=pid, title=title, message=message, zones=zones, categories=categories, skus=skus,
            trigger=trigger, segments=segments, min_loyalty_score=min_loyalty, starts=starts, ends=ends,
            hours=hours, requires_stock=requires_stock, alternative_zone=alternative_zone,
            priority=priority, cooldown_s=cooldown_s, holdout_pct=holdout_pct,
            associate_alert=associate_alert, vip_only=vip_only, variants=variants, max_offers=max_offers,
            max_redemptions=max_redemptions, paused=paused, discount=discount, margin_pct=margin_pct,
            guardrails=guardrails,
        ))
    if warnings is not None:
        warnings.extend(c.warnings)
    raise_if(c.problems)
    return tuple(out)



def cross_check(fences: Iterable[Fence], promotions: Iterable[Promotion], *, file: str) -> list[Problem]:
    """Errors for promotions whose ``zones`` or ``alternative_zone`` name a
    fence the layout does not have."""
    return _cross_check_ids({f.id for f in fences}, promotions, file=file)



def cross_check_raw(ids: set[str], raw: list, *, file: str) -> list[Problem]:
    problems = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            continue
        where = where_obj("promotion", i, p, "id")
        zones = p.get("zones")
        if isinstance(zones, list):
            missing = [z for z in zones if isinstance(z, str) and z not in ids]
            if missing:
                problems.append(Problem(file, where, "zones", f"unknown fence id(s): {', '.join(missing)}"))
        alt = p.get("alternative_zone")
        if isinstance(alt, str) and alt and alt not in ids:
            problems.append(Problem(file, where, "alternative_zone", f"unknown fence id {alt!r}"))
    return problems


def _cross_check_ids(ids: set[str], promotions: Iterable[Promotion], *, file: str) -> list[Problem]:
    problems = []
    for p in promotions:
        where = f'promotion "{p.id}"'
        missing = [z for z in p.zones if z not in ids]
        if missing:
            problems.append(Problem(file, where, "zones", f"unknown fence id(s): {', '.join(missing)}"))
        if p.alternative_zone is not None and p.alternative_zone not in ids:
            problems.append(Problem(file, where, "alternative_zone",
                                    f"unknown fence id {p.alternative_zone!r}"))
    return problems


def _matches(fence: Fence, p: Promotion) -> bool:
    """The contract's matching rule: zone id, or category, or any sku."""
    return (fence.id in p.zones or (fence.category is not None and fence.category in p.categories)
            or any(s in p.skus for s in fence.skus))


def never_matching(fences: Iterable[Fence], promotions: Iterable[Promotion], *, file: str) -> list[Problem]:
    """Errors for promotions that can never be offered on this layout: they
    name no zones, categories or skus, match no fence (by zone, category or sku), or they fire on ``dwell`` and
    none of the fences they match has a ``dwell_s``.  (Unknown zone ids are
    :func:`cross_check`'s.)"""
    fences = [f for f in fences if f.kind != "obstacle"]
    problems = []
    for p in promotions:
        where = f'promotion "{p.id}"'
        if not (p.zones or p.categories or p.skus):
            problems.append(Problem(file, where, "zones", "names no zones, categories or skus, so it can never "
                                                          "match a fence and is never offered"))
            continue
        matched = [f for f in fences if _matches(f, p)]
        if not matched:
            if p.zones:
                continue  # unknown zone ids: cross_check names them
            bits = []
            if p.categories:
                bits.append(f"categories {', '.join(p.categories)}")
            if p.skus:
                bits.append(f"skus {', '.join(p.skus)}")
            problems.append(Problem(file, where, "categories" if p.categories else "skus",
                                    f"matches no fence (no fence carries {' or '.join(bits)}), so it can "
                                    "never be offered"))
        elif p.trigger == "dwell" and all(f.dwell_s is None for f in matched):
            problems.append(Problem(file, where, "trigger",
                                    f"is a dwell promotion but none of its fences ({', '.join(f.id for f in matched)}) "
                                    "has dwell_s, so no dwell event fires and it can never be offered"))
    return problems


# -- central's model scores: ``scores.json`` or a bundle's ``scores``
#
# ``{"model": "propensity-2026-12-01", "scores": {"<segment or *>": {"<promotion>": 0.031, ...}}}``
# — a score is a finite number >= 0 (a promotion's chance of converting, say);
# the ranking multiplies it by the promotion's value (see ``edge_agent.pipeline.decisions``).

def parse_scores(obj: Any, *, file: str) -> Scores:
    """Validate a scores document; raises ``ConfigError`` naming the bad entry."""
    c = Collector(file)
    if not isinstance(obj, dict):
        c.err("scores", "", f"must be an object with 'model' and 'scores', not {type_name(obj)}")
        raise_if(c.problems)
    c.unknown_keys(obj, {"model", "scores"}, "scores")
    model = c.string(obj, "model", "scores", required=True, nonempty=True)
    raw = obj.get("scores")
    table: dict[str, Any] = {}
    if not isinstance(raw, dict):
        c.err("scores", "scores", f"must be an object {{segment or '*': {{promotion: score}}}}, not {type_name(raw)}")
    else:
        for seg, row in raw.items():
            if not isinstance(row, dict):
                c.err("scores", seg, f"must be an object {{promotion: score}}, not {type_name(row)}")
                continue
            good = {}
            for pid, v in row.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    c.err(f"scores {seg!r}", pid, f"must be a finite number >= 0, not {v!r}")
                else:
                    good[pid] = float(v)
            table[seg] = MappingProxyType(good)
    raise_if(c.problems)
    assert model is not None
    return Scores(model=model, table=MappingProxyType(table))
