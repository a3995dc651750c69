"""Every device's track, and a tick that costs what is due (no I/O, no clock).

:class:`Tracks` holds one :class:`~geometry.tracking.DeviceTrack` per device
and knows, for each, the earliest time at which :func:`~geometry.tracking.tick`
would do anything.  :meth:`Tracks.due` ticks only those devices, so a tick
with nothing due costs a comparison, whatever the number of devices tracked.
Time is always a parameter (seconds, any epoch).

How:

* **The due time** of a track (:func:`due_time`) is the earliest ``now`` at
  which ``tick(track, now, params)`` changes something: the first ``now``
  *after* ``last_seen + timeout_s`` (``tick`` times out on ``now >
  last_seen + timeout_s``), or, if earlier, the first ``now`` at which
  ``now - entered >= dwell_s`` for a fence the device is in and has not
  dwelled in this visit.  Both are computed as the exact floats ``tick``'s
  own comparisons switch at (``math.nextafter``; for the dwell, a bisection
  over consecutive floats when ``entered + dwell_s`` is off by more than an
  ulp), so for any ``now`` before the due time ``tick`` is a no-op (no
  events, no change), and at or after it ``tick`` fires a dwell or times
  out.  That is what makes skipping every track that is not due give the
  same results as ticking them all, and no track is ticked for nothing.
* **A min-heap of keys** ``(key, device)``, one live entry per device, whose
  key is never later than the device's due time (a lower bound).  A ping
  (:meth:`Tracks.step`) recomputes the due time; it pushes a new entry only
  when the due time moved *earlier* than the key (the device entered a fence
  with a dwell).  When it moved later (the usual case: a ping pushes the
  silence timeout back) the old entry stays, so the heap is not touched on
  most pings.
* **Lazy invalidation.** ``_key[device]`` names the device's live entry; an
  entry whose key differs (superseded), or whose device is gone
  (:meth:`Tracks.pop`, a timeout), is skipped when popped.  When stale
  entries outnumber live ones (beyond a slack), the heap is rebuilt from
  ``_key`` in O(n), which keeps its size O(devices) at any ping rate.
* **:meth:`Tracks.due`** pops every entry with key <= ``now``; for a live
  one it recomputes the due time: still later than ``now`` (the key was an
  early bound) -> re-push at the due time without ticking; otherwise ->
  tick.  Ticked devices run in order of (due time, device id); a device that
  timed out is removed, the others are re-pushed at their new due time.
  Re-pushes happen after the pops, so one call never loops.
* **Parameters.** Due times depend on ``timeout_s`` and ``dwell_s``.
  :meth:`Tracks.reschedule` recomputes every key (O(n), on a config
  reload).  ``step`` and ``due`` also call it themselves when they are given
  params whose ``timeout_s`` or ``dwell_s`` differ from the last ones seen
  (an identity check first, so the same ``TrackParams`` object costs
  nothing).

* **Time need not increase.**  A due time is a function of the track alone,
  so ``due(now)`` with an earlier ``now`` than a previous call just finds
  less due (as ticking every track would); ``step`` applies a ping as
  :func:`~geometry.tracking.step` does, older than ``last_seen`` or not
  (dropping out-of-order pings is the caller's choice) and reschedules from
  the result.  Times are finite floats.

Cost: a ping adds one due-time computation (O(fences the device is in)) and
rarely a heap push; a tick costs O((due + early keys) log n), where early
keys are at most one per device per ``timeout_s`` of continuous pinging.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import ItemsView, Iterator, Mapping

from .fences import Match
from .tracking import DeviceTrack, Event, TrackParams, step, tick

__all__ = ["Tracks", "due_time"]

_INF = math.inf
_SLACK = 1024  # stale heap entries tolerated beyond one per live device before a rebuild


def _after(t: float) -> float:
    """The smallest float greater than ``t`` (``tick``: ``now > t``); inf for NaN."""
    if math.isnan(t):
        return _INF  # a NaN bound: ``now > nan`` is never true
    return math.nextafter(t, _INF)


def _first_at(entered: float, d: float) -> float:
    """The smallest float ``x`` with ``x - entered >= d`` (``tick``'s dwell test).

    ``x - entered`` rounds monotonically in ``x``, so the floats passing the
    test are all those from one point on.  Usually it is ``entered + d`` or
    the float after it; otherwise bracket it (doubling a step from there) and
    bisect over the floats in order (at most 64 steps: near zero the test
    can stay flat over billions of consecutive floats).  Times are finite;
    a NaN never passes the test: inf.
    """
    x = entered + d
    if math.isnan(x):
        return _INF
    if x - entered >= d:
        y = math.nextafter(x, -_INF)
        if not (y - entered >= d) or not math.isfinite(x):
            return x
        hi, step = y, max(math.ulp(x), math.ulp(entered), math.ulp(d))
        lo = hi - step
        while lo - entered >= d:
            step *= 2
            lo = hi - step
    else:
        y = math.nextafter(x, _INF)
        if y - entered >= d:
            return y
        if not math.isfinite(x):
            return _INF
        lo, step = y, max(math.ulp(x), math.ulp(entered), math.ulp(d))
        hi = lo + step
        while not (hi - entered >= d):
            step *= 2
            hi = lo + step
    a, b = _order(lo), _order(hi)  # lo fails the test, hi passes it
    while b - a > 1:
        m = (a + b) // 2
        if _unorder(m) - entered >= d:
            b = m
        else:
            a = m
    return _unorder(b)


_SIGN = 1 << 63
_PACK = struct.Struct("<d")
_BITS = struct.Struct("<Q")


def _order(x: float) -> int:
    """An integer that orders floats as they compare, consecutive floats 1 apart."""
    (b,) = _BITS.unpack(_PACK.pack(x))
    return -(b ^ _SIGN) if b & _SIGN else b


def _unorder(i: int) -> float:
    (x,) = _PACK.unpack(_BITS.pack(-i | _SIGN if i < 0 else i))
    return x


def due_time(track: DeviceTrack, params: TrackParams) -> float:
    """The earliest ``now`` at which ``tick(track, now, params)`` would fire a
    dwell or time the device out; before it, ``tick`` changes nothing."""
    t = track.last_seen + params.timeout_s
    t = math.nextafter(t, _INF) if t == t else _INF  # _after, inlined: one call per ping
    dw = params.dwell_s
    inside = track.inside
    if dw and inside:
        dwelled = track.dwelled
        for fid, entered in inside.items():
            d = dw.get(fid)
            if d is None or fid in dwelled:
                continue
            f = _first_at(entered, d)
            t = min(t, f)
    return t


class Tracks(Mapping[str, DeviceTrack]):
    """Every tracked device's :class:`DeviceTrack`, scheduled by due time.

    A read-only mapping ``device -> DeviceTrack`` (``get``, ``[]``, ``in``,
    ``len``, iteration over device ids, ``items()``); tracks change only
    through :meth:`step` (a ping), :meth:`due` (time passing) and
    :meth:`pop` (forget).  See the module docstring for the method.
    """

    __slots__ = ("_heap", "_key", "_params", "_tracks")

    def __init__(self) -> None:
        self._tracks: dict[str, DeviceTrack] = {}
        self._key: dict[str, float] = {}  # device -> key of its live heap entry (<= its due time)
        self._heap: list[tuple[float, str]] = []
        self._params: TrackParams | None = None

    # -- the mapping (reads)
    def __getitem__(self, device: str) -> DeviceTrack:
        return self._tracks[device]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tracks)

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, device: object) -> bool:
        return device in self._tracks

    def get(self, device: str, default: DeviceTrack | None = None) -> DeviceTrack | None:  # type: ignore[override]
        return self._tracks.get(device, default)

    def items(self) -> ItemsView[str, DeviceTrack]:
        """A live view of ``(device, track)``; do not change tracks while iterating it."""
        return self._tracks.items()

    def __repr__(self) -> str:
        return f"<Tracks {len(self._tracks)} devices, {len(self._heap)} heap entries>"

    # -- changes
    def pop(self, device: str) -> DeviceTrack | None:  # type: ignore[override]
        """Forget ``device`` (no events); return its track, or None if unknown."""
        self._key.pop(device, None)  # its heap entry is now stale
        return self._tracks.pop(device, None)

    def step(self, device: str, match: Match, now: float, params: TrackParams, *,
             acc: float = 0.0) -> list[Event]:
        """Apply one classified ping of ``device``: :func:`geometry.tracking.step`
        on its track (None for a new device), store the result, reschedule it,
        and return the events."""
        if params is not self._params:
            self._adopt(params)
        tracks = self._tracks
        track, events = step(tracks.get(device), match, now, params, acc=acc)
        tracks[device] = track
        if params.dwell_s and track.inside:
            d = due_time(track, params)
        else:  # due_time without a dwell to wait for: the silence timeout
            d = track.last_seen + params.timeout_s
            d = math.nextafter(d, _INF) if d == d else _INF
        k = self._key.get(device)
        if k is None or d < k:
            self._push(device, d)
        return events

    def due(self, now: float, params: TrackParams) -> list[tuple[str, list[Event]]]:
        """Tick every device whose due time is <= ``now``.

        Returns ``(device, events)`` in order of due time, then device id, for
        every device that produced events *or timed out*: a timed-out device
        is removed (``device not in tracks`` afterwards) and is listed even
        when it was in no fence (its events are then ``[]``).  Devices that
        are not due are not touched; for them ``tick`` would return no event.
        """
        if params is not self._params:
            self._adopt(params)
        heap, key, tracks = self._heap, self._key, self._tracks
        ready: list[tuple[float, str]] = []
        later: list[tuple[float, str]] = []
        while heap and heap[0][0] <= now:
            k, device = heapq.heappop(heap)
            if key.get(device) != k:
                continue  # superseded, or the device is gone
            d = due_time(tracks[device], params)
            if d <= now:
                del key[device]  # a duplicate (k, device) entry is now stale
                ready.append((d, device))
            else:  # the key was an early bound (pings moved the timeout on)
                key[device] = d
                later.append((d, device))
        out: list[tuple[str, list[Event]]] = []
        if ready:
            ready.sort()
            for _, device in ready:
                track, events = tick(tracks[device], now, params)
                if track is None:
                    del tracks[device]
                    out.append((device, events))
                    continue
                if events:
                    out.append((device, events))
                d = due_time(track, params)
                key[device] = d
                later.append((d, device))
        for entry in later:  # after the pops: an entry is never popped twice in one call
            heapq.heappush(heap, entry)
        return out

    def reschedule(self, params: TrackParams) -> None:
        """Recompute every device's due time for ``params`` (after a change of
        ``timeout_s`` or ``dwell_s``) and rebuild the heap: O(n)."""
        self._params = params
        self._key = {device: due_time(track, params) for device, track in self._tracks.items()}
        self._rebuild()

    # -- internals
    def _adopt(self, params: TrackParams) -> None:
        old = self._params
        if old is not None and self._tracks and (
                old.timeout_s != params.timeout_s
                or (old.dwell_s is not params.dwell_s and old.dwell_s != params.dwell_s)):
            self.reschedule(params)
        else:
            self._params = params

    def _push(self, device: str, d: float) -> None:
        self._key[device] = d
        heap = self._heap
        heapq.heappush(heap, (d, device))
        if len(heap) > 2 * len(self._key) + _SLACK:
            self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(k, device) for device, k in self._key.items()]
        heapq.heapify(self._heap)
