"""kill -9 of a real agent process under load, then a restart: every event it
had recorded reaches central; a key arrives twice only as a retried batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.central import Central, central, sync_toml  # noqa: F401 (fixture)
from tests.conftest import free_port, write_store

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                                cwd=ROOT, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": str(ROOT)})


def outbox_keys(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {k for (k,) in conn.execute("SELECT key FROM outbox")}
    finally:
        conn.close()


async def load(phone, R: str, stop: asyncio.Event) -> None:
    """New shoppers walking into aisle-1, one after another (a few hundred a second, a
    busy store's peak): a transition and an offer each."""
    i = 0
    while not stop.is_set():
        await phone.publish(f"{R}/ping/uwb/crash-{i}", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=0)
        i += 1
        if i % 10 == 0:
            await asyncio.sleep(0.02)  # pacing the load generator, not waiting for a result


async def test_kill_9_under_load_then_restart_delivers_everything_recorded(
        tmp_path, mosquitto, mqtt_client, central: Central):
    await central.start()
    toml = write_store(tmp_path, broker_url=mosquitto.url, toml_extra=sync_toml(central, batch_size=20))
    toml.write_text(toml.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_port()}"'))
    db = toml.parent / "var" / "edge.sqlite3"
    R = "store/" + next(line.split('"')[1] for line in toml.read_text().splitlines() if line.startswith("id ="))
    log = tmp_path / "agent.log"

    proc = start_agent(toml, log)
    try:
        await central.wait_for(lambda: len(central.bundle_requests) >= 1, timeout=20)  # it is up
        phone = mqtt_client()
        stop = asyncio.Event()
        loader = asyncio.create_task(load(phone, R, stop))
        await central.wait_for(lambda: len(central.events) >= 100, timeout=20)
        central.script.append("hang")  # the next batch gets no answer: it is surely in flight at the kill
        await central.wait_for(lambda: central.hung >= 1, timeout=20)
        proc.send_signal(signal.SIGKILL)  # under load, a batch in flight
        await asyncio.to_thread(proc.wait, 10)
        stop.set()
        await loader
        delivered_before = set(central.events)
        recorded = delivered_before | outbox_keys(db)
        assert len(recorded) > len(delivered_before)  # something was still waiting

        proc = start_agent(toml, log)
        await central.wait_for(lambda: recorded <= set(central.events), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not outbox_keys(db)  # everything acknowledged
    # At least once on the wire: a key arrives again only in its batch retried whole, under the same
    # Idempotency-Key (a 0.5 s time-out on a busy machine gives up on a batch central took), so central
    # can tell; the batch the kill cut off got no answer (it hung), so it is not among them.
    idems: dict[str, set] = {}
    for d in central.deliveries:
        if d.status == 200:
            for k in d.keys:
                idems.setdefault(k, set()).add(d.idempotency_key)
    assert all(len(idems[k]) == 1 for k, n in central.copies.items() if n > 1)
