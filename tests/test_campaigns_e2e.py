"""Campaigns through the real broker and HTTP (issue 15 acceptance): people,
variants, the global control group, budgets, pause, every till answer and
the report."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from edge_agent.commands.report import run_report
from edge_agent.service import Agent

from .test_offers_rules import Shop

pytestmark = pytest.mark.broker

ADMIN = {"Authorization": "Bearer admin-secret"}
TILL = {"Authorization": "Bearer till-secret"}
POS = """
    [pos]
    token = "till-secret"
"""


async def open_shop(store_factory, agent_factory, mqtt_client, *, clock=None, toml_extra="", **kw) -> Shop:
    cfg = store_factory(toml_extra=POS + toml_extra, **kw)
    server = await agent_factory(cfg, agent=Agent(cfg, clock=clock) if clock else None)
    shop = Shop(server, mqtt_client(), cfg)
    await shop.phone.subscribe(f"{shop.R}/offer/+")
    await shop.phone.subscribe(f"{shop.R}/deadletter")
    return shop


async def reopen(shop: Shop, agent_factory, cfg) -> Shop:
    await shop.server.stop()
    server = await agent_factory(cfg)
    return Shop(server, shop.phone, cfg)


async def http(method: str, url: str, *, headers=None, body=None) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers or {}, json=body) as r:
            try:
                return r.status, await r.json()
            except aiohttp.ContentTypeError:
                return r.status, await r.text()


async def offer_and_code(shop: Shop, device: str, zone: str = "aisle-1") -> tuple[dict, str]:
    await shop.ping(device, zone)
    offer = await shop.offer(device)
    await shop.action(device, offer["offer_id"], "apply")
    coded = await shop.offer(device)
    return offer, coded["code"]


async def test_two_devices_of_one_person_get_one_offer_and_the_daily_cap_counts_the_person(
        store_factory, agent_factory, mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, toml_extra="""
        [offers]
        daily_cap = 1
    """, profiles=[{"device": "phone-a", "loyalty_id": "L-7"}, {"device": "phone-b", "loyalty_id": "L-7"},
                   {"device": "phone-c", "loyalty_id": "L-8"}])
    await shop.ping("phone-a", "aisle-1")
    first = await shop.offer("phone-a")
    await shop.ping("phone-b", "aisle-1")  # the same person, within the cooldown
    await shop.walk("phone-b", "aisle-1", "produce")  # another promotion: the person's daily cap
    await shop.settle("phone-b")
    assert shop.no_offers()
    assert shop.decisions("suppressed", "cooldown") == 1 and shop.decisions("suppressed", "cap") == 1
    await shop.ping("phone-c", "aisle-1")  # another person: offered
    assert (await shop.offer("phone-c"))["promotion_id"] == first["promotion_id"]
    agent = shop.agent
    person = agent.pseudo.person("L-7")
    offers = shop.outbox("offer")
    assert offers[0]["person"] == person and offers[0]["device"] == agent.pseudonym("phone-a")
    supp = shop.outbox("suppressed")
    assert {e["person"] for e in supp} == {person}
    assert {e["device"] for e in supp} == {agent.pseudonym("phone-b")}
    # no loyalty id or raw device id in any stored row
    dump = "\n".join(agent.ledger.conn.iterdump())
    assert "L-7" not in dump and "phone-b" not in dump.replace(agent.pseudonym("phone-b"), "")


async def test_variant_in_the_offer_and_its_events_and_the_same_after_a_restart(store_factory, agent_factory,
                                                                                 mqtt_client):
    cfg = store_factory(toml_extra=POS, promotions=[
        {"id": "ab", "title": "Chips", "message": "base", "zones": ["aisle-1"], "cooldown_s": 0,
         "variants": [{"id": "A", "title": "Chips A", "message": "aaa"},
                      {"id": "B", "title": "Chips B", "message": "bbb"}]}])
    shop = Shop(await agent_factory(cfg), mqtt_client(), cfg)
    await shop.phone.subscribe(f"{shop.R}/offer/+")
    await shop.phone.subscribe(f"{shop.R}/deadletter")
    seen = {}
    for d in ("v1", "v2", "v3", "v4", "v5", "v6"):
        await shop.ping(d, "aisle-1")
        o = await shop.offer(d)
        assert o["variant"] in ("A", "B") and o["title"] == f"Chips {o['variant']}"
        assert o["message"] == {"A": "aaa", "B": "bbb"}[o["variant"]]
        seen[d] = o["variant"]
    await shop.action("v1", shop.outbox("offer")[0]["offer_id"], "dismiss")
    await shop.marker(f"{shop.R}/action/v1", qos=1)
    assert [e["variant"] for e in shop.outbox("offer")] == list(seen.values())
    assert shop.outbox("dismissal")[0]["variant"] == seen["v1"]
    shop2 = await reopen(shop, agent_factory, cfg)
    for d in seen:
        await shop2.ping(d, "aisle-1")  # a new agent: a new visit, cooldown 0
        assert (await shop2.offer(d))["variant"] == seen[d]


async def test_every_till_answer_through_http(store_factory, agent_factory, mqtt_client):
    skew = [0.0]
    shop = await open_shop(store_factory, agent_factory, mqtt_client, clock=lambda: time.time() + skew[0],
                           toml_extra="""
        [offers]
        code_ttl_s = 3600
    """, promotions=[{"id": "chips", "title": "Chips", "zones": ["aisle-1"], "max_redemptions": 2},
                     {"id": "fruit", "title": "Fruit", "zones": ["produce"]}])
    url = shop.server.url + "/v1/pos/redeem"
    offer, code = await offer_and_code(shop, "till-1")
    typed = "-".join([code[:4].lower(), code[4:]]) + " "  # a till types it in lower case with a dash
    body = {"code": typed, "till": "T3", "basket_total": 42.5, "currency": "EUR"}
    assert await http("POST", url, body=body) == (401, "pos token required\n")
    assert (await http("POST", url, body=body, headers={"Authorization": "Bearer nope"}))[0] == 401
    ok = await http("POST", url, body=body, headers={**TILL, "Idempotency-Key": "r-1"})
    assert ok == (200, {"status": "redeemed", "offer_id": offer["offer_id"], "promotion_id": "chips",
                        "variant": None})
    assert await http("POST", url, body=body, headers={**TILL, "Idempotency-Key": "r-1"}) == ok  # the retry
    assert await http("POST", url, body=body, headers={**TILL, "Idempotency-Key": "r-2"}) == (
        409, {"error": "already_redeemed", "offer_id": offer["offer_id"]})
    assert await http("POST", url, body=body, headers=TILL) == (
        409, {"error": "already_redeemed", "offer_id": offer["offer_id"]})
    assert await http("POST", url, body={"code": "ZZZZZZZZZZ"}, headers=TILL) == (404, {"error": "unknown_code"})
    assert (await http("POST", url, body={"till": "T3"}, headers=TILL))[0] == 400
    # two tills race on one code: exactly one 200
    _, code2 = await offer_and_code(shop, "till-2")
    _, code3 = await offer_and_code(shop, "till-3")  # offered before the budget ran out
    race = await asyncio.gather(*(http("POST", url, body={"code": code2, "till": t}, headers=TILL)
                                  for t in ("T1", "T2")))
    assert sorted(s for s, _ in race) == [200, 409]
    # max_redemptions = 2 reached: the till hears budget, decisions say budget
    assert await http("POST", url, body={"code": code3}, headers=TILL) == (409, {"error": "budget"})
    await shop.ping("till-4", "aisle-1")
    await shop.settle("till-4")
    assert shop.no_offers() and shop.decisions("suppressed", "budget") == 1
    # an old code: 410
    _, code4 = await offer_and_code(shop, "till-5", "produce")
    skew[0] = 3601.0
    assert await http("POST", url, body={"code": code4}, headers=TILL) == (410, {"error": "expired"})
    conv = shop.outbox("conversion")
    assert len(conv) == 2 and conv[0]["offer_id"] == offer["offer_id"]
    assert {k: conv[0][k] for k in ("promotion_id", "variant", "basket_total", "currency", "till")} == {
        "promotion_id": "chips", "variant": None, "basket_total": 42.5, "currency": "EUR", "till": "T3"}
    assert conv[0]["person"] == shop.agent.pseudonym("till-1")
    m = shop.agent.metrics
    assert m.redemptions.get("chips", "redeemed") == 2 and m.redemptions.get("chips", "retry") == 1
    assert m.redemptions.get("chips", "budget") == 1 and m.redemptions.get("fruit", "expired") == 1
    assert m.redemptions.get("-", "unknown_code") == 1 and m.conversions.get("chips") == 2
    assert m.budget_remaining.get("chips") == 0
    text = m.render()
    assert 'edge_redemptions_total{promotion="chips",outcome="redeemed"} 2' in text
    assert 'edge_budget_remaining{promotion="chips"} 0' in text


async def test_max_offers_stops_at_the_number(store_factory, agent_factory, mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"], "max_offers": 2}])
    for d in ("m1", "m2"):
        await shop.ping(d, "aisle-1")
        await shop.offer(d)
    assert shop.agent.metrics.budget_remaining.get("chips") == 0
    await shop.ping("m3", "aisle-1")
    await shop.settle("m3")
    assert shop.no_offers() and shop.decisions("suppressed", "budget") == 1
    assert shop.outbox("suppressed")[-1]["reason"] == "budget"


async def test_pause_stops_the_next_decision_survives_a_restart_and_resume_restores(
        store_factory, agent_factory, mqtt_client):
    cfg = store_factory(toml_extra=POS, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"]},
        {"id": "fruit", "title": "Fruit", "zones": ["produce"], "paused": True}])
    shop = Shop(await agent_factory(cfg), mqtt_client(), cfg)
    await shop.phone.subscribe(f"{shop.R}/offer/+")
    await shop.phone.subscribe(f"{shop.R}/deadletter")
    base = shop.server.url + "/v1/admin/promotions"
    assert (await http("POST", f"{base}/chips/pause"))[0] == 401
    assert await http("POST", f"{base}/nope/pause", headers=ADMIN) == (404, {"error": "unknown_promotion"})
    assert await http("POST", f"{base}/chips/pause", headers=ADMIN) == (200, {"promotion_id": "chips",
                                                                               "paused": True})
    await shop.ping("p1", "aisle-1")
    await shop.walk("p1", "aisle-1", "produce")  # paused in its file
    await shop.settle("p1")
    assert shop.no_offers() and shop.decisions("suppressed", "paused") == 2
    shop2 = await reopen(shop, agent_factory, cfg)
    await shop2.ping("p2", "aisle-1")
    await shop2.settle("p2")
    assert shop2.no_offers() and shop2.decisions("suppressed", "paused") == 1
    base = shop2.server.url + "/v1/admin/promotions"
    assert (await http("POST", f"{base}/chips/resume", headers=ADMIN))[0] == 200
    assert (await http("POST", f"{base}/fruit/resume", headers=ADMIN))[1] == {"promotion_id": "fruit",
                                                                               "paused": False}
    await shop2.ping("p3", "aisle-1")
    assert (await shop2.offer("p3"))["promotion_id"] == "chips"
    await shop2.walk("p3", "aisle-1", "produce")
    assert (await shop2.offer("p3"))["promotion_id"] == "fruit"


async def test_full_global_holdout_sends_nothing_and_records_would_offer(store_factory, agent_factory,
                                                                          mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, toml_extra="""
        [offers]
        global_holdout_pct = 100
    """)
    for d in ("g1", "g2", "g3"):
        await shop.ping(d, "produce")
        await shop.walk(d, "produce", "between", "aisle-1")
        await shop.settle(d)
    assert shop.no_offers()
    assert shop.decisions("suppressed", "global_holdout") == 6
    would = shop.outbox("would_offer")
    assert len(would) == 6 and {e["reason"] for e in would} == {"global_holdout"}
    assert {e["promotion_id"] for e in would} == {"fruit-week", "chips"}
    assert {r["reason"] for r in shop.agent.ledger.read_audit()} == {"global_holdout"}


async def test_purchases_are_attributed_and_the_report_answers_through_http_and_the_cli(
        store_factory, agent_factory, mqtt_client, capsys):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"], "skus": ["chips"], "holdout_pct": 50},
    ], profiles=[{"device": f"r{i}", "loyalty_id": f"L{i}"} for i in range(12)])
    agent = shop.agent
    for i in range(12):
        await shop.ping(f"r{i}", "aisle-1")
        await shop.settle(f"r{i}")
    offered = len(shop.outbox("offer"))
    held = len(shop.outbox("would_offer"))
    assert offered + held == 12 and offered and held
    while not shop.no_offers():
        await shop.offer()
    treated = next(f"r{i}" for i in range(12) if _reason_of(shop, f"r{i}") == "offered")
    oid = next(e["offer_id"] for e in shop.outbox("offer") if e["device"] == agent.pseudonym(treated))
    await shop.action(treated, oid, "apply")
    await shop.offer(treated)  # the code: applied
    url = shop.server.url + "/v1/pos/purchase"
    for i in range(12):  # everybody buys chips; r0 buys only bread (not attributed)
        skus = ["bread"] if i == 0 else ["chips", "bread"]
        status, body = await http("POST", url, headers=TILL, body={"loyalty_id": f"L{i}", "skus": skus,
                                                                   "basket_total": 9.9, "currency": "EUR"})
        assert status == 202 and body["accepted"] is True
        assert len(body["attributed"]) == (0 if i == 0 else 1)
    assert (await http("POST", url, headers=TILL, body={"skus": ["x"]}))[0] == 400
    assert (await http("POST", url, body={"device": "r1"}))[0] == 401
    purchases = shop.outbox("purchase")
    assert len(purchases) == 12 and purchases[1]["person"] == agent.pseudo.person("L1")
    assert "L1" not in json.dumps(purchases)
    assert (await http("GET", shop.server.url + "/v1/admin/report"))[0] == 401
    status, rep = await http("GET", shop.server.url + "/v1/admin/report?since=0", headers=ADMIN)
    assert status == 200 and set(rep) == {"since", "until", "promotions"}
    v = rep["promotions"]["chips"]["variants"]["-"]
    assert v["offered"] == offered and v["holdout"] == held and v["applied"] == 1 and v["redeemed"] == 0
    r0_held = _reason_of(shop, "r0") == "holdout"  # r0 bought no chips: converted in neither arm
    assert v["converted_treated"] == offered - (not r0_held) and v["converted_control"] == held - r0_held
    assert rep["promotions"]["chips"]["suppressed"] == {"holdout": held}
    assert v["uplift"] == round(v["conversion_treated"] - v["conversion_control"], 4)
    # the command line reads the same file (read-only, beside the running agent)
    import argparse
    assert run_report(argparse.Namespace(config=str(agent.cfg.path), since=None, json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["promotions"] == rep["promotions"]
    assert run_report(argparse.Namespace(config=str(agent.cfg.path), since="2000-01-01", json=False)) == 0
    assert "| chips | - |" in capsys.readouterr().out


def _reason_of(shop: Shop, device: str) -> str:
    pseudo = shop.agent.pseudonym(device)
    return " ".join(r["reason"] for r in shop.agent.ledger.read_audit(device=pseudo))


async def test_scores_change_the_winner_and_model_and_propensity_reach_central(
        store_factory, agent_factory, mqtt_client, tmp_path):
    """Issue 23: central's scores pick the lower-priority promotion; the offer event
    for central carries the model, the propensity and what the rules allowed."""
    (tmp_path / "store").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "scores.json").write_text(json.dumps(
        {"model": "propensity-2026-12-01", "scores": {"*": {"rules-pick": 0.01, "model-pick": 0.2}}}))
    promos = [{"id": "rules-pick", "title": "By priority", "zones": ["aisle-1"], "priority": 9},
              {"id": "model-pick", "title": "By score", "zones": ["aisle-1"], "priority": 1}]
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=promos, toml_extra="""
        [offers]
        scores = "scores.json"
    """)
    await shop.ping("p1", "aisle-1")
    assert (await shop.offer("p1"))["promotion_id"] == "model-pick"
    (ev,) = shop.outbox("offer")
    assert ev["model"] == "propensity-2026-12-01" and ev["propensity"] == 1.0
    assert ev["allowed"] == ["rules-pick", "model-pick"] and ev["segments"] == []


async def two_dismissed_offers(store_factory, agent_factory, mqtt_client, *, min_exposures: int):
    """A store whose `chips` has a guardrail (max_dismiss_rate 0.5, ``min_exposures``), and two
    shoppers who were offered it and dismissed it (both dismissals processed)."""
    cfg = store_factory(toml_extra=POS, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"],
         "guardrails": {"max_dismiss_rate": 0.5, "min_exposures": min_exposures}}])
    shop = Shop(await agent_factory(cfg), mqtt_client(), cfg)
    for t in ("offer/+", "deadletter", "alert/manager"):
        await shop.phone.subscribe(f"{shop.R}/{t}")
    for d in ("g1", "g2"):
        await shop.ping(d, "aisle-1")
        offer = await shop.offer(d)
        await shop.action(d, offer["offer_id"], "dismiss")
    await shop.marker(f"{shop.R}/action/g2", qos=1)
    return shop, cfg


async def test_a_guardrail_pauses_a_promotion_by_itself_until_the_admin_resumes(
        store_factory, agent_factory, mqtt_client):
    """Issue 23: two offers, both dismissed: past max_dismiss_rate 0.5 after
    min_exposures 2 the promotion pauses itself (reason guardrail), the managers
    get an alert, central a guardrail event; a restart keeps it paused."""
    shop, cfg = await two_dismissed_offers(store_factory, agent_factory, mqtt_client, min_exposures=2)
    alert = await shop.phone.next_json(f"{shop.R}/alert/manager")
    assert alert["kind"] == "guardrail" and alert["promotion_id"] == "chips" and alert["dismiss_rate"] == 1.0
    (ev,) = shop.outbox("guardrail")
    assert (ev["promotion_id"], ev["exposures"], ev["dismissals"]) == ("chips", 2, 2)
    await shop.ping("g3", "aisle-1")
    await shop.settle("g3")
    assert shop.no_offers() and shop.decisions("suppressed", "guardrail") == 1
    shop2 = await reopen(shop, agent_factory, cfg)  # the pause survives a restart
    await shop2.ping("g4", "aisle-1")
    await shop2.settle("g4")
    assert shop2.no_offers() and shop2.decisions("suppressed", "guardrail") == 1
    base = shop2.server.url + "/v1/admin/promotions"
    assert (await http("POST", f"{base}/chips/resume", headers=ADMIN))[0] == 200  # resume is the admin's
    await shop2.ping("g5", "aisle-1")
    assert (await shop2.offer("g5"))["promotion_id"] == "chips"


async def test_a_guardrail_also_trips_when_the_offer_that_reaches_min_exposures_is_sent(
        store_factory, agent_factory, mqtt_client):
    """Audit h2: two offers dismissed before min_exposures 3, then a third offer:
    3 exposures and 2/3 dismissed is past max_dismiss_rate 0.5, so the promotion
    pauses itself then (the guardrail was checked on dismissals only, so it kept
    offering until some later dismissal)."""
    shop, cfg = await two_dismissed_offers(store_factory, agent_factory, mqtt_client, min_exposures=3)
    assert shop.outbox("guardrail") == []  # 2 exposures: under min_exposures
    await shop.ping("g3", "aisle-1")
    assert (await shop.offer("g3"))["promotion_id"] == "chips"  # the third exposure
    alert = await shop.phone.next_json(f"{shop.R}/alert/manager")
    assert alert["kind"] == "guardrail" and alert["promotion_id"] == "chips"
    (ev,) = shop.outbox("guardrail")
    assert (ev["promotion_id"], ev["exposures"], ev["dismissals"]) == ("chips", 3, 2)
    await shop.ping("g4", "aisle-1")
    await shop.settle("g4")
    assert shop.no_offers() and shop.decisions("suppressed", "guardrail") == 1
