"""The push webhook's queue: the ``delivery`` table and its migrations.

One row per message waiting for the retailer's push service (see
``edge_agent.transport.webhook``, which stages rows in each commit and sends
them): its key (the ``Idempotency-Key``), kind, the device's pseudonym and
its raw id only encrypted, the JSON payload, attempts, and whether it was
set aside.  On the ledger's connection; the caller owns transactions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from sync.schema import migrate

MIGRATIONS: dict[int, str] = {1: """
CREATE TABLE IF NOT EXISTS delivery (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    device_enc BLOB NOT NULL,
    payload TEXT NOT NULL,
    ts REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    aside INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS delivery_waiting ON delivery(aside, seq);
CREATE INDEX IF NOT EXISTS delivery_device ON delivery(device);
"""}


@dataclass(slots=True)
class Row:
    seq: int
    key: str
    kind: str  # "offer" | "notice": the topic level
    device_enc: bytes
    payload: str


class DeliveryTable:
    """The webhook's queue, on the ledger's connection (the caller owns transactions)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        migrate(conn, "delivery", MIGRATIONS)

    def put(self, rows: list[tuple]) -> None:
        """rows: (key, kind, device pseudonym, encrypted raw id, payload JSON, ts); a known key is ignored."""
        self.conn.executemany("INSERT OR IGNORE INTO delivery(key, kind, device, device_enc, payload, ts) "
                              "VALUES (?,?,?,?,?,?)", rows)

    def waiting(self, limit: int) -> list[Row]:
        return [Row(*r) for r in self.conn.execute(
            "SELECT seq, key, kind, device_enc, payload FROM delivery WHERE aside = 0 ORDER BY seq LIMIT ?",
            (limit,))]

    def pending(self) -> int:
        return self.conn.execute("SELECT count(*) FROM delivery WHERE aside = 0").fetchone()[0]

    def aside_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM delivery WHERE aside = 1").fetchone()[0]

    def delete(self, seqs: list[int]) -> None:
        self.conn.executemany("DELETE FROM delivery WHERE seq = ?", [(s,) for s in seqs])

    def attempted(self, seqs: list[int]) -> None:
        self.conn.executemany("UPDATE delivery SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs])

    def set_aside(self, seq: int, status: int | None, error: str) -> None:
        self.conn.execute("UPDATE delivery SET aside = 1, status = ?, error = ?, attempts = attempts + 1 "
                          "WHERE seq = ?", (status, error[:1000], seq))

    def requeue(self) -> int:
        return self.conn.execute("UPDATE delivery SET aside = 0, status = NULL, error = NULL "
                                 "WHERE aside = 1").rowcount

    def forget(self, device: str) -> None:
        self.conn.execute("DELETE FROM delivery WHERE device = ?", (device,))

    def purge_aside(self, before: float) -> int:
        return self.conn.execute("DELETE FROM delivery WHERE aside = 1 AND ts < ?", (before,)).rowcount
