"""The closed loop from outside, as a till and a phone see it (audit h12): the
till's answers, idempotent retries across restarts and failed commits,
budgets counted once, holdouts and variants per person, attribution within
the window and the report's conversion fields on small hand-counted cases."""

from __future__ import annotations

import pytest

from .test_campaigns_e2e import TILL, http, open_shop

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
