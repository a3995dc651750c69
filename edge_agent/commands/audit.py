"""``edge-agent audit``: read the decision audit trail of a store.

Opens the ledger (``{data dir}/edge.sqlite3``) **read-only**, so it is safe
beside a running agent, and looks a device up by its pseudonym (the raw id
given on the command line is hashed with the store's key,
``{data dir}/pseudonym.key``; the key is read, never created).  Prints a
table, or JSON lines with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tomllib
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from store_config import load_store
from store_config.model import ConfigError
from sync.pseudonym import Pseudonymizer

from edge_agent.storage.ledger import AuditError, parse_since, read_audit

LEDGER_FILE = "edge.sqlite3"
KEY_FILE = "pseudonym.key"


def locate(config: str | Path) -> tuple[Path, ZoneInfo]:
    """The data directory and store time zone of a ``store.toml``.

    A store whose other files do not validate right now can still be
    audited: only ``[store] timezone`` and ``[data] dir`` are needed then."""
    try:
        cfg = load_store(config)
        return Path(cfg.data_dir), ZoneInfo(cfg.timezone)
    except ConfigError as exc:
        try:
            doc = tomllib.loads(Path(config).read_text(encoding="utf-8"))
            tz = ZoneInfo(doc["store"]["timezone"])
            rel = doc.get("data", {}).get("dir", "var")
        except Exception:
            more = len(exc.problems) - 1
            raise AuditError(f"configuration refused: {exc.problems[0]}" + (f" (and {more} more)" if more else "")
                             + f"; `edge-agent check --config {config}` lists every error") from None
        print(f"warning: {config} has problems ({len(exc.problems)}); reading the audit trail anyway",
              file=sys.stderr)
        return (Path(config).resolve().parent / rel).resolve(), tz


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise AuditError(f"no ledger at {path} (has the agent run with this config?)")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def pseudonym_for(data_dir: Path, device: str) -> str:
    key = data_dir / KEY_FILE
    try:
        secret = key.read_bytes()
    except FileNotFoundError:
        raise AuditError(f"no pseudonym key at {key}: devices cannot be looked up") from None
    return Pseudonymizer(secret).device(device)


def format_table(rows: list[dict[str, Any]], tz: ZoneInfo, *, with_device: bool) -> str:
    cols = [("time", 25), ("event", 5), ("zone", 14), ("promotion", 16), ("outcome", 10), ("reason", 16),
            ("offer", 18)]
    if with_device:
        cols.insert(1, ("device", 28))
    lines = ["  ".join(name.ljust(w) for name, w in cols).rstrip()]
    for r in rows:
        vals = {"time": datetime.fromtimestamp(r["ts"], tz).isoformat(timespec="seconds"),
                "device": r["device"], "event": r["event"], "zone": r["zone"] or "-",
                "promotion": r["promotion_id"] or "-", "outcome": r["outcome"], "reason": r["reason"],
                "offer": r["offer_id"] or "-"}
        lines.append("  ".join(str(vals[name]).ljust(w) for name, w in cols).rstrip())
    return "\n".join(lines)


def run_audit(args: argparse.Namespace) -> int:
    """The ``audit`` command: 0 on success, 2 when the trail cannot be read."""
    try:
        data_dir, tz = locate(args.config)
        since = parse_since(str(args.since), tz)
        if args.limit < 1:
            raise AuditError("--limit must be at least 1")
        with closing(open_readonly(data_dir / LEDGER_FILE)) as conn:
            device = pseudonym_for(data_dir, args.device) if args.device else None
            rows = read_audit(conn, device=device, since=since, limit=args.limit)
    except (AuditError, sqlite3.Error) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for r in rows:
            r["time"] = datetime.fromtimestamp(r["ts"], tz).isoformat()
            sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
    else:
        print(format_table(rows, tz, with_device=not args.device))
        print(f"{len(rows)} decision(s)" + (f" for {device}" if args.device else ""), file=sys.stderr)
    return 0
