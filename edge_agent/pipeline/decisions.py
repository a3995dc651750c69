"""Which offer (at most one) a shopper gets on a transition — pure.

``decide`` looks at every promotion that matches the fence and the trigger,
gives each a reason, and picks at most one to offer.  The order of checks,
per promotion, is the order of the reasons below; the first that fails is
the promotion's reason:

``no_consent``  the device's consent says no offers
``segment``     the promotion targets segments the shopper is not in
                (anonymous devices are in no segment)
``loyalty``     the shopper's loyalty score is below ``min_loyalty_score``
``vip``         a ``vip_only`` promotion and the shopper is not a VIP
``outside_window``  before ``starts``, after ``ends`` or outside ``hours``
                (store-local time, daylight saving handled by zoneinfo)
``out_of_stock``    ``requires_stock`` and every sku at 0 (and no
                ``alternative_zone``; with one, it is offered pointing there)
``paused``      paused by the admin endpoint, or ``"paused": true`` in the file
``budget``      ``max_offers`` offers sent or ``max_redemptions`` redeemed
``cooldown``    the same promotion went to this person less than
                ``cooldown_s`` ago (holdout records count too)

The history is the *person's* (a loyalty id's devices share one; see
``campaigns``).  Eligible promotions are ranked by higher ``priority``, then
the lexically smaller id (``decide`` ranks them itself, whatever order it is
given).  Only the winner is checked against the person-wide limits —
``cap`` (per-visit or daily cap reached), ``gap`` (an offer went to this
person less than ``min_gap_s`` ago) — then the global control group
(``global_holdout``: ``[offers] global_holdout_pct`` of people get no offer
from any promotion) and the promotion's holdout (``holdout``): a person in
a control group gets nothing and leaves a ``would_offer`` record.  The others are ``outranked``.  A winner in its
control group is not replaced by the runner-up: the control group must see
what the treated group would not have seen, or uplift cannot be measured.

Scores (rules + models): with central's scores (``[offers] scores`` or a
bundle's), the winner among the eligible promotions is the highest score ×
value (:func:`~edge_agent.analytics.policy.promo_value`; priority, then id,
breaks ties), and ``[offers] explore_pct`` of decisions pick uniformly among
them instead.  The outcome records ``model``, ``propensity`` (the chance
this policy had of choosing the winner) and ``allowed`` (the eligible ids),
so central can evaluate another policy offline.  No scores: the ranking
above, propensity 1.

Windows: ``starts``/``ends`` are compared as instants (epoch seconds), so the
hour that repeats when daylight saving ends is not ambiguous; ``hours`` are
wall-clock minutes of the store's day (a window that falls into the hour
skipped in spring simply has no minutes that day).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

from store_config.model import Consent, Fence, OffersConfig, Profile, Promotion, Scores

from edge_agent.analytics.policy import promo_value, ranking_value, score_of

OFFERED, SUPPRESSED = "offered", "suppressed"
_RULES_ONLY: Mapping[str, object] = MappingProxyType({})  # no scores: the Outcome's defaults, nothing allocated


@dataclass(slots=True)
class OfferHistory:
    """What has been offered to one device (in memory; rebuilt from the ledger)."""

    last_by_promo: dict[str, float] = field(default_factory=dict)
    visit_count: int = 0
    last_offer_ts: float | None = None
    day: str | None = None
    day_count: int = 0

    def record(self, promotion_id: str, now: float, day: str, *, counted: bool = True) -> None:
        self.last_by_promo[promotion_id] = now
        if counted:
            self.visit_count += 1
            self.last_offer_ts = now
            if self.day != day:
                self.day, self.day_count = day, 0
            self.day_count += 1


@dataclass(frozen=True, slots=True)
class Decision:
    promotion_id: str
    outcome: str  # "offered" | "suppressed"
    reason: str
    sku: str | None = None
    alternative_zone: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    decisions: tuple[Decision, ...]
    offer: Decision | None  # the one offered, if any
    would_offer: Decision | None  # the holdout record, if any
    promotion: Promotion | None = None
    model: str | None = None  # the scores' model that chose (None: the rules alone)
    propensity: float = 1.0  # the chance the policy had of choosing ``promotion``
    allowed: tuple[str, ...] = ()  # the promotions the rules allowed (with scores)


def promotion_matches(fence: Fence, promo: Promotion) -> bool:
    """Fence id in ``zones``, or category in ``categories``, or a shared sku."""
    if fence.id in promo.zones:
        return True
    if fence.category is not None and fence.category in promo.categories:
        return True
    return bool(promo.skus) and any(s in promo.skus for s in fence.skus)


def promotions_by_fence(fences: Iterable[Fence], promotions: Sequence[Promotion]) -> dict[str, tuple[Promotion, ...]]:
    """Matching promotions per fence id, ranked (priority desc, id asc)."""
    ranked = sorted(promotions, key=rank_key)
    # Index by zone, category and sku: linear in fences + promotions, not their
    # product (10k fences x 1k promotions would otherwise cost seconds at start).
    by_zone: dict[str, list[int]] = {}
    by_cat: dict[str, list[int]] = {}
    by_sku: dict[str, list[int]] = {}
    for r, p in enumerate(ranked):
        for z in p.zones:
            by_zone.setdefault(z, []).append(r)
        for c in p.categories:
            by_cat.setdefault(c, []).append(r)
        for k in p.skus:
            by_sku.setdefault(k, []).append(r)
    out: dict[str, tuple[Promotion, ...]] = {}
    empty: tuple[Promotion, ...] = ()
    for f in fences:
        hits = set(by_zone.get(f.id, ()))
        if f.category is not None:
            hits.update(by_cat.get(f.category, ()))
        for k in f.skus:
            hits.update(by_sku.get(k, ()))
        out[f.id] = tuple(ranked[r] for r in sorted(hits)) if hits else empty
    return out


def offer_sku(fence: Fence, promo: Promotion) -> str | None:
    for s in promo.skus:
        if s in fence.skus:
            return s
    return promo.skus[0] if promo.skus else None


def rank_key(promo: Promotion) -> tuple[int, str]:
    """Higher priority first; ties go to the lexically smaller id."""
    return (-promo.priority, promo.id)


def in_window(promo: Promotion, local: datetime) -> bool:
    """``starts <= local < ends`` (as instants) and ``local``'s wall-clock
    minute inside one of ``hours`` (when given)."""
    # Compare instants, not wall times: two datetimes that share a ZoneInfo
    # compare by wall time and ignore ``fold``, which is wrong in the hour
    # that repeats when daylight saving ends.
    if promo.starts is not None or promo.ends is not None:
        t = local.timestamp()
        if promo.starts is not None and t < promo.starts.timestamp():
            return False
        if promo.ends is not None and t >= promo.ends.timestamp():
            return False
    if promo.hours:
        minute = local.hour * 60 + local.minute
        for start, end in promo.hours:
            if start <= end:
                if start <= minute < end:
                    return True
            elif minute >= start or minute < end:  # wraps midnight
                return True
        return False
    return True


def out_of_stock(fence: Fence, promo: Promotion, inventory: Mapping[str, int]) -> bool:
    skus = promo.skus or fence.skus
    if not skus:
        return False
    return all(inventory.get(s, 0) <= 0 for s in skus)


def store_day(local: datetime) -> str:
    """``YYYY-MM-DD`` of ``local`` (``isoformat``: strftime's "%Y-%m-%d", at a fifth of its cost)."""
    return local.date().isoformat()


def decide(
    *,
    trigger: str,
    fence: Fence,
    candidates: Sequence[Promotion],
    profile: Profile | None,
    consent: Consent,
    history: OfferHistory,
    inventory: Mapping[str, int],
    now: float,
    tz: ZoneInfo,
    offers: OffersConfig,
    holdout: Callable[[str], float],
    stopped: Callable[[Promotion], str | None] | None = None,
    global_holdout: float | None = None,
    scores: Scores | None = None,
    rand: Callable[[], float] | None = None,
) -> Outcome:
    """Decide for one transition.  ``candidates`` are the fence's promotions
    (any order); ``holdout(promotion_id)`` is the person's keyed value in
    [0, 1), ``global_holdout`` its keyed value for the global control group;
    ``stopped(promotion)`` says ``paused`` or ``budget`` (or None); ``scores``
    rank the eligible ones, ``rand()`` (uniform in [0, 1)) draws the
    exploration.  Updates ``history`` when something is offered or held out."""
    local = datetime.fromtimestamp(now, tz)
    candidates = sorted(candidates, key=rank_key)
    decisions: list[Decision] = []
    eligible: list[tuple[Promotion, Decision]] = []
    for p in candidates:
        if p.trigger != trigger:
            continue
        sku = offer_sku(fence, p)
        reason = None
        alt = None
        if not consent.offers:
            reason = "no_consent"
        elif p.segments and (profile is None or not set(p.segments) & set(profile.segments)):
            reason = "segment"
        elif p.min_loyalty_score is not None and (profile is None or profile.loyalty_score < p.min_loyalty_score):
            reason = "loyalty"
        elif p.vip_only and (profile is None or not profile.vip):
            reason = "vip"
        elif not in_window(p, local):
            reason = "outside_window"
        elif p.requires_stock and out_of_stock(fence, p, inventory):
            if p.alternative_zone:
                alt = p.alternative_zone
            else:
                reason = "out_of_stock"
        if reason is None and stopped is not None:
            reason = stopped(p)
        if reason is None:
            last = history.last_by_promo.get(p.id)
            if last is not None and now - last < p.cooldown_s:
                reason = "cooldown"
        if reason is not None:
            decisions.append(Decision(p.id, SUPPRESSED, reason, sku))
        else:
            eligible.append((p, Decision(p.id, OFFERED, "offered", sku, alt)))

    if not eligible:
        return Outcome(tuple(decisions), None, None)

    model, propensity, allowed = None, 1.0, ()
    if scores is None:
        pick = 0
    else:
        segs = profile.segments if profile is not None else ()
        k = len(eligible)
        top = 0
        top_v = float("-inf")
        for i, (p, _) in enumerate(eligible):  # ranked: the first of equal values has the priority
            v = ranking_value(score_of(scores.table, segs, p.id), promo_value(p))
            if v > top_v:
                top, top_v = i, v
        e = offers.explore_pct / 100.0
        pick = top
        if e > 0 and rand is not None and rand() < e:
            pick = min(k - 1, int(rand() * k))
        model, propensity = scores.model, (1.0 - e if pick == top else 0.0) + e / k
        allowed = tuple(p.id for p, _ in eligible)
    best, best_decision = eligible[pick]
    for i, (p, d) in enumerate(eligible):
        if i != pick:
            decisions.append(Decision(p.id, SUPPRESSED, "outranked", d.sku))
    day = store_day(local)
    limit = None
    if offers.per_visit_cap and history.visit_count >= offers.per_visit_cap:
        limit = "cap"
    elif offers.daily_cap and history.day == day and history.day_count >= offers.daily_cap:
        limit = "cap"
    elif offers.min_gap_s and history.last_offer_ts is not None and now - history.last_offer_ts < offers.min_gap_s:
        limit = "gap"
    if limit:
        decisions.append(Decision(best.id, SUPPRESSED, limit, best_decision.sku))
        return Outcome(tuple(decisions), None, None)
    policy = _RULES_ONLY if scores is None else {"model": model, "propensity": propensity, "allowed": allowed}
    held = None
    if global_holdout is not None and offers.global_holdout_pct > 0 \
            and global_holdout * 100.0 < offers.global_holdout_pct:
        held = "global_holdout"
    elif best.holdout_pct > 0 and holdout(best.id) * 100.0 < best.holdout_pct:
        held = "holdout"
    if held is not None:
        d = Decision(best.id, SUPPRESSED, held, best_decision.sku, best_decision.alternative_zone)
        decisions.append(d)
        history.record(best.id, now, day, counted=False)
        return Outcome(tuple(decisions), None, d, best, **policy)
    decisions.append(best_decision)
    history.record(best.id, now, day)
    return Outcome(tuple(decisions), best_decision, None, best, **policy)
