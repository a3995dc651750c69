"""The durable outbox: every event bound for central, in SQLite (WAL).

Rows are appended in the same transaction as the state they describe (the
ledger owns the connection and the transaction); the uplink takes them in
order, and deletes them only after central acknowledged them.

Classes decide what is shed when the outbox is over its bound:
``0`` analytics (transitions) and dead letters (anyone on the store network
can make those), shed first, oldest first; ``1`` ordinary events (offers,
suppressions, alerts); ``2`` never shed
(redemptions, dismissals, consent changes, forgets).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable

from .schema import migrate

SHED_ANALYTICS, SHED_NORMAL, NEVER_SHED = 0, 1, 2
KIND_CLASS = {
    "transition": SHED_ANALYTICS,
    "deadletter": SHED_ANALYTICS,  # a flood of garbage never pushes an offer out
    "redemption": NEVER_SHED,
    "dismissal": NEVER_SHED,
    "consent": NEVER_SHED,
    "forget": NEVER_SHED,  # central must hear it to erase its copy
}

ROW_OVERHEAD = 48  # bytes per row beyond its text: record header, rowid, ts, cls, index entry

MIGRATIONS: dict[int, str] = {1: """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    cls INTEGER NOT NULL,
    device TEXT,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_aside (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    device TEXT,
    ts REAL NOT NULL,
    body TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    set_aside_at REAL NOT NULL
);
"""}


@dataclass(slots=True)
class Event:
    key: str
    kind: str
    ts: float
    device: str | None
    body: dict[str, Any]


class Outbox:
    """Outbox rows on a connection owned by someone else (the ledger)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        migrate(conn, "outbox", MIGRATIONS)

    def append(self, events: Iterable[Event]) -> None:
        """Insert events; the caller commits (with the state they describe)."""
        self.conn.executemany(
            "INSERT OR IGNORE INTO outbox(key, kind, cls, device, ts, body) VALUES (?,?,?,?,?,?)",
            [(e.key, e.kind, KIND_CLASS.get(e.kind, SHED_NORMAL), e.device, e.ts,
              json.dumps(e.body, separators=(",", ":"))) for e in events],
        )

    def pending(self) -> int:
        return self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def peek(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest ``limit`` events, in order, as (seq, event dict)."""
        rows = self.conn.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(seq, json.loads(body)) for seq, body in rows]

    def peek_after(self, after_seq: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Like :meth:`peek`, for events with ``seq > after_seq`` (rows already in flight are skipped)."""
        rows = self.conn.execute("SELECT seq, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                                 (after_seq, limit)).fetchall()
        return [(seq, json.loads(body)) for seq, body in rows]

    def still_pending(self, seqs: list[int]) -> list[tuple[int, dict[str, Any]]]:
        """Those of ``seqs`` still in the outbox (a retried batch minus what was shed or forgotten)."""
        out: list[tuple[int, dict[str, Any]]] = []
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            rows = self.conn.execute(
                f"SELECT seq, body FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) ORDER BY seq",
                chunk).fetchall()
            out.extend((seq, json.loads(body)) for seq, body in rows)
        return out

    def size_estimate(self) -> tuple[int, int]:
        """(rows, estimated bytes on disk): rows × the average size of the
        newest 256 rows (body + key + fixed overhead for the row and the key
        index).  Cheap enough to run every few seconds on a million rows."""
        n = self.pending()
        if n == 0:
            return 0, 0
        avg = self.conn.execute(
            "SELECT avg(length(body) + 2 * length(key) + length(kind) + coalesce(length(device), 0)) "
            "FROM (SELECT body, key, kind, device FROM outbox ORDER BY seq DESC LIMIT 256)").fetchone()[0]
        return n, int(n * (float(avg or 0.0) + ROW_OVERHEAD))

    def count_by_class(self) -> dict[int, int]:
        return dict(self.conn.execute("SELECT cls, count(*) FROM outbox GROUP BY cls").fetchall())

    def purge_aside(self, before: float) -> int:
        """Delete set-aside rows set aside before ``before`` (retention); the caller commits."""
        return self.conn.execute("DELETE FROM outbox_aside WHERE set_aside_at < ?", (before,)).rowcount

    def delete(self, seqs: list[int]) -> None:
        self.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def set_aside(self, seqs: list[int], *, status: int | None, error: str, now: float) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO outbox_aside(seq, key, kind, device, ts, body, status, error, set_aside_at) "
            "SELECT seq, key, kind, device, ts, body, ?, ?, ? FROM outbox WHERE seq = ?",
            [(status, error, now, s) for s in seqs])
        self.delete(seqs)

    def aside_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM outbox_aside").fetchone()[0]

    def shed(self, max_rows_to_drop: int) -> dict[str, int]:
        """Drop up to N sheddable events: analytics first, then ordinary ones,
        oldest first; never class 2.  Returns counts dropped per kind."""
        dropped: dict[str, int] = {}
        left = max_rows_to_drop
        for cls in (SHED_ANALYTICS, SHED_NORMAL):
            if left <= 0:
                break
            rows = self.conn.execute(
                "SELECT seq, kind FROM outbox WHERE cls = ? ORDER BY seq LIMIT ?", (cls, left)).fetchall()
            if rows:
                self.delete([r[0] for r in rows])
                for _, kind in rows:
                    dropped[kind] = dropped.get(kind, 0) + 1
                left -= len(rows)
        return dropped

    def requeue_aside(self) -> int:
        """Put every set-aside event back in the outbox under its original
        ``seq`` (so order is kept) and key (so central still dedupes), and count
        the requeue (:meth:`requeues`: a requeued batch goes out under a new
        ``Idempotency-Key``)."""
        rows = self.conn.execute("SELECT seq, key, kind, device, ts, body FROM outbox_aside ORDER BY seq").fetchall()
        self.conn.executemany(
            "INSERT OR IGNORE INTO outbox(seq, key, kind, cls, device, ts, body) VALUES (?,?,?,?,?,?,?)",
            [(seq, key, kind, KIND_CLASS.get(kind, SHED_NORMAL), device, ts, body)
             for seq, key, kind, device, ts, body in rows])
        self.conn.execute("DELETE FROM outbox_aside")
        if rows:
            self.conn.execute("INSERT INTO meta(k, v) VALUES ('outbox_requeues', '1') "
                              "ON CONFLICT(k) DO UPDATE SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT)")
        return len(rows)

    def requeues(self) -> int:
        """How many times set-aside events were put back (0 before the first)."""
        row = self.conn.execute("SELECT v FROM meta WHERE k = 'outbox_requeues'").fetchone()
        return int(row[0]) if row else 0
