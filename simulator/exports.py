"""Synthetic central exports: what a chain's uplinks would have sent, with a
known truth — for the chain report's tests and benchmark.

Per store and promotion, each shopper is held out with the promotion's
``holdout`` share (control) or offered (treated); offered shoppers apply
and redeem at given rates; shoppers buy with probability ``buy_control``
(held out) or ``buy_treated`` (offered), a basket of lognormal size around
``basket`` (``× lift`` when offered); a few transitions and suppressions
come along as noise.  Events look like the outbox's: ``key``, ``kind``,
``ts``, ``store``, ``device``, ``person`` and the kind's fields.

Pure (a seeded ``random.Random``): the same arguments write the same lines.
"""

from __future__ import annotations

import gzip
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import orjson

__all__ = ["PromoSpec", "StoreSpec", "events", "write_export", "truth"]


@dataclass(frozen=True, slots=True)
class PromoSpec:
    id: str
    holdout: float = 0.5
    buy_control: float = 0.2
    buy_treated: float = 0.3
    basket: float = 30.0  # median basket
    lift: float = 1.0  # treated baskets are this much bigger
    apply_rate: float = 0.4
    redeem_rate: float = 0.5  # of those who applied
    variants: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreSpec:
    id: str
    shoppers: int
    promos: tuple[PromoSpec, ...]
    noise: int = 2  # transitions per shopper
    scale: float = 1.0  # this store's baskets are bigger or smaller
    t0: float = 1_800_000_000.0
    extra: dict = field(default_factory=dict)


SIGMA = 0.6  # lognormal spread of baskets


def truth(promo: PromoSpec, scale: float = 1.0) -> float:
    """Expected incremental revenue per treated person (treated − control revenue per person)."""
    mean = promo.basket * scale * math.exp(SIGMA * SIGMA / 2)
    return promo.buy_treated * mean * promo.lift - promo.buy_control * mean


def events(store: StoreSpec, *, seed: int = 0) -> Iterator[dict]:
    """The store's events in time order (one shopper after another)."""
    rng = random.Random(f"{seed}:{store.id}")
    seq = 0
    t = store.t0
    sid = store.id

    def ev(kind: str, device: str, **kw) -> dict:
        nonlocal seq
        seq += 1
        return {"key": f"{sid}-{seq}", "kind": kind, "ts": t, "store": sid, "device": device,
                "boot": "b1", "seq": seq, **kw}

    for i in range(store.shoppers):
        t += 7.0
        device = f"d_{sid}_{i:08x}"
        person = f"p_{sid}_{i:08x}"
        for _ in range(store.noise):
            yield ev("transition", device, event="enter", zone="aisle-1")
        for p in store.promos:
            variant = p.variants[rng.randrange(len(p.variants))] if p.variants else None
            held = rng.random() < p.holdout
            if held:
                yield ev("would_offer", device, person=person, promotion_id=p.id, zone="aisle-1",
                         reason="holdout", variant=variant, model=None, propensity=1.0)
                buy = rng.random() < p.buy_control
                lift = 1.0
            else:
                offer_id = f"o_{sid}_{i}_{p.id}"
                yield ev("offer", device, person=person, offer_id=offer_id, promotion_id=p.id, zone="aisle-1",
                         sku=None, alternative_zone=None, variant=variant, model=None, propensity=1.0)
                buy = rng.random() < p.buy_treated
                lift = p.lift
                if rng.random() < p.apply_rate:
                    yield ev("redemption", device, person=person, offer_id=offer_id, code="C",
                             promotion_id=p.id, variant=variant)
                    if buy and rng.random() < p.redeem_rate:
                        yield ev("conversion", device, person=person, offer_id=offer_id, promotion_id=p.id,
                                 variant=variant, basket_total=round(p.basket * store.scale, 2),
                                 currency="EUR", till="till-1")
            if rng.random() < 0.1:
                yield ev("suppressed", device, person=person, promotion_id=p.id, zone="aisle-1",
                         reason="cooldown")
            if buy:
                total = round(p.basket * store.scale * lift * math.exp(rng.gauss(0.0, SIGMA)), 2)
                yield ev("purchase", None, person=person, skus=["apple"], basket_total=total, currency="EUR",
                         attributed=[{"promotion_id": p.id, "variant": variant,
                                      "arm": "control" if held else "treated"}])


def write_export(path: str | Path, store: StoreSpec, *, seed: int = 0) -> int:
    """Write the store's events as JSON Lines (gzip when the name ends in .gz); returns the count."""
    path = Path(path)
    n = 0
    f: IO[bytes]
    with (gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb")) as f:
        buf = []
        for e in events(store, seed=seed):
            buf.append(orjson.dumps(e))
            n += 1
            if len(buf) >= 4096:
                f.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    return n
