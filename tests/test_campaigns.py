"""Campaigns without broker or HTTP: variant assignment, the global control
group, budgets and pause in ``decide``, every till answer, attribution, and
the report's maths on a scripted campaign (issue 15)."""

from __future__ import annotations

import random
from collections import Counter
from zoneinfo import ZoneInfo

import pytest

from edge_agent.pipeline import campaigns
from edge_agent.pipeline.campaigns import CampaignState, normalize_code, redeem_answer, variant_for
from edge_agent.pipeline.decisions import OfferHistory
from edge_agent.pipeline.effects import Exposure, PurchaseRow
from edge_agent.storage.ledger import Ledger
from edge_agent.storage.store import Store
from edge_agent.storage.report import build_report, format_markdown, two_proportion
from store_config.load import parse_promotions
from store_config.model import ConfigError, OffersConfig, Promotion, Variant
from sync.pseudonym import Pseudonymizer

from .test_decisions import reasons, run

PRAGUE = ZoneInfo("Europe/Prague")


# -- people ------------------------------------------------------------------------

def test_a_loyalty_ids_person_is_the_same_asked_again_or_after_a_restart_and_keyed():
    pseudo = Pseudonymizer(b"k" * 32)
    first = pseudo.person("loyalty-7")
    assert first.startswith("p_") and len(first) == 28 and "loyalty" not in first
    assert pseudo.person("loyalty-7") == first  # asked again (remembered)
    assert Pseudonymizer(b"k" * 32).person("loyalty-7") == first  # a restart: the same key, the same person
    assert Pseudonymizer(b"j" * 32).person("loyalty-7") != first
    assert pseudo.person("loyalty-8") != first


# -- variants ----------------------------------------------------------------------

def test_variant_shares_over_2000_people_follow_the_weights_and_are_stable():
    variants = (Variant("A", "a", weight=1), Variant("B", "b", weight=1), Variant("C", "c", weight=2))
    key = b"k" * 32
    pseudo = Pseudonymizer(key)
    people = [pseudo.person(f"loyalty-{i}") for i in range(2000)]

    def assign(p: Pseudonymizer) -> list[str]:
        return [variant_for(variants, p.fraction(person, "promo", "*variant*")).id for person in people]

    first = assign(pseudo)
    shares = {v: n / len(people) for v, n in Counter(first).items()}
    for v, want in (("A", 0.25), ("B", 0.25), ("C", 0.5)):
        assert abs(shares[v] - want) < 0.03, shares
    assert assign(Pseudonymizer(key)) == first  # a restart reads the same key: the same variants
    # another promotion shuffles people independently of this one
    other = [variant_for(variants, pseudo.fraction(person, "other", "*variant*")).id for person in people]
    assert other != first


def test_variant_for_edges():
    assert variant_for((), 0.5) is None
    vs = (Variant("A", "a", weight=3), Variant("B", "b", weight=1))
    assert variant_for(vs, 0.0).id == "A" and variant_for(vs, 0.7499).id == "A"
    assert variant_for(vs, 0.75).id == "B" and variant_for(vs, 0.999999).id == "B"


def test_promotion_config_variants_budgets_paused():
    (p,) = parse_promotions([{"id": "p", "title": "T", "message": "M", "max_offers": 5, "max_redemptions": 2,
                              "paused": True, "variants": [{"id": "A", "weight": 2},
                                                           {"id": "B", "title": "Bee", "message": "bzz"}]}],
                            file="promotions.json", timezone="UTC")
    assert (p.max_offers, p.max_redemptions, p.paused) == (5, 2, True)
    assert p.variants == (Variant("A", "T", "M", 2.0), Variant("B", "Bee", "bzz", 1.0))
    with pytest.raises(ConfigError) as e:
        parse_promotions([{"id": "p", "title": "T", "variants": [{"id": "A"}, {"id": "A", "weight": 0}]}],
                         file="promotions.json", timezone="UTC")
    assert "duplicate variant id" in str(e.value) and "weight" in str(e.value)


# -- decide: global control group, budgets, pause -----------------------------------

def promo(pid="p", **kw) -> Promotion:
    kw.setdefault("title", pid)
    kw.setdefault("zones", ("produce",))
    return Promotion(id=pid, **kw)


def test_global_holdout_is_checked_after_caps_and_before_the_promotion_holdout():
    offers = OffersConfig(global_holdout_pct=10)
    h = OfferHistory()
    out = run([promo(holdout_pct=100)], offers=offers, history=h, holdout=lambda pid: 0.0)
    assert out.offer is None and reasons(out) == {"p": "holdout"}  # not in the global group: its own holdout
    from edge_agent.pipeline.decisions import decide
    from .test_decisions import FENCE, NOON_ISH, YES
    out = decide(trigger="enter", fence=FENCE, candidates=[promo("q")], profile=None, consent=YES,
                 history=OfferHistory(), inventory={}, now=NOON_ISH, tz=PRAGUE, offers=offers,
                 holdout=lambda pid: 0.99, global_holdout=0.05)
    assert out.offer is None and out.would_offer.reason == "global_holdout" and out.promotion.id == "q"
    capped = OfferHistory(visit_count=1)
    out = decide(trigger="enter", fence=FENCE, candidates=[promo("q")], profile=None, consent=YES,
                 history=capped, inventory={}, now=NOON_ISH, tz=PRAGUE,
                 offers=OffersConfig(global_holdout_pct=100, per_visit_cap=1), holdout=lambda pid: 0.99,
                 global_holdout=0.5)
    assert reasons(out) == {"q": "cap"} and out.would_offer is None  # treated would be capped: no would-offer


def test_paused_and_budget_are_reasons_and_the_runner_up_gets_the_offer():
    st = CampaignState()
    a, b = promo("a", priority=9, max_offers=2), promo("b", priority=1)
    from edge_agent.pipeline.decisions import decide
    from .test_decisions import FENCE, NOON_ISH, YES

    def go():
        return decide(trigger="enter", fence=FENCE, candidates=[a, b], profile=None, consent=YES,
                      history=OfferHistory(), inventory={}, now=NOON_ISH, tz=PRAGUE,
                      offers=OffersConfig(), holdout=lambda pid: 0.99, stopped=st.stopped)
    assert go().offer.promotion_id == "a"
    st.offers["a"] = 2
    out = go()
    assert out.offer.promotion_id == "b" and reasons(out)["a"] == "budget"
    assert st.remaining(a) == 0.0 and st.remaining(b) is None
    st.offers["a"] = 0
    st.paused["a"] = True
    assert reasons(go())["a"] == "paused"
    st.paused["a"] = False  # resumed: the admin's word beats the file's
    assert go().offer.promotion_id == "a" and not st.is_paused(promo("a", paused=True))
    # a file that changes its own `paused` drops the admin's override
    assert st.file_flags_changed([promo("a")], [promo("a", paused=True)]) == ["a"]
    assert st.is_paused(promo("a", paused=True))


# -- the till --------------------------------------------------------------------------

OFFER = {"offer_id": "o_1", "promotion_id": "p", "variant": "A", "code_ts": 1000.0}


def answer(**kw):
    args = dict(offer=OFFER, redemption=None, idempotency_key=None, promo=promo(), state=CampaignState(),
                now=1010.0, code_ttl_s=86400)
    args.update(kw)
    return redeem_answer(**args)


def test_every_till_answer():
    ok = answer(idempotency_key="k1")
    assert (ok.status, ok.body) == (200, {"status": "redeemed", "offer_id": "o_1", "promotion_id": "p",
                                          "variant": "A"})
    done = {"idempotency_key": "k1", "response": ok.body}
    assert (answer(redemption=done).status, answer(redemption=done).body) == (
        409, {"error": "already_redeemed", "offer_id": "o_1"})
    assert answer(redemption=done, idempotency_key="k2").status == 409
    retry = answer(redemption=done, idempotency_key="k1")
    assert (retry.status, retry.body, retry.outcome) == (200, ok.body, "retry")
    assert (answer(offer=None).status, answer(offer=None).body) == (404, {"error": "unknown_code"})
    assert (answer(now=1000.0 + 86401).status, answer(now=1000.0 + 86401).body) == (410, {"error": "expired"})
    st = CampaignState(redemptions={"p": 3})
    assert answer(promo=promo(max_redemptions=3), state=st).body == {"error": "budget"}
    assert answer(promo=promo(max_redemptions=4), state=st).status == 200


def test_codes_ignore_case_spaces_and_dashes():
    assert normalize_code(" abcd-efgh 23 ") == "ABCDEFGH23"
    assert normalize_code("ABCD–EFGH") != "ABCDEFGH"  # an en dash is not a dash a till types


def test_attribution_window_and_skus():
    promos = {"apples": promo("apples", skus=("apple",)), "any": promo("any")}
    exps = [{"id": 1, "ts": 100.0, "promotion_id": "apples"}, {"id": 2, "ts": 100.0, "promotion_id": "any"},
            {"id": 3, "ts": 5000.0, "promotion_id": "apples"}]
    hit = campaigns.attributable(exps, ["pear"], promos, ts=200.0, window_s=7200)
    assert [e["id"] for e in hit] == [2]  # no shared sku; a promotion without skus takes any basket
    hit = campaigns.attributable(exps, ["apple"], promos, ts=200.0, window_s=7200)
    assert [e["id"] for e in hit] == [1, 2]  # not the later exposure (a purchase never precedes its offer)
    late = campaigns.attributable(exps, ["apple"], promos, ts=100.0 + 7201, window_s=7200)
    assert [e["id"] for e in late] == [3]  # the first two are out of the window by then


# -- the report ------------------------------------------------------------------------

def test_two_proportion_interval():
    p1, p0, d, (lo, hi) = two_proportion(300, 1000, 100, 1000)
    assert (p1, p0) == (0.3, 0.1) and abs(d - 0.2) < 1e-12
    se = (0.3 * 0.7 / 1000 + 0.1 * 0.9 / 1000) ** 0.5
    assert abs(lo - (0.2 - 1.96 * se)) < 1e-3 and abs(hi - (0.2 + 1.96 * se)) < 1e-3
    assert two_proportion(1, 10, 0, 0) == (0.1, None, None, None)


def scripted_campaign(tmp_path, *, people=2000, treated_rate=0.30, control_rate=0.10, seed=7):
    """Half the people offered, half held out; buyers buy within the window at
    the given rates; written through the same tables and attribution as the agent."""
    led = Ledger(tmp_path / "edge.sqlite3", store_id="S")
    store = Store(led)
    tables = store.campaigns
    rng = random.Random(seed)
    p = promo("apples", skus=("apple",), variants=(Variant("A", "a"),))
    t0 = 1_800_000_000.0
    rows = []
    for i in range(people):
        person = f"p_{i:026d}"
        held = i % 2 == 1
        rows.append(Exposure(t0 + i, person, person.replace("p_", "d_"), "apples", "A",
                             "holdout" if held else "offered", None if held else f"o_{i}"))
    store.apply(rows)
    led.commit()
    buys = []
    for i in range(people):
        person = f"p_{i:026d}"
        if rng.random() < (control_rate if i % 2 else treated_rate):
            ts = t0 + i + 600
            exps = tables.exposures_of(person, ts - 7200)
            hits = campaigns.attributable(exps, ["apple", "bread"], {"apples": p}, ts=ts, window_s=7200)
            buys.append(PurchaseRow(ts, person, 12.5, "EUR", ("apple", "bread"),
                                    tuple((e["id"], e["ts"], e["promotion_id"], e["variant"], e["arm"])
                                          for e in hits)))
    store.apply(buys)
    led.commit()
    return led, p, t0


def test_scripted_campaign_gives_uplift_near_020_with_an_interval_excluding_zero(tmp_path):
    led, p, t0 = scripted_campaign(tmp_path)
    rep = build_report(led.conn, since=None, until=t0 + 10**6, tz=PRAGUE, promotions=[p])
    v = rep["promotions"]["apples"]["variants"]["A"]
    assert v["offered"] == 1000 and v["holdout"] == 1000
    assert abs(v["conversion_treated"] - 0.30) < 0.04 and abs(v["conversion_control"] - 0.10) < 0.03
    assert abs(v["uplift"] - 0.20) < 0.04
    lo, hi = v["uplift_ci95"]
    assert 0 < lo < v["uplift"] < hi
    assert set(v) == {"offered", "applied", "redeemed", "holdout", "converted_treated", "converted_control",
                      "conversion_treated", "conversion_control", "uplift", "uplift_ci95",
                      "revenue_per_person_treated", "revenue_per_person_control", "basket_mean_treated",
                      "basket_mean_control", "discount_cost", "incremental_revenue", "incremental_revenue_ci95",
                      "incremental_margin"}
    # money (issue 23): every buyer spent 12.50; the known lift is 1000 × (0.30 − 0.10) × 12.50 = 2500
    assert v["basket_mean_treated"] == v["basket_mean_control"] == 12.5
    assert v["revenue_per_person_treated"] == pytest.approx(12.5 * v["conversion_treated"], abs=0.01)
    rlo, rhi = v["incremental_revenue_ci95"]
    assert rlo <= 2500 <= rhi and rlo > 0
    assert v["discount_cost"] == 0.0 and v["incremental_margin"] is None  # no discount, no margin known
    assert rep["since"] is None and rep["until"].startswith("2027-")
    md = format_markdown(rep)
    assert "| apples | A | 1000 |" in md and "pts" in md and "**apples (A) earned money**" in md
    # --since after everything: an empty period, the configured variant still listed with zeros
    later = build_report(led.conn, since=t0 + 10**6, until=t0 + 10**7, tz=PRAGUE, promotions=[p])
    assert later["promotions"]["apples"]["variants"]["A"]["offered"] == 0
    assert later["promotions"]["apples"]["variants"]["A"]["uplift"] is None
    led.close()
