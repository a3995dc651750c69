"""The campaign tables in the agent's SQLite file (component ``campaigns``).

- ``exposures``   every offer (treated) and would-offer (control) per person,
                  promotion and variant, and whether it was applied: what
                  conversion and uplift are measured on (no zones, no raw
                  ids); with an index over the audit trail that lets the
                  report count suppressions without reading the rows;
- ``promo_counts`` lifetime offers and redemptions per promotion (budgets;
                  kept apart from the ledger so retention never resets them);
- ``promo_pause``  the admin's pause / resume overrides (survive restarts);
- ``redemptions``  codes burnt at a till, one per offer (the primary key
                  makes a second burn impossible even outside the agent);
- ``purchases`` and ``attributions``  baskets from the till and the
                  exposures each is attributed to.

People and devices are pseudonyms only.  Rows are written by
:meth:`CampaignTables.apply` inside the shell's one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from sync.schema import migrate

from edge_agent.pipeline import effects as fx
from edge_agent.pipeline.campaigns import CONTROL, TREATED, CampaignState
from edge_agent.pipeline.decisions import store_day

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS exposures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        person TEXT NOT NULL,
        device TEXT NOT NULL,
        promotion_id TEXT NOT NULL,
        variant TEXT,
        arm TEXT NOT NULL,          -- treated | control
        reason TEXT NOT NULL,       -- offered | holdout | global_holdout
        offer_id TEXT,
        applied INTEGER NOT NULL DEFAULT 0  -- the shopper applied the offer (a code was issued)
    );
    CREATE INDEX IF NOT EXISTS exposures_person_ts ON exposures(person, ts);
    -- The report reads these indexes alone (covering: no table lookups), in the order it groups by, so
    -- it counts in one pass without sorting; the time filter is checked on the index entries.
    CREATE INDEX IF NOT EXISTS exposures_report ON exposures(promotion_id, variant, arm, person, ts, applied);
    CREATE INDEX IF NOT EXISTS audit_report ON audit(outcome, promotion_id, reason, ts);
    CREATE UNIQUE INDEX IF NOT EXISTS exposures_offer ON exposures(offer_id) WHERE offer_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS promo_counts (
        promotion_id TEXT PRIMARY KEY,
        offers INTEGER NOT NULL DEFAULT 0,
        redemptions INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS promo_pause (promotion_id TEXT PRIMARY KEY, paused INTEGER NOT NULL, ts REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS redemptions (
        offer_id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        person TEXT NOT NULL,
        device TEXT NOT NULL,
        promotion_id TEXT NOT NULL,
        variant TEXT,
        till TEXT,
        basket_total REAL,
        currency TEXT,
        idempotency_key TEXT,
        response TEXT NOT NULL,
        offer_ts REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS purchases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        person TEXT NOT NULL,
        basket_total REAL,
        currency TEXT,
        skus TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS purchases_ts ON purchases(ts);
    CREATE TABLE IF NOT EXISTS attributions (
        purchase_id INTEGER NOT NULL,
        exposure_id INTEGER NOT NULL,
        exposure_ts REAL NOT NULL,
        person TEXT NOT NULL,
        promotion_id TEXT NOT NULL,
        variant TEXT,
        arm TEXT NOT NULL,
        PRIMARY KEY (purchase_id, exposure_id)
    );
    CREATE INDEX IF NOT EXISTS attributions_report ON attributions(promotion_id, variant, arm, person, exposure_ts);
    """,
}

ARM = {"offered": TREATED, "holdout": CONTROL, "global_holdout": CONTROL}


class CampaignTables:
    """Owns the campaign tables on the ledger's connection (the loop thread)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        migrate(conn, "campaigns", MIGRATIONS)

    # -- writes (inside the shell's transaction)
    def apply(self, by: Mapping[type, list]) -> None:
        c = self.conn
        if fx.Exposure in by:
            c.executemany(
                "INSERT INTO exposures(ts, person, device, promotion_id, variant, arm, reason, offer_id) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(e.ts, e.person, e.device, e.promotion_id, e.variant, ARM[e.reason], e.reason, e.offer_id)
                 for e in by[fx.Exposure]])
        if fx.PromoCount in by:
            totals: dict[str, list[int]] = {}
            for r in by[fx.PromoCount]:
                t = totals.setdefault(r.promotion_id, [0, 0])
                t[0] += r.offers
                t[1] += r.redemptions
            c.executemany(
                "INSERT INTO promo_counts(promotion_id, offers, redemptions) VALUES (?,?,?) "
                "ON CONFLICT(promotion_id) DO UPDATE SET offers = offers + excluded.offers, "
                "redemptions = redemptions + excluded.redemptions",
                [(pid, o, r) for pid, (o, r) in totals.items()])
        if fx.Code in by:
            c.executemany("UPDATE exposures SET applied = 1 WHERE offer_id = ?", [(r.offer_id,) for r in by[fx.Code]])
        for r in by.get(fx.PauseRow, ()):
            if r.paused is None:
                c.execute("DELETE FROM promo_pause WHERE promotion_id = ?", (r.promotion_id,))
            else:
                c.execute("INSERT OR REPLACE INTO promo_pause(promotion_id, paused, ts) VALUES (?,?,?)",
                          (r.promotion_id, int(r.paused), r.ts))
        for r in by.get(fx.RedeemRow, ()):
            # A plain INSERT: a second burn of one offer violates the key and fails the transaction.
            c.execute(
                "INSERT INTO redemptions(offer_id, ts, person, device, promotion_id, variant, till, basket_total, "
                "currency, idempotency_key, response, offer_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.offer_id, r.ts, r.person, r.device, r.promotion_id, r.variant, r.till, r.basket_total,
                 r.currency, r.idempotency_key, json.dumps(r.response, separators=(",", ":")), r.offer_ts))
        for r in by.get(fx.PurchaseRow, ()):
            cur = c.execute("INSERT INTO purchases(ts, person, basket_total, currency, skus) VALUES (?,?,?,?,?)",
                            (r.ts, r.person, r.basket_total, r.currency, json.dumps(list(r.skus))))
            pid = cur.lastrowid
            c.executemany(
                "INSERT OR IGNORE INTO attributions(purchase_id, exposure_id, exposure_ts, person, promotion_id, "
                "variant, arm) VALUES (?,?,?,?,?,?,?)",
                [(pid, eid, ets, r.person, promo, variant, arm) for eid, ets, promo, variant, arm in r.attributed])

    # -- reads
    def load_state(self) -> CampaignState:
        st = CampaignState()
        for pid, offers, redemptions in self.conn.execute(
                "SELECT promotion_id, offers, redemptions FROM promo_counts"):
            st.offers[pid] = offers
            st.redemptions[pid] = redemptions
        for pid, paused in self.conn.execute("SELECT promotion_id, paused FROM promo_pause"):
            st.paused[pid] = bool(paused)
        return st

    def recent_exposures(self, since: float) -> list[tuple[str, str, str, float]]:
        """(person, promotion id, arm, ts) since ``since``, oldest first."""
        return self.conn.execute("SELECT person, promotion_id, arm, ts FROM exposures WHERE ts >= ? ORDER BY ts",
                                 (since,)).fetchall()

    def legacy_offers(self, since: float) -> list[tuple[str, str, float]]:
        """Offers from before exposures were recorded (an upgraded ledger): (device, promotion, ts)."""
        return self.conn.execute(
            "SELECT device, promotion_id, ts FROM offers o WHERE ts >= ? AND NOT EXISTS "
            "(SELECT 1 FROM exposures e WHERE e.offer_id = o.offer_id) ORDER BY ts", (since,)).fetchall()

    def exposures_of(self, person: str, since: float) -> list[dict[str, Any]]:
        cols = ("id", "ts", "promotion_id", "variant", "arm")
        return [dict(zip(cols, r)) for r in self.conn.execute(
            "SELECT id, ts, promotion_id, variant, arm FROM exposures WHERE person = ? AND ts >= ? ORDER BY ts",
            (person, since))]

    def offer_by_code(self, code: str) -> dict[str, Any] | None:
        """The offer a code belongs to, with its person and variant (``code_ts``: when it was issued)."""
        r = self.conn.execute(
            "SELECT o.offer_id, o.promotion_id, o.device, o.ts, o.action_ts, o.payload, e.person "
            "FROM offers o LEFT JOIN exposures e ON e.offer_id = o.offer_id WHERE o.code = ?", (code,)).fetchone()
        if r is None:
            return None
        payload = json.loads(r[5])
        return {"offer_id": r[0], "promotion_id": r[1], "device": r[2], "ts": r[3],
                "code_ts": r[4] if r[4] is not None else r[3], "variant": payload.get("variant"),
                "person": r[6] or r[2]}

    def redemption(self, offer_id: str) -> dict[str, Any] | None:
        r = self.conn.execute("SELECT idempotency_key, response FROM redemptions WHERE offer_id = ?",
                              (offer_id,)).fetchone()
        return None if r is None else {"idempotency_key": r[0], "response": json.loads(r[1])}


def restore_histories(state, tables: CampaignTables, ledger, *, since: float, now: float, tz: ZoneInfo) -> None:
    """Rebuild the people's cooldowns and caps after a restart: offers count,
    holdouts only cool their promotion down.  Ledgers from before people
    existed are read too (their offers keyed by device, as they were)."""
    today = store_day(datetime.fromtimestamp(now, tz))

    def add(person: str, promo: str, ts: float, counted: bool) -> None:
        h = state.history(person)
        h.last_by_promo[promo] = max(ts, h.last_by_promo.get(promo, 0.0))
        if counted:
            h.last_offer_ts = max(ts, h.last_offer_ts or 0.0)
            if store_day(datetime.fromtimestamp(ts, tz)) == today:
                h.day, h.day_count = today, h.day_count + 1

    for person, promo, arm, ts in tables.recent_exposures(since):
        add(person, promo, ts, arm == TREATED)
    for device, promo, ts in tables.legacy_offers(since):
        add(device, promo, ts, True)
    for device, promo, ts in ledger.recent_holdouts(since):  # idempotent: only the newest time counts
        add(device, promo, ts, False)

