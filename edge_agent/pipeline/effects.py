"""What a pipeline step asks the shell to do: plain data, no I/O.

The shell (:mod:`edge_agent.service`) applies an :class:`Effects` in one
order that the delivery guarantees rest on:

1. ``rows`` — ledger, audit, consent, inventory and outbox writes — in one
   SQLite transaction, committed once;
2. only then ``offers`` (QoS 1, tracked until the broker acknowledges),
   ``publish`` (codes, refusals, alerts, transitions, dead letters) and
   ``notices`` (the demo, the associates' page);
3. then ``acks`` — the QoS 1 messages whose effects were just committed.

If the commit fails nothing of 2 happens (never an offer without a record)
and the shell keeps the batch's QoS 1 messages to retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Effects", "Event", "Audit", "OfferRow", "ConsentRow", "InventoryRow", "Forget", "Code",
           "Action", "Publish", "OfferOut", "Notice", "Exposure", "PromoCount", "PauseRow", "RedeemRow",
           "PurchaseRow", "PickupRow", "PickupGone"]


@dataclass(frozen=True, slots=True)
class Event:
    """An outbox event for central (the store assigns its ``key``)."""

    kind: str
    ts: float
    device: str | None  # a pseudonym, never a raw id
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Audit:
    ts: float
    device: str
    event: str
    zone: str | None
    promotion_id: str
    outcome: str
    reason: str
    offer_id: str | None = None


@dataclass(frozen=True, slots=True)
class OfferRow:
    offer_id: str
    device: str  # pseudonym
    promotion_id: str
    zone: str | None
    ts: float
    expires: float
    payload: dict[str, Any]
    topic_device: str | None = None  # the raw id: the store seals it (privacy.TopicSealer), never stores it
    sealed: bytes | None = None  # the raw id once sealed (then topic_device is None): Store.hold


@dataclass(frozen=True, slots=True)
class ConsentRow:
    device: str  # pseudonym
    offers: bool
    tracking: bool
    ts: float


@dataclass(frozen=True, slots=True)
class InventoryRow:
    sku: str
    qty: int
    ts: float


@dataclass(frozen=True, slots=True)
class Forget:
    """Consent withdrawn: purge the device's stored zones and transitions.
    ``full`` (a forget request): delete every row that carries the pseudonym
    or names ``person`` (pickup orders, purchases)."""

    device: str  # pseudonym
    full: bool = False
    person: str | None = None  # the device's person pseudonym (its own pseudonym without a loyalty id)


@dataclass(frozen=True, slots=True)
class Code:
    """An ``apply``: the offer's redemption code, stored once."""

    offer_id: str
    code: str
    ts: float


@dataclass(frozen=True, slots=True)
class Action:
    """A ``dismiss`` (only while the offer has no code)."""

    offer_id: str
    action: str
    ts: float


@dataclass(frozen=True, slots=True)
class Publish:
    """A message for the broker after the commit (JSON-encoded by the shell)."""

    topic: str
    payload: Any
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class OfferOut:
    """An offer to publish on ``{R}/offer/{device}`` once its row is committed."""

    device: str  # the raw id: it names the topic, it is never stored
    payload: dict[str, Any]
    received: float | None  # receipt of the ping that caused it (None: a re-send)


@dataclass(frozen=True, slots=True)
class Notice:
    """For in-process listeners (the demo, the associates' page)."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Exposure:
    """A person was offered a promotion (``offered``: treated) or held out
    (``holdout`` / ``global_holdout``: control) — what uplift is measured on."""

    ts: float
    person: str  # pseudonym
    device: str  # pseudonym
    promotion_id: str
    variant: str | None
    reason: str
    offer_id: str | None = None


@dataclass(frozen=True, slots=True)
class PromoCount:
    """Add to a promotion's lifetime counters (its budgets)."""

    promotion_id: str
    offers: int = 0
    redemptions: int = 0
    dismissals: int = 0


@dataclass(frozen=True, slots=True)
class PauseRow:
    """The admin paused (True) or resumed (False) a promotion; None drops the override."""

    promotion_id: str
    paused: bool | None
    ts: float
    reason: str | None = None  # "guardrail" when the promotion paused itself


@dataclass(frozen=True, slots=True)
class RedeemRow:
    """A code burnt at a till (one per offer: the table's key refuses a second)."""

    offer_id: str
    ts: float
    person: str
    device: str
    promotion_id: str
    variant: str | None
    till: str | None
    basket_total: float | None
    currency: str | None
    idempotency_key: str | None
    response: dict[str, Any]
    offer_ts: float


@dataclass(frozen=True, slots=True)
class PurchaseRow:
    """A purchase and the exposures (``(exposure id, exposure ts, promotion,
    variant, arm)``) it is attributed to."""

    ts: float
    person: str
    basket_total: float | None
    currency: str | None
    skus: tuple[str, ...]
    attributed: tuple[tuple[int, float, str, str | None, str], ...] = ()
    idempotency_key: str | None = None  # the till's, so a retry gets ``response`` again
    response: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PickupRow:
    """A click-and-collect order, stored (or updated) so it survives a restart."""

    order_id: str
    person: str  # a person pseudonym, never a raw id
    zone: str
    first_name: str | None
    ts: float
    arrived: float | None = None


@dataclass(frozen=True, slots=True)
class PickupGone:
    """An order collected (``DELETE /v1/pickups/{order_id}``)."""

    order_id: str


@dataclass(slots=True)
class Effects:
    rows: list[Any] = field(default_factory=list)
    offers: list[OfferOut] = field(default_factory=list)
    publish: list[Publish] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    acks: list[Any] = field(default_factory=list)  # transport messages to acknowledge
    # What to undo in memory when the rows cannot be committed (a withheld offer's cooldown, a pause,
    # a pickup order): the shell runs these, newest first, on a storage failure.
    undo: list[Callable[[], None]] = field(default_factory=list)

    def mark(self) -> tuple[int, ...]:
        """Where each list ends now (:meth:`rollback` drops what came after)."""
        return (len(self.rows), len(self.offers), len(self.publish), len(self.notices), len(self.acks),
                len(self.undo))

    def rollback(self, mark: tuple[int, ...]) -> None:
        """Drop what one failed message added since ``mark``, undoing what it changed in
        memory first (its own dead letter goes in after)."""
        for undo in reversed(self.undo[mark[-1]:]):
            undo()
        for lst, n in zip((self.rows, self.offers, self.publish, self.notices, self.acks, self.undo), mark):
            del lst[n:]

    def event(self, kind: str, ts: float, device: str | None, **fields: Any) -> None:
        self.rows.append(Event(kind, ts, device, fields))

    def __bool__(self) -> bool:
        return bool(self.rows or self.offers or self.publish or self.notices or self.acks)

    def extend(self, other: "Effects") -> None:
        self.rows += other.rows
        self.offers += other.offers
        self.publish += other.publish
        self.notices += other.notices
        self.acks += other.acks
        self.undo += other.undo
