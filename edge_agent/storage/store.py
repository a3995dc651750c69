"""The agent's durable state in one SQLite file, and how effects land in it.

One file, so an offer's ledger row, its audit rows and its outbox event
are committed before the offer is published.  A batch with offers does it in
two commits (:meth:`Store.hold`, then :meth:`Store.settle`): first its rows as
one packed record in ``pending`` (one small write: the offer leaves sooner),
then, once it is out, the rows into their tables; a second commit that fails or
is cut off by a crash is finished by the next commit or the next start
(:meth:`Store.replay_pending`), before anything else is written.  Each owner keeps
its own tables and migrations (``sync.schema``): the offer ledger and audit
trail (:class:`~edge_agent.storage.ledger.Ledger`), the outbox
(:class:`~sync.outbox.Outbox`), the push webhook's queue
(:class:`~edge_agent.storage.delivery.DeliveryTable`), the campaign tables
(:class:`~edge_agent.storage.campaigns.CampaignTables`), and here consent
overrides and inventory.
:meth:`Store.apply` writes a pipeline step's rows with plain ``executemany``
per kind (the hot path), inside the transaction the shell commits once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import msgpack

from store_config.model import Consent, EdgeError
from sync.schema import migrate

from edge_agent.storage.delivery import DeliveryTable
from .campaigns import CampaignTables
from .ledger import Ledger
from edge_agent.pipeline import effects as fx
from edge_agent.pipeline.core import where
from . import privacy

log = logging.getLogger("edge_agent.storage.store")


# The row kinds a batch writes, by name, with their fields in order: a pending record is a list
# of [kind, field names, values] (msgpack), never pickled objects — the file is data, not code.
ROW_KINDS: dict[str, tuple[type, tuple[str, ...]]] = {
    cls.__name__: (cls, tuple(f.name for f in dataclasses.fields(cls)))
    for cls in (fx.OfferRow, fx.Code, fx.Action, fx.ConsentRow, fx.InventoryRow, fx.PickupRow, fx.PickupGone,
                fx.Audit, fx.Exposure, fx.PromoCount, fx.PauseRow, fx.RedeemRow, fx.PurchaseRow, fx.Event,
                fx.Forget)}


def _plain(o: Any) -> Any:
    item = getattr(o, "item", None)  # a numpy scalar
    if item is not None:
        return item()
    raise TypeError(f"cannot keep a {type(o).__name__} in a pending record")


def _getter(fields: tuple[str, ...]) -> Callable[[Any], tuple]:
    get = operator.attrgetter(*fields)
    return get if len(fields) > 1 else lambda r: (get(r),)  # attrgetter of one name gives the value alone


# Each kind's field values in one C call (on the offer's path before it leaves: BENCHMARKS.md §13)
_VALUES = {name: (fields, _getter(fields)) for name, (_, fields) in ROW_KINDS.items()}


def pack_rows(rows: list) -> bytes:
    """A batch's rows as one record (raw device ids must be sealed first: :meth:`Store.hold`):
    each row as [kind, its field names, its values], so a record written before an upgrade
    that changed a row kind is read by name after it."""
    out = []
    for r in rows:
        name = type(r).__name__
        fields, values = _VALUES[name]
        out.append((name, fields, values(r)))
    try:
        return msgpack.packb(out, default=_plain)
    except UnicodeEncodeError:  # a lone surrogate, which json.dumps takes (the fast path refuses it)
        return msgpack.packb(out, default=_plain, unicode_errors="surrogatepass")


def unpack_rows(blob: bytes) -> list:
    """The rows of :func:`pack_rows` (sequences come back as tuples).  A field the kind no
    longer has is dropped; a field it gained takes its default."""
    return [_row(*entry) for entry in _entries(blob)]


def _entries(blob: bytes) -> tuple:
    return msgpack.unpackb(blob, use_list=False, unicode_errors="surrogatepass",
                           strict_map_key=False)  # keys json.dumps takes


def _row(name: str, fields: tuple, values: tuple) -> Any:
    cls, now = ROW_KINDS[name]
    if fields == now:
        return cls(*values)
    return cls(**{f: v for f, v in zip(fields, values) if f in now})


def row_error(exc: BaseException) -> bool:
    """A failure of a row, not of the disk: anything but SQLite's storage errors (full, I/O,
    busy, read-only, corrupt) -- a value SQLite cannot bind, a broken constraint, a value
    JSON cannot take.  Retrying it changes nothing; it must cost only its own row."""
    return not isinstance(exc, sqlite3.Error) or isinstance(
        exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.DataError))


# The order Store.apply writes the kinds in (events and forgets last, in their own order),
# which a record written row by row keeps.
_APPLY_ORDER = {k: i for i, k in enumerate((
    fx.OfferRow, fx.Action, fx.ConsentRow, fx.InventoryRow, fx.PickupRow, fx.PickupGone, fx.Audit, fx.Exposure,
    fx.PromoCount, fx.Code, fx.PauseRow, fx.RedeemRow, fx.PurchaseRow))}


class ConsentTable:
    """Consent changes a device sent (newest wins over its profile)."""

    MIGRATIONS = {1: "CREATE TABLE IF NOT EXISTS consent "
                     "(device TEXT PRIMARY KEY, offers INTEGER, tracking INTEGER, ts REAL)"}

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        migrate(conn, "consent", self.MIGRATIONS)

    def load(self) -> dict[str, tuple[Consent, float]]:
        return {device: (Consent(offers=bool(offers), tracking=bool(tracking)), ts)
                for device, offers, tracking, ts in self.conn.execute(
                    "SELECT device, offers, tracking, ts FROM consent")}

    def put(self, rows: Iterable[fx.ConsentRow]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO consent(device, offers, tracking, ts) VALUES (?,?,?,?)",
                              [(r.device, int(r.offers), int(r.tracking), r.ts) for r in rows])


class InventoryTable:
    """The newest quantity per sku (POS over MQTT), with its time."""

    MIGRATIONS = {1: "CREATE TABLE IF NOT EXISTS inventory (sku TEXT PRIMARY KEY, qty INTEGER, ts REAL)"}

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        migrate(conn, "inventory", self.MIGRATIONS)

    def load(self) -> list[tuple[str, int, float]]:
        return self.conn.execute("SELECT sku, qty, ts FROM inventory").fetchall()

    def put(self, rows: Iterable[fx.InventoryRow]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO inventory(sku, qty, ts) VALUES (?,?,?)",
                              [(r.sku, r.qty, r.ts) for r in rows])


class PickupTable:
    """Click-and-collect orders waiting for their shopper (``/v1/pickups``); a
    person pseudonym, never a raw id.  ``arrived`` is set once, so an order
    alerts once, across restarts too."""

    MIGRATIONS = {1: "CREATE TABLE IF NOT EXISTS pickups (order_id TEXT PRIMARY KEY, person TEXT NOT NULL, "
                     "zone TEXT NOT NULL, first_name TEXT, ts REAL NOT NULL, arrived REAL)"}

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        migrate(conn, "pickups", self.MIGRATIONS)

    def load(self) -> list[fx.PickupRow]:
        return [fx.PickupRow(*r) for r in self.conn.execute(
            "SELECT order_id, person, zone, first_name, ts, arrived FROM pickups ORDER BY ts")]

    def put(self, rows: Iterable[fx.PickupRow]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO pickups(order_id, person, zone, first_name, ts, arrived) "
                              "VALUES (?,?,?,?,?,?)",
                              [(r.order_id, r.person, r.zone, r.first_name, r.ts, r.arrived) for r in rows])

    def delete(self, rows: Iterable[fx.PickupGone]) -> None:
        self.conn.executemany("DELETE FROM pickups WHERE order_id = ?", [(r.order_id,) for r in rows])


class Store:
    """The ledger file with every table the agent keeps."""

    def __init__(self, ledger: Ledger, sealer: privacy.TopicSealer | None = None,
                 on_dropped: Callable[[str], None] = lambda error: None):
        self.ledger = ledger
        self.sealer = sealer  # None: offers are stored without their topic (never re-sent after a restart)
        self.consent = ConsentTable(ledger.conn)
        self.inventory = InventoryTable(ledger.conn)
        self.delivery = DeliveryTable(ledger.conn)  # the push webhook's queue (storage/delivery.py)
        self.campaigns = CampaignTables(ledger.conn)
        self.pickups = PickupTable(ledger.conn)  # click-and-collect orders (pipeline/floor.py)
        self.forgotten: dict[str, dict[str, int]] = {}  # pseudonym -> rows deleted by a full Forget
        self._scrub_wal = False  # a full Forget was written: empty the WAL once it is committed
        self._dropping: list[tuple[str, str, str]] = []  # rows a replay leaves out (kind, error, cause), until committed
        self.on_dropped = on_dropped  # each row a replay left out, by its error, once committed (the shell counts)
        self._seal_legacy()

    def _seal_legacy(self) -> None:
        """A file written before topics were sealed keeps raw ids in ``offers.payload``
        (``_device``): seal them (undelivered offers) or drop them, then vacuum so
        no copy stays in free pages.  Runs once per file (``meta`` remembers)."""
        conn = self.ledger.conn
        if conn.execute("SELECT 1 FROM meta WHERE k = 'topics_sealed'").fetchone():
            return
        rows = conn.execute("SELECT offer_id, payload, delivered FROM offers WHERE payload LIKE '%\"_device\"%'"
                            ).fetchall()
        self.ledger.begin()
        conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('topics_sealed', '1')")
        for offer_id, payload, delivered in rows:
            body = json.loads(payload)
            raw = body.pop("_device", None)
            sealed = (self.sealer.seal(raw, offer_id) if raw and self.sealer is not None and delivered == 0
                      else None)
            conn.execute("UPDATE offers SET payload = ?, sealed = ? WHERE offer_id = ?",
                         (json.dumps(body, separators=(",", ":")), sealed, offer_id))
        self.ledger.commit()
        if not rows:
            return
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.warning("sealed or removed the raw device ids of %d offers written by an older version", len(rows))


    @property
    def path(self) -> Path:
        return self.ledger.path

    def apply(self, rows: list) -> None:
        """Write a step's rows in the open transaction (begun here if needed).
        Order matters only within a kind; kinds go in this order."""
        if not rows:
            return
        led = self.ledger
        led.begin()
        by: dict[type, list] = {}
        for r in rows:
            by.setdefault(type(r), []).append(r)
        for r in by.get(fx.OfferRow, ()):
            if r.topic_device:
                r = self._sealed(r)
            led.add_offer(r.offer_id, r.device, r.promotion_id, r.zone, r.ts, r.expires, r.payload, r.sealed)
        for r in by.get(fx.Code, ()):
            led.set_code(r.offer_id, r.code, r.ts)
        for r in by.get(fx.Action, ()):
            led.set_action(r.offer_id, r.action, r.ts)
        if fx.ConsentRow in by:
            self.consent.put(by[fx.ConsentRow])
        if fx.InventoryRow in by:
            self.inventory.put(by[fx.InventoryRow])
        if fx.PickupRow in by:
            self.pickups.put(by[fx.PickupRow])
        if fx.PickupGone in by:
            self.pickups.delete(by[fx.PickupGone])
        if fx.Audit in by:
            led.audit([(a.ts, a.device, a.event, a.zone, a.promotion_id, a.outcome, a.reason, a.offer_id)
                       for a in by[fx.Audit]])
        self.campaigns.apply(by)  # exposures, budgets, pauses, redemptions, purchases
        # Events last but in their own order: a forget purges transitions written before it.
        for r in rows:
            if isinstance(r, fx.Event):
                led.event(r.kind, r.ts, r.device, **r.fields)
            elif isinstance(r, fx.Forget):
                if r.full:
                    self.forgotten[r.device] = privacy.erase(led.conn, r.device, r.person)
                    self._scrub_wal = True
                else:
                    led.forget_device(r.device)

    def commit(self) -> None:
        self.ledger.commit()
        dropped, self._dropping = self._dropping, []
        for kind, error, cause in dropped:  # left out for good now that the rest is committed
            log.error("a pending record could not be written whole (%s): a %s row left out (%s); the rest is "
                      "written", cause, kind, error)
            self.on_dropped(error)
        if self._scrub_wal:
            # The WAL's older frames still hold the pages a forget just erased (secure_delete
            # only overwrites the new copies): copy it all in and empty it.  Rare, so on the loop.
            self._scrub_wal = False
            try:  # after the commit: a failure here must not read as the forget's failure (it is stored)
                busy = self.ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                busy = exc
            if busy:
                log.warning("forget: the WAL could not be emptied now (%s); its old frames go at the next "
                            "checkpoint", "busy" if busy == 1 else busy)

    def _sealed(self, r: fx.OfferRow) -> fx.OfferRow:
        """The row with its raw topic id sealed (without a sealer: dropped, never re-sent after a restart)."""
        sealed = self.sealer.seal(r.topic_device, r.offer_id) if self.sealer is not None else None
        return fx.OfferRow(r.offer_id, r.device, r.promotion_id, r.zone, r.ts, r.expires, r.payload, None, sealed)

    # -- two commits for a batch that publishes (the module's docstring)
    def hold(self, rows: list) -> tuple[list, int]:
        """Write ``rows`` as one pending record in the open transaction (begun here);
        returns them with each offer's raw topic id sealed (what the record holds)
        and the record's id, for :meth:`settle` after the commit."""
        rows = [self._sealed(r) if type(r) is fx.OfferRow and r.topic_device else r for r in rows]
        led = self.ledger
        led.begin()
        return rows, led.conn.execute("INSERT INTO pending(rows) VALUES (?)", (pack_rows(rows),)).lastrowid

    def settle(self, rows: list, pending_id: int) -> int:
        """Write a held record's rows into their tables and drop the record (the caller commits);
        1, the records written, as :meth:`replay_pending` counts them."""
        self.apply(rows)
        self.ledger.begin()
        self.ledger.conn.execute("DELETE FROM pending WHERE id = ?", (pending_id,))
        return 1

    def replay_pending(self) -> int:
        """Settle every pending record, oldest first (the caller commits); how many.

        A record that fails on a row (:func:`row_error`: a bug, not the disk) is written row
        by row instead, in :meth:`apply`'s order: the rows that fail, or cannot be read, are
        left out -- logged and handed to ``on_dropped`` once the commit holds -- and the record
        is dropped: one poison never holds every later commit."""
        led = self.ledger
        held = led.conn.execute("SELECT id, rows FROM pending ORDER BY id").fetchall()
        for pending_id, blob in held:
            led.begin()
            exc = self._isolated(lambda: self.settle(unpack_rows(blob), pending_id))
            if exc is not None:
                self._settle_row_by_row(blob, pending_id, exc)
        return len(held)

    def _isolated(self, write: Callable[[], Any]) -> Exception | None:
        """``write()`` under a savepoint of the open transaction: a row error (:func:`row_error`)
        is rolled back to it and returned; any other error raises as it is."""
        conn = self.ledger.conn
        conn.execute("SAVEPOINT isolated")
        try:
            write()
            bad = None
        except Exception as exc:  # noqa: BLE001 - sorted by row_error
            if not row_error(exc):
                raise
            conn.execute("ROLLBACK TO isolated")
            bad = exc
        conn.execute("RELEASE isolated")
        return bad

    def _settle_row_by_row(self, blob: bytes, pending_id: int, exc: Exception) -> None:
        rows, cause = [], f"{type(exc).__name__} at {where(exc)}"
        try:
            entries = _entries(blob)
        except Exception as unreadable:  # noqa: BLE001
            entries = ()
            self._dropping.append(("record", type(unreadable).__name__, cause))
        for entry in entries:
            try:
                rows.append(_row(*entry))
            except Exception as bad:  # noqa: BLE001 - a kind or field this version cannot read
                kind = entry[0] if isinstance(entry, tuple) and entry and entry[0] in ROW_KINDS else "unknown"
                self._dropping.append((kind, type(bad).__name__, cause))
        for r in sorted(rows, key=lambda r: _APPLY_ORDER.get(type(r), len(_APPLY_ORDER))):  # stable
            bad = self._isolated(lambda: self.apply([r]))
            if bad is not None:
                self._dropping.append((type(r).__name__, type(bad).__name__, cause))
        self.ledger.conn.execute("DELETE FROM pending WHERE id = ?", (pending_id,))

    def abandon(self, exc: Exception) -> str:
        """A batch's second commit failed on a row (:func:`row_error`): roll it back, keep its
        pending record for the next commit's replay (which isolates the row), say so; the
        error's type, for the shell's counter."""
        self.rollback()
        log.error("the second commit of a batch failed (%s at %s); its pending record is written row by row with "
                  "the next commit", type(exc).__name__, where(exc))
        return type(exc).__name__

    def probe(self, now: float) -> None:
        """One small committed write (raises the storage error while there is one)."""
        led = self.ledger
        led.begin()
        try:
            led.conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('probe', ?)", (repr(now),))
            led.commit()
        except sqlite3.Error:
            led.rollback()
            raise

    def rollback(self) -> None:
        self._dropping = []
        self.ledger.rollback()


class StorageUnwritable(EdgeError):
    """The ledger cannot be opened for writing (permissions, a read-only disk, a full
    one): an error for the operator, never a reason to move the file aside."""


# SQLite's primary result codes (sqlite3.h) by what they tell the operator.
_KINDS = {13: "full", 8: "readonly", 3: "readonly", 14: "readonly", 5: "busy", 6: "busy", 10: "io",
          11: "corrupt", 26: "corrupt"}


def error_kind(exc: BaseException) -> str:
    """``full``, ``readonly``, ``busy``, ``io`` or ``corrupt`` (only what SQLite itself
    calls corrupt: SQLITE_CORRUPT, SQLITE_NOTADB), else the exception's type."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _KINDS:
        return _KINDS[code & 0xFF]
    return type(exc).__name__


def set_aside(path: Path, exc: BaseException, when: str) -> Path:
    """Move a ledger SQLite calls corrupt aside and say so in one line (how to recover included)."""
    aside = move_aside(path)
    log.error("%s is corrupt (%s, %s): moved to %s; starting a fresh ledger. Offers, codes and unsent events in "
              "the old file are not lost: recover them with `sqlite3 %s .recover`", path, exc, when, aside, aside)
    return aside


def move_aside(path: Path) -> Path:
    """Rename a corrupt ledger (and its -wal/-shm) to ``<name>.corrupt-<stamp>``: kept, never deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    return aside


def _unwritable(path: Path, why: str) -> StorageUnwritable:
    return StorageUnwritable(f"cannot write the ledger {path} ({why}); the file is left as it is: give the "
                             f"agent's user write access to it and to {path.parent} (a restore done as "
                             f"another user?), or free the disk, then start again")


def check_writable(path: Path) -> None:
    """Refuse, in one line, a ledger or data dir the agent cannot write."""
    for p in (path, path.parent, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        if p.exists() and not os.access(p, os.W_OK):
            raise _unwritable(path, f"{p.name} is not writable" if p != path.parent
                              else f"{p} is not writable")


def open_ledger(path: Path, *, store_id: str, on_corrupt=None, sealer=None,
                on_dropped: Callable[[str], None] = lambda error: None) -> tuple[Ledger, Store]:
    """Open the ledger and every table on it, checked (``PRAGMA quick_check``).

    A file SQLite calls corrupt — not a database, or a malformed page with the
    header intact — is moved aside (kept for ``sqlite3 .recover``, never
    deleted) with one error line, and a fresh ledger is started: never a crash
    at every start.  A file that cannot be written raises
    :class:`StorageUnwritable` and is left exactly as it is."""
    path = Path(path)
    check_writable(path)
    for attempt in (1, 2):
        ledger = None
        try:
            ledger = Ledger(path, store_id=store_id)
            bad = [r[0] for r in ledger.conn.execute("PRAGMA quick_check(3)")]
            if bad != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(bad))
            return ledger, Store(ledger, sealer, on_dropped)
        except sqlite3.Error as exc:
            if ledger is not None:
                ledger.conn.close()
            kind = error_kind(exc) if getattr(exc, "sqlite_errorcode", None) is not None else "corrupt"
            if kind != "corrupt":
                raise _unwritable(path, f"{exc}") from None
            if attempt == 2:
                raise
            set_aside(path, exc, "at start")
            if on_corrupt is not None:
                on_corrupt()
    raise AssertionError("unreachable")
