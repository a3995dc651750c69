"""The offer ledger, redemption codes, audit trail and outbox: one SQLite file.

One file, so an offer's ledger row and its outbox event commit in the same
transaction, before the offer is published.  WAL with ``synchronous=NORMAL``:
an application crash loses nothing committed; a power cut may lose the last
few milliseconds of commits.

Device ids are stored only as keyed pseudonyms; zones of devices without
tracking consent are not stored.  Commits are batched by the caller (one
``commit()`` per processed batch), never one per ping.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from sync.outbox import Event, Outbox
from sync.schema import migrate


log = logging.getLogger("edge_agent.storage.ledger")


MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS offers (
        offer_id TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        promotion_id TEXT NOT NULL,
        zone TEXT,
        ts REAL NOT NULL,
        expires REAL NOT NULL,
        payload TEXT NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        code TEXT UNIQUE,
        action TEXT,
        action_ts REAL
    );
    CREATE INDEX IF NOT EXISTS offers_device_ts ON offers(device, ts);
    CREATE INDEX IF NOT EXISTS offers_undelivered ON offers(delivered, expires);
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        device TEXT NOT NULL,
        event TEXT NOT NULL,
        zone TEXT,
        promotion_id TEXT,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        offer_id TEXT
    );
    CREATE INDEX IF NOT EXISTS audit_device_ts ON audit(device, ts);
    CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
    """,
    # The raw id an unacknowledged offer is re-published to, sealed (edge_agent.storage.privacy);
    # NULL once the broker acknowledged the offer, it expired, or the device was forgotten.
    2: "ALTER TABLE offers ADD COLUMN sealed BLOB",
    # A batch's rows, committed before its offers are published and written into
    # their tables right after (storage/store.py, Store.hold): empty but for a failed or cut-off
    # second write, which the next commit or the next start finishes.
    3: "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, rows BLOB NOT NULL)",
}


# SQLite's own WAL checkpoint runs inside the commit that crosses wal_autocheckpoint (1,000 pages):
# measured at 5,000 pings/s (100 offers/s) it came every ~0.5 s and took that commit 4-5.5 ms, the
# synchronous=NORMAL fsyncs included (BENCHMARKS.md section 13).  The agent checkpoints from a thread
# instead; the automatic one stays as a safety net, at a size the thread never lets the WAL reach.
CHECKPOINT_INTERVAL_S = 0.25
AUTOCHECKPOINT_SAFETY_PAGES = 20_000  # ~80 MB of WAL


class Checkpointer:
    """A PASSIVE WAL checkpoint every ``interval_s`` on a connection and thread of its own.

    In WAL mode a checkpoint runs beside the writer: it copies committed frames
    into the database file while the loop goes on committing (it never waits for
    a lock and never makes the writer wait), and SQLite starts the WAL over at the
    next write after one that copied everything.  sqlite3 releases the GIL while
    the checkpoint (its copying and fsyncs) runs."""

    def __init__(self, path: Path, interval_s: float = CHECKPOINT_INTERVAL_S):
        self.interval_s = interval_s
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._stop = threading.Event()
        self.runs = 0
        self.ran = threading.Event()  # set after each run (tests wait on it)
        self.thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(self.interval_s):
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.runs += 1
                self.ran.set()
                failed = False
            except sqlite3.Error as exc:  # the writer reports storage errors; say it here once
                if not failed:
                    log.warning("WAL checkpoint failed (%s); retrying every %.2f s", exc, self.interval_s)
                failed = True

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        self.conn.close()


@dataclass(slots=True)
class OfferRow:
    offer_id: str
    device: str
    promotion_id: str
    zone: str | None
    ts: float
    expires: float
    payload: dict[str, Any]
    delivered: bool
    code: str | None
    action: str | None
    sealed: bytes | None = None


class Ledger:
    """Owns the SQLite connection; call from one thread (the event loop)."""

    def __init__(self, path: Path, *, store_id: str, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store_id = store_id
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=2000")  # bounded: the loop thread waits on it
        # A forgotten device's rows are overwritten on delete, not left in free pages.
        self.conn.execute("PRAGMA secure_delete=ON")
        migrate(self.conn, "ledger", MIGRATIONS)
        self.outbox = Outbox(self.conn)
        self.conn.execute("BEGIN")
        # A random id per ledger file + a boot epoch per start + a monotonic
        # sequence make event keys unique — also across a wiped data dir, a
        # replaced gateway or a corrupt ledger moved aside — and stable: once
        # written, an event's key never changes.
        row = self.conn.execute("SELECT v FROM meta WHERE k='install'").fetchone()
        self.install = row[0] if row else secrets.token_hex(4)
        if not row:
            self.conn.execute("INSERT INTO meta(k, v) VALUES ('install', ?)", (self.install,))
        row = self.conn.execute("SELECT v FROM meta WHERE k='boot'").fetchone()
        self.boot = int(row[0]) + 1 if row else 1
        self.conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('boot', ?)", (str(self.boot),))
        self.conn.execute("COMMIT")
        self._seq = 0
        self._in_tx = False
        self.last_commit_s = 0.0
        self.checkpointer: Checkpointer | None = None

    def checkpoint_in_thread(self, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        """Copy the WAL into the database file from a thread of its own, never in a
        commit on the loop (see :class:`Checkpointer`); stopped by :meth:`close`."""
        if self.checkpointer is None:
            self.conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_SAFETY_PAGES}")
            self.checkpointer = Checkpointer(self.path, interval_s)

    def stop_checkpoints(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None

    # -- transactions
    def begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            t0 = time.perf_counter()
            self.conn.execute("COMMIT")
            self.last_commit_s = time.perf_counter() - t0
            self._in_tx = False

    @property
    def in_transaction(self) -> bool:
        """A write is open (something will be committed)."""
        return self._in_tx

    def rollback(self) -> None:
        """End the open transaction; also after SQLite already rolled it back
        itself (a disk I/O error or a full disk does that)."""
        if self._in_tx:
            self._in_tx = False
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.commit()
        self.stop_checkpoints()
        self.conn.close()

    # -- events
    def new_key(self) -> str:
        self._seq += 1
        return f"{self.store_id}:{self.install}:{self.boot}:{self._seq}"

    def event(self, kind: str, ts: float, device: str | None, **fields: Any) -> Event:
        """Build an outbox event (key, kind, ts, store, device + fields) and append it."""
        key = self.new_key()
        body = {"key": key, "kind": kind, "ts": ts, "store": self.store_id, "device": device,
                "boot": self.boot, "seq": self._seq}
        body.update(fields)
        ev = Event(key, kind, ts, device, body)
        self.begin()
        self.outbox.append((ev,))
        return ev

    # -- offers
    def add_offer(self, offer_id: str, device: str, promotion_id: str, zone: str | None,
                  ts: float, expires: float, payload: dict[str, Any], sealed: bytes | None = None) -> None:
        """``device`` is the pseudonym; ``sealed`` the raw id encrypted (``privacy.TopicSealer``)."""
        self.begin()
        self.conn.execute(
            "INSERT INTO offers(offer_id, device, promotion_id, zone, ts, expires, payload, sealed) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (offer_id, device, promotion_id, zone, ts, expires, json.dumps(payload, separators=(",", ":")), sealed))

    def mark_delivered(self, offer_ids: Iterable[str], state: int = 1) -> None:
        """1: the broker acknowledged the offer; 2: it expired unacknowledged (never re-sent).
        Either way its sealed topic is deleted: nothing will be re-sent."""
        self.begin()
        self.conn.executemany("UPDATE offers SET delivered = ?, sealed = NULL WHERE offer_id = ?",
                              [(state, o) for o in offer_ids])

    def expire_unsent(self, now: float) -> int:
        """Give up on unacknowledged offers past their ``expires`` that are not in
        flight any more (e.g. from before a restart): state 2, sealed topic deleted."""
        self.begin()
        return self.conn.execute("UPDATE offers SET delivered = 2, sealed = NULL "
                                 "WHERE delivered = 0 AND expires <= ?", (now,)).rowcount

    def undelivered(self, now: float) -> list[OfferRow]:
        rows = self.conn.execute(
            "SELECT offer_id, device, promotion_id, zone, ts, expires, payload, delivered, code, action, sealed "
            "FROM offers WHERE delivered = 0 AND expires > ? ORDER BY ts", (now,)).fetchall()
        return [self._row(r) for r in rows]

    def get_offer(self, offer_id: str) -> OfferRow | None:
        r = self.conn.execute(
            "SELECT offer_id, device, promotion_id, zone, ts, expires, payload, delivered, code, action, sealed "
            "FROM offers WHERE offer_id = ?", (offer_id,)).fetchone()
        return self._row(r) if r else None

    @staticmethod
    def _row(r) -> OfferRow:
        return OfferRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), bool(r[7]), r[8], r[9], r[10])

    def recent_offers(self, since: float) -> list[tuple[str, str, float]]:
        """(device pseudonym, promotion id, ts) of offers since ``since`` — to
        rebuild cooldowns and caps after a restart."""
        return self.conn.execute(
            "SELECT device, promotion_id, ts FROM offers WHERE ts >= ? ORDER BY ts", (since,)).fetchall()

    def recent_holdouts(self, since: float) -> list[tuple[str, str, float]]:
        """(device pseudonym, promotion id, last ts) of holdout decisions since
        ``since``: a holdout cools a promotion down like an offer."""
        return self.conn.execute(
            "SELECT device, promotion_id, max(ts) FROM audit WHERE reason = 'holdout' AND ts >= ? "
            "GROUP BY device, promotion_id", (since,)).fetchall()

    def set_code(self, offer_id: str, code: str, now: float) -> None:
        """Store an ``apply``'s redemption code (drawn by the pipeline), once."""
        self.begin()
        self.conn.execute("UPDATE offers SET code = ?, action = 'apply', action_ts = ? "
                          "WHERE offer_id = ? AND code IS NULL", (code, now, offer_id))

    def set_action(self, offer_id: str, action: str, now: float) -> None:
        self.begin()
        self.conn.execute("UPDATE offers SET action = ?, action_ts = ? WHERE offer_id = ? AND code IS NULL",
                          (action, now, offer_id))

    # -- audit
    def audit(self, rows: Iterable[tuple]) -> None:
        """rows: (ts, device, event, zone, promotion_id, outcome, reason, offer_id)."""
        self.begin()
        self.conn.executemany(
            "INSERT INTO audit(ts, device, event, zone, promotion_id, outcome, reason, offer_id) "
            "VALUES (?,?,?,?,?,?,?,?)", rows)

    def read_audit(self, *, device: str | None = None, since: float = 0.0, limit: int = 1000) -> list[dict]:
        return read_audit(self.conn, device=device, since=since, limit=limit)

    def forget_device(self, device: str) -> None:
        """Purge stored zones of a device (consent withdrawn); keeps offer
        rows (without zone) so cooldowns and codes still hold."""
        self.begin()
        self.conn.execute("UPDATE offers SET zone = NULL WHERE device = ?", (device,))
        self.conn.execute("UPDATE audit SET zone = NULL WHERE device = ?", (device,))
        self.conn.execute("DELETE FROM outbox WHERE device = ? AND kind = 'transition'", (device,))


AUDIT_COLUMNS = ("ts", "device", "event", "zone", "promotion_id", "outcome", "reason", "offer_id")


def read_audit(conn: sqlite3.Connection, *, device: str | None, since: float, limit: int) -> list[dict[str, Any]]:
    """Audit rows (oldest first) since ``since``, for one pseudonym or all; on
    any connection to the ledger file (``edge-agent audit`` opens it read-only)."""
    q = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit WHERE ts >= ?"
    args: list[Any] = [since]
    if device:
        q += " AND device = ?"
        args.append(device)
    q += " ORDER BY id LIMIT ?"
    args.append(limit)
    return [dict(zip(AUDIT_COLUMNS, r)) for r in conn.execute(q, args).fetchall()]


# -- reading the audit trail (``edge-agent audit`` and ``GET /v1/admin/audit``)
class AuditError(Exception):
    """The audit trail cannot be read (missing files, bad arguments)."""


SINCE_RANGE = (-62104060800.0, 253370678400.0)  # 0002-01-01 .. 9998-12-31 UTC: a date in every time zone


def parse_since(value: str, tz: ZoneInfo) -> float:
    """Epoch seconds, or ISO 8601 (store time when it has no offset); NaN, infinities
    and times no calendar date holds are refused (:class:`AuditError`)."""
    try:
        ts = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise AuditError(
                f"--since {value!r} is neither epoch seconds nor ISO 8601 (e.g. 2026-11-22T08:00)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)
        ts = dt.timestamp()
    if not SINCE_RANGE[0] <= ts <= SINCE_RANGE[1]:  # NaN fails here too
        raise AuditError(f"--since {value[:40]!r} is not a time between the years 2 and 9998")
    return ts
