"""``decide`` as a pure function: reasons, ranking, windows across DST, caps, holdouts."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from shapely.geometry import box

from edge_agent.pipeline.decisions import OFFERED, OfferHistory, decide, in_window, promotions_by_fence
from store_config.load import parse_promotions
from store_config.model import Consent, Fence, OffersConfig, Profile, Promotion
from sync.pseudonym import Pseudonymizer

PRAGUE = ZoneInfo("Europe/Prague")
FENCE = Fence(id="produce", kind="section", floor=0, geometry=box(0, 0, 10, 10), category="fruit",
              skus=("apple", "pear"))
# 2026-06-10 10:00 Prague (CEST, UTC+2): a plain Wednesday morning.
NOON_ISH = datetime(2026, 6, 10, 10, 0, tzinfo=PRAGUE).timestamp()
YES = Consent(offers=True, tracking=True)


def promo(pid: str = "p", **kw) -> Promotion:
    kw.setdefault("title", pid)
    kw.setdefault("zones", ("produce",))
    return Promotion(id=pid, **kw)


def run(promos, *, profile=None, consent=YES, history=None, inventory=None, now=NOON_ISH, trigger="enter",
        offers=OffersConfig(per_visit_cap=0), holdout=lambda pid: 0.99):
    return decide(trigger=trigger, fence=FENCE, candidates=promos, profile=profile, consent=consent,
                  history=history if history is not None else OfferHistory(),
                  inventory=inventory if inventory is not None else {}, now=now, tz=PRAGUE,
                  offers=offers, holdout=holdout)


def reasons(outcome) -> dict[str, str]:
    return {d.promotion_id: d.reason for d in outcome.decisions}


# -- one reason at a time -------------------------------------------------------

def test_plain_offer():
    out = run([promo()])
    assert out.offer is not None and out.offer.outcome == OFFERED and out.offer.reason == "offered"
    assert out.offer.sku is None  # a promotion without skus names none


def test_offer_sku_rules():
    assert run([promo(skus=("kiwi", "pear"))]).offer.sku == "pear"  # first promotion sku at the fence
    assert run([promo(skus=("kiwi",))]).offer.sku == "kiwi"  # else the promotion's first sku


def test_no_consent():
    out = run([promo()], consent=Consent(offers=False, tracking=True))
    assert out.offer is None and reasons(out) == {"p": "no_consent"}


def test_segment_profile_and_anonymous():
    p = promo(segments=("parents",))
    assert reasons(run([p], profile=Profile("d", segments=("students",)))) == {"p": "segment"}
    assert run([p], profile=Profile("d", segments=("students", "parents"))).offer is not None
    # Anonymous devices are in no segment: only segment-less promotions reach them.
    assert reasons(run([p], profile=None)) == {"p": "segment"}
    assert run([promo()], profile=None).offer is not None


def test_loyalty_threshold_flash_special():
    flash = promo(min_loyalty_score=800)
    assert run([flash], profile=Profile("d", loyalty_score=820)).offer is not None
    assert reasons(run([flash], profile=Profile("d", loyalty_score=300))) == {"p": "loyalty"}
    assert reasons(run([flash], profile=None)) == {"p": "loyalty"}


def test_vip_only():
    p = promo(vip_only=True)
    assert run([p], profile=Profile("d", vip=True)).offer is not None
    assert reasons(run([p], profile=Profile("d", vip=False))) == {"p": "vip"}
    assert reasons(run([p])) == {"p": "vip"}


def test_starts_and_ends():
    starts = datetime(2026, 6, 10, 11, 0, tzinfo=PRAGUE)
    ends = datetime(2026, 6, 10, 12, 0, tzinfo=PRAGUE)
    p = promo(starts=starts, ends=ends)
    assert reasons(run([p], now=starts.timestamp() - 1)) == {"p": "outside_window"}
    assert run([p], now=starts.timestamp()).offer is not None
    assert run([p], now=ends.timestamp() - 1).offer is not None
    assert reasons(run([p], now=ends.timestamp())) == {"p": "outside_window"}


def test_out_of_stock_and_alternative_zone():
    p = promo(skus=("apple",), requires_stock=True)
    assert reasons(run([p], inventory={"apple": 0})) == {"p": "out_of_stock"}
    assert reasons(run([p], inventory={})) == {"p": "out_of_stock"}  # unknown stock counts as none
    assert run([p], inventory={"apple": 3}).offer is not None
    alt = promo(skus=("apple",), requires_stock=True, alternative_zone="aisle-9")
    out = run([alt], inventory={"apple": 0})
    assert out.offer is not None and out.offer.alternative_zone == "aisle-9"
    assert out.offer.reason == "offered" and out.offer.alternative_zone is not None
    assert run([alt], inventory={"apple": 1}).offer.alternative_zone is None
    # Several skus: suppressed only when every one is at 0.
    two = promo(skus=("apple", "pear"), requires_stock=True)
    assert run([two], inventory={"apple": 0, "pear": 2}).offer is not None


def test_cooldown_per_device_per_promotion():
    h = OfferHistory()
    p = promo(cooldown_s=600)
    assert run([p], history=h).offer is not None
    assert reasons(run([p], history=h, now=NOON_ISH + 599)) == {"p": "cooldown"}
    assert run([p], history=h, now=NOON_ISH + 600).offer is not None
    # Another promotion is not cooled down by this one.
    assert run([promo("q")], history=h, now=NOON_ISH + 601).offer is not None


def test_trigger_must_match():
    dwell = promo(trigger="dwell")
    out = run([dwell], trigger="enter")
    assert out.offer is None and out.decisions == ()
    assert run([dwell], trigger="dwell").offer is not None


def test_reason_order_first_failing_check_wins():
    p = promo(segments=("vip-club",), min_loyalty_score=900, hours=((0, 1),))
    assert reasons(run([p], consent=Consent(offers=False))) == {"p": "no_consent"}
    assert reasons(run([p], profile=Profile("d", loyalty_score=0))) == {"p": "segment"}


# -- ranking -----------------------------------------------------------------

def test_ranking_priority_then_smaller_id_regardless_of_input_order():
    a, b, c = promo("b-promo", priority=1), promo("a-promo", priority=1), promo("z-promo", priority=0)
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        out = run(order)
        assert out.offer.promotion_id == "a-promo"
        assert reasons(out) == {"a-promo": "offered", "b-promo": "outranked", "z-promo": "outranked"}
    assert run([c, promo("hi", priority=9)]).offer.promotion_id == "hi"


def test_ineligible_higher_priority_does_not_block_lower():
    top = promo("top", priority=10, min_loyalty_score=500)
    low = promo("low", priority=1)
    out = run([top, low], profile=Profile("d", loyalty_score=10))
    assert out.offer.promotion_id == "low"
    assert reasons(out) == {"top": "loyalty", "low": "offered"}


def test_promotions_by_fence_matches_zone_category_or_sku():
    fences = [FENCE, Fence(id="aisle", kind="aisle", floor=0, geometry=box(20, 0, 22, 10), skus=("chips",))]
    ps = [promo("by-zone", zones=("produce",)), promo("by-cat", zones=(), categories=("fruit",)),
          promo("by-sku", zones=(), skus=("chips",), priority=3)]
    m = promotions_by_fence(fences, ps)
    assert [p.id for p in m["produce"]] == ["by-cat", "by-zone"]
    assert [p.id for p in m["aisle"]] == ["by-sku"]


# -- windows in store time, across daylight-saving switches -------------------------

def _utc(*a) -> float:
    return datetime(*a, tzinfo=timezone.utc).timestamp()


def test_hours_follow_the_spring_switch():
    p = promo(hours=((9 * 60, 10 * 60),))  # 09:00-10:00 store time
    # 2026-03-28 (CET, UTC+1): 08:30 UTC is 09:30 local; 07:30 UTC is 08:30 local.
    assert run([p], now=_utc(2026, 3, 28, 8, 30)).offer is not None
    assert reasons(run([p], now=_utc(2026, 3, 28, 7, 30))) == {"p": "outside_window"}
    # 2026-03-29 (CEST from 02:00 local, UTC+2): 07:30 UTC is 09:30 local; 08:30 UTC is 10:30.
    assert run([p], now=_utc(2026, 3, 29, 7, 30)).offer is not None
    assert reasons(run([p], now=_utc(2026, 3, 29, 8, 30))) == {"p": "outside_window"}


def test_hours_follow_the_autumn_switch():
    p = promo(hours=((9 * 60, 10 * 60),))
    # 2026-10-24 (CEST, UTC+2): 07:30 UTC is 09:30 local.
    assert run([p], now=_utc(2026, 10, 24, 7, 30)).offer is not None
    # 2026-10-25 (CET from 03:00 local, UTC+1): 07:30 UTC is 08:30 local, 08:30 UTC is 09:30.
    assert reasons(run([p], now=_utc(2026, 10, 25, 7, 30))) == {"p": "outside_window"}
    assert run([p], now=_utc(2026, 10, 25, 8, 30)).offer is not None


def test_hours_in_the_skipped_and_repeated_hour():
    early = promo(hours=((2 * 60, 3 * 60),))  # 02:00-03:00 local
    # Spring: 02:00-03:00 does not exist on 2026-03-29; 00:59 UTC is 01:59 CET, 01:00 UTC is 03:00 CEST.
    assert reasons(run([early], now=_utc(2026, 3, 29, 0, 59))) == {"p": "outside_window"}
    assert reasons(run([early], now=_utc(2026, 3, 29, 1, 0))) == {"p": "outside_window"}
    # Autumn: 02:00-03:00 happens twice on 2026-10-25 (00:00-01:00 and 01:00-02:00 UTC).
    assert run([early], now=_utc(2026, 10, 25, 0, 30)).offer is not None
    assert run([early], now=_utc(2026, 10, 25, 1, 30)).offer is not None
    assert reasons(run([early], now=_utc(2026, 10, 25, 2, 0))) == {"p": "outside_window"}


def test_ends_in_the_repeated_hour_is_an_instant():
    # "ends" 02:30 without offset, parsed in store time, means the first 02:30 (CEST, fold=0).
    (p,) = parse_promotions([{"id": "p", "title": "t", "zones": ["produce"], "ends": "2026-10-25T02:30:00"}],
                            file="promotions.json", timezone="Europe/Prague")
    assert run([p], now=_utc(2026, 10, 25, 0, 15)).offer is not None  # 02:15 CEST
    # 01:15 UTC is 02:15 CET: the wall clock reads before 02:30 but the instant is after the end.
    assert reasons(run([p], now=_utc(2026, 10, 25, 1, 15))) == {"p": "outside_window"}


def test_hours_wrapping_midnight():
    night = promo(hours=((22 * 60, 2 * 60),))
    at = lambda h, m: datetime(2026, 6, 10, h, m, tzinfo=PRAGUE)  # noqa: E731
    assert in_window(night, at(23, 0)) and in_window(night, at(1, 59)) and in_window(night, at(22, 0))
    assert not in_window(night, at(2, 0)) and not in_window(night, at(12, 0))


# -- device-wide limits --------------------------------------------------------

def test_per_visit_cap():
    h = OfferHistory()
    caps = OffersConfig(per_visit_cap=2)
    assert run([promo("a")], history=h, offers=caps).offer is not None
    assert run([promo("b")], history=h, offers=caps).offer is not None
    out = run([promo("c"), promo("d")], history=h, offers=caps)
    assert out.offer is None and reasons(out) == {"c": "cap", "d": "outranked"}
    h.visit_count = 0  # a new visit (the agent resets it)
    assert run([promo("c")], history=h, offers=caps).offer is not None


def test_daily_cap_resets_on_the_store_day():
    h = OfferHistory()
    caps = OffersConfig(per_visit_cap=0, daily_cap=1)
    late = datetime(2026, 6, 10, 23, 30, tzinfo=PRAGUE).timestamp()
    assert run([promo("a")], history=h, offers=caps, now=late).offer is not None
    assert reasons(run([promo("b")], history=h, offers=caps, now=late + 60)) == {"b": "cap"}
    # 00:30 the next store day (22:30 UTC, still 10 June in UTC): a new day.
    assert run([promo("b")], history=h, offers=caps, now=late + 3600).offer is not None


def test_min_gap_between_offers():
    h = OfferHistory()
    caps = OffersConfig(per_visit_cap=0, min_gap_s=120)
    assert run([promo("a")], history=h, offers=caps).offer is not None
    assert reasons(run([promo("b")], history=h, offers=caps, now=NOON_ISH + 119)) == {"b": "gap"}
    assert run([promo("b")], history=h, offers=caps, now=NOON_ISH + 120).offer is not None


# -- holdouts ----------------------------------------------------------------

def test_holdout_records_would_offer_and_cools_down():
    h = OfferHistory()
    p = promo(holdout_pct=30, cooldown_s=600)
    out = run([p], history=h, holdout=lambda pid: 0.10)
    assert out.offer is None and out.would_offer is not None and out.would_offer.reason == "holdout"
    assert out.promotion is p
    assert h.visit_count == 0 and h.last_offer_ts is None  # not an offer: caps and gap untouched
    assert reasons(run([p], history=h, now=NOON_ISH + 10, holdout=lambda pid: 0.10)) == {"p": "cooldown"}
    assert run([p], holdout=lambda pid: 0.30).offer is not None  # 0.30 * 100 is not < 30


def test_full_holdout_and_none():
    assert run([promo(holdout_pct=100)], holdout=lambda pid: 0.999999).would_offer is not None
    assert run([promo(holdout_pct=0)], holdout=lambda pid: 0.0).offer is not None


def test_holdout_winner_is_not_replaced_by_runner_up():
    out = run([promo("a", priority=2, holdout_pct=100), promo("b", priority=1)])
    assert out.offer is None and reasons(out) == {"a": "holdout", "b": "outranked"}


def test_holdout_assignment_is_deterministic_and_keyed():
    ps = Pseudonymizer(b"k" * 32)
    # The documented assignment (HMAC-SHA256 of "holdout:" + parts, first 8 bytes): changing it would
    # reshuffle every store's holdout groups, so it is pinned here.
    keyed = hmac.new(b"k" * 32, b"holdout:d_1\x1fpromo", hashlib.sha256).digest()
    assert ps.fraction("d_1", "promo") == int.from_bytes(keyed[:8], "big") / 2**64
    assert Pseudonymizer(b"k" * 32).fraction("d_1", "promo") == ps.fraction("d_1", "promo")  # a restart
    assert Pseudonymizer(b"j" * 32).fraction("d_1", "promo") != ps.fraction("d_1", "promo")
    # Not a plain hash: without the key the group cannot be predicted.
    plain = int.from_bytes(hashlib.sha256(b"d_1\x1fpromo").digest()[:8], "big") / 2**64
    assert plain != ps.fraction("d_1", "promo")


@pytest.mark.parametrize("pct", [10, 25, 50])
def test_holdout_fraction_matches_pct(pct):
    ps = Pseudonymizer(b"store-secret-for-tests-000000000")
    p = promo("spring", holdout_pct=pct)
    n = 4000
    held = sum(1 for i in range(n)
               if run([p], holdout=lambda pid, d=f"d_{i}": ps.fraction(d, pid)).would_offer is not None)
    # Binomial: 4 standard deviations is well under 3 points at n = 4000.
    assert abs(held / n - pct / 100) < 0.03
    # The same device lands in the same group for the same promotion, and independently per promotion.
    groups = [ps.fraction(f"d_{i}", "spring") * 100 < pct for i in range(200)]
    again = Pseudonymizer(b"store-secret-for-tests-000000000")  # the same key after a restart
    assert groups == [again.fraction(f"d_{i}", "spring") * 100 < pct for i in range(200)]
    other = [ps.fraction(f"d_{i}", "autumn") * 100 < pct for i in range(200)]
    assert groups != other


def test_promotions_by_fence_index_matches_the_definition():
    """The indexed lookup gives exactly promotion_matches(), ranked."""
    import random

    from edge_agent.pipeline.decisions import promotion_matches, promotions_by_fence, rank_key
    from store_config.model import Fence as F, Promotion as P

    rng = random.Random(3)
    cats, skus = ["a", "b", "c", None], [f"s{i}" for i in range(8)]
    fences = [F(id=f"f{i}", kind="aisle", floor=0, geometry=None, category=rng.choice(cats),
                skus=tuple(rng.sample(skus, rng.randint(0, 3)))) for i in range(60)]
    promos = [P(id=f"p{i}", title="t", zones=tuple(rng.sample([f.id for f in fences], rng.randint(0, 2))),
                categories=tuple(c for c in rng.sample(cats[:3], rng.randint(0, 2))),
                skus=tuple(rng.sample(skus, rng.randint(0, 2))), priority=rng.randint(0, 3)) for i in range(40)]
    got = promotions_by_fence(fences, promos)
    for f in fences:
        want = tuple(sorted((p for p in promos if promotion_matches(f, p)), key=rank_key))
        assert got[f.id] == want
