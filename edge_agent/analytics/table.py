"""The report's rows and its Markdown: one shape for a store's report
(``edge-agent report``, ``GET /v1/admin/report``) and the chain's
(``edge-agent report --chain``).

A variant row: ``offered``, ``applied``, ``redeemed``, ``holdout`` (people
held out), ``converted_treated``, ``converted_control``,
``conversion_treated``, ``conversion_control``, ``uplift``, ``uplift_ci95``,
``revenue_per_person_treated``, ``revenue_per_person_control``,
``basket_mean_treated``, ``basket_mean_control``, ``discount_cost``,
``incremental_revenue``, ``incremental_revenue_ci95``,
``incremental_margin`` — see :mod:`.stats` for the method.
"""

from __future__ import annotations

from typing import Any, Sequence

from .stats import MIN_PEOPLE, Arm, estimate, money_fields

__all__ = ["variant_row", "format_markdown", "verdicts"]


def variant_row(*, offered: int, applied: int, redeemed: int, strata: Sequence[tuple[Arm, Arm]],
                discount_cost: float | None, margin_pct: float | None) -> dict[str, Any]:
    """One variant's row over its strata of (treated, control) arms."""
    est = estimate(strata)
    return {"offered": offered, "applied": applied, "redeemed": redeemed, "holdout": est["people_control"],
            "converted_treated": est["converted_treated"], "converted_control": est["converted_control"],
            **money_fields(est, discount_cost=discount_cost, margin_pct=margin_pct)}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _pts(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f} pts"


def _money(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+,.2f}" if sign else f"{v:,.2f}"


NOT_ENOUGH = "not enough data"


def _rows(report: dict[str, Any]):
    for pid, p in report["promotions"].items():
        for vid, v in p["variants"].items():
            yield pid, vid, v


def _short(v: dict[str, Any]) -> bool:
    """Fewer than MIN_PEOPLE people in an arm (or an arm empty): no interval at all."""
    return v["uplift_ci95"] is None


def verdicts(report: dict[str, Any]) -> list[str]:
    """One sentence per variant: did it earn money, and how sure are we."""
    out = []
    for pid, vid, v in _rows(report):
        name = pid if vid == "-" else f"{pid} ({vid})"
        ci = v["incremental_revenue_ci95"]
        inc = v["incremental_revenue"]
        if v["offered"] == 0 and v["holdout"] == 0:
            continue
        if ci is None:
            offers = f"{v['offered']} offer{'' if v['offered'] == 1 else 's'}"
            held = f"{v['holdout']} {'person' if v['holdout'] == 1 else 'people'} held out"
            why = (f"{held}, {offers}; {MIN_PEOPLE} people needed in each group" if _short(v)
                   else "no purchase in either group yet" if v["basket_mean_treated"] is None
                   and v["basket_mean_control"] is None else "no spread in the revenue to size an interval by")
            out.append(f"- **{name}**: {NOT_ENOUGH} ({why}).")
            continue
        margin = v["incremental_margin"]
        tail = f"; after the discount ({_money(v['discount_cost'])}) the margin gained is {_money(margin, True)}" \
            if margin is not None else ""
        rng = f"95 % interval {_money(ci[0], True)} to {_money(ci[1], True)}"
        if ci[0] > 0:
            out.append(f"- **{name} earned money**: {_money(inc, True)} beyond what the held-out shoppers "
                       f"spent ({rng}: sure it earned something){tail}.")
        elif ci[1] < 0:
            out.append(f"- **{name} lost money**: {_money(inc, True)} ({rng}: sure it cost sales){tail}.")
        else:
            out.append(f"- **{name}**: {_money(inc, True)}, but not sure yet ({rng} includes 0){tail}.")
    return out


def format_markdown(report: dict[str, Any], *, title: str = "Campaign report") -> str:
    """Tables a category manager can paste: conversion, then money, then the
    verdicts and the suppressions."""
    period = f"{report['since'] or 'the start'} → {report['until']}"
    head = f"{title}, {period}"
    if "stores" in report:
        head += f", {report['stores']} store{'s' if report['stores'] != 1 else ''}"
    lines = [head, "",
             "| promotion | variant | offered | applied | redeemed | held out | converted (treated) "
             "| converted (control) | uplift | 95 % interval |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = list(_rows(report))
    for pid, vid, v in rows:
        ci = v["uplift_ci95"]
        ci_s = NOT_ENOUGH if ci is None else f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pts"
        lines.append(
            f"| {pid} | {vid} | {v['offered']} | {v['applied']} | {v['redeemed']} | {v['holdout']} "
            f"| {v['converted_treated']} ({_pct(v['conversion_treated'])}) "
            f"| {v['converted_control']} ({_pct(v['conversion_control'])}) "
            f"| {_pts(v['uplift'])} | {ci_s} |")
    if rows:
        lines += ["", "| promotion | variant | revenue / person (treated) | revenue / person (control) "
                      "| basket (treated) | basket (control) | discount cost | incremental revenue "
                      "| 95 % interval | incremental margin |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for pid, vid, v in rows:
            ci = v["incremental_revenue_ci95"]
            ci_s = (NOT_ENOUGH if _short(v) else "–") if ci is None else \
                f"{_money(ci[0], True)} to {_money(ci[1], True)}"
            lines.append(
                f"| {pid} | {vid} | {_money(v['revenue_per_person_treated'])} "
                f"| {_money(v['revenue_per_person_control'])} | {_money(v['basket_mean_treated'])} "
                f"| {_money(v['basket_mean_control'])} | {_money(v['discount_cost'])} "
                f"| {_money(v['incremental_revenue'], True)} | {ci_s} | {_money(v['incremental_margin'], True)} |")
        said = verdicts(report)
        if said:
            lines += ["", "What earned money (incremental revenue: what the offered shoppers spent beyond "
                          "the held-out ones, scaled to the offered people):", ""] + said
    supp = [(pid, r, n) for pid, p in report["promotions"].items() for r, n in p["suppressed"].items()]
    if supp:
        lines += ["", "| promotion | suppressed because | decisions |", "|---|---|---:|"]
        lines += [f"| {pid} | {r} | {n} |" for pid, r, n in supp]
    return "\n".join(lines) + "\n"
