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
                  "store/{store_id}/event/{device}", "store/{store_id}/deadletter", "store/{store_id}/status"):
        assert topic in addresses
    offer = doc["components"]["messages"]["Offer"]["payload"]
    assert set(offer["required"]) == {"offer_id", "promotion_id", "zone", "title", "message", "sku", "ts", "expires"}
