"""The audit trail: `edge-agent audit` (read-only, pseudonymous) and GET /v1/admin/audit."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import aiohttp
import pytest

from edge_agent.commands.audit import parse_since, run_audit
from store_config import load_store

pytestmark = pytest.mark.broker

AISLE = {"x": 24.0, "y": 10.0, "acc": 0.5}


async def _decisions(store_factory, agent_factory, mqtt_client):
    """alice is offered chips; bob (no consent) is refused."""
    cfg = store_factory(profiles=[{"device": "bob", "consent": {"offers": False, "tracking": False}},
                                  {"device": "alice", "consent": {"offers": True, "tracking": True}}])
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/+")
    await phone.subscribe(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/bob", AISLE, qos=0)
    await phone.publish(f"{R}/ping/uwb/bob", b"\x00", qos=0)
    await phone.next(f"{R}/deadletter")
    await phone.publish(f"{R}/ping/uwb/alice", AISLE, qos=0)
    offer = await phone.next_json(f"{R}/offer/+")
    return cfg, server, offer


def _args(cfg, **kw):
    base = dict(config=str(cfg.path), device=None, since="0", limit=1000, json=True)
    base.update(kw)
    return argparse.Namespace(**base)


async def test_cli_audit_by_device_and_since(store_factory, agent_factory, mqtt_client, capsys):
    cfg, server, offer = await _decisions(store_factory, agent_factory, mqtt_client)
    agent = server.agent
    # Beside the running agent (WAL, read-only connection).
    assert run_audit(_args(cfg, device="alice")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["promotion_id"], r["outcome"], r["reason"], r["offer_id"]) for r in rows] == [
        ("chips", "offered", "offered", offer["offer_id"])]
    assert rows[0]["device"] == agent.pseudonym("alice") and rows[0]["zone"] == "aisle-1"
    assert run_audit(_args(cfg, device="bob")) == 0
    out = capsys.readouterr().out
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["outcome"], row["reason"], row["zone"]) == ("suppressed", "no_consent", None)  # no tracking: no zone
    assert "bob" not in out and "alice" not in out
    assert run_audit(_args(cfg, since=str(time.time() + 60))) == 0
    assert capsys.readouterr().out == ""
    await server.stop()
    # And after it stopped: a table, all devices.
    assert run_audit(_args(cfg, json=False, since="2020-01-01T00:00")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["time", "device", "event"]
    assert len(table) == 3 and any("no_consent" in t for t in table) and any(offer["offer_id"] in t for t in table)


def test_since_parsing_uses_store_time():
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/Prague")
    assert parse_since("1700000000", tz) == 1700000000.0
    assert parse_since("2026-11-22T08:00", tz) == parse_since("2026-11-22T07:00:00+00:00", tz)


def test_cli_audit_without_a_ledger_fails_and_creates_nothing(tmp_path):
    from tests.conftest import write_store

    path = write_store(tmp_path, broker_url=None)
    data = load_store(path).data_dir
    r = subprocess.run([sys.executable, "-m", "edge_agent", "audit", "--config", str(path), "--device", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no ledger" in r.stderr
    assert not data.exists()  # nothing created: no ledger, no key


def test_cli_audit_and_report_refuse_an_unreadable_config_as_run_does(tmp_path):
    """A missing store.toml, or one without the [store] timezone the trail needs, is
    `run`'s one line: the file once, its first error, and where `check` lists them all."""
    from tests.conftest import write_store

    typo = write_store(tmp_path, broker_url=None)
    typo.write_text(typo.read_text().replace("timezone =", "timezon ="))
    for config in (typo, tmp_path / "missing.toml"):
        for cmd in ("audit", "report"):
            r = subprocess.run([sys.executable, "-m", "edge_agent", cmd, "--config", str(config)],
                               capture_output=True, text=True)
            assert r.returncode == 2
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"edge-agent: configuration refused: {config}: "), lines
            assert lines[0].count(str(config)) == 2, lines  # the error's, and check's
            assert lines[0].endswith(f"`edge-agent check --config {config}` lists every error"), lines


async def test_admin_audit_endpoint(store_factory, agent_factory, mqtt_client):
    cfg, server, offer = await _decisions(store_factory, agent_factory, mqtt_client)
    url = server.url + "/v1/admin/audit"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"device": "alice"}) as r:
            assert r.status == 401
        async with http.get(url, params={"device": "alice"}, headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer admin-secret"}
        async with http.get(url, params={"device": "alice"}, headers=auth) as r:
            assert r.status == 200
            rows = (await r.json())["decisions"]
        assert [(d["reason"], d["offer_id"]) for d in rows] == [("offered", offer["offer_id"])]
        assert rows[0]["device"] == server.agent.pseudonym("alice")
        async with http.get(url, headers=auth) as r:
            assert {d["reason"] for d in (await r.json())["decisions"]} == {"offered", "no_consent"}
        async with http.get(url, params={"since": "2999-01-01T00:00"}, headers=auth) as r:
            assert (await r.json())["decisions"] == []
        async with http.get(url, params={"since": "soon"}, headers=auth) as r:
            assert r.status == 400
        async with http.get(url, params={"limit": "1"}, headers=auth) as r:
            assert len((await r.json())["decisions"]) == 1
        async with http.get(url, params={"limit": "-1"}, headers=auth) as r:  # SQLite: no limit, past the cap
            assert r.status == 400
