"""One migration mechanism for every table in the agent's SQLite file.

Each owner of tables (the offer ledger, consent, inventory, the outbox)
declares its own numbered steps, ``{version: sql}``; :func:`migrate` applies
the steps a file has not seen yet, each in its own transaction, and records
the owner's version in ``schema_versions``.  Steps use ``IF NOT EXISTS`` where
they create, so a file from before this table existed upgrades cleanly.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger("sync.schema")


def migrate(conn: sqlite3.Connection, component: str, steps: dict[int, str]) -> int:
    """Bring ``component``'s tables to its newest step; returns that version.
    Call outside a transaction (on an ``isolation_level=None`` connection)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
    current = row[0] if row else 0
    for version in sorted(steps):
        if version > current:
            if current:
                log.info("migrating %s tables to schema %d", component, version)
            conn.executescript(f"BEGIN;{steps[version]};"
                               f"INSERT OR REPLACE INTO schema_versions(component, version) "
                               f"VALUES ('{component}', {int(version)}); COMMIT;")
            current = version
    return current
