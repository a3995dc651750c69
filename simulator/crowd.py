"""The ``--crowd`` scenario: a rush at the tills, and what the floor made of it.

**The rush.**  Every shopper walks in within the first ``RUSH_S`` seconds
(at most a fifth of the run), picks up one or two things (5–20 s at each
stop, nearest first) and heads for a checkout fence, so their arrivals at
the tills bunch up.  Each checkout fence has ``TILLS`` tills serving one
shopper each for 20–60 s, first come first served (a shopper takes the till
that frees first); the others wait inside the fence.  That is a queue: time
in the fence is the wait plus the service.  Then they leave by the door.

**Ground truth** comes from the shoppers' true positions, on a one-second
grid: per fence, how many are inside (the peak, and for how long it stayed at
or over ``capacity``); when crowding was *due* (the count had stayed at or
above ``capacity`` for ``[floor] sustain_s``); when a queue was *due*
(``queue_alert_at`` shoppers had each been inside the checkout fence longer
than ``queue_wait_s``).

**The agent's side** is what a client sees: the retained ``{R}/floor``
(each zone's ``now``) and ``{R}/alert/#`` (``crowding`` and ``queue``
alerts, raised and resolved).  A message's simulated time is the time of
the newest ping the simulator had published when it arrived.  The agent
decides crowding and queues once a (wall-clock) second, so at ``--speed S``
an alert's time is good to about ``S`` simulated seconds (``resolution_s``).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from geometry.fences import FenceIndex

from .shoppers import SPEED_RANGE, Shopper, Stop, _stop_point, _Walk
from .space import Space

__all__ = ["make_rush", "true_floor", "floor_report", "RUSH_S", "TILLS", "SERVICE_RANGE", "CROWD_SPEED"]

RUSH_S = 120.0  # shoppers walk in within this long (at most a fifth of the run)
TILLS = 3  # tills open per checkout fence
SERVICE_RANGE = (20.0, 60.0)  # seconds at the till
QUICK_DWELL = (5.0, 20.0)  # a stop on the way to the tills
CROWD_SPEED = 10.0  # default --speed of a crowd run (the agent decides once a wall second)
STOP_KINDS = ("section", "aisle", "display")


def rush_window(duration: float) -> float:
    return min(RUSH_S, 0.2 * duration)


def make_rush(cfg, space: Space, *, n: int, duration: float, seed: int) -> list[Shopper]:
    """``n`` shoppers converging on the checkouts (see the module docstring)."""
    rng = np.random.default_rng([seed, 0xC40D])
    fences = [f for f in cfg.fences if f.floor == space.floor]
    targets = [f for f in fences if f.kind in STOP_KINDS]
    checkouts = [f for f in fences if f.kind == "checkout"]
    if not checkouts:
        raise ValueError("--crowd needs a checkout fence (kind \"checkout\") in the layout")
    arrivals = np.sort(rng.uniform(0.0, rush_window(duration), size=n))
    walks: list[tuple[_Walk, list[Stop], object, tuple[float, float] | None, float]] = []
    for t0 in arrivals.tolist():
        speed = float(rng.uniform(*SPEED_RANGE))
        k = int(rng.integers(1, min(2, len(targets)) + 1)) if targets else 0
        chosen = [targets[j] for j in rng.choice(len(targets), size=k, replace=False)] if k else []
        points = [(f, p) for f in chosen if (p := _stop_point(space, f, rng)) is not None]
        points.sort(key=lambda fp: math.dist(space.door_inside, fp[1]))
        co = checkouts[int(rng.integers(len(checkouts)))]
        till = space.random_point_in(co.geometry, rng)
        service = float(rng.uniform(*SERVICE_RANGE))
        w = _Walk(space.door_outside, t0, speed)
        w.walk(space.path(w.here, space.door_inside))
        stops = []
        for f, p in points:
            w.walk(space.path(w.here, p))
            arrive = w.now
            w.wait(float(rng.uniform(*QUICK_DWELL)))
            stops.append(Stop(f.id, p[0], p[1], arrive, w.now))
        if till is not None:
            w.walk(space.path(w.here, till))
        walks.append((w, stops, co, till, service))
    # the tills: first come, first served, TILLS per checkout fence
    free: dict[str, list[float]] = {c.id: [0.0] * TILLS for c in checkouts}
    order = sorted(range(len(walks)), key=lambda i: (walks[i][0].now, i))
    for i in order:
        w, stops, co, till, service = walks[i]
        if till is None:
            continue
        tills = free[co.id]
        j = min(range(TILLS), key=lambda q: (tills[q], q))
        arrive = w.now
        done = max(arrive, tills[j]) + service
        tills[j] = done
        w.wait(done - arrive)
        stops.append(Stop(co.id, till[0], till[1], arrive, done))
    out = []
    for i, (w, stops, _, _, _) in enumerate(walks):
        w.walk(space.path(w.here, space.door_inside))
        w.walk([w.here, space.door_outside])
        w.wait(3.0)
        pts = np.array(w.pts)
        out.append(Shopper(index=i, arrive=w.t[0], speed=w.speed, stops=stops, t=np.array(w.t),
                           x=pts[:, 0], y=pts[:, 1], floor=space.floor))
    return out


def true_floor(cfg, shoppers: list[Shopper], duration: float, step: float = 1.0) -> tuple[np.ndarray, dict, dict]:
    """Ground truth on a ``step`` grid: ``(ts, counts, waiting)`` where
    ``counts[zone]`` is the number of shoppers inside at each ``ts`` and
    ``waiting[zone]`` (checkout fences with ``queue_alert_at``) the number
    inside for longer than the fence's ``queue_wait_s``."""
    ts = np.arange(0.0, duration + 1e-9, step)
    index = FenceIndex(cfg.fences)
    ids = [f.id for f in cfg.fences]
    counts = {z: np.zeros(ts.size, dtype=np.int64) for z in ids}
    queued = {f.id: f for f in cfg.fences if f.kind == "checkout" and f.queue_alert_at}
    waiting = {z: np.zeros(ts.size, dtype=np.int64) for z in queued}
    for s in shoppers:
        sel = np.flatnonzero((ts >= s.arrive) & (ts <= min(s.leave, duration)))
        if sel.size == 0:
            continue
        xs, ys = s.position(ts[sel])
        matches = index.classify(xs, ys, np.full(sel.size, s.floor), np.zeros(sel.size))
        inside = {z: np.zeros(sel.size, dtype=bool) for z in ids}
        for k, m in enumerate(matches):
            for z in m.centre_in:
                inside[z][k] = True
        for z, mask in inside.items():
            if not mask.any():
                continue
            counts[z][sel[mask]] += 1
            f = queued.get(z)
            if f is not None:  # time inside since this run inside began
                since = np.full(sel.size, np.nan)
                start = math.nan
                for k in range(sel.size):
                    if mask[k]:
                        if k == 0 or not mask[k - 1]:
                            start = ts[sel[k]]
                        since[k] = ts[sel[k]] - start
                waiting[z][sel[(since > f.queue_wait_s)]] += 1
    return ts, counts, waiting


def _first_sustained(ts: np.ndarray, ok: np.ndarray, hold: float) -> float | None:
    """First time ``ok`` has held continuously for ``hold`` seconds."""
    start = None
    for t, v in zip(ts.tolist(), ok.tolist()):
        if not v:
            start = None
            continue
        if start is None:
            start = t
        if t - start >= hold:
            return t
    return None


def _first(ts: np.ndarray, ok: np.ndarray) -> float | None:
    hit = np.flatnonzero(ok)
    return float(ts[hit[0]]) if hit.size else None


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(float(v), nd)


class SimClock:
    """Wall-clock receipt time → the run's simulated time (the newest ping
    published by then)."""

    def __init__(self, timeline: list[tuple[float, float]]):
        self.walls = [w for w, _ in timeline]
        self.sims = [s for _, s in timeline]

    def __call__(self, wall: float) -> float:
        i = bisect.bisect_right(self.walls, wall) - 1
        return self.sims[i] if i >= 0 else 0.0


def floor_report(cfg, shoppers: list[Shopper], *, duration: float, floor_msgs, alert_msgs, timeline,
                 speed: float) -> dict:
    """The report's ``floor`` section.  ``floor_msgs``: ``(wall, {R}/floor body)``
    received during the run; ``alert_msgs``: ``(wall, {R}/alert/... body)``;
    ``timeline``: ``(wall, simulated time)`` of every ping published."""
    clock = SimClock(timeline)
    ts, counts, waiting = true_floor(cfg, shoppers, duration)
    till_arrivals = sorted(st.arrive for s in shoppers for st in s.stops
                           if (f := cfg.fence(st.zone)) is not None and f.kind == "checkout")
    rush = {"shoppers": len(shoppers), "tills_per_checkout": TILLS, "service_s": list(SERVICE_RANGE),
            "walk_in_s": round(rush_window(duration), 1),
            "start_s": _r(till_arrivals[0]) if till_arrivals else None,
            "end_s": _r(till_arrivals[-1]) if till_arrivals else None}
    rush0 = till_arrivals[0] if till_arrivals else 0.0
    # the agent's occupancy, as {R}/floor said it
    seen: dict[str, tuple[int, float | None]] = {}
    for wall, body in floor_msgs:
        zones = body.get("zones") if isinstance(body, dict) else None
        if not isinstance(zones, dict):
            continue
        at = clock(wall)
        for zid, z in zones.items():
            n = z.get("now") if isinstance(z, dict) else None
            if isinstance(n, int) and n > seen.get(zid, (-1, None))[0]:
                seen[zid] = (n, at)
    # the agent's alerts: raised (first per kind and zone) and resolved
    raised: dict[str, dict] = {}
    for wall, body in sorted(alert_msgs, key=lambda m: m[0]):
        if not isinstance(body, dict) or "alert_id" not in body:
            continue
        aid = body["alert_id"]
        if "state" not in body and body.get("kind") in ("crowding", "queue") and aid not in raised:
            raised[aid] = {"kind": body["kind"], "zone": body.get("zone"), "at": clock(wall),
                           "count": body.get("count"), "resolved": None}
        elif body.get("state") == "resolved" and aid in raised and raised[aid]["resolved"] is None:
            raised[aid]["resolved"] = clock(wall)
    by_zone: dict[tuple[str, str], list[dict]] = {}
    for a in raised.values():
        by_zone.setdefault((a["kind"], a["zone"]), []).append(a)
    sustain = cfg.floor.sustain_s
    zones = {}
    for f in sorted(cfg.fences, key=lambda f: f.id):
        if f.kind == "staff_only":
            continue
        c = counts[f.id]
        peak = int(c.max()) if c.size else 0
        z = {"kind": f.kind, "capacity": f.capacity, "peak_true": peak,
             "peak_true_at_s": _r(ts[int(np.argmax(c))]) if peak else None,
             "peak_seen": seen.get(f.id, (None, None))[0], "peak_seen_at_s": _r(seen.get(f.id, (None, None))[1])}
        if f.capacity:
            z["peak_of_capacity"] = round(peak / f.capacity, 3)
            z["over_capacity_s"] = round(float((c >= f.capacity).sum()) * float(ts[1] - ts[0] if ts.size > 1 else 1))
            z["crowding"] = _alert_view(by_zone.get(("crowding", f.id), []),
                                        due=_first_sustained(ts, c >= f.capacity, sustain), rush0=rush0)
        if f.kind == "checkout" and f.queue_alert_at:
            wq = waiting[f.id]
            z["queue_alert_at"] = f.queue_alert_at
            z["queue_wait_s"] = f.queue_wait_s
            z["peak_waiting"] = int(wq.max()) if wq.size else 0
            z["longest_stay_s"] = _r(max((st.leave - st.arrive for s in shoppers for st in s.stops
                                          if st.zone == f.id), default=None))
            z["queue"] = _alert_view(by_zone.get(("queue", f.id), []),
                                     due=_first(ts, wq >= f.queue_alert_at), rush0=rush0)
        zones[f.id] = z
    return {"rush": rush, "speed": speed, "resolution_s": round(max(speed, 1.0), 1),
            "sustain_s": sustain, "zones": zones, "advice": floor_advice(zones, sustain)}


def _alert_view(alerts: list[dict], *, due: float | None, rush0: float) -> dict:
    first = min(alerts, key=lambda a: a["at"]) if alerts else None
    at = first["at"] if first else None
    return {
        "due_s": _r(due),  # when the truth met the rule (null: never)
        "fired_s": _r(at),  # when the first alert reached a client (null: never)
        "after_rush_s": _r(at - rush0) if at is not None else None,
        "after_due_s": _r(at - due) if at is not None and due is not None else None,
        "resolved_s": _r(first["resolved"]) if first else None,
        "alerts": len(alerts),
    }


def floor_advice(zones: dict, sustain: float) -> list[dict]:
    """What a planner might change before opening (deterministic but for the
    alert times, which are wall-clock bound)."""
    out = []
    for zid, z in zones.items():
        cap = z.get("capacity")
        if cap:
            cr = z["crowding"]
            if z["peak_true"] < cap and z["peak_true"] >= 0.8 * cap:
                out.append({"zone": zid, "verdict": "near capacity", "text": (
                    f"{zid} peaked at {z['peak_true']} of capacity {cap}: busy, never crowded in this rush")})
            elif z["peak_true"] >= cap and cr["due_s"] is None:
                out.append({"zone": zid, "verdict": "brief peaks", "text": (
                    f"{zid} reached capacity {cap} (peak {z['peak_true']}) for {z['over_capacity_s']:.0f} s in "
                    f"all, never {sustain:g} s at a stretch: no crowding alert; lower [floor] sustain_s to "
                    f"hear of such peaks")})
            elif cr["due_s"] is not None and cr["fired_s"] is None:
                out.append({"zone": zid, "verdict": "missed", "text": (
                    f"{zid} was crowded (peak {z['peak_true']} of {cap}) but no crowding alert came: the agent "
                    f"counted at most {z['peak_seen']}; check positioning there")})
            elif cr["fired_s"] is not None:
                out.append({"zone": zid, "verdict": "crowding alert", "text": (
                    f"{zid}: crowding alert {cr['after_rush_s']:.0f} s after the rush began"
                    + (f", {cr['after_due_s']:.0f} s after it was due" if cr["after_due_s"] is not None
                       else " (the truth never stayed over capacity that long: a false alarm)")
                    + f"; peak {z['peak_true']} of capacity {cap}")})
        if "queue" in z:
            q = z["queue"]
            at = z["queue_alert_at"]
            if q["fired_s"] is not None:
                out.append({"zone": zid, "verdict": "queue alert", "text": (
                    f"{zid}: queue alert {q['after_rush_s']:.0f} s after the rush began"
                    + (f", {q['after_due_s']:.0f} s after {at} shoppers had waited {z['queue_wait_s']:g} s"
                       if q["after_due_s"] is not None else " (the truth never had that queue: a false alarm)")
                    + f"; the longest stay at the tills was {z['longest_stay_s']:.0f} s. To hear sooner, lower "
                    f"queue_alert_at or queue_wait_s")})
            elif q["due_s"] is not None:
                out.append({"zone": zid, "verdict": "missed", "text": (
                    f"{zid}: {at} shoppers waited over {z['queue_wait_s']:g} s but no queue alert came")})
            else:
                out.append({"zone": zid, "verdict": "no queue", "text": (
                    f"{zid}: at most {z['peak_waiting']} shoppers waited over {z['queue_wait_s']:g} s "
                    f"(queue_alert_at {at}): no queue alert; lower queue_alert_at or queue_wait_s if that "
                    f"queue matters")})
    return out
