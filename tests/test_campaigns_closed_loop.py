"""The closed loop from outside, as a till and a phone see it (audit h12): the
till's answers, idempotent retries across restarts and failed commits,
budgets counted once, holdouts and variants per person, attribution within
the window and the report's conversion fields on small hand-counted cases."""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import wait_until
from .test_campaigns_e2e import ADMIN, TILL, _reason_of, http, offer_and_code, open_shop, reopen
from .test_hardening import allow_writes, refuse_writes

pytestmark = pytest.mark.broker


async def test_a_till_body_that_is_not_an_object_is_the_documented_json_bad_request(
        store_factory, agent_factory, mqtt_client):
    """A body with no ``code`` at all (a list, a bare string, a number) is the
    documented 400 ``{"error": "bad_request", "detail"}``, as JSON — not a text line."""
    shop = await open_shop(store_factory, agent_factory, mqtt_client)
    for path in ("/v1/pos/redeem", "/v1/pos/purchase"):
        for body in ([], "ABCDEFGHJK", 5, True, [{"code": "ABCDEFGHJK"}]):
            status, answer = await http("POST", shop.server.url + path, body=body, headers=TILL)
            assert status == 400 and isinstance(answer, dict), (path, body, answer)
            assert answer["error"] == "bad_request" and answer["detail"], (path, body, answer)


async def into_aisle(shop, prefix: str, n: int) -> None:
    """Devices ``{prefix}0`` .. ``{prefix}{n-1}`` enter aisle-1 one by one, each decided before the next."""
    for i in range(n):
        await shop.ping(f"{prefix}{i}", "aisle-1")
        await shop.settle(f"{prefix}{i}")


def two_devices_each(n: int) -> list[dict]:
    """Profiles of ``n`` people with two devices each, a{i} and b{i}, under loyalty id L{i}."""
    return [{"device": f"{d}{i}", "loyalty_id": f"L{i}"} for d in "ab" for i in range(n)]


def count(shop, sql, *a):
    return shop.agent.ledger.conn.execute(sql, a).fetchone()[0]


async def test_a_redeem_replayed_with_its_idempotency_key_after_a_restart_is_the_same_200_recorded_once(
        store_factory, agent_factory, mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"], "max_redemptions": 5}])
    url = shop.server.url + "/v1/pos/redeem"
    offer, code = await offer_and_code(shop, "k1")
    body = {"code": code, "till": "T1", "basket_total": 10.0, "currency": "EUR"}
    ok = await http("POST", url, body=body, headers={**TILL, "Idempotency-Key": "K-1"})
    assert ok[0] == 200
    shop2 = await reopen(shop, agent_factory, shop.agent.cfg)
    url = shop2.server.url + "/v1/pos/redeem"
    assert await http("POST", url, body=body, headers={**TILL, "Idempotency-Key": "K-1"}) == ok
    assert (await http("POST", url, body=body, headers=TILL))[0] == 409
    assert count(shop2, "SELECT count(*) FROM redemptions") == 1
    assert count(shop2, "SELECT count(*) FROM outbox WHERE kind='conversion'") == 1
    assert count(shop2, "SELECT redemptions FROM promo_counts WHERE promotion_id='chips'") == 1
    assert shop2.agent.state.campaign.redemptions["chips"] == 1


async def test_a_redemption_whose_commit_failed_counts_once_towards_max_redemptions_across_a_restart(
        store_factory, agent_factory, mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"], "max_redemptions": 1, "cooldown_s": 0}])
    url = shop.server.url + "/v1/pos/redeem"
    _, c1 = await offer_and_code(shop, "b1")
    _, c2 = await offer_and_code(shop, "b2")
    agent = shop.agent
    refuse_writes(agent)
    st, body = await http("POST", url, body={"code": c1}, headers={**TILL, "Idempotency-Key": "x"})
    assert st == 503, (st, body)
    allow_writes(agent)
    agent.tick()
    status, answer = await http("POST", url, body={"code": c1}, headers={**TILL, "Idempotency-Key": "x"})
    assert status == 200 and answer["status"] == "redeemed" and answer["promotion_id"] == "chips"
    assert await http("POST", url, body={"code": c2}, headers=TILL) == (409, {"error": "budget"})
    shop2 = await reopen(shop, agent_factory, agent.cfg)
    url = shop2.server.url + "/v1/pos/redeem"
    assert await http("POST", url, body={"code": c2}, headers=TILL) == (409, {"error": "budget"})
    assert count(shop2, "SELECT redemptions FROM promo_counts WHERE promotion_id='chips'") == 1
    assert count(shop2, "SELECT count(*) FROM outbox WHERE kind='conversion'") == 1


async def test_holdout_and_variant_are_the_persons_on_another_device_after_a_restart(
        store_factory, agent_factory, mqtt_client):
    n = 10
    profiles = two_devices_each(n)
    promos = [{"id": "ab", "title": "AB", "zones": ["aisle-1"], "cooldown_s": 0, "holdout_pct": 50,
               "variants": [{"id": "A"}, {"id": "B"}, {"id": "C"}]}]
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=promos, profiles=profiles)
    await into_aisle(shop, "a", n)
    first = {i: _reason_of(shop, f"a{i}") for i in range(n)}
    var = {}
    for e in shop.outbox("offer") + shop.outbox("would_offer"):
        var[e["person"]] = e["variant"]
    assert len(set(first.values())) == 2, first
    shop2 = await reopen(shop, agent_factory, shop.agent.cfg)
    await into_aisle(shop2, "b", n)
    second = {i: _reason_of(shop2, f"b{i}") for i in range(n)}
    assert first == second
    for e in shop2.outbox("offer") + shop2.outbox("would_offer"):
        assert var[e["person"]] == e["variant"]


async def test_purchases_count_within_the_window_only_and_once_per_person_in_the_report(
        store_factory, agent_factory, mqtt_client):
    skew = [0.0]
    n = 8
    shop = await open_shop(store_factory, agent_factory, mqtt_client, clock=lambda: time.time() + skew[0],
                           toml_extra="""
        [offers]
        attribution_window_s = 600
    """, promotions=[{"id": "chips", "title": "Chips", "zones": ["aisle-1"], "skus": ["chips"],
                      "holdout_pct": 50, "cooldown_s": 0}],
                           profiles=[{"device": f"r{i}", "loyalty_id": f"L{i}"} for i in range(n)])
    await into_aisle(shop, "r", n)
    arm = {i: ("treated" if _reason_of(shop, f"r{i}") == "offered" else "control") for i in range(n)}
    while not shop.no_offers():
        await shop.offer()
    url = shop.server.url + "/v1/pos/purchase"
    treated = [i for i in range(n) if arm[i] == "treated"]
    control = [i for i in range(n) if arm[i] == "control"]
    assert treated and control
    # r(treated[0]) buys twice, within the window; control[0] buys within; others buy after the window
    for i in (treated[0], treated[0], control[0]):
        st, b = await http("POST", url, headers=TILL, body={"loyalty_id": f"L{i}", "skus": ["chips"]})
        assert st == 202 and len(b["attributed"]) == 1, b
    skew[0] = 700.0
    for i in treated[1:] + control[1:]:
        st, b = await http("POST", url, headers=TILL, body={"loyalty_id": f"L{i}", "skus": ["chips"]})
        assert st == 202 and b["attributed"] == [], b
    st, rep = await http("GET", shop.server.url + "/v1/admin/report", headers=ADMIN)
    v = rep["promotions"]["chips"]["variants"]["-"]
    assert v["offered"] == len(treated) and v["holdout"] == len(control)
    assert v["converted_treated"] == 1 and v["converted_control"] == 1
    assert v["conversion_treated"] == round(1 / len(treated), 4)
    assert v["conversion_control"] == round(1 / len(control), 4)
    assert v["uplift"] == round(1 / len(treated) - 1 / len(control), 4)


async def test_max_offers_counts_committed_offers_once_across_a_failed_commit_and_a_restart(
        store_factory, agent_factory, mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client, promotions=[
        {"id": "chips", "title": "Chips", "zones": ["aisle-1"], "max_offers": 2}])
    agent = shop.agent
    refuse_writes(agent)
    await shop.ping("f1", "aisle-1")
    await asyncio.wait_for(wait_until(lambda: agent.metrics.storage_errors.values), 5)
    allow_writes(agent)
    agent.tick()
    for d in ("f2", "f3"):
        await shop.ping(d, "aisle-1")
        assert (await shop.offer(d))["promotion_id"] == "chips"
    await shop.ping("f4", "aisle-1")
    await shop.settle("f4")
    assert shop.decisions("suppressed", "budget") == 1
    assert count(shop, "SELECT offers FROM promo_counts WHERE promotion_id='chips'") == 2
    shop2 = await reopen(shop, agent_factory, agent.cfg)
    await shop2.ping("f5", "aisle-1")
    await shop2.settle("f5")
    assert shop2.decisions("suppressed", "budget") == 1


async def test_a_purchase_replayed_with_its_idempotency_key_after_a_restart_is_recorded_once(
        store_factory, agent_factory, mqtt_client):
    shop = await open_shop(store_factory, agent_factory, mqtt_client)
    url = shop.server.url + "/v1/pos/purchase"
    body = {"loyalty_id": "L1", "skus": ["chips"], "basket_total": 3.0}
    a = await http("POST", url, headers={**TILL, "Idempotency-Key": "P-1"}, body=body)
    shop2 = await reopen(shop, agent_factory, shop.agent.cfg)
    url = shop2.server.url + "/v1/pos/purchase"
    assert await http("POST", url, headers={**TILL, "Idempotency-Key": "P-1"}, body=body) == a
    assert count(shop2, "SELECT count(*) FROM purchases") == 1
    assert count(shop2, "SELECT count(*) FROM outbox WHERE kind='purchase'") == 1


async def test_the_global_control_group_is_the_persons_on_another_device_after_a_restart(
        store_factory, agent_factory, mqtt_client):
    n = 12
    profiles = two_devices_each(n)
    shop = await open_shop(store_factory, agent_factory, mqtt_client, toml_extra="""
        [offers]
        global_holdout_pct = 50
    """, promotions=[{"id": "c", "title": "C", "zones": ["aisle-1"], "cooldown_s": 0}], profiles=profiles)
    await into_aisle(shop, "a", n)
    first = {i: _reason_of(shop, f"a{i}") for i in range(n)}
    assert len(set(first.values())) == 2
    shop2 = await reopen(shop, agent_factory, shop.agent.cfg)
    await into_aisle(shop2, "b", n)
    assert first == {i: _reason_of(shop2, f"b{i}") for i in range(n)}


async def test_code_ttl_expiry_idempotent_retry_after_it_and_malformed_codes(
        store_factory, agent_factory, mqtt_client):
    skew = [0.0]
    shop = await open_shop(store_factory, agent_factory, mqtt_client, clock=lambda: time.time() + skew[0],
                           toml_extra="""
        [offers]
        code_ttl_s = 600
    """, promotions=[{"id": "chips", "title": "Chips", "zones": ["aisle-1"]}])
    url = shop.server.url + "/v1/pos/redeem"
    offer, code = await offer_and_code(shop, "e1")
    skew[0] = 599.0
    ok = await http("POST", url, body={"code": code.lower()}, headers={**TILL, "Idempotency-Key": "E"})
    assert ok[0] == 200
    skew[0] = 5000.0
    assert await http("POST", url, body={"code": code}, headers={**TILL, "Idempotency-Key": "E"}) == ok
    _, code2 = await offer_and_code(shop, "e2")
    skew[0] = 5000.0 + 601
    assert await http("POST", url, body={"code": code2}, headers=TILL) == (410, {"error": "expired"})
    assert await http("POST", url, body={"code": code2}, headers={**TILL, "Idempotency-Key": "Z"}) == (
        410, {"error": "expired"})
    for bad in ({"code": 5}, {"code": ""}, {"code": None}, {"code": ["x"]}, {"code": code2, "till": 3},
                {"code": code2, "basket_total": "x"}, {"code": code2, "basket_total": True}):
        st, b = await http("POST", url, body=bad, headers=TILL)
        assert st == 400 and b["error"] == "bad_request", (bad, st, b)
    assert await http("POST", url, body={"code": "- -"}, headers=TILL) == (404, {"error": "unknown_code"})
    assert count(shop, "SELECT count(*) FROM redemptions") == 1


async def test_a_repeated_apply_gives_the_same_code_also_after_a_restart_and_a_dismiss(
        store_factory, agent_factory, mqtt_client):
    skew = [0.0]
    shop = await open_shop(store_factory, agent_factory, mqtt_client, clock=lambda: time.time() + skew[0],
                           promotions=[{"id": "chips", "title": "Chips", "zones": ["aisle-1"]}])
    offer, code = await offer_and_code(shop, "ap1")
    oid = offer["offer_id"]
    await shop.action("ap1", oid, "apply")
    await shop.action("ap1", oid, "apply")
    assert (await shop.offer("ap1"))["code"] == code
    assert (await shop.offer("ap1"))["code"] == code
    shop2 = await reopen(shop, agent_factory, shop.agent.cfg)
    await shop2.action("ap1", oid, "apply")
    assert (await shop2.offer("ap1")) == {"offer_id": oid, "code": code}
    assert count(shop2, "SELECT count(*) FROM outbox WHERE kind='redemption'") == 1
    # after a dismiss attempt the code stays
    await shop2.action("ap1", oid, "dismiss")
    await shop2.action("ap1", oid, "apply")
    assert (await shop2.offer("ap1")) == {"offer_id": oid, "code": code}


async def test_report_conversion_fields_per_variant_by_hand_and_since(
        store_factory, agent_factory, mqtt_client):
    skew = [0.0]
    n = 16
    shop = await open_shop(store_factory, agent_factory, mqtt_client, clock=lambda: time.time() + skew[0],
                           promotions=[{"id": "ab", "title": "AB", "zones": ["aisle-1"], "skus": ["chips"],
                                        "holdout_pct": 40, "cooldown_s": 0,
                                        "variants": [{"id": "A"}, {"id": "B"}]}],
                           profiles=[{"device": f"v{i}", "loyalty_id": f"L{i}"} for i in range(n)])
    agent = shop.agent
    await into_aisle(shop, "v", n)
    ev = {e["person"]: e for e in shop.outbox("offer")}
    held = {e["person"]: e for e in shop.outbox("would_offer")}
    while not shop.no_offers():
        await shop.offer()
    person = {i: agent.pseudo.person(f"L{i}") for i in range(n)}
    # redeem for the first treated person; purchases: one treated buys chips twice, one control buys
    # chips, one control buys bread only
    t = [i for i in range(n) if person[i] in ev]
    c = [i for i in range(n) if person[i] in held]
    assert len(t) >= 2 and len(c) >= 2, (t, c)
    await shop.action(f"v{t[0]}", ev[person[t[0]]]["offer_id"], "apply")
    code = (await shop.offer(f"v{t[0]}"))["code"]
    assert (await http("POST", shop.server.url + "/v1/pos/redeem", body={"code": code}, headers=TILL))[0] == 200
    url = shop.server.url + "/v1/pos/purchase"
    for i, skus in ((t[1], ["chips"]), (t[1], ["chips"]), (c[0], ["chips"]), (c[1], ["bread"])):
        assert (await http("POST", url, headers=TILL, body={"loyalty_id": f"L{i}", "skus": skus}))[0] == 202
    st, rep = await http("GET", shop.server.url + "/v1/admin/report?since=0", headers=ADMIN)
    vs = rep["promotions"]["ab"]["variants"]
    for v in ("A", "B"):
        tv = [i for i in t if ev[person[i]]["variant"] == v]
        cv = [i for i in c if held[person[i]]["variant"] == v]
        row = vs[v]
        assert row["offered"] == len(tv) and row["holdout"] == len(cv)
        assert row["applied"] == (1 if t[0] in tv else 0) == row["redeemed"]
        ct = len({t[0], t[1]} & set(tv))
        cc = len({c[0]} & set(cv))
        assert row["converted_treated"] == ct and row["converted_control"] == cc, (v, row)
        assert row["conversion_treated"] == (round(ct / len(tv), 4) if tv else None)
        assert row["conversion_control"] == (round(cc / len(cv), 4) if cv else None)
    # since after everything: nothing offered
    skew[0] = 100.0
    st, rep = await http("GET", shop.server.url + f"/v1/admin/report?since={time.time() + 50}", headers=ADMIN)
    for v in ("A", "B"):
        row = rep["promotions"]["ab"]["variants"][v]
        assert row["offered"] == 0 and row["holdout"] == 0 and row["converted_treated"] == 0
        assert row["conversion_treated"] is None and row["conversion_control"] is None
