"""Per-ping isolation in the batch step: a ping that fails after adding effects
leaves none of them and becomes its own 'internal' dead letter; a ping that fails
before adding any also does; the other pings of the batch go on.  Pure: no broker."""

from __future__ import annotations

from edge_agent.pipeline.effects import Audit, OfferRow
from edge_agent.pipeline.offering import Offering
from geometry.schedule import Tracks

from .test_pipeline import T0, make, offers_in, ping


def dead(fx) -> list[tuple[str, str]]:
    """(reason, device of the dead ping's topic) of each dead letter."""
    return [(m.payload["reason"], m.payload["topic"].rsplit("/", 1)[-1]) for m in fx.publish
            if m.topic.endswith("/deadletter")]


def test_a_ping_failing_after_its_first_effects_leaves_none_and_the_batch_goes_on(tmp_path, monkeypatch):
    p = make(tmp_path)
    real = Offering.decide

    def decide(self, device, *a, **kw):
        real(self, device, *a, **kw)  # its offer row, audit and offer are in the effects now
        if device == "bad":
            raise RuntimeError("boom")

    monkeypatch.setattr(Offering, "decide", decide)
    fx = p.step([ping("ok1", 12, 7, T0), ping("bad", 12, 7, T0), ping("ok2", 12, 7, T0)], T0)
    assert sorted(o.device for o in fx.offers) == ["ok1", "ok2"]
    assert len([r for r in fx.rows if isinstance(r, OfferRow)]) == 2
    assert len([r for r in fx.rows if isinstance(r, Audit)]) == 2
    assert dead(fx) == [("internal", "bad")]
    assert p.metrics.internal_errors.get("RuntimeError") == 1


def test_a_ping_failing_before_any_effect_is_its_own_dead_letter(tmp_path, monkeypatch):
    p = make(tmp_path)
    real = Tracks.step

    def step(self, device, *a, **kw):
        if device == "bad":
            raise ValueError("boom")
        return real(self, device, *a, **kw)

    monkeypatch.setattr(Tracks, "step", step)
    fx = p.step([ping("ok1", 12, 7, T0), ping("bad", 12, 7, T0), ping("ok2", 12, 7, T0)], T0)
    assert sorted(o["promotion_id"] for o in offers_in(fx)) == ["fruit-week", "fruit-week"]
    assert dead(fx) == [("internal", "bad")]
    assert "bad" not in p.tracks and "ok1" in p.tracks
