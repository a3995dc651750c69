"""Campaigns that prove themselves — the pure parts: people, variants,
budgets, pause, the till's answers and purchase attribution.

No I/O and no clock: the shell (``service``, ``pos``) reads the ledger and
the time and hands them in.

**People.**  A profile's ``loyalty_id`` names a person: ``p_`` + a keyed
hash of it.  A device without a profile (or without a ``loyalty_id``) is a
person of its own, keyed by its device pseudonym (``d_...``), so histories,
holdout groups and variants of anonymous devices are what they were before
people existed.  Cooldowns, caps, holdout and variant key on the person.

**Variants.**  ``variant_for(variants, u)`` picks by weight from the
person's keyed value ``u`` in [0, 1) for (person, promotion): the same
person always sees the same variant, across restarts, while the key file
(``pseudonym.key``) is kept.

**Budgets and pause.**  :class:`CampaignState` counts offers and
redemptions per promotion (persisted with every commit) and holds the
admin's pause/resume overrides; :meth:`CampaignState.stopped` is the
``paused`` / ``budget`` reason a decision reads.

**Till.**  :func:`redeem_answer` is every answer of ``POST /v1/pos/redeem``
in the order it is checked: ``unknown_code`` (404), ``already_redeemed``
(409; the same ``Idempotency-Key`` gets its 200 again), ``expired`` (410),
``budget`` (409), else redeemed (200).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from store_config.model import Profile, Promotion, Variant

NO_VARIANT = "-"  # the report's variant for a promotion without variants
TREATED, CONTROL = "treated", "control"
HOLDOUT_REASONS = ("holdout", "global_holdout")


# -- people ---------------------------------------------------------------------

def person_key(device_pseudo: str, profile: Profile | None, person_of_loyalty) -> str:
    """The person a device belongs to: ``p_...`` for a loyalty id, else the
    device's own pseudonym (a device without a profile is a person of its own)."""
    if profile is not None and profile.loyalty_id:
        return person_of_loyalty(profile.loyalty_id)
    return device_pseudo


# -- variants -------------------------------------------------------------------

def variant_for(variants: Sequence[Variant], u: float) -> Variant | None:
    """The variant whose share of the weights holds ``u`` (in [0, 1))."""
    if not variants:
        return None
    total = sum(v.weight for v in variants)
    acc = 0.0
    target = u * total
    for v in variants:
        acc += v.weight
        if target < acc:
            return v
    return variants[-1]


def offer_text(promo: Promotion, variant: Variant | None) -> tuple[str, str]:
    """(title, message) the shopper sees."""
    if variant is None:
        return promo.title, promo.message
    return variant.title, variant.message


# -- budgets and pause ----------------------------------------------------------

@dataclass(slots=True)
class CampaignState:
    """Per-promotion counters and pause overrides (in memory; restored from
    the store).  ``paused`` holds the admin's overrides: True (paused) or
    False (resumed) — a promotion without one follows its file's ``paused``."""

    offers: dict[str, int] = field(default_factory=dict)
    redemptions: dict[str, int] = field(default_factory=dict)
    paused: dict[str, bool] = field(default_factory=dict)

    def is_paused(self, promo: Promotion) -> bool:
        return self.paused.get(promo.id, promo.paused)

    def over_budget(self, promo: Promotion) -> bool:
        if promo.max_offers is not None and self.offers.get(promo.id, 0) >= promo.max_offers:
            return True
        return promo.max_redemptions is not None and self.redemptions.get(promo.id, 0) >= promo.max_redemptions

    def stopped(self, promo: Promotion) -> str | None:
        """``paused`` or ``budget`` when the promotion may not be offered now."""
        if self.is_paused(promo):
            return "paused"
        if self.over_budget(promo):
            return "budget"
        return None

    def remaining(self, promo: Promotion) -> float | None:
        """What is left of the tighter budget (offers or redemptions); None without one."""
        left = []
        if promo.max_offers is not None:
            left.append(promo.max_offers - self.offers.get(promo.id, 0))
        if promo.max_redemptions is not None:
            left.append(promo.max_redemptions - self.redemptions.get(promo.id, 0))
        return float(max(0, min(left))) if left else None

    def file_flags_changed(self, old: Iterable[Promotion], new: Iterable[Promotion]) -> list[str]:
        """Promotions whose file/bundle ``paused`` changed: the newer instruction
        wins, so their admin overrides are dropped (returned to be deleted)."""
        before = {p.id: p.paused for p in old}
        dropped = [p.id for p in new if p.id in before and before[p.id] != p.paused and p.id in self.paused]
        for pid in dropped:
            del self.paused[pid]
        return dropped


# -- the till -------------------------------------------------------------------

def normalize_code(code: str) -> str:
    """Tills type codes: case, spaces and dashes do not matter."""
    return "".join(ch for ch in code.upper() if not ch.isspace() and ch != "-")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    outcome: str  # for edge_redemptions_total{outcome}

    @property
    def redeemed(self) -> bool:
        return self.outcome == "redeemed"


def redeem_answer(*, offer: Mapping[str, Any] | None, redemption: Mapping[str, Any] | None,
                  idempotency_key: str | None, promo: Promotion | None, state: CampaignState,
                  now: float, code_ttl_s: float) -> Answer:
    """The till's answer for one code.  ``offer``: the offer the code belongs
    to (``offer_id``, ``promotion_id``, ``variant``, ``code_ts``), or None;
    ``redemption``: its earlier redemption (``idempotency_key``, ``response``)."""
    if offer is None:
        return Answer(404, {"error": "unknown_code"}, "unknown_code")
    if redemption is not None:
        key = redemption.get("idempotency_key")
        if idempotency_key and key and idempotency_key == key:
            return Answer(200, dict(redemption["response"]), "retry")
        return Answer(409, {"error": "already_redeemed", "offer_id": offer["offer_id"]}, "already_redeemed")
    if now - float(offer["code_ts"]) > code_ttl_s:
        return Answer(410, {"error": "expired"}, "expired")
    if promo is not None and promo.max_redemptions is not None \
            and state.redemptions.get(promo.id, 0) >= promo.max_redemptions:
        return Answer(409, {"error": "budget"}, "budget")
    return Answer(200, {"status": "redeemed", "offer_id": offer["offer_id"],
                        "promotion_id": offer["promotion_id"], "variant": offer.get("variant")}, "redeemed")


# -- purchases ------------------------------------------------------------------

def attributable(exposures: Iterable[Mapping[str, Any]], skus: Sequence[str],
                 promotions: Mapping[str, Promotion], *, ts: float, window_s: float) -> list[Mapping[str, Any]]:
    """The exposures (offers and would-offers of one person) a purchase at
    ``ts`` counts for: within ``window_s`` before it, and the promotion's
    skus meet the basket's (any basket, for a promotion without skus — or
    one no longer configured, which is judged by the skus it had: none known)."""
    basket = set(skus)
    out = []
    for e in exposures:
        if not ts - window_s <= e["ts"] <= ts:
            continue
        promo = promotions.get(e["promotion_id"])
        if promo is not None and promo.skus and not basket & set(promo.skus):
            continue
        out.append(e)
    return out
