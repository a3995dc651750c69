"""Per-device fence tracking as a steppable state machine (no I/O, no clock).

Feed every classified ping to :func:`step` and call :func:`tick` now and then
for devices that went quiet; both return the (possibly new) track and the
events that happened.  Time is always a parameter (seconds, any epoch).

The rule (see DESIGN.md "Tracking rule"):

* a ping whose accuracy disc lies wholly inside a fence enters it at once;
* a ping whose disc lies wholly outside a fence the device is in exits it
  (``reason="left"``); a straddling ping changes nothing;
* silence longer than ``timeout_s`` exits every fence (``reason="timeout"``,
  at ``last_seen + timeout_s``) and forgets the device;
* sustained evidence: ``sustained_pings`` consecutive pings whose centre is
  inside a fence and whose accuracy is below the fence's half-width enter it;
* a ``Dwelled`` fires once per visit when the device has been in a fence for
  its ``dwell_s``.  Its ``ts`` is the moment the threshold was reached
  (``entered + dwell_s``), so events do not depend on how often the service
  ticks.

Events of one call come in a deterministic order: dwells reached before the
ping (by fence id), timeout exits (by fence id), exits on the ping (by fence
id), entries (by fence id), then dwells of zero-length thresholds on entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Union

from .fences import Match

__all__ = [
    "Entered",
    "Exited",
    "Dwelled",
    "Event",
    "TrackParams",
    "DeviceTrack",
    "step",
    "tick",
]

_NO_MAP: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Entered:
    """The device entered ``fence`` at ``ts``."""

    fence: str
    ts: float


@dataclass(frozen=True, slots=True)
class Exited:
    """The device left ``fence`` at ``ts``; ``reason`` is ``"left"`` (a ping
    wholly outside) or ``"timeout"`` (silence)."""

    fence: str
    ts: float
    reason: str


@dataclass(frozen=True, slots=True)
class Dwelled:
    """The device has been in ``fence`` for ``dwell_s`` seconds, reached at ``ts``."""

    fence: str
    ts: float
    dwell_s: float


Event = Union[Entered, Exited, Dwelled]


@dataclass(frozen=True, slots=True)
class TrackParams:
    """Tracking parameters shared by all devices of a store.

    ``timeout_s``: silence that exits every fence.  ``sustained_pings``:
    consecutive centre-inside pings (acc below the fence's half-width) that
    enter a fence; 0 disables.  ``dwell_s``: fence id -> dwell seconds (absent:
    no dwell event).  ``halfwidth``: fence id -> largest inscribed radius
    (:attr:`geometry.fences.FenceIndex.halfwidth`).
    """

    timeout_s: float = 120.0
    sustained_pings: int = 3
    dwell_s: Mapping[str, float] = field(default_factory=lambda: _NO_MAP)
    halfwidth: Mapping[str, float] = field(default_factory=lambda: _NO_MAP)


_NO_DWELLED: frozenset[str] = frozenset()


@dataclass(slots=True)
class DeviceTrack:
    """One device's tracking state.  Owned and mutated by :func:`step` /
    :func:`tick`; treat it as read-only elsewhere.

    ``inside``: fence id -> ts entered.  ``dwelled``: fences whose dwell fired
    this visit.  ``evidence``: fence id -> consecutive centre-inside pings.
    ``last_seen``: ts of the last ping.  To keep 100k tracks small,
    ``inside``, ``dwelled`` and ``evidence`` stay shared empty immutables
    until needed (and ``inside`` goes back to one when the device has left
    every fence).
    """

    inside: dict[str, float] | Mapping[str, float]
    dwelled: set[str] | frozenset[str]
    evidence: dict[str, int] | Mapping[str, int]
    last_seen: float

    @classmethod
    def new(cls, now: float) -> "DeviceTrack":
        """A fresh track for a device first seen at ``now``."""
        return cls(_NO_MAP, _NO_DWELLED, _NO_MAP, now)  # type: ignore[arg-type]


def _dwells(track: DeviceTrack, until: float, params: TrackParams, events: list) -> None:
    """Fire Dwelled for every fence whose threshold was reached by ``until``."""
    dw = params.dwell_s
    if not dw or not track.inside:
        return
    fired = None
    for fid in sorted(track.inside):
        d = dw.get(fid)
        if d is None or fid in track.dwelled:
            continue
        entered = track.inside[fid]
        if until - entered >= d:
            events.append(Dwelled(fid, entered + d, float(d)))
            if fired is None:
                fired = []
            fired.append(fid)
    if fired:
        if not isinstance(track.dwelled, set):
            track.dwelled = set()
        track.dwelled.update(fired)


def _timeout(track: DeviceTrack, now: float, params: TrackParams, events: list) -> bool:
    """Tick logic: dwells up to ``now`` (or the timeout) and timeout exits.
    Returns True when the device timed out."""
    t_out = track.last_seen + params.timeout_s
    if now > t_out:
        _dwells(track, t_out, params, events)
        for fid in sorted(track.inside):
            events.append(Exited(fid, t_out, "timeout"))
        return True
    _dwells(track, now, params, events)
    return False


def tick(track: DeviceTrack, now: float, params: TrackParams) -> tuple[DeviceTrack | None, list[Event]]:
    """Advance ``track`` to ``now`` without a ping.

    Fires dwells that are due; after more than ``timeout_s`` of silence exits
    every fence with reason ``"timeout"`` (at ``last_seen + timeout_s``) and
    returns ``None`` for the track (the device is forgotten).
    """
    events: list[Event] = []
    if _timeout(track, now, params, events):
        return None, events
    return track, events


def step(
    track: DeviceTrack | None,
    match: Match,
    now: float,
    params: TrackParams,
    *,
    acc: float = 0.0,
) -> tuple[DeviceTrack, list[Event]]:
    """Apply one classified ping (``match`` at ``now`` with accuracy ``acc``).

    ``track`` is ``None`` for an unknown device.  The gap since the last ping
    is handled first (as :func:`tick`); a timed-out device is processed as a
    fresh one.  Returns the track (mutated in place, or new) and the events.
    """
    events: list[Event] = []
    if track is None or _timeout(track, now, params, events):
        track = DeviceTrack.new(now)
    track.last_seen = now
    inside_now = track.inside
    m_inside = match.inside

    # exits: in a fence, and the disc is wholly outside it
    if inside_now:
        gone = [f for f in inside_now if f not in m_inside and f not in match.straddle]
        if gone:
            gone.sort()
            for fid in gone:
                del inside_now[fid]  # type: ignore[attr-defined]
                events.append(Exited(fid, now, "left"))
            if track.dwelled:
                track.dwelled.difference_update(gone)  # type: ignore[union-attr]
            if not inside_now:
                track.inside = inside_now = _NO_MAP
                track.dwelled = _NO_DWELLED

    # entries: disc wholly inside
    new = [f for f in m_inside if f not in inside_now]

    # sustained evidence: centre inside, acc below the half-width, not yet in
    n_needed = params.sustained_pings
    if n_needed > 0:
        hw = params.halfwidth
        qualifying = [
            f
            for f in match.centre_in
            if f not in m_inside and f not in inside_now and acc < hw.get(f, 0.0)
        ]
        old = track.evidence
        if qualifying or old:
            ev: dict[str, int] = {}
            for f in qualifying:
                c = old.get(f, 0) + 1
                if c >= n_needed:
                    new.append(f)
                else:
                    ev[f] = c
            track.evidence = ev if ev else _NO_MAP  # type: ignore[assignment]
    elif track.evidence:
        track.evidence = _NO_MAP  # type: ignore[assignment]

    if new:
        new.sort()
        if not inside_now:
            track.inside = inside_now = {}
        for fid in new:
            inside_now[fid] = now  # type: ignore[index]
            events.append(Entered(fid, now))
        _dwells(track, now, params, events)
    return track, events
