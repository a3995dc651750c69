"""Offers on the wire: published at QoS 1, tracked until the broker acknowledges
them, re-sent after a reconnect while unacknowledged, given up at their expiry.

The ledger row of an offer is written before it is published (DESIGN.md,
"Delivery guarantees"); acknowledged offers are marked ``delivered`` in it with
the agent's next commit (``acked``), and their sealed topics deleted."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from edge_agent.pipeline.codecs import owntracks_cmd

log = logging.getLogger("edge_agent")


_compact = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds an encoder per call with separators


def dumps(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else _compact(payload).encode()


@dataclass(slots=True)
class PendingOffer:
    offer_id: str
    received: float | None  # receipt time of the ping, for edge_ping_to_offer_seconds (None: a re-send)
    expires: float


class OfferWire:
    """The agent's offers between its publish and the broker's PUBACK."""

    def __init__(self, *, config: Callable[[], Any], metrics, clock: Callable[[], float]):
        self.config = config  # the live StoreConfig (a reload may change the OwnTracks switches)
        self.metrics = metrics
        self.clock = clock
        self.mqtt = None  # set when the transport starts
        self.in_flight: dict[int, PendingOffer] = {}  # paho message id -> the offer
        self.acked: list[str] = []  # offer ids acknowledged, to mark delivered with the next commit

    def send(self, offers: list, write: Callable[[], None] | None = None, stages=None) -> None:
        """Publish a batch's offers (``OfferOut``); with ``write`` (the transport's ``send_now``: a
        second commit follows, ``Agent._commit``) put them on the wire at once, before anything
        else of the batch, also when one of them raised -- after the batch's ``published`` stamp."""
        try:
            for o in offers:
                self.publish(o.device, o.payload, o.received)
        finally:
            if write is not None:
                if stages is not None:
                    stages.mark(5)  # published
                write()

    def publish(self, device: str, payload: dict, received: float | None) -> None:
        cfg = self.config()
        mid = self.mqtt.publish_qos1(f"{cfg.root_topic}/offer/{device}", dumps(payload))
        self.in_flight[mid] = PendingOffer(payload["offer_id"], received, payload["expires"])
        if device.startswith("owntracks:") and cfg.ingest.owntracks and cfg.ingest.owntracks_cmd:
            topic, cmd = owntracks_cmd(device, payload)
            self.mqtt.publish(topic, dumps(cmd), qos=1)

    def on_published(self, mid: int) -> None:
        p = self.in_flight.pop(mid, None)
        if p is not None:
            self.acked.append(p.offer_id)
            if p.received is not None:
                self.metrics.ping_to_offer.observe(max(0.0, self.clock() - p.received))

    def resend(self, ledger, sealer) -> None:
        """After every (re)connect: re-send offers that were committed but never acknowledged."""
        inflight = {p.offer_id for p in self.in_flight.values()}
        for row in ledger.undelivered(self.clock()):
            if row.offer_id in inflight:
                continue  # paho re-sends its own in-flight messages
            raw = sealer.open(row.sealed, row.offer_id) if row.sealed else None
            if raw is None:
                continue  # sealed under a lost key: cannot be re-sent (it expires)
            self.publish(raw, row.payload, None)

    def expire(self, ledger, now: float) -> int:
        """Give up on offers the broker has not acknowledged by their ``expires``:
        counted in ``edge_offers_expired_total`` and never re-sent after a restart."""
        ledger.expire_unsent(now)  # e.g. from before a restart: their sealed topics go too
        gone = [mid for mid, p in self.in_flight.items() if p.expires <= now]
        if not gone:
            return 0
        ids = [self.in_flight.pop(mid).offer_id for mid in gone]
        self.mqtt.forget(gone)  # else paho re-sends them after the next reconnect
        ledger.mark_delivered(ids, state=2)
        self.metrics.offers_expired.inc(n=len(ids))
        log.warning("%d offers expired before the broker acknowledged them", len(ids))
        return len(ids)
