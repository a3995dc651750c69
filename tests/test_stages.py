"""[ingest] stages: where a batch's milliseconds go, through a real Mosquitto."""

from __future__ import annotations

import logging
import time

import pytest

from store_config import load_store
from tests.conftest import write_store


def test_stages_are_off_by_default_and_a_key_switches_them_on(tmp_path):
    assert load_store(write_store(tmp_path / "off", broker_url=None)).ingest.stages is False
    on = load_store(write_store(tmp_path / "on", broker_url=None, toml_extra="[ingest]\nstages = true\n"))
    assert on.ingest.stages is True


@pytest.mark.broker
async def test_one_pings_stages_are_recorded_in_order_within_its_life(store_factory, agent_factory, mqtt_client,
                                                                      caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent.stages")
    cfg = store_factory(toml_extra="[ingest]\nstages = true\n")
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/p1")
    sent = time.perf_counter()
    await phone.publish(f"{R}/ping/uwb/p1", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    offer = await phone.next_json(f"{R}/offer/p1")
    got = time.perf_counter()
    assert offer["promotion_id"] == "chips"

    last = agent.stages.last
    assert last["n"] == 1
    # read, handed, decoded, stepped, committed, published, written: in order, all within the ping's
    # life from its publish to the offer's arrival at the phone (one clock: the agent runs in this process)
    stamps = last["stamps"]
    assert len(stamps) == 7
    # the loop thread's CPU time over read → published: some, and no more than the wall time between
    assert 0 < last["cpu"] <= stamps[5] - stamps[0]
    assert sent <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= got
    # each stage observed once, and the stages sum to no more than the total
    text = agent.metrics.render()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("edge_stage_")}
    names = ("read", "decode", "step", "commit", "publish")
    assert all(values[f"edge_stage_{n}_seconds_count"] == 1 for n in (*names, "write", "batch"))
    parts = sum(values[f"edge_stage_{n}_seconds_sum"] for n in names)
    assert parts <= values["edge_stage_batch_seconds_sum"] + 1e-9
    assert parts + values["edge_stage_write_seconds_sum"] <= got - sent
    assert values["edge_stage_batch_messages_count"] == 1
    # and one debug line for the batch, after its write
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.stages"]
    assert len(lines) == 1 and lines[0].startswith("batch of 1, 1 offers: read ") and ", written +" in lines[0]
    assert " ms (cpu " in lines[0]


@pytest.mark.broker
async def test_without_the_key_the_agent_exports_no_stages(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    server = await agent_factory(cfg)
    phone = mqtt_client()
    R = cfg.root_topic
    await phone.subscribe(f"{R}/offer/p2")
    await phone.publish(f"{R}/ping/uwb/p2", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    await phone.next_json(f"{R}/offer/p2")
    assert server.agent.stages is None and server.agent.mqtt.stages is None
    assert "edge_stage_" not in server.agent.metrics.render()
