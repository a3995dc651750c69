"""Defences on the ping path: spoofing (mock locations, teleports) and
overload shedding.  Pure: positions and times are parameters.

*Mock locations.* A ping flagged ``mock`` (Android's mock-location provider,
as apps report it) is counted and ignored for triggering.

*Teleports.* A ping that implies moving faster than ``max_speed`` m/s —
after allowing for both pings' accuracy circles — is counted and ignored.
Speed is judged on the device's own timestamps only (both pings carry
``ts``; the interval counts as at least one second): receive times say
nothing about movement when a broker delivers queued pings in a burst.
The reference position is not moved by a rejected ping; after ``strikes``
consecutive rejections the device is re-anchored at the new position (a
genuine jump, e.g. a location engine that re-converged, must not lock a
device out for ever).

*Overload.* When one batch holds more pings than ``shed_above``, only the
newest ping of each device is kept; the stale ones are shed and counted.
Actions, consent and inventory are never shed (they are not pings).
"""

from __future__ import annotations

import math


class SpoofGuard:
    __slots__ = ("max_speed", "strikes", "last")

    def __init__(self, max_speed: float = 50.0, strikes: int = 3):
        self.max_speed = max_speed
        self.strikes = strikes
        # device -> (x, y, floor, t, acc, consecutive rejections)
        self.last: dict[str, tuple[float, float, int, float, float, int]] = {}

    def check(self, device: str, x: float, y: float, floor: int, acc: float, ts: float | None,
              mock: bool = False) -> str | None:
        """``None`` when the ping may trigger, else the reason (``mock``, ``teleport``).
        ``ts`` is the device's own timestamp (None: no speed test)."""
        if mock:
            return "mock"
        if ts is None:
            self.last.pop(device, None)
            return None
        prev = self.last.get(device)
        if prev is not None and prev[2] == floor:
            px, py, _, pt, pacc, bad = prev
            dt = max(ts - pt, 1.0)
            slack = self.max_speed * dt + acc + pacc
            if math.hypot(x - px, y - py) > slack and bad + 1 < self.strikes:
                self.last[device] = (px, py, floor, pt, pacc, bad + 1)
                return "teleport"
        self.last[device] = (x, y, floor, ts, acc, 0)
        return None

    def forget(self, device: str) -> None:
        self.last.pop(device, None)


def shed_stale(pings: list, limit: int) -> tuple[list, int]:
    """Keep only each device's newest ping when a batch exceeds ``limit``."""
    if len(pings) <= limit:
        return pings, 0
    newest: dict[str, int] = {}
    for i, p in enumerate(pings):
        newest[p.device] = i
    keep = sorted(newest.values())
    return [pings[i] for i in keep], len(pings) - len(keep)
