"""Privacy at rest: sealed offer topics, forgetting a device, the right of access.

The agent stores device ids only as keyed pseudonyms (``sync.pseudonym``).
Three things here keep that promise where the pseudonym is not enough:

* **Sealed topics.**  An offer committed but not yet acknowledged by the
  broker must be re-published after a restart on ``{R}/offer/{device}`` —
  the raw id, which a pseudonym cannot give back.  :class:`TopicSealer`
  encrypts it (AES-256-GCM, the offer id as associated data, a fresh
  96-bit nonce each time) under ``{data dir}/topic.key`` (32 random bytes,
  mode 0600, beside ``pseudonym.key``); the ledger keeps the ciphertext in
  ``offers.sealed`` and deletes it once the broker acknowledges the offer,
  once it expires, or when the device is forgotten.  Losing the key only
  means that offers in flight at that moment are not re-sent.
* **Forgetting** (:func:`erase`): every row that carries the pseudonym —
  offers (and their codes), audit rows, the consent override, queued and
  set-aside outbox events, the push webhook's queue — and every row that
  names the device's person (purchases, attributions, exposures,
  redemptions, pickup orders, events), in the caller's transaction; the
  pipeline drops
  the live state (tracker, history, consent) and queues one ``forget`` event
  for central.
* **The right of access** (:func:`export`): everything kept about a
  pseudonym, as plain JSON-able data.

The HTTP routes (``edge_agent.http.privacy``) are the admin's door to both.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sync.pseudonym import load_or_create_secret

__all__ = ["TopicSealer", "TOPIC_KEY_FILE", "erase", "export"]

TOPIC_KEY_FILE = "topic.key"
_NONCE = 12


class TopicSealer:
    """AES-256-GCM for the one raw id the agent must keep for a while."""

    __slots__ = ("_aead",)

    def __init__(self, secret: bytes):
        # Derived, so a key file of any length (>= 16 bytes) gives a 256-bit key.
        self._aead = AESGCM(hashlib.sha256(b"edge-agent topic seal v1\x00" + secret).digest())

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "TopicSealer":
        """The sealer of a data directory (its key is created on first use, 0600)."""
        return cls(load_or_create_secret(Path(data_dir) / TOPIC_KEY_FILE))

    def seal(self, device: str, offer_id: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, device.encode(), offer_id.encode())

    def open(self, blob: bytes, offer_id: str) -> str | None:
        """The raw id, or None when the blob was sealed under another key or for another offer."""
        try:
            return self._aead.decrypt(bytes(blob[:_NONCE]), bytes(blob[_NONCE:]), offer_id.encode()).decode()
        except (InvalidTag, ValueError):
            return None


# -- forgetting and the right of access (SQL on the agent's one file) ----------------------------

def erase(conn: sqlite3.Connection, pseudo: str, person: str | None = None) -> dict[str, int]:
    """Delete every stored row about ``pseudo`` and every row that names its
    ``person`` (a loyalty id's pseudonym: purchases, attributions, exposures,
    redemptions, pickup orders and the events that carry it); returns counts
    per kind.  Runs in the caller's transaction (the shell commits)."""
    q = conn.execute
    persons = (pseudo, person or pseudo)
    codes = q("SELECT count(*) FROM offers WHERE device = ? AND code IS NOT NULL", (pseudo,)).fetchone()[0]
    return {
        "offers": q("DELETE FROM offers WHERE device = ?", (pseudo,)).rowcount,
        "codes": codes,
        "audit": q("DELETE FROM audit WHERE device = ?", (pseudo,)).rowcount,
        "consent": q("DELETE FROM consent WHERE device = ?", (pseudo,)).rowcount,
        # events name the device in their column, the person (a till's purchase by loyalty id) in their body
        "outbox": q("DELETE FROM outbox WHERE device = ? OR json_extract(body, '$.person') IN (?, ?)",
                    (pseudo, *persons)).rowcount,
        "outbox_aside": q("DELETE FROM outbox_aside WHERE device = ? OR json_extract(body, '$.person') IN (?, ?)",
                          (pseudo, *persons)).rowcount,
        # the push webhook's queue: the pseudonym, and the raw id encrypted
        "delivery": q("DELETE FROM delivery WHERE device = ?", (pseudo,)).rowcount,
        # campaigns: the device's and its person's exposures, redemptions, purchases and their attributions
        # (a device with no loyalty id is its own person: its pseudonym)
        "attributions": q("DELETE FROM attributions WHERE person IN (?, ?) OR exposure_id IN "
                          "(SELECT id FROM exposures WHERE device = ? OR person IN (?, ?))",
                          (*persons, pseudo, *persons)).rowcount,
        "exposures": q("DELETE FROM exposures WHERE device = ? OR person IN (?, ?)", (pseudo, *persons)).rowcount,
        "redemptions": q("DELETE FROM redemptions WHERE device = ? OR person IN (?, ?)",
                         (pseudo, *persons)).rowcount,
        "purchases": q("DELETE FROM purchases WHERE person IN (?, ?)", persons).rowcount,
        # click-and-collect orders name the person (and the first name the till gave)
        "pickups": q("DELETE FROM pickups WHERE person IN (?, ?)", persons).rowcount,
    }


def _rows(conn: sqlite3.Connection, sql: str, args: tuple) -> list[dict[str, Any]]:
    cur = conn.execute(sql, args)
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def export(conn: sqlite3.Connection, pseudo: str) -> dict[str, Any]:
    """Everything the store's file keeps about ``pseudo`` (the sealed topic excepted:
    it is the device's own id, encrypted)."""
    consent = _rows(conn, "SELECT offers, tracking, ts FROM consent WHERE device = ?", (pseudo,))
    offers = _rows(conn, "SELECT offer_id, promotion_id, zone, ts, expires, payload, delivered, code, action, "
                         "action_ts FROM offers WHERE device = ? ORDER BY ts", (pseudo,))
    for o in offers:
        o["payload"] = json.loads(o["payload"])
        o["delivered"] = {0: "pending", 1: "delivered", 2: "expired"}.get(o["delivered"], o["delivered"])
    audit = _rows(conn, "SELECT ts, event, zone, promotion_id, outcome, reason, offer_id FROM audit "
                        "WHERE device = ? ORDER BY id", (pseudo,))
    events = [json.loads(b) for (b,) in conn.execute(
        "SELECT body FROM outbox WHERE device = ? ORDER BY seq", (pseudo,))]
    aside = [json.loads(b) for (b,) in conn.execute(
        "SELECT body FROM outbox_aside WHERE device = ? ORDER BY seq", (pseudo,))]
    return {
        "device": pseudo,
        "consent": ({"offers": bool(consent[0]["offers"]), "tracking": bool(consent[0]["tracking"]),
                     "ts": consent[0]["ts"]} if consent else None),
        "offers": offers,
        "audit": audit,
        "events_pending": events,
        "events_set_aside": aside,
    }


# -- HTTP (admin token) ---------------------------------------------------------------------------
