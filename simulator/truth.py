"""Ground truth and scoring: true visits against the agent's transitions.

Ground truth is taken at the times the sensor sampled (dropped samples
included: a dropout is the technology's failure), so a fence crossed between
two samples is not a missed visit.  A *true visit* of a zone is a run of
consecutive samples of one shopper whose true position is inside the fence.

A visit that never goes deeper than ``GRAZE_M`` inside the fence is a
*graze* (a walk clipping a corner): no positioning technology can be asked to
see it, so it is reported separately and counts neither for recall nor
against precision.

The agent's side is its ``enter``/``exit`` events per device, mapped back to
the shopper (with MAC randomisation a shopper has several devices).  Each
enter opens a *presence* that its exit closes (still open at the end of the
run: open to the end).

* recall: a visit is detected when a presence of the same shopper and zone
  is open at some time during it (an enter up to ``tol`` after the visit's
  last sample still counts); detection delay = enter - visit start (0 when
  the presence was already open); ``recall_stays`` is the same over the
  visits lasting at least ``STAY_S`` (a shopper browsing, not crossing
  the end of an aisle for a second, which no coarse technology can see);
* precision: an enter is correct when its presence overlaps a true visit
  (±``tol``); one overlapping only grazes is not counted; others are false;
* a zone with no visits has ``null`` precision and recall (so has precision
  when the agent never entered it).

:func:`score` also lists where things went wrong, for the map:
``misses`` (``(shopper, zone, start, end)`` of undetected visits) and
``false_entries`` (``(shopper, zone, ts)`` of enters overlapping no visit).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from geometry.fences import FenceIndex

from .sensors import TECHS

__all__ = ["Visit", "Scored", "true_visits", "presences", "score", "GRAZE_M", "tolerance_s"]

GRAZE_M = 0.25
STAY_S = 10.0  # a visit this long is a *stay* (browsing), scored apart from walks through


def tolerance_s(tech: str) -> float:
    """Matching tolerance: two of the technology's longest update intervals (≥ 2 s)."""
    return max(2.0, 2.0 * TECHS[tech].interval[1])


@dataclass
class Visit:
    shopper: int
    zone: str
    start: float
    end: float
    graze: bool
    samples: int = 0
    devices: set = field(default_factory=set)


def true_visits(cfg, samples) -> list[Visit]:
    """True visits from every sample (see the module docstring)."""
    index = FenceIndex(cfg.fences)
    by_shopper: dict[int, list] = defaultdict(list)
    for s in samples:
        by_shopper[s.shopper].append(s)
    out: list[Visit] = []
    for shopper in sorted(by_shopper):
        ss = sorted(by_shopper[shopper], key=lambda s: s.t)
        x = np.array([s.x for s in ss])
        y = np.array([s.y for s in ss])
        fl = np.array([s.floor for s in ss])
        centre = index.classify(x, y, fl, np.zeros(len(ss)))
        deep = index.classify(x, y, fl, np.full(len(ss), GRAZE_M))
        open_: dict[str, Visit] = {}
        for s, c, d in zip(ss, centre, deep):
            now_in = c.centre_in
            for zone in sorted(set(open_) - now_in):
                out.append(open_.pop(zone))
            for zone in sorted(now_in):
                v = open_.get(zone)
                if v is None:
                    v = open_[zone] = Visit(shopper, zone, s.t, s.t, True)
                v.end = s.t
                v.samples += 1
                v.devices.add(s.device)
                if zone in d.inside:
                    v.graze = False
        out.extend(open_[z] for z in sorted(open_))
    out.sort(key=lambda v: (v.zone, v.shopper, v.start))
    return out


def presences(events, device_shopper: dict[str, int], end: float) -> dict[tuple[int, str], list[list[float]]]:
    """``(shopper, zone) -> [[enter_ts, exit_ts], ...]`` from the agent's events.

    ``events`` are ``(device, event, zone, ts)`` with ``ts`` in run seconds;
    devices the run did not create are ignored.
    """
    open_: dict[tuple[str, str], list[float]] = {}
    out: dict[tuple[int, str], list[list[float]]] = defaultdict(list)
    for device, ev, zone, ts in sorted(events, key=lambda e: (e[3], e[1] != "exit", e[0], e[2])):
        shopper = device_shopper.get(device)
        if shopper is None:
            continue
        key = (device, zone)
        if ev == "enter":
            if key in open_:
                continue
            iv = [ts, math.inf]
            open_[key] = iv
            out[(shopper, zone)].append(iv)
        elif ev == "exit":
            iv = open_.pop(key, None)
            if iv is not None:
                iv[1] = ts
    for ivs in out.values():
        for iv in ivs:
            if iv[1] == math.inf:
                iv[1] = end
        ivs.sort()
    return out


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.quantile(np.array(values), q))


@dataclass
class Scored:
    zones: dict[str, dict]
    misses: list[tuple[int, str, float, float]]  # (shopper, zone, start, end) of undetected visits
    false_entries: list[tuple[int, str, float]]  # (shopper, zone, enter ts) overlapping no visit


def score(cfg, visits: list[Visit], pres, offers_by_zone: dict[str, int], *, tol: float) -> Scored:
    """Per-zone results, misses and false entries (deterministic for deterministic inputs)."""
    misses: list[tuple[int, str, float, float]] = []
    false_entries: list[tuple[int, str, float]] = []
    by_zone: dict[str, list[Visit]] = defaultdict(list)
    by_key: dict[tuple[int, str], list[Visit]] = defaultdict(list)
    for v in visits:
        by_zone[v.zone].append(v)
        by_key[(v.shopper, v.zone)].append(v)
    zones: dict[str, dict] = {}
    for f in sorted(cfg.fences, key=lambda f: f.id):
        zid = f.id
        vs = by_zone.get(zid, [])
        real = [v for v in vs if not v.graze]
        detected = stays = stays_detected = 0
        delays = []
        for v in real:
            ivs = pres.get((v.shopper, zid), [])
            hit = [iv for iv in ivs if iv[0] <= v.end + tol and iv[1] >= v.start]
            stay = v.end - v.start >= STAY_S
            stays += stay
            if hit:
                detected += 1
                stays_detected += stay
                delays.append(max(0.0, min(iv[0] for iv in hit) - v.start))
            else:
                misses.append((v.shopper, zid, v.start, v.end))
        correct = false = graze_only = enters = 0
        for (shopper, zone), ivs in pres.items():
            if zone != zid:
                continue
            mine = by_key.get((shopper, zone), [])
            for iv in ivs:
                enters += 1
                over = [v for v in mine if iv[0] <= v.end + tol and iv[1] >= v.start - tol]
                if any(not v.graze for v in over):
                    correct += 1
                elif over:
                    graze_only += 1
                else:
                    false += 1
                    false_entries.append((shopper, zid, iv[0]))
        n = len(real)
        offers = offers_by_zone.get(zid, 0)
        zones[zid] = {
            "kind": f.kind,
            "visits": n,
            "grazes": len(vs) - n,
            "detected": detected,
            "enters": enters,
            "false_enters": false,
            "precision": (round(correct / (correct + false), 4) if n and (correct + false) else None),
            "recall": round(detected / n, 4) if n else None,
            "stays": stays,
            "recall_stays": round(stays_detected / stays, 4) if stays else None,
            "detection_delay_s": None if _q(delays, 0.5) is None else round(_q(delays, 0.5), 3),
            "detection_delay_p90_s": None if _q(delays, 0.9) is None else round(_q(delays, 0.9), 3),
            "offers": offers,
            "offers_per_visit": round(offers / n, 4) if n else None,
        }
    return Scored(zones, misses, sorted(false_entries, key=lambda e: (e[1], e[2], e[0])))
