"""``edge-agent report``: the campaign report of one store, or of the chain.

``edge-agent report --config store.toml [--since ISO] [--json]`` prints
:func:`edge_agent.storage.report.build_report` over the agent's SQLite file
(read-only) — the same as ``GET /v1/admin/report``; ``--chain EXPORT…``
reads central's event exports instead (:mod:`edge_agent.analytics.chain`,
``--by-store``, ``--json``), and ``--policy-eval scores.json EXPORT…``
estimates what another scores file would have earned
(:mod:`edge_agent.analytics.policy`).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from edge_agent.analytics.table import format_markdown
from edge_agent.storage.report import CONTROL, TREATED, build_report, two_proportion

def _promotions_file(path: str | None) -> dict[str, Any] | None:
    """``--promotions promotions.json`` parsed like the store's (ConfigError / OSError on a bad one)."""
    if path is None:
        return None
    from store_config.load import parse_promotions

    with open(path, "rb") as f:
        raw = json.load(f)
    return {p.id: p for p in parse_promotions(raw, file=str(path), timezone="UTC")}


def run_chain(args: argparse.Namespace) -> int:
    """``report --chain EVENTS...``: the stratified table across the chain's stores."""
    from store_config.model import ConfigError

    from edge_agent.analytics.chain import ExportError, chain_report

    try:
        promotions = _promotions_file(args.promotions)
        report = chain_report(args.chain, promotions=promotions, by_store=args.by_store)
    except (ExportError, ConfigError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    out = [format_markdown(report, title="Chain campaign report")]
    for store, rep in report.get("by_store", {}).items():
        out.append(format_markdown({"since": report["since"], "until": report["until"], **rep},
                                   title=f"Store {store}"))
    sys.stdout.write("\n".join(out))
    return 0


def run_policy(args: argparse.Namespace) -> int:
    """``report --policy-eval scores.json EXPORT...``: the scores file's estimated revenue per decision."""
    from store_config.load import parse_scores
    from store_config.model import ConfigError

    from edge_agent.analytics.chain import ExportError, read_lines
    from edge_agent.analytics.policy import evaluate, promo_value

    if len(args.policy_eval) < 2:
        print("error: --policy-eval needs a scores file and at least one export", file=sys.stderr)
        return 2
    scores_path, *exports = args.policy_eval
    try:
        with open(scores_path, "rb") as f:
            scores = parse_scores(json.load(f), file=scores_path)
        promotions = _promotions_file(args.promotions) or {}
        out = evaluate(read_lines(exports), table=scores.table, explore_pct=args.explore_pct,
                       values={pid: promo_value(p) for pid, p in promotions.items()},
                       priority={pid: p.priority for pid, p in promotions.items()})
    except (ExportError, ConfigError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    out = {"model": scores.model, **out}
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    if out["value"] is None:
        sys.stdout.write("No logged decisions with a propensity in these exports.\n")
        return 0

    def ci(c):
        return "not enough data" if c is None else f"{c[0]:,.2f} to {c[1]:,.2f}"
    sys.stdout.write(
        f"Policy evaluation of {scores.model} over {out['decisions']} logged decisions "
        f"(inverse propensity weighting)\n\n"
        f"| policy | revenue per decision | 95 % interval |\n|---|---:|---|\n"
        f"| {scores.model} (new) | {out['value']:,.2f} | {ci(out['value_ci95'])} |\n"
        f"| logged (what ran) | {out['logged_value']:,.2f} | {ci(out['logged_value_ci95'])} |\n")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` command: 0 on success, 2 when the ledger cannot be read."""
    from store_config import load_store
    from store_config.model import ConfigError

    if getattr(args, "chain", None):
        return run_chain(args)
    if getattr(args, "policy_eval", None):
        return run_policy(args)
    if not args.config:
        print("error: report needs --config store.toml, --chain EVENTS... or --policy-eval SCORES EVENTS...",
              file=sys.stderr)
        return 2

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
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_markdown(report))
    return 0


__all__ = ["build_report", "format_markdown", "two_proportion", "run_report", "CONTROL", "TREATED"]
