"""What leaves the store: event bodies on the wire, stripped of anything private.

Every event is built by ``Ledger.event`` with a pseudonymous ``device``
(``d_…``, a keyed hash — see :mod:`sync.pseudonym`) or ``None``.  As a last
line of defence the uplinks pass each body through :func:`outgoing`, which
drops any field that could carry a position or a raw identifier, whatever
code produced the event: coordinates (``x``, ``y``, ``lat``, ``lon``,
``acc``, ``coords``, ``beacons``, ``floor``), raw payloads (``payload``,
``payload_b64``) and MQTT topics (``topic``: they contain raw device ids).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgpack

PRIVATE_FIELDS = frozenset({"x", "y", "lat", "lon", "lng", "acc", "accuracy", "coords", "beacons", "floor",
                            "payload", "payload_b64", "topic", "mac", "clientMac", "raw_device"})

JSON = "application/json"
MSGPACK = "application/msgpack"


def outgoing(body: dict[str, Any]) -> dict[str, Any]:
    """The event as it may leave the store (private fields dropped)."""
    if PRIVATE_FIELDS.isdisjoint(body):
        return body
    return {k: v for k, v in body.items() if k not in PRIVATE_FIELDS}


def encode(obj: Any, encoding: str) -> tuple[bytes, str]:
    """(body bytes, Content-Type) for ``encoding`` ``json`` or ``msgpack``."""
    if encoding == "msgpack":
        return msgpack.packb(obj, use_bin_type=True), MSGPACK
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(), JSON


def decode(body: bytes, content_type: str | None) -> Any:
    """Decode a JSON or msgpack body (by Content-Type); raises ``ValueError``."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
        try:
            return msgpack.unpackb(body, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"not valid msgpack: {exc}") from exc
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc


def idempotency_key(events: list[dict[str, Any]], requeues: int = 0) -> str:
    """A batch's ``Idempotency-Key``: a hash of its first and last event keys
    and its length, so a retried batch carries the same key -- and of the outbox's
    requeue count, so a batch central refused and an admin requeued is a new request
    (central may keep its answer to a key: it would refuse it again unseen)."""
    text = f"{events[0]['key']}\n{events[-1]['key']}\n{len(events)}" + (f"\nrequeue {requeues}" if requeues else "")
    return "b-" + hashlib.sha256(text.encode()).hexdigest()[:32]
