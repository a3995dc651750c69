"""The till and the campaign admin over HTTP: ``POST /v1/pos/redeem``,
``POST /v1/pos/purchase`` (``[pos] token``), ``POST
/v1/admin/promotions/{id}/pause|resume`` and ``GET /v1/admin/report``
(``[http] admin_token``).

The shell side of ``campaigns``: it reads the ledger and the clock, asks the
pure functions there for the answer, and commits the effects through the
agent's one commit path (rows, then publish).  A redemption's check and burn
run in one SQLite transaction with no ``await`` between them, so two tills
racing on one code get one 200 and one 409; the ``redemptions`` table's key
would refuse a second burn anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from edge_agent.pipeline import campaigns
from edge_agent.pipeline.effects import Effects, PromoCount, PurchaseRow, RedeemRow
from .base import read_json
from edge_agent.storage.report import build_report

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.http.base import AgentPort

log = logging.getLogger("edge_agent.http.pos")

MAX_SKUS = 1000
MAX_BACKDATE_S = 7 * 86400.0  # a till that queued offline over a long weekend; older ``ts`` is refused
MAX_KEY_LEN = 200  # an Idempotency-Key


class BadRequest(ValueError):
    """A till's body that cannot be used (answered 400)."""


def _number(body: dict, key: str, *, required: bool = False) -> float | None:
    v = body.get(key)
    if v is None:
        if required:
            raise BadRequest(f"'{key}' is required")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"'{key}' must be a finite number")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise BadRequest(f"'{key}' must be a finite number")
    return f


def _string(body: dict, key: str, *, required: bool = False) -> str | None:
    v = body.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise BadRequest(f"'{key}' must be a non-empty string")
    return v


def _when(agent: "AgentPort", body: dict, now: float) -> float:
    """The body's ``ts`` (a till that queued offline), never in the future and
    at most ``MAX_BACKDATE_S`` in the past (a redemption's expiry is judged at
    it: an older one would let any expired code through)."""
    ts = _number(body, "ts")
    if ts is None:
        return now
    skew = agent.cfg.tracking.max_future_skew_s
    if not now - MAX_BACKDATE_S <= ts <= now + skew:
        raise BadRequest(f"'ts' must be epoch seconds within the last {MAX_BACKDATE_S / 86400:g} days "
                         f"(and not more than {skew:g} s ahead)")
    return min(ts, now)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_KEY_LEN:
        raise BadRequest(f"'Idempotency-Key' must be 1..{MAX_KEY_LEN} characters")
    return key


def redeem(agent: "AgentPort", body: dict, idempotency_key: str | None) -> campaigns.Answer:
    """Check and burn one code in one transaction; see ``campaigns.redeem_answer``."""
    code = campaigns.normalize_code(_string(body, "code", required=True))
    till, currency = _string(body, "till"), _string(body, "currency")
    basket_total = _number(body, "basket_total")
    now = agent.clock()
    ts = _when(agent, body, now)
    cfg, state = agent.cfg, agent.state
    tables, led = agent.store.campaigns, agent.ledger
    led.begin()  # the check and the burn: one transaction, no await in between
    try:
        offer = tables.offer_by_code(code)
        earlier = tables.redemption(offer["offer_id"]) if offer is not None else None
    except sqlite3.Error:
        led.rollback()
        raise
    promo = next((p for p in cfg.promotions if offer and p.id == offer["promotion_id"]), None)
    answer = campaigns.redeem_answer(offer=offer, redemption=earlier, idempotency_key=idempotency_key,
                                     promo=promo, state=state.campaign, now=ts,
                                     code_ttl_s=cfg.offers.code_ttl_s)
    label = offer["promotion_id"] if offer is not None else "-"
    if not answer.redeemed:
        led.commit()  # nothing written: ends the read
        agent.metrics.redemptions.inc(label, answer.outcome)
        return answer
    pid, variant = offer["promotion_id"], offer["variant"]
    fx = Effects()
    fx.rows.append(RedeemRow(offer["offer_id"], ts, offer["person"], offer["device"], pid, variant, till,
                             basket_total, currency, idempotency_key, answer.body, offer["ts"]))
    fx.rows.append(PromoCount(pid, redemptions=1))
    fx.event("conversion", ts, offer["device"], person=offer["person"], offer_id=offer["offer_id"],
             promotion_id=pid, variant=variant, basket_total=basket_total, currency=currency, till=till)
    if not agent.commit_effects(fx):
        return campaigns.Answer(503, {"error": "storage"}, "storage")
    c = state.campaign
    c.redemptions[pid] = c.redemptions.get(pid, 0) + 1
    agent.metrics.redemptions.inc(pid, answer.outcome)
    agent.metrics.conversions.inc(pid)
    if promo is not None:
        agent.pipeline.offering.update_budget_gauge(promo)
    return answer


def purchase(agent: "AgentPort", body: dict, idempotency_key: str | None = None) -> dict[str, Any]:
    """Record a basket and attribute it to the person's offers and would-offers
    of the last ``[offers] attribution_window_s`` whose skus meet it.  A retry
    with the ``Idempotency-Key`` of a recorded purchase gets its answer again
    and records nothing."""
    if idempotency_key is not None:
        earlier = agent.store.campaigns.purchase_answer(idempotency_key)
        if earlier is not None:
            return earlier
    loyalty_id, device = _string(body, "loyalty_id"), _string(body, "device")
    if (loyalty_id is None) == (device is None):
        raise BadRequest("exactly one of 'loyalty_id' and 'device' is required")
    skus = body.get("skus", [])
    if not isinstance(skus, list) or len(skus) > MAX_SKUS or not all(isinstance(s, str) and s for s in skus):
        raise BadRequest(f"'skus' must be a list of at most {MAX_SKUS} non-empty strings")
    basket_total, currency = _number(body, "basket_total"), _string(body, "currency")
    now = agent.clock()
    ts = _when(agent, body, now)
    cfg, st = agent.cfg, agent.state
    person = agent.pseudo.person(loyalty_id) if loyalty_id is not None else st.person_for(device)
    window = cfg.offers.attribution_window_s
    exposures = agent.store.campaigns.exposures_of(person, ts - window)
    hits = campaigns.attributable(exposures, skus, {p.id: p for p in cfg.promotions}, ts=ts, window_s=window)
    attributed = tuple((e["id"], e["ts"], e["promotion_id"], e["variant"], e["arm"]) for e in hits)
    summary = sorted({(e["promotion_id"], e["variant"] or campaigns.NO_VARIANT, e["arm"]) for e in hits})
    answer = {"accepted": True, "attributed": [{"promotion_id": p, "variant": v, "arm": a} for p, v, a in summary]}
    fx = Effects()
    fx.rows.append(PurchaseRow(ts, person, basket_total, currency, tuple(skus), attributed, idempotency_key,
                               answer if idempotency_key is not None else None))
    fx.event("purchase", ts, agent.pseudonym(device) if device is not None else None, person=person,
             skus=list(skus), basket_total=basket_total, currency=currency,
             attributed=[{"promotion_id": p, "variant": v, "arm": a} for p, v, a in summary])
    if not agent.commit_effects(fx):
        raise web.HTTPServiceUnavailable(text="storage unavailable\n")
    for pid in sorted({p for p, _, a in summary if a == campaigns.TREATED}):
        agent.metrics.conversions.inc(pid)
    return answer


def report_from_file(path: Path, *, since: float | None, until: float, tz, promotions) -> dict[str, Any]:
    """The report on its own read-only connection (run in a thread: the loop keeps serving)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        return build_report(conn, since=since, until=until, tz=tz, promotions=promotions)
    finally:
        conn.close()


def setup_routes(app: web.Application, agent_key: web.AppKey, require_admin: Callable,
                 bearer_ok: Callable) -> None:
    """Add the till's and the campaign admin's routes to ``app``."""

    def require_pos(request: web.Request) -> None:
        if not bearer_ok(request, request.app[agent_key].cfg.pos.token):
            raise web.HTTPUnauthorized(text="pos token required\n", headers={"WWW-Authenticate": "Bearer"})

    async def json_body(request: web.Request) -> dict:
        body = await read_json(request)  # 400 for malformed, deep or huge-number JSON
        if not isinstance(body, dict):  # no 'code' (or basket) at all: the tills' documented 400
            raise web.HTTPBadRequest(text=json.dumps({"error": "bad_request", "detail": "body must be a JSON object"}),
                                     content_type="application/json")
        return body

    async def post_redeem(request: web.Request) -> web.Response:
        require_pos(request)
        body = await json_body(request)
        try:
            answer = redeem(request.app[agent_key], body, _idempotency_key(request))
        except BadRequest as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        return web.json_response(answer.body, status=answer.status)

    async def post_purchase(request: web.Request) -> web.Response:
        require_pos(request)
        body = await json_body(request)
        try:
            out = purchase(request.app[agent_key], body, _idempotency_key(request))
        except BadRequest as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        return web.json_response(out, status=202)

    def pause_handler(paused: bool):
        async def handler(request: web.Request) -> web.Response:
            require_admin(request)
            agent = request.app[agent_key]
            pid = request.match_info["id"]
            if not agent.touch().offering.set_paused(pid, paused, agent.clock()):
                return web.json_response({"error": "unknown_promotion"}, status=404)
            if not agent.commit():  # not on disk: not in force either (the shell undid it)
                raise web.HTTPServiceUnavailable(text="storage unavailable; nothing changed, retry\n")
            log.warning("promotion %s %s by the admin endpoint", pid, "paused" if paused else "resumed")
            return web.json_response({"promotion_id": pid, "paused": paused})
        return handler

    async def get_report(request: web.Request) -> web.Response:
        from edge_agent.storage.ledger import AuditError, parse_since

        require_admin(request)
        agent = request.app[agent_key]
        raw = request.query.get("since")
        try:
            since = parse_since(raw, agent.rt.tz) if raw else None
        except AuditError:
            raise web.HTTPBadRequest(text="'since' must be epoch seconds or ISO 8601\n") from None
        report = await asyncio.to_thread(report_from_file, agent.ledger.path, since=since, until=agent.clock(),
                                         tz=agent.rt.tz, promotions=agent.cfg.promotions)
        return web.json_response(report)

    app.router.add_post("/v1/pos/redeem", post_redeem)
    app.router.add_post("/v1/pos/purchase", post_purchase)
    app.router.add_post("/v1/admin/promotions/{id}/pause", pause_handler(True))
    app.router.add_post("/v1/admin/promotions/{id}/resume", pause_handler(False))
    app.router.add_get("/v1/admin/report", get_report)
