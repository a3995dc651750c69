import pytest

from geometry.fences import Match
from geometry.tracking import DeviceTrack, Dwelled, Entered, Exited, TrackParams, step, tick

P = TrackParams(timeout_s=120.0, sustained_pings=3, dwell_s={"a": 30.0}, halfwidth={"a": 2.0, "b": 2.0, "big": 10.0})


def M(inside=(), straddle=(), centre=None):
    inside, straddle = frozenset(inside), frozenset(straddle)
    return Match(inside, straddle, frozenset(inside if centre is None else centre))


OUT = Match()


def test_single_wholly_inside_ping_enters_at_once():
    t, ev = step(None, M(["a"]), 10.0, P)
    assert ev == [Entered("a", 10.0)]
    assert t.inside == {"a": 10.0} and t.last_seen == 10.0


def test_straddle_changes_nothing():
    t, _ = step(None, M(["a"]), 0.0, P)
    t, ev = step(t, M(straddle=["a"], centre=[]), 5.0, P, acc=8.0)
    assert ev == [] and "a" in t.inside
    # straddling a fence it is not in does not enter it either
    t, ev = step(t, M(["a"], straddle=["b"], centre=["a", "b"]), 6.0, P, acc=8.0)
    assert ev == [] and set(t.inside) == {"a"}


def test_exit_on_wholly_outside_ping():
    t, _ = step(None, M(["a", "b"]), 0.0, P)
    t, ev = step(t, M(straddle=["b"]), 5.0, P)
    assert ev == [Exited("a", 5.0, "left")]
    t, ev = step(t, OUT, 6.0, P)
    assert ev == [Exited("b", 6.0, "left")]
    assert t.inside == {}


def test_events_ordered_exits_before_enters_by_id():
    t, _ = step(None, M(["c", "a"]), 0.0, TrackParams())
    t, ev = step(t, M(["z", "b"]), 1.0, TrackParams())
    assert ev == [Exited("a", 1.0, "left"), Exited("c", 1.0, "left"), Entered("b", 1.0), Entered("z", 1.0)]


def test_timeout_exit_via_tick_forgets_device():
    t, _ = step(None, M(["b", "a"]), 0.0, P)
    same, ev = tick(t, 20.0, P)
    assert same is t and ev == []
    gone, ev = tick(t, 121.0, P)
    assert gone is None
    assert ev == [Dwelled("a", 30.0, 30.0), Exited("a", 120.0, "timeout"), Exited("b", 120.0, "timeout")]


def test_timeout_inside_step_then_fresh_ping():
    p = TrackParams(timeout_s=60.0)
    t, _ = step(None, M(["a"]), 0.0, p)
    t, ev = step(t, M(["a"]), 100.0, p)
    assert ev == [Exited("a", 60.0, "timeout"), Entered("a", 100.0)]
    assert t.inside == {"a": 100.0}


def test_dwell_fires_once_per_visit():
    t, _ = step(None, M(["a"]), 0.0, P)
    t, ev = tick(t, 29.0, P)
    assert ev == []
    t, ev = tick(t, 31.0, P)
    assert ev == [Dwelled("a", 30.0, 30.0)]
    t, ev = tick(t, 50.0, P)
    assert ev == []
    t, ev = step(t, M(["a"]), 60.0, P)
    assert ev == []
    # leave and come back: a new visit dwells again
    t, ev = step(t, OUT, 70.0, P)
    assert ev == [Exited("a", 70.0, "left")]
    t, ev = step(t, M(["a"]), 80.0, P)
    assert ev == [Entered("a", 80.0)]
    t, ev = step(t, M(straddle=["a"]), 115.0, P)
    assert ev == [Dwelled("a", 110.0, 30.0)]


def test_dwell_without_tick_fires_on_next_ping_before_exit():
    t, _ = step(None, M(["a"]), 0.0, P)
    t, ev = step(t, OUT, 40.0, P)
    assert ev == [Dwelled("a", 30.0, 30.0), Exited("a", 40.0, "left")]


def test_no_dwell_for_fences_without_dwell_s():
    t, _ = step(None, M(["b"]), 0.0, P)
    t, ev = tick(t, 110.0, P)
    assert ev == []


def test_zero_dwell_fires_with_entry():
    p = TrackParams(dwell_s={"a": 0.0})
    t, ev = step(None, M(["a"]), 5.0, p)
    assert ev == [Entered("a", 5.0), Dwelled("a", 5.0, 0.0)]


def test_floor_change_exits_previous_floor_fences():
    # the index only reports fences of the ping's floor: a ping upstairs is
    # wholly outside every ground-floor fence
    t, _ = step(None, M(["ground-aisle"]), 0.0, P)
    t, ev = step(t, M(["upstairs-aisle"]), 5.0, P)
    assert ev == [Exited("ground-aisle", 5.0, "left"), Entered("upstairs-aisle", 5.0)]


def test_sustained_evidence_entry_after_n_pings():
    centre_only = M(straddle=["big"], inside=[], centre=["big"])
    t, ev = step(None, centre_only, 0.0, P, acc=5.0)
    assert ev == [] and t.evidence == {"big": 1}
    t, ev = step(t, centre_only, 1.0, P, acc=5.0)
    assert ev == [] and t.evidence == {"big": 2}
    t, ev = step(t, centre_only, 2.0, P, acc=5.0)
    assert ev == [Entered("big", 2.0)]
    assert "big" in t.inside and not t.evidence


def test_sustained_evidence_resets():
    centre_only = M(straddle=["big"], centre=["big"])
    t, _ = step(None, centre_only, 0.0, P, acc=5.0)
    t, _ = step(t, centre_only, 1.0, P, acc=5.0)
    t, ev = step(t, M(straddle=["big"], centre=[]), 2.0, P, acc=5.0)  # centre outside: reset
    assert ev == [] and not t.evidence
    t, _ = step(t, centre_only, 3.0, P, acc=5.0)
    t, _ = step(t, centre_only, 4.0, P, acc=5.0)
    assert not t.inside
    t, ev = step(t, centre_only, 5.0, P, acc=5.0)
    assert ev == [Entered("big", 5.0)]


def test_sustained_evidence_needs_acc_below_halfwidth_and_can_be_disabled():
    centre_only = M(straddle=["a"], centre=["a"])  # halfwidth 2.0
    t = None
    for i in range(5):
        t, ev = step(t, centre_only, float(i), P, acc=2.0)
        assert ev == []
    off = TrackParams(sustained_pings=0, halfwidth={"big": 10.0})
    t = None
    for i in range(5):
        t, ev = step(t, M(straddle=["big"], centre=["big"]), float(i), off, acc=1.0)
        assert ev == []


def test_tracks_stay_lean():
    t, _ = step(None, M(["b"]), 0.0, P)
    assert not hasattr(t, "__dict__")
    assert not t.dwelled and not t.evidence
    assert isinstance(t, DeviceTrack)


def test_params_defaults():
    p = TrackParams()
    assert p.timeout_s == 120.0 and p.sustained_pings == 3
    assert dict(p.dwell_s) == {} and dict(p.halfwidth) == {}
    with pytest.raises(AttributeError):
        p.timeout_s = 1.0  # frozen
