"""The contract docs exist, parse, and mirror the code: every topic, HTTP path, metric and store.toml key is
named in its docs/ page, and links between the README and the pages resolve."""

from __future__ import annotations

import re
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
    from edge_agent.http.app import make_app
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


# -- the reference pages in docs/ that mirror code ------------------------------------------------------------------

DOCS = ROOT / "docs"


def section_of(page: str, heading: str) -> str:
    text = (DOCS / page).read_text()
    assert heading in text, f"docs/{page} lost its {heading!r} section"
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_contract_page_names_every_topic_and_http_path():
    from edge_agent.http.app import make_app
    from edge_agent.service import Agent
    from store_config import load_store, sample_path

    topics = section_of("contract.md", "## MQTT topics")
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    for address in (c["address"] for c in doc["channels"].values()):
        assert f"`{address.replace('store/{store_id}', '{R}')}`" in topics, address
    http = section_of("contract.md", "## HTTP")
    app = make_app(Agent(load_store(sample_path())))
    for path in {r.resource.canonical for r in app.router.routes() if r.resource is not None}:
        assert re.search(rf"(?<![\w/]){re.escape(path)}(?![\w/{{])", http), f"docs/contract.md has no row for {path}"


def test_operations_page_names_every_metric():
    from edge_agent.metrics import Metrics

    table = section_of("operations.md", "## Metrics")
    for m in Metrics().all():
        assert f"`{m.name}" in table, f"docs/operations.md does not document {m.name}"


def test_configuration_page_names_every_store_toml_key():
    from store_config._sections import SECTIONS
    from store_config._sources import SOURCE_KEYS

    page = (DOCS / "configuration.md").read_text()
    for name, keys in SECTIONS.items():
        assert f"[{name}" in page, f"docs/configuration.md does not name [{name}]"
        for key in keys:
            assert re.search(rf"\b{key}\b", page), f"docs/configuration.md does not name [{name}] {key}"
    for source, keys in SOURCE_KEYS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `[sources.{source}]`"))
        assert all(f"`{k}`" in row for k in keys), row
    tracking = page.split("[tracking]\n", 1)[1].split("\n[", 1)[0]
    assert all(re.search(rf"^{k}\b", tracking, re.M) for k in ("fusion", "confidence", "acc_sigmas"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for page in pages:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: broken link {target}"
            if anchor and dest.suffix == ".md":
                dest_text = re.sub(r"^```.*?^```", "", dest.read_text(), flags=re.S | re.M)
                anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", dest_text, flags=re.M)}
                assert anchor in anchors, f"{page.name}: no heading for #{anchor} in {dest.name}"
