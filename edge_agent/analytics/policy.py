"""Offline evaluation of a scores file: what would another policy have
earned, estimated from the decisions the stores logged (inverse propensity
weighting).

Each ``offer`` and ``would_offer`` event is one decision.  It carries the
promotion chosen, ``propensity`` (the probability the logging policy had of
choosing it), ``allowed`` (the promotions the rules allowed, the candidates
of the choice) and ``segments`` (the person's segments, what scores key on).
Its reward is the revenue of the purchases attributed to that person and
promotion in the treated arm (an offer); a would-offer earned nothing *from
an offer*, and counts as a decision with reward 0 weighted like the others
(the held-out share of a promotion is taken from the log: offers ÷
decisions of that promotion).

For a new policy π (a scores file, ``explore_pct``), the estimate of its
revenue per decision is

    V = 1/N Σ_offers π(a | x) / (p · t_a) × r

(N decisions, p the logged propensity, t_a the treated share of promotion
a, r the reward), with the normal 95 % interval from the per-decision terms'
variance.  Unbiased when every promotion π may choose had a propensity > 0
in the log (``explore_pct`` > 0 guarantees it).  The logged policy's own
value (π = the logging policy) is reported beside it.

Memory: one small tuple per decision and per attributed purchase (not
streamed to disk like the chain report: a policy is evaluated on a sample).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import orjson

from .stats import Z95

__all__ = ["policy_probs", "evaluate", "choose", "score_of", "promo_value", "ranking_value"]


def promo_value(promo: Any | None) -> float:
    """score × value: value = the share of a sale kept after the discount
    (``margin_pct`` − a ``pct`` discount), when the margin is known; else 1."""
    if promo is None or getattr(promo, "margin_pct", None) is None:
        return 1.0
    d = getattr(promo, "discount", None)
    pct = d.pct if d is not None and d.pct is not None else 0.0
    return (promo.margin_pct - pct) / 100.0


def ranking_value(score: float, value: float) -> float:
    """score × value as the ranking compares it: rounded to 12 places, so two
    products equal on paper (0.02 × 0.5 and 0.05 × 0.2) tie, and priority decides."""
    return round(score * value, 12)


def score_of(table: Mapping[str, Mapping[str, float]], segments: Sequence[str], pid: str) -> float:
    """The first of the person's segments that scores ``pid``, else ``"*"``, else 0."""
    for s in segments:
        row = table.get(s)
        if row is not None and pid in row:
            return row[pid]
    row = table.get("*")
    return row.get(pid, 0.0) if row is not None else 0.0


def choose(allowed: Sequence[str], segments: Sequence[str], table: Mapping[str, Mapping[str, float]],
           values: Mapping[str, float], priority: Mapping[str, int]) -> str:
    """The winner by score × value; higher priority, then the smaller id, breaks ties."""
    return min(allowed, key=lambda pid: (-ranking_value(score_of(table, segments, pid), values.get(pid, 1.0)),
                                         -priority.get(pid, 0), pid))


def policy_probs(allowed: Sequence[str], segments: Sequence[str], table, values, priority,
                 explore_pct: float) -> dict[str, float]:
    """π(a | x) over the allowed promotions: the winner gets 1 − e, each gets e / k."""
    e = explore_pct / 100.0
    k = len(allowed)
    probs = {a: e / k for a in allowed}
    probs[choose(allowed, segments, table, values, priority)] += 1.0 - e
    return probs


def evaluate(lines: Iterable[bytes], *, table: Mapping[str, Mapping[str, float]], explore_pct: float = 0.0,
             values: Mapping[str, float] | None = None, priority: Mapping[str, int] | None = None
             ) -> dict[str, Any]:
    """The estimate of the new policy's and the logged policy's revenue per decision."""
    values = values or {}
    priority = priority or {}
    decisions: list[tuple[str, str, str, float, float, tuple, tuple, bool]] = []
    revenue: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    loads = orjson.loads
    for line in lines:
        try:
            ev = loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(ev, dict):
            continue
        kind = ev.get("kind")
        if kind in ("offer", "would_offer"):
            p = ev.get("propensity")
            allowed = ev.get("allowed") or [ev.get("promotion_id")]
            if not isinstance(p, (int, float)) or p <= 0 or not isinstance(ev.get("promotion_id"), str):
                continue
            decisions.append((str(ev.get("store")), str(ev.get("person")), ev["promotion_id"],
                              float(ev.get("ts") or 0.0), float(p), tuple(allowed),
                              tuple(ev.get("segments") or ()), kind == "offer"))
        elif kind == "purchase":
            total = ev.get("basket_total")
            if not isinstance(total, (int, float)):
                continue
            for a in ev.get("attributed") or ():
                if isinstance(a, dict) and a.get("arm") == "treated":
                    revenue.setdefault((str(ev.get("store")), str(ev.get("person")), str(a.get("promotion_id"))),
                                       []).append((float(ev.get("ts") or 0.0), float(total)))
    n = len(decisions)
    if n == 0:
        return {"decisions": 0, "value": None, "value_ci95": None, "logged_value": None,
                "logged_value_ci95": None}
    offers: dict[str, int] = {}
    total: dict[str, int] = {}
    for d in decisions:
        total[d[2]] = total.get(d[2], 0) + 1
        offers[d[2]] = offers.get(d[2], 0) + d[7]
    # each purchase rewards the latest offer of its (store, person, promotion) before it
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for i, d in enumerate(decisions):
        if d[7]:
            by_key.setdefault((d[0], d[1], d[2]), []).append(i)
    reward = [0.0] * n
    for key, buys in revenue.items():
        idx = sorted(by_key.get(key, ()), key=lambda i: decisions[i][3])
        for ts, amount in buys:
            best = None
            for i in idx:
                if decisions[i][3] <= ts:
                    best = i
            if best is not None:
                reward[best] += amount
    new_terms = []
    log_terms = []
    for i, (_s, _p, pid, _ts, prop, allowed, segs, treated) in enumerate(decisions):
        if not treated:
            new_terms.append(0.0)
            log_terms.append(0.0)
            continue
        t = offers[pid] / total[pid]
        pi = policy_probs(allowed, segs, table, values, priority, explore_pct).get(pid, 0.0)
        new_terms.append(pi / (prop * t) * reward[i])
        log_terms.append(reward[i] / t)

    def mean_ci(xs: list[float]) -> tuple[float, list[float] | None]:
        m = sum(xs) / n
        if n < 2:
            return m, None
        var = sum((x - m) ** 2 for x in xs) / (n - 1)
        h = Z95 * math.sqrt(var / n)
        return m, [m - h, m + h]

    v, ci = mean_ci(new_terms)
    lv, lci = mean_ci(log_terms)
    r = (lambda x: round(x, 4))
    return {"decisions": n, "offers": sum(offers.values()), "value": r(v),
            "value_ci95": [r(x) for x in ci] if ci else None, "logged_value": r(lv),
            "logged_value_ci95": [r(x) for x in lci] if lci else None}
