"""The report's numbers: conversion and revenue per arm, uplift and
incremental revenue with their 95 % intervals, one store or many.

The method, stated before the code:

- **People, not offers.**  An arm's sample is its people (distinct persons
  offered — treated — or held out — control).  Each person carries: did they
  convert (a redemption or an attributed purchase), and their *revenue* (the
  sum of the basket totals attributed to them in this arm; 0 for people who
  bought nothing).  An :class:`Arm` keeps only sums (people, converted,
  Σ revenue, Σ revenue², baskets), so arms from many stores or many passes
  merge by addition.
- **Strata.**  Each store is a stratum; one store is the one-stratum case.
  A stratum counts toward the effect when both its arms have people.  With
  ``w_s`` = the stratum's share of the treated people, every per-person
  figure is the weighted mean of the strata's: treated rates equal the
  pooled ones, control rates are standardised to the treated people's mix of
  stores (a store with a bigger holdout does not pull the control side
  toward its own level).
- **Uplift** = conversion treated − control, its interval Agresti–Caffo
  (one success and one failure added to each arm of each stratum, then
  the normal interval of the difference): never zero width, good coverage
  down to small samples.
- **Incremental revenue** = Σ_s treated people_s × (revenue per person
  treated_s − control_s): what the treated people spent beyond what they
  would have spent without the offer.  Interval: the normal (delta-method)
  interval of the difference of two means, Σ_s n_s² (s²_t/n_t + s²_c/n_c)
  with the sample variances of the per-person revenue (an arm of one person
  in a stratum borrows its arm's variance across strata).
- **Not enough data.**  Fewer than :data:`MIN_PEOPLE` people in an arm (over
  the strata that count): every interval is ``None``.  No purchase at all in
  either arm, or no spread at all (everyone spent the same: the rounding
  residue of Σr² − n·m² is taken as 0), leaves the revenue interval ``None``
  too (its spread is unknown, and a zero-width interval would read as
  certainty).
- **Money.**  ``discount_cost`` = what the redemptions gave away (a
  promotion's ``discount``: ``amount`` per redemption, or ``pct`` of the
  redeemed basket); ``incremental_margin`` = incremental revenue ×
  ``margin_pct`` / 100 − discount cost, where ``margin_pct`` is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

Z95 = 1.959963984540054
MIN_PEOPLE = 30

__all__ = ["Arm", "MIN_PEOPLE", "Z95", "estimate", "discount_of", "margin_of", "money_fields"]


@dataclass(slots=True)
class Arm:
    """Sums over the people of one arm (of one stratum)."""

    people: int = 0
    converted: int = 0
    revenue: float = 0.0  # Σ per-person revenue
    revenue_sq: float = 0.0  # Σ per-person revenue²
    baskets: int = 0  # attributed purchases with a basket total

    def add(self, converted: bool, revenue: float = 0.0, baskets: int = 0) -> None:
        """One person."""
        self.people += 1
        self.converted += bool(converted)
        self.revenue += revenue
        self.revenue_sq += revenue * revenue
        self.baskets += baskets

    def merge(self, other: "Arm") -> None:
        self.people += other.people
        self.converted += other.converted
        self.revenue += other.revenue
        self.revenue_sq += other.revenue_sq
        self.baskets += other.baskets

    @classmethod
    def of(cls, revenues: Iterable[float], converted: Iterable[bool] | None = None,
           baskets: Iterable[int] | None = None) -> "Arm":
        """An arm from per-person revenues (a person converted when they spent, unless told)."""
        a = cls()
        revs = list(revenues)
        conv = list(converted) if converted is not None else [r > 0 for r in revs]
        bas = list(baskets) if baskets is not None else [1 if r > 0 else 0 for r in revs]
        for r, c, b in zip(revs, conv, bas):
            a.add(c, float(r), b)
        return a

    @property
    def rate(self) -> float | None:
        return self.converted / self.people if self.people else None

    @property
    def mean(self) -> float | None:
        return self.revenue / self.people if self.people else None

    def variance(self) -> float | None:
        """Sample variance of the per-person revenue (None under two people)."""
        if self.people < 2:
            return None
        m = self.revenue / self.people
        ss = self.revenue_sq - self.people * m * m
        # Σr² − n·m² cancels: identical revenues leave a rounding residue (~1e-13), never a spread
        if ss <= 1e-9 * self.revenue_sq:
            return 0.0
        return ss / (self.people - 1)


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def estimate(strata: Sequence[tuple[Arm, Arm]]) -> dict[str, Any]:
    """Conversion and revenue per arm, uplift and incremental revenue with their
    intervals, over strata of ``(treated, control)`` arms (see the module doc)."""
    both = [(t, c) for t, c in strata if t.people and c.people]
    all_t, all_c = Arm(), Arm()
    for t, c in strata:
        all_t.merge(t)
        all_c.merge(c)
    out: dict[str, Any] = {
        "people_treated": all_t.people, "people_control": all_c.people,
        "converted_treated": all_t.converted, "converted_control": all_c.converted,
        "conversion_treated": all_t.rate, "conversion_control": all_c.rate,
        "uplift": None, "uplift_ci95": None,
        "revenue_per_person_treated": all_t.mean, "revenue_per_person_control": all_c.mean,
        "basket_mean_treated": all_t.revenue / all_t.baskets if all_t.baskets else None,
        "basket_mean_control": all_c.revenue / all_c.baskets if all_c.baskets else None,
        "incremental_revenue": None, "incremental_revenue_ci95": None,
    }
    if not both:
        return out
    nt = sum(t.people for t, _ in both)
    nc = sum(c.people for _, c in both)
    # An arm of one person in a stratum borrows its arm's variance over all strata.
    pooled_t = Arm()
    pooled_c = Arm()
    for t, c in both:
        pooled_t.merge(t)
        pooled_c.merge(c)
    vt_pool, vc_pool = pooled_t.variance() or 0.0, pooled_c.variance() or 0.0
    p1 = p0 = d_ac = var_ac = 0.0
    m1 = m0 = var_d = 0.0
    for t, c in both:
        w = t.people / nt
        p1 += w * t.converted / t.people
        p0 += w * c.converted / c.people
        a1 = (t.converted + 1) / (t.people + 2)
        a0 = (c.converted + 1) / (c.people + 2)
        d_ac += w * (a1 - a0)
        var_ac += w * w * (a1 * (1 - a1) / (t.people + 2) + a0 * (1 - a0) / (c.people + 2))
        m1 += w * t.revenue / t.people
        m0 += w * c.revenue / c.people
        vt = t.variance()
        vc = c.variance()
        var_d += w * w * ((vt if vt is not None else vt_pool) / t.people
                          + (vc if vc is not None else vc_pool) / c.people)
    enough = nt >= MIN_PEOPLE and nc >= MIN_PEOPLE
    out.update(conversion_treated=p1, conversion_control=p0, uplift=p1 - p0,
               revenue_per_person_treated=m1, revenue_per_person_control=m0,
               incremental_revenue=nt * (m1 - m0))
    if enough:
        h = Z95 * math.sqrt(var_ac)
        out["uplift_ci95"] = [d_ac - h, d_ac + h]
        if var_d > 0:
            h = Z95 * math.sqrt(var_d) * nt
            out["incremental_revenue_ci95"] = [nt * (m1 - m0) - h, nt * (m1 - m0) + h]
    return out


# -- a promotion's money ----------------------------------------------------------

def discount_of(discount: Any, basket_total: float | None) -> float:
    """What one redemption gave away: ``{"amount": 2.5}`` → 2.5; ``{"pct": 20}``
    → 20 % of the redeemed basket (0 when the till sent no basket total)."""
    if not discount:
        return 0.0
    amount = discount.get("amount") if isinstance(discount, dict) else getattr(discount, "amount", None)
    pct = discount.get("pct") if isinstance(discount, dict) else getattr(discount, "pct", None)
    if amount is not None:
        return float(amount)
    if pct is not None and basket_total is not None:
        return float(pct) / 100.0 * float(basket_total)
    return 0.0


def margin_of(incremental_revenue: float | None, margin_pct: float | None, discount_cost: float | None
              ) -> float | None:
    """Incremental revenue × margin − what the discount gave away (None without a margin)."""
    if incremental_revenue is None or margin_pct is None:
        return None
    return incremental_revenue * margin_pct / 100.0 - (discount_cost or 0.0)


def money_fields(est: dict[str, Any], *, discount_cost: float | None, margin_pct: float | None) -> dict[str, Any]:
    """The report row's rates and money, rounded (rates 4 places, money 2)."""
    ci = est["uplift_ci95"]
    rci = est["incremental_revenue_ci95"]
    return {
        "conversion_treated": _r(est["conversion_treated"]), "conversion_control": _r(est["conversion_control"]),
        "uplift": _r(est["uplift"]), "uplift_ci95": [_r(x) for x in ci] if ci else None,
        "revenue_per_person_treated": _r(est["revenue_per_person_treated"], 2),
        "revenue_per_person_control": _r(est["revenue_per_person_control"], 2),
        "basket_mean_treated": _r(est["basket_mean_treated"], 2),
        "basket_mean_control": _r(est["basket_mean_control"], 2),
        "discount_cost": _r(discount_cost, 2),
        "incremental_revenue": _r(est["incremental_revenue"], 2),
        "incremental_revenue_ci95": [_r(x, 2) for x in rci] if rci else None,
        "incremental_margin": _r(margin_of(est["incremental_revenue"], margin_pct, discount_cost), 2),
    }
