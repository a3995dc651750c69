"""Offering: what a shopper's enter or dwell earns, and the campaign counters.

After a transition the pipeline hands the moment here: the promotions of the
zone are decided (``decisions.decide``; scores and holdouts included), and the
outcome becomes rows (offer, exposures, audit), events for central, the offer
to publish and the associates' offer alerts.  The campaign counters live here
too: budgets, dismissals and their guardrail, and the admin's pause.  Pure,
like the rest of the pipeline: state in, effects out.

Its door (:class:`OfferHost`) is what it uses of the pipeline, no more.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from store_config.model import Consent, Profile, StoreConfig

from . import campaigns
from .alerts import AlertManager
from .decisions import decide
from .effects import Audit, Effects, Exposure, Notice, OfferOut, OfferRow, PauseRow, PromoCount
from .ids import new_offer_id
from .state import State

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metrics


class OfferHost(Protocol):
    """What offering uses of the pipeline: its state, the effects it collects
    into, its counters and its alerts."""

    state: State
    fx: Effects
    metrics: "Metrics"
    alerts: AlertManager

    @property
    def cfg(self) -> StoreConfig: ...


class Offering:
    """Decisions after a transition, and the campaign counters, of one pipeline."""

    def __init__(self, host: OfferHost):
        self.p = host

    @property
    def fx(self) -> Effects:
        return self.p.fx  # replaced at every take: always the pipeline's current one

    @property
    def state(self) -> State:
        return self.p.state

    @property
    def cfg(self) -> StoreConfig:
        return self.p.cfg

    @property
    def metrics(self) -> "Metrics":
        return self.p.metrics

    def decide(self, device: str, pseudo: str, person: str, profile: Profile | None, consent: Consent,
               kind: str, fence: Any, received: float, now: float) -> None:
        """An enter or dwell of ``device`` into ``fence``: decide, and collect the outcome."""
        st = self.state
        rt = st.rt
        cfg = rt.cfg
        fx = self.fx
        candidates = rt.promos.get(fence.id, ()) if fence is not None else ()
        if not candidates:
            return
        history = st.history(person)
        before = (dict(history.last_by_promo), history.visit_count, history.last_offer_ts, history.day,
                  history.day_count)
        outcome = decide(trigger=kind, fence=fence, candidates=candidates, profile=profile, consent=consent,
                         history=history, inventory=st.inv_view, now=now, tz=rt.tz,
                         offers=cfg.offers, holdout=lambda pid: st.fraction(person, pid),
                         stopped=st.campaign.stopped,
                         global_holdout=st.fraction(person, "*global*") if cfg.offers.global_holdout_pct else None,
                         scores=cfg.scores, rand=st.rng.random)
        if outcome.offer is not None or outcome.would_offer is not None:
            fx.undo.append(partial(_restore_history, history, before))  # not committed: never happened
        self._outcome(device, pseudo, kind, fence, outcome, received, now, tracking=consent.tracking,
                      person=person, segments=profile.segments if profile is not None else ())

    def _outcome(self, device: str, pseudo: str, trigger: str, fence, outcome, received: float, now: float,
                 *, tracking: bool, person: str, segments: tuple[str, ...] = ()) -> None:
        fx = self.fx
        # what central needs to evaluate another policy offline (inverse propensity weighting)
        policy = {"model": outcome.model, "propensity": outcome.propensity}
        if outcome.model is not None:
            policy["allowed"] = list(outcome.allowed)
            policy["segments"] = list(segments)
        promo = outcome.promotion  # the winner, offered or held out: its variant is the person's
        variant = (campaigns.variant_for(promo.variants, self.state.fraction(person, promo.id, "*variant*"))
                   if promo is not None and promo.variants else None)
        vid = variant.id if variant is not None else None
        offer_id = new_offer_id() if outcome.offer is not None else None
        audit = []
        # Without tracking consent no zone of the device is stored or sent with a
        # suppression (the promotion and the reason still are).
        where = fence.id if tracking else None
        for d in outcome.decisions:
            self.metrics.decisions.inc(d.outcome, d.reason)
            if d is outcome.offer:  # the offer row holds its zone whatever the consent, so its audit row may too
                audit.append(Audit(now, pseudo, trigger, fence.id, d.promotion_id, d.outcome, d.reason, offer_id))
                continue
            audit.append(Audit(now, pseudo, trigger, where, d.promotion_id, d.outcome, d.reason))
            if d.outcome == "suppressed" and d.reason != "outranked":
                if d.reason in campaigns.HOLDOUT_REASONS:  # the control group: what it would have got
                    fx.event("would_offer", now, pseudo, person=person, promotion_id=d.promotion_id, zone=where,
                             reason=d.reason, variant=vid, **policy)
                    fx.rows.append(Exposure(now, person, pseudo, d.promotion_id, vid, d.reason))
                else:
                    fx.event("suppressed", now, pseudo, person=person, promotion_id=d.promotion_id, zone=where,
                             reason=d.reason)
        if outcome.offer is not None:
            d = outcome.offer
            expires = now + self.cfg.offers.ttl_s
            title, message = campaigns.offer_text(promo, variant)
            payload = {"offer_id": offer_id, "promotion_id": promo.id, "zone": fence.id, "title": title,
                       "message": message, "sku": d.sku, "ts": now, "expires": expires}
            if variant is not None:
                payload["variant"] = vid
            if d.alternative_zone:
                payload["alternative_zone"] = d.alternative_zone
            fx.rows.append(OfferRow(offer_id, pseudo, promo.id, fence.id, now, expires, payload,
                                    topic_device=device))  # sealed by the store, for a re-send
            fx.rows.append(Exposure(now, person, pseudo, promo.id, vid, "offered", offer_id))
            self.count_offer(promo)
            g = promo.guardrails
            if g is not None and self.state.campaign.offers.get(promo.id, 0) == g.min_exposures:
                self.check_guardrail(promo, now)  # reaching min_exposures with the rate already past it
            fx.event("offer", now, pseudo, person=person, offer_id=offer_id, promotion_id=promo.id, zone=fence.id,
                     sku=d.sku, alternative_zone=d.alternative_zone, variant=vid, **policy)
            fx.offers.append(OfferOut(device, payload, received))
            fx.notices.append(Notice("offer", {"device": pseudo, **payload}))
            self.p.alerts.on_offer(device, pseudo, promo, fence.id, now)
        fx.rows.extend(audit)

    # -- campaigns: budgets and pause (the state lives in ``campaigns.CampaignState``)
    def count_offer(self, promo) -> None:
        c = self.state.campaign
        c.offers[promo.id] = c.offers.get(promo.id, 0) + 1
        self.fx.rows.append(PromoCount(promo.id, offers=1))
        self.fx.undo.append(partial(self._uncount_offer, promo))
        self.update_budget_gauge(promo)

    def _uncount_offer(self, promo) -> None:
        c = self.state.campaign
        c.offers[promo.id] = c.offers.get(promo.id, 1) - 1
        self.update_budget_gauge(promo)

    def count_dismissal(self, promotion_id: str, now: float) -> None:
        """A dismissed offer: counted, and the promotion's guardrail checked; past it
        the promotion pauses itself (reason ``guardrail``) and the managers hear why."""
        c = self.state.campaign
        c.dismissals[promotion_id] = c.dismissals.get(promotion_id, 0) + 1
        self.fx.rows.append(PromoCount(promotion_id, dismissals=1))

        def uncount() -> None:  # not committed: the retried action counts it again
            c.dismissals[promotion_id] = c.dismissals.get(promotion_id, 1) - 1
        self.fx.undo.append(uncount)
        promo = next((p for p in self.cfg.promotions if p.id == promotion_id), None)
        if promo is not None:
            self.check_guardrail(promo, now)

    def check_guardrail(self, promo, now: float) -> None:
        """After an offer or a dismissal: past its guardrail the promotion pauses
        itself (reason ``guardrail``) and the managers hear why."""
        c = self.state.campaign
        promotion_id = promo.id
        rate = c.guardrail_tripped(promo)
        if rate is None:
            return
        was, was_reason = c.paused.get(promotion_id), c.pause_reason.get(promotion_id)
        c.paused[promotion_id] = True
        c.pause_reason[promotion_id] = "guardrail"
        self.fx.rows.append(PauseRow(promotion_id, True, now, "guardrail"))

        def undo() -> None:  # not committed: not in force either
            if was is None:
                c.paused.pop(promotion_id, None)
            else:
                c.paused[promotion_id] = was
            if was_reason is None:
                c.pause_reason.pop(promotion_id, None)
            else:
                c.pause_reason[promotion_id] = was_reason
        self.fx.undo.append(undo)
        n = c.offers.get(promotion_id, 0)
        self.fx.event("guardrail", now, None, promotion_id=promotion_id, dismiss_rate=round(rate, 4),
                      exposures=n, dismissals=c.dismissals.get(promotion_id, 0),
                      max_dismiss_rate=promo.guardrails.max_dismiss_rate)
        self.p.alerts.raise_alert(
            "guardrail", promo.zones[0] if promo.zones else None, None,
            f"“{promo.title}” paused itself: {100 * rate:.0f} % of its {n} offers were dismissed "
            f"(limit {100 * promo.guardrails.max_dismiss_rate:.0f} %). Resume it from the admin endpoint.",
            None, audiences=("manager",), promotion_id=promotion_id, dismiss_rate=round(rate, 4))

    def update_budget_gauge(self, promo) -> None:
        left = self.state.campaign.remaining(promo)
        if left is not None:
            self.metrics.budget_remaining.set(left, promo.id)

    def set_paused(self, promotion_id: str, paused: bool, now: float) -> bool:
        """Pause or resume a promotion from the next decision on (False: unknown id)."""
        if not any(p.id == promotion_id for p in self.cfg.promotions):
            return False
        paused_map, reasons = self.state.campaign.paused, self.state.campaign.pause_reason
        was, was_reason = paused_map.get(promotion_id), reasons.pop(promotion_id, None)  # the admin's word
        paused_map[promotion_id] = paused
        self.fx.rows.append(PauseRow(promotion_id, paused, now))

        def undo() -> None:
            if was is None:
                paused_map.pop(promotion_id, None)
            else:
                paused_map[promotion_id] = was
            if was_reason is not None:
                reasons[promotion_id] = was_reason
        self.fx.undo.append(undo)
        return True


def _restore_history(h, saved) -> None:
    h.last_by_promo, h.visit_count, h.last_offer_ts, h.day, h.day_count = saved
