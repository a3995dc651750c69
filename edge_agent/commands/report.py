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
``uplift_ci95``        ``[lo, hi]``: uplift ± 1.96 × the unpooled standard
                       error of the difference of two proportions (Wald)

and per promotion ``suppressed``: ``{reason: count}`` from the audit trail.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo

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
    for pid, variant, arm, n in q(
            "SELECT promotion_id, variant, arm, count(DISTINCT person) FROM ("
            " SELECT promotion_id, variant, arm, person FROM attributions INDEXED BY attributions_report"
            "  WHERE exposure_ts >= ? AND exposure_ts < ?"
            " UNION ALL"
            " SELECT promotion_id, variant, 'treated', person FROM redemptions WHERE offer_ts >= ? AND offer_ts < ?"
            ") GROUP BY promotion_id, variant, arm", args + args):
        cell(pid, variant)["converted_treated" if arm == TREATED else "converted_control"] += n
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

    out: dict[str, Any] = {}
    for (pid, variant), c in sorted(cells.items()):
        p1, p0, diff, ci = two_proportion(int(c["converted_treated"]), int(c["treated_people"]),
                                          int(c["converted_control"]), int(c["holdout"]))
        out.setdefault(pid, {"variants": {}, "suppressed": {}})["variants"][variant] = {
            "offered": int(c["offered"]), "applied": int(c["applied"]), "redeemed": int(c["redeemed"]),
            "holdout": int(c["holdout"]), "converted_treated": int(c["converted_treated"]),
            "converted_control": int(c["converted_control"]), "conversion_treated": _r(p1),
            "conversion_control": _r(p0), "uplift": _r(diff), "uplift_ci95": [_r(x) for x in ci] if ci else None,
        }
    for pid, reasons in suppressed.items():
        out.setdefault(pid, {"variants": {}, "suppressed": {}})["suppressed"] = dict(sorted(reasons.items()))
    return {"since": _iso(since, tz), "until": _iso(until, tz), "promotions": dict(sorted(out.items()))}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _pts(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f} pts"


def format_markdown(report: dict[str, Any]) -> str:
    """A Markdown table a category manager can paste, then the suppressions."""
    period = f"{report['since'] or 'the start'} → {report['until']}"
    lines = [f"Campaign report, {period}", "",
             "| promotion | variant | offered | applied | redeemed | held out | converted (treated) "
             "| converted (control) | uplift | 95 % interval |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for pid, p in report["promotions"].items():
        for vid, v in p["variants"].items():
            ci = v["uplift_ci95"]
            ci_s = "–" if ci is None else f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pts"
            lines.append(
                f"| {pid} | {vid} | {v['offered']} | {v['applied']} | {v['redeemed']} | {v['holdout']} "
                f"| {v['converted_treated']} ({_pct(v['conversion_treated'])}) "
                f"| {v['converted_control']} ({_pct(v['conversion_control'])}) "
                f"| {_pts(v['uplift'])} | {ci_s} |")
    supp = [(pid, r, n) for pid, p in report["promotions"].items() for r, n in p["suppressed"].items()]
    if supp:
        lines += ["", "| promotion | suppressed because | decisions |", "|---|---|---:|"]
        lines += [f"| {pid} | {r} | {n} |" for pid, r, n in supp]
    return "\n".join(lines) + "\n"


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` command: 0 on success, 2 when the ledger cannot be read."""
    from store_config import load_store
    from store_config.model import ConfigError

    from .audit import LEDGER_FILE, AuditError, locate, open_readonly, parse_since

    try:
        data_dir, tz = locate(args.config)
        since = parse_since(str(args.since), tz) if args.since else None
        try:
            promotions = load_store(args.config).promotions
        except (ConfigError, OSError):
            promotions = ()
        with closing(open_readonly(Path(data_dir) / LEDGER_FILE)) as conn:
            report = build_report(conn, since=since, until=time.time(), tz=tz, promotions=promotions)
    except (AuditError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_markdown(report))
    return 0


__all__ = ["build_report", "format_markdown", "two_proportion", "run_report", "CONTROL", "TREATED"]
