"""A live flood of random and malformed payloads: no crash, every one
dead-lettered with a reason, memory flat, and the agent keeps serving."""

from __future__ import annotations

import asyncio
import json
import random
import tracemalloc

import msgpack
import pytest

from .conftest import wait_until

pytestmark = pytest.mark.broker


def _garbage(rng: random.Random, i: int) -> bytes:
    kind = i % 8
    if kind == 0:
        return rng.randbytes(rng.randint(1, 200))
    if kind == 1:
        return b"{" + rng.randbytes(rng.randint(0, 50))
    if kind == 2:
        return json.dumps({"x": rng.choice(["a", None, [], {}]), "y": 1}).encode()
    if kind == 3:
        return json.dumps({"lat": rng.uniform(91, 1e6), "lon": 0}).encode()
    if kind == 4:
        return b'{"x": NaN, "y": -Infinity}'
    if kind == 5:
        return msgpack.packb([rng.random() for _ in range(5)])
    if kind == 6:
        return json.dumps({"acc": 3, "floor": 1}).encode()
    return json.dumps({"x": 1, "y": 2, "pad": "z" * 17000}).encode()


async def test_flood_of_bad_payloads(store_factory, agent_factory, mqtt_client):
    cfg = store_factory()
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    phone = mqtt_client()
    rng = random.Random(7)
    n = 20_000

    def flood(start: int, count: int) -> None:
        for i in range(start, start + count):
            device = f"bad-{i % 500}"
            phone.client.publish(f"{R}/ping/wifi/{device}", _garbage(rng, i), qos=1)

    await asyncio.to_thread(flood, 0, n // 2)
    await _wait_deadletters(agent, n // 2)
    tracemalloc.start()
    try:
        before = _agent_bytes(tracemalloc.take_snapshot())
        await asyncio.to_thread(flood, n // 2, n // 2)
        await _wait_deadletters(agent, n)
        after = _agent_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    counts = agent.metrics.deadletters.values
    assert sum(counts.values()) == n
    assert set(k[0] for k in counts) <= {"decode", "schema", "range", "no_position", "too_large"}
    assert not agent.tracks  # no garbage became a tracked device
    assert after - before < 512 * 1024, f"agent code kept {after - before} more bytes"  # memory flat
    # ...and it still serves.
    await phone.subscribe(f"{R}/offer/+")
    await phone.publish(f"{R}/ping/uwb/good", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
    assert (await phone.next_json(f"{R}/offer/+"))["zone"] == "aisle-1"


async def _wait_deadletters(agent, n: int, timeout: float = 60) -> None:
    await asyncio.wait_for(wait_until(lambda: sum(agent.metrics.deadletters.values.values()) >= n, 0.05), timeout)


def _agent_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still held that were allocated by the agent's own code."""
    flt = [tracemalloc.Filter(True, f"*/{pkg}/*") for pkg in ("edge_agent", "geometry", "sync", "store_config")]
    return sum(s.size for s in snapshot.filter_traces(flt).statistics("filename"))
