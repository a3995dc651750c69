"""Housekeeping of the store's SQLite file: the outbox bound and retention.

*Bound* (``[sync] max_outbox_mb``): when the outbox's estimated size
(rows × average row size, see :meth:`Outbox.size_estimate`) is over the bound,
events are shed down to 90 % of it — analytics (``transition``) and dead
letters first, then ordinary events (offers, suppressions, alerts), oldest
first within a class.  Redemptions, dismissals, consent changes and forgets are never shed.
Each shed event is counted in ``edge_outbox_shed_total{kind}``.

*Retention* (``[sync] retention_days``, default 30): audit rows, offer rows
and set-aside batches older than that are deleted.  *Position retention*
(``[privacy] position_retention_s``, default 86400): transition events of
tracked devices (where a device was, and when) still queued or set aside
after that long are deleted — central never hears of them.  Offer rows younger than
the longest promotion cooldown (at least a day) are kept whatever the
retention, so cooldowns and caps survive a restart.  Pending outbox rows are
not subject to retention (they are bounded by size instead); the agent keeps
no raw positions on disk at all (trackers live in memory only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from sync.outbox import Outbox

log = logging.getLogger("sync.housekeeping")

SHED_TARGET = 0.9  # shed down to this fraction of the bound


@dataclass(slots=True)
class ShedResult:
    dropped: dict[str, int]
    size_before: int
    stuck: bool  # over the bound with nothing left that may be shed


def enforce_bound(outbox: Outbox, max_bytes: float) -> ShedResult:
    """Shed sheddable events while the outbox is over ``max_bytes``; the caller commits."""
    rows, size = outbox.size_estimate()
    if size <= max_bytes or rows == 0:
        return ShedResult({}, size, False)
    avg = size / rows
    n = math.ceil((size - SHED_TARGET * max_bytes) / avg)
    dropped = outbox.shed(n)
    return ShedResult(dropped, size, sum(dropped.values()) < n)


def purge(conn, *, now: float, retention_s: float, keep_offers_s: float,
          position_retention_s: float | None = None) -> dict[str, int]:
    """Delete audit, offer and set-aside rows older than the retention, and
    transition events (queued or set aside) older than ``position_retention_s``
    (``[privacy]``); the caller commits."""
    cutoff = now - retention_s
    out = {"audit": conn.execute("DELETE FROM audit WHERE ts < ?", (cutoff,)).rowcount,
           "offers": conn.execute("DELETE FROM offers WHERE ts < ?",
                                  (min(cutoff, now - keep_offers_s),)).rowcount,
           "outbox_aside": conn.execute("DELETE FROM outbox_aside WHERE set_aside_at < ?", (cutoff,)).rowcount}
    if position_retention_s is not None:
        pos = now - position_retention_s
        out["transitions"] = (
            conn.execute("DELETE FROM outbox WHERE kind = 'transition' AND ts < ?", (pos,)).rowcount
            + conn.execute("DELETE FROM outbox_aside WHERE kind = 'transition' AND ts < ?", (pos,)).rowcount)
    return out
