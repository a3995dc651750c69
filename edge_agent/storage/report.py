"""The campaign report: per promotion and variant, who was offered, who was
held out, who redeemed and who bought — and the uplift with its 95 % interval.

``edge-agent report --config store.toml [--since ISO] [--json]`` and
``GET /v1/admin/report?since=`` answer the same thing, computed by
:func:`build_report` over the agent's SQLite file (read-only; a handful of
grouped queries, one pass each over the exposures, redemptions,
attributions and audit rows of the period — indexes on their times).

Per variant (``"-"`` for a promotion without variants):

``offered``            offers sent (treated exposures)
``applied``            of those, applied by the shopper (a code was issued)
``redeemed``           of those, redeemed at a till
``holdout``            people held out (the promotion's holdout and the
                       global control group): would-offers
``converted_treated``  treated people with a redemption or an attributed
                       purchase after their offer
``converted_control``  held-out people with an attributed purchase after
                       their would-offer
``conversion_*``       converted / people in the arm (distinct people, not
                       offers: a person offered twice counts once); null
                       when the arm is empty
``uplift``             conversion_treated − conversion_control
``uplift_ci95``        ``[lo, hi]``: the Agresti–Caffo interval of the
                       difference of two proportions
``revenue_per_person_*``, ``basket_mean_*``, ``discount_cost``,
``incremental_revenue``, ``incremental_revenue_ci95``, ``incremental_margin``
                       the money (see :mod:`edge_agent.analytics.stats`);
                       fewer than 30 people in an arm: intervals null

and per promotion ``suppressed``: ``{reason: count}`` from the audit trail.
The command (``edge_agent.commands.report``) adds ``--chain``, which reads
central's exports instead (:mod:`edge_agent.analytics.chain`), and
``--policy-eval``, which evaluates a scores file on them
(:mod:`edge_agent.analytics.policy`).
"""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from edge_agent.analytics.stats import Arm, discount_of
from edge_agent.analytics.table import format_markdown, variant_row
from edge_agent.pipeline.campaigns import CONTROL, NO_VARIANT, TREATED

Z95 = 1.959963984540054


def two_proportion(x1: int, n1: int, x0: int, n0: int) -> tuple[float | None, float | None, float | None,
                                                                   list[float] | None]:
    """(rate treated, rate control, difference, 95 % interval of the difference)."""
    p1 = x1 / n1 if n1 else None
    p0 = x0 / n0 if n0 else None
    if p1 is None or p0 is None:
        return p1, p0, None, None
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    return p1, p0, diff, [diff - Z95 * se, diff + Z95 * se]


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _iso(ts: float | None, tz: ZoneInfo) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def build_report(conn: sqlite3.Connection, *, since: float | None, until: float, tz: ZoneInfo,
                 promotions: Iterable = ()) -> dict[str, Any]:
    """The report over ``[since, until)`` (``since`` None: from the start).
    ``promotions`` (the configured ones) add their variants with zero counts."""
    promotions = tuple(promotions)
    lo = since if since is not None else float("-inf")
    args = (lo, until)
    cells: dict[tuple[str, str], dict[str, float]] = {}

    def cell(pid: str, variant: str | None) -> dict[str, float]:
        key = (pid, variant or NO_VARIANT)
        c = cells.get(key)
        if c is None:
            c = cells[key] = {"offered": 0, "applied": 0, "redeemed": 0, "holdout": 0, "treated_people": 0,
                              "converted_treated": 0, "converted_control": 0}
        return c

    for p in promotions:
        for v in (p.variants or (None,)):
            cell(p.id, v.id if v is not None else None)
    q = conn.execute
    for pid, variant, arm, n, applied, people in q(
            "SELECT promotion_id, variant, arm, count(*), sum(applied), count(DISTINCT person) FROM exposures "
            "INDEXED BY exposures_report WHERE ts >= ? AND ts < ? GROUP BY promotion_id, variant, arm", args):
        c = cell(pid, variant)
        if arm == TREATED:
            c["offered"] += n
            c["applied"] += applied
            c["treated_people"] += people
        else:
            c["holdout"] += people
    for pid, variant, n in q(
            "SELECT promotion_id, variant, count(*) FROM redemptions WHERE offer_ts >= ? AND offer_ts < ? "
            "GROUP BY promotion_id, variant", args):
        cell(pid, variant)["redeemed"] += n
    # People per arm with what they bought: converted (an attributed purchase or a redemption after
    # their exposure) and their revenue (the attributed baskets, each purchase once per arm).
    arms: dict[tuple[str, str, str], Arm] = {}
    for pid, variant, arm, _person, converted, revenue, baskets in q(
            "WITH people AS (SELECT DISTINCT promotion_id, variant, arm, person FROM exposures INDEXED BY "
            "  exposures_report WHERE ts >= ? AND ts < ?),"
            " bought AS (SELECT a.promotion_id, a.variant, a.arm, a.person, sum(coalesce(p.basket_total, 0)) AS rev,"
            "  count(p.basket_total) AS n FROM (SELECT DISTINCT purchase_id, promotion_id, variant, arm, person"
            "  FROM attributions INDEXED BY attributions_report WHERE exposure_ts >= ? AND exposure_ts < ?) a"
            "  JOIN purchases p ON p.id = a.purchase_id GROUP BY 1, 2, 3, 4),"
            " redeemed AS (SELECT DISTINCT promotion_id, variant, person FROM redemptions"
            "  WHERE offer_ts >= ? AND offer_ts < ?)"
            " SELECT e.promotion_id, e.variant, e.arm, e.person,"
            "  (b.person IS NOT NULL OR r.person IS NOT NULL), coalesce(b.rev, 0), coalesce(b.n, 0)"
            " FROM people e LEFT JOIN bought b ON b.promotion_id = e.promotion_id AND b.variant IS e.variant"
            "  AND b.arm = e.arm AND b.person = e.person"
            " LEFT JOIN redeemed r ON e.arm = 'treated' AND r.promotion_id = e.promotion_id"
            "  AND r.variant IS e.variant AND r.person = e.person", args + args + args):
        key = (pid, variant or NO_VARIANT, arm)
        a = arms.get(key)
        if a is None:
            a = arms[key] = Arm()
        a.add(bool(converted), float(revenue), int(baskets))
    redeemed_baskets: dict[tuple[str, str], float] = {}
    for pid, variant, total in q("SELECT promotion_id, variant, sum(coalesce(basket_total, 0)) FROM redemptions "
                                 "WHERE offer_ts >= ? AND offer_ts < ? GROUP BY 1, 2", args):
        redeemed_baskets[(pid, variant or NO_VARIANT)] = float(total or 0.0)
    suppressed: dict[str, dict[str, int]] = {}
    audit_q = ("SELECT promotion_id, reason, count(*) FROM audit INDEXED BY audit_report "
               "WHERE outcome = 'suppressed' AND ts >= ? AND ts < ? GROUP BY promotion_id, reason")
    try:
        rows = q(audit_q, args).fetchall()
    except sqlite3.OperationalError:  # the audit table was rebuilt without the campaigns' index: slower, same answer
        rows = q(audit_q.replace(" INDEXED BY audit_report", ""), args).fetchall()
    for pid, reason, n in rows:
        if pid is not None:
            suppressed.setdefault(pid, {})[reason] = n

    configured = {p.id: p for p in promotions}
    out: dict[str, Any] = {}
    for (pid, variant), c in sorted(cells.items()):
        promo = configured.get(pid)
        cost = None
        if promo is not None:
            d = promo.discount
            cost = 0.0 if d is None else (d.amount * c["redeemed"] if d.amount is not None else
                                          discount_of({"pct": d.pct}, redeemed_baskets.get((pid, variant), 0.0)))
        strata = [(arms.get((pid, variant, TREATED), Arm()), arms.get((pid, variant, CONTROL), Arm()))]
        row = variant_row(offered=int(c["offered"]), applied=int(c["applied"]), redeemed=int(c["redeemed"]),
                          strata=strata, discount_cost=cost,
                          margin_pct=promo.margin_pct if promo is not None else None)
        out.setdefault(pid, {"variants": {}, "suppressed": {}})["variants"][variant] = row
    for pid, reasons in suppressed.items():
        out.setdefault(pid, {"variants": {}, "suppressed": {}})["suppressed"] = dict(sorted(reasons.items()))
    return {"since": _iso(since, tz), "until": _iso(until, tz), "promotions": dict(sorted(out.items()))}


__all__ = ["build_report", "format_markdown", "two_proportion", "CONTROL", "TREATED"]
