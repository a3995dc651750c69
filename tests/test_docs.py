"""The machine-readable contract docs exist, parse, and name every topic and path."""

from __future__ import annotations

from pathlib import Path

import yaml  # PyYAML (the test extra)

ROOT = Path(__file__).resolve().parent.parent


def test_asyncapi_lists_every_contract_topic():
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    for topic in ("store/{store_id}/ping/{source}/{device}", "owntracks/{user}/{device}",
                  "store/{store_id}/action/{device}", "store/{store_id}/consent/{device}",
                  "store/{store_id}/inventory", "store/{store_id}/offer/{device}",
                  "store/{store_id}/alert/{audience}", "store/{store_id}/alert/claim",
                  "store/{store_id}/event/{device}", "store/{store_id}/deadletter", "store/{store_id}/status",
                  "store/{store_id}/floor", "store/{store_id}/notice/{device}"):
        assert topic in addresses
    offer = doc["components"]["messages"]["Offer"]["payload"]
    assert set(offer["required"]) == {"offer_id", "promotion_id", "zone", "title", "message", "sku", "ts", "expires"}


def test_shop_openapi_names_every_shop_path_the_app_serves():
    from edge_agent.http import make_app
    from edge_agent.service import Agent
    from store_config import load_store, sample_path

    doc = yaml.safe_load((ROOT / "docs" / "shop-openapi.yaml").read_text())
    app = make_app(Agent(load_store(sample_path())))
    served = {r.resource.canonical for r in app.router.routes()
              if r.resource is not None and (r.resource.canonical.startswith(("/shop", "/v1/shop"))
                                             or r.resource.canonical in ("/v1/ping", "/v1/admin/delivery/requeue"))}
    assert served == set(doc["paths"])
    central = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    push = central["webhooks"]["push"]["post"]
    assert set(push["requestBody"]["content"]["application/json"]["schema"]["required"]) == {"device", "topic",
                                                                                             "payload"}
