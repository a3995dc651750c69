import heapq
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geometry import schedule
from geometry.fences import Match
from geometry.schedule import Tracks, due_time
from geometry.tracking import DeviceTrack, Dwelled, Entered, Exited, TrackParams, step, tick

P = TrackParams(timeout_s=120.0, sustained_pings=3, dwell_s={"a": 30.0}, halfwidth={"a": 2.0, "b": 2.0})


def M(inside=(), straddle=(), centre=None):
    inside, straddle = frozenset(inside), frozenset(straddle)
    return Match(inside, straddle, frozenset(inside if centre is None else centre))


OUT = Match()


@pytest.fixture
def ticks(monkeypatch):
    """Count the calls Tracks makes to geometry.tracking.tick."""
    calls = []

    def counting(track, now, params):
        calls.append(now)
        return tick(track, now, params)

    monkeypatch.setattr(schedule, "tick", counting)
    return calls


def test_mapping_reads_and_pop():
    t = Tracks()
    assert len(t) == 0 and not t and t.get("x") is None and "x" not in t and t.pop("x") is None
    assert t.step("d1", M(["a"]), 0.0, P) == [Entered("a", 0.0)]
    t.step("d2", OUT, 1.0, P)
    assert len(t) == 2 and "d1" in t and list(t) == ["d1", "d2"]
    assert t["d1"].inside == {"a": 0.0} and t.get("d2").last_seen == 1.0
    assert [d for d, _ in t.items()] == ["d1", "d2"]
    track = t.pop("d1")
    assert isinstance(track, DeviceTrack) and "d1" not in t and len(t) == 1
    assert t.due(1000.0, P) == [("d2", [])]  # the forgotten d1 is not ticked, d2 times out
    assert not t


def test_tick_with_nothing_due_ticks_nothing(ticks):
    t = Tracks()
    for i in range(1000):
        t.step(f"d{i}", M(["a"]) if i % 2 else OUT, float(i) / 100, P)
    assert t.due(29.0, P) == [] and t.due(29.99, P) == []
    assert ticks == []  # no track was touched, whatever the number tracked
    assert len(t) == 1000


def test_dwell_fires_at_its_threshold_once():
    t = Tracks()
    t.step("d", M(["a"]), 0.1, P)
    assert due_time(t["d"], P) == 30.1
    assert t.due(math.nextafter(30.1, 0.0), P) == []
    assert t.due(30.1, P) == [("d", [Dwelled("a", 30.1, 30.0)])]
    assert t.due(30.1, P) == [] and t.due(60.0, P) == []
    assert due_time(t["d"], P) == math.nextafter(120.1, math.inf)  # now only the silence timeout
    # leave and come back: a new visit dwells again, at its own threshold
    t.step("d", OUT, 70.0, P)
    t.step("d", M(["a"]), 80.0, P)
    assert t.due(109.9, P) == []
    assert t.due(110.0, P) == [("d", [Dwelled("a", 110.0, 30.0)])]


@pytest.mark.parametrize("entered, dwell", [(0.1, 0.2), (13.4, 0.1), (1.7e9 + 0.1, 29.9), (-0.1, 0.1)])
def test_dwell_threshold_is_the_float_tick_switches_at(ticks, entered, dwell):
    # tick's test is now - entered >= dwell_s, which entered + dwell_s misses by an ulp either
    # way (0.1 + 0.2 = 0.30000000000000004 is on time; 13.4 + 0.1 = 13.5 is one ulp early)
    p = TrackParams(dwell_s={"a": dwell})
    t = Tracks()
    t.step("d", M(["a"]), entered, p)
    d = due_time(t["d"], p)
    assert d - entered >= dwell and not (math.nextafter(d, -math.inf) - entered >= dwell)
    assert t.due(math.nextafter(d, -math.inf), p) == [] and ticks == []  # no tick that would do nothing
    assert t.due(d, p) == [("d", [Dwelled("a", entered + dwell, dwell)])]
    assert ticks == [d]


def test_silence_timeout_removes_the_device():
    t = Tracks()
    t.step("in", M(["a", "b"]), 0.0, P)
    t.step("out", OUT, 0.0, P)  # in no fence: no event, but still forgotten
    t.step("late", OUT, 50.0, P)
    assert t.due(120.0, P) == [("in", [Dwelled("a", 30.0, 30.0)])]  # no timeout at last_seen + timeout_s
    assert t.due(math.nextafter(120.0, math.inf), P) == [
        ("in", [Exited("a", 120.0, "timeout"), Exited("b", 120.0, "timeout")]),
        ("out", []),
    ]
    assert "in" not in t and "out" not in t and "late" in t


def test_pings_push_the_timeout_on_without_ticking(ticks):
    t = Tracks()
    for s in range(600):  # a device pinging every second for ten minutes, ticked every second
        t.step("d", OUT, float(s), P)
        assert t.due(float(s) + 0.5, P) == []
    assert "d" in t and ticks == []  # early keys are re-pushed, never ticked
    assert len(t._heap) == 1


def test_results_in_due_order_then_device_id():
    t = Tracks()
    t.step("z", M(["a"]), 0.0, P)   # dwell due at 30
    t.step("b", M(["a"]), 5.0, P)   # dwell due at 35
    t.step("a", M(["a"]), 5.0, P)   # dwell due at 35, same time: by id
    t.step("y", OUT, -100.0, P)     # timeout due just after 20
    got = t.due(40.0, P)
    assert [d for d, _ in got] == ["y", "z", "a", "b"]


def test_duplicate_and_stale_heap_entries_are_skipped(ticks):
    t = Tracks()
    t.step("d", OUT, 0.0, P)           # key: just after 120 (timeout)
    t.step("d", M(["a"]), 10.0, P)     # entered: due 40, earlier than the key: pushed
    t.step("d", OUT, 11.0, P)          # left: due after 131; the 40 entry stays as an early key
    t.step("d", M(["a"]), 12.0, P)     # back in: due 42, later than the key 40: not pushed
    assert t._key["d"] == 40.0 and len(t._heap) == 2
    t.step("e", M(["a"]), 0.0, P)
    t.pop("e")                         # forgotten: its entry (30) is stale
    heapq.heappush(t._heap, (1.0, "d"))  # an entry that is not the device's key
    heapq.heappush(t._heap, (40.0, "d"))  # an exact duplicate of the live entry
    assert t.due(41.0, P) == [] and ticks == []  # the early key is moved on to 42, not ticked
    assert t._key["d"] == 42.0
    heapq.heappush(t._heap, (42.0, "d"))  # a duplicate of an entry that is due
    assert t.due(42.0, P) == [("d", [Dwelled("a", 42.0, 30.0)])]
    assert ticks == [42.0]  # ticked once
    assert t.due(42.0, P) == [] and t.due(100.0, P) == [] and ticks == [42.0]
    assert t.due(200.0, P) == [("d", [Exited("a", 132.0, "timeout")])]


def test_step_through_a_timeout_keeps_the_device():
    t = Tracks()
    t.step("d", M(["a"]), 0.0, P)
    # no due() ran during the silence: the ping itself times the old visit out
    assert t.step("d", M(["b"]), 500.0, P) == [Dwelled("a", 30.0, 30.0), Exited("a", 120.0, "timeout"),
                                                Entered("b", 500.0)]
    assert t.due(600.0, P) == [] and "d" in t


def test_heap_stays_bounded_by_devices():
    t = Tracks()
    p = TrackParams(dwell_s={"a": 5.0})
    for i in range(20000):  # enter (due moves earlier: a push) and leave, over and over
        t.step(f"d{i % 50}", M(["a"]) if i % 2 == 0 else OUT, float(i) * 0.001, p)
    assert len(t._heap) <= 2 * len(t) + schedule._SLACK


def test_reschedule_on_params_change():
    t = Tracks()
    t.step("d", M(["a"]), 0.0, P)
    short = TrackParams(timeout_s=10.0, dwell_s={"a": 5.0})
    assert t.due(6.0, short) == [("d", [Dwelled("a", 5.0, 5.0)])]  # noticed without being told
    t.step("e", M(["a"]), 0.0, P)
    t.reschedule(short)
    assert t.due(10.5, short) == [("e", [Dwelled("a", 5.0, 5.0), Exited("a", 10.0, "timeout")]),  # due 5
                                  ("d", [Exited("a", 10.0, "timeout")])]  # due just after 10
    # longer timeouts too: early keys are corrected, nothing fires early
    t.step("f", OUT, 0.0, short)
    assert t.due(11.0, P) == [] and "f" in t
    # an equal but distinct TrackParams does not rebuild the heap
    heap = t._heap
    t.due(12.0, TrackParams(timeout_s=120.0, sustained_pings=3, dwell_s={"a": 30.0}, halfwidth={}))
    assert t._heap is heap


# -- equivalence with walking every track with tick

FENCES = ("a", "b", "c")
PARAMS = (
    TrackParams(timeout_s=120.0, sustained_pings=2, dwell_s={"a": 30.0, "b": 0.3}, halfwidth={"a": 2.0, "c": 9.0}),
    TrackParams(timeout_s=7.7, sustained_pings=0, dwell_s={"a": 0.0, "c": 7.7}),
    TrackParams(timeout_s=30.0, sustained_pings=3, dwell_s={"a": 30.0, "b": 29.9, "c": 0.1}, halfwidth={"b": 3.0}),
)
DT = st.sampled_from([0.0, 0.1, 0.2, 0.3, 1.0, 7.7, 29.9, 30.0, 30.1, 60.0, 119.9, 120.0, 120.1, 500.0, -0.1, -5.0])


@st.composite
def matches(draw):
    inside = draw(st.frozensets(st.sampled_from(FENCES)))
    straddle = draw(st.frozensets(st.sampled_from(FENCES))) - inside
    centre = draw(st.frozensets(st.sampled_from(sorted(inside | straddle)))) if inside or straddle else frozenset()
    return Match(inside, straddle, centre | inside)


OPS = st.one_of(
    st.tuples(st.just("ping"), st.sampled_from("pqrs"), matches(), st.sampled_from([0.5, 2.5, 20.0]), DT),
    st.tuples(st.just("tick"), DT),
    st.tuples(st.just("forget"), st.sampled_from("pqrs")),
    st.tuples(st.just("params"), st.integers(0, len(PARAMS) - 1)),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0.0, 1.7e9 + 0.1]), st.lists(OPS, max_size=60))
def test_due_equals_ticking_every_track(t0, ops):
    ref: dict[str, DeviceTrack] = {}
    tracks = Tracks()
    now, params = t0, PARAMS[0]
    for op in ops:
        if op[0] == "ping":
            _, dev, m, acc, dt = op
            now += dt
            ref[dev], want = step(ref.get(dev), m, now, params, acc=acc)
            assert tracks.step(dev, m, now, params, acc=acc) == want
        elif op[0] == "tick":
            now += op[1]
            want = {}
            for dev, track in list(ref.items()):
                new, events = tick(track, now, params)
                if new is None:
                    del ref[dev]
                if new is None or events:
                    want[dev] = events
            order = {dev: due_time(track, params) for dev, track in tracks.items()}
            got = tracks.due(now, params)
            assert dict(got) == want and len(got) == len(want)
            assert [d for d, _ in got] == sorted(want, key=lambda d: (order[d], d))
        elif op[0] == "forget":
            assert (tracks.pop(op[1]) is None) == (ref.pop(op[1], None) is None)
        else:
            params = PARAMS[op[1]]
        assert dict(tracks.items()) == ref
    # whatever is left, ticking far ahead agrees too
    far = now + 1e6
    assert {d: e for d, e in tracks.due(far, params)} == {d: tick(t, far, params)[1] for d, t in ref.items()}
    assert not tracks
