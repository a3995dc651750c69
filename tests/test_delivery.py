"""The push webhook ([delivery] webhook_url): every offer, code and notice is
POSTed from a durable queue with an Idempotency-Key; 5xx is retried with
backoff, other 4xx set aside and requeueable, nothing lost across a restart
or a kill -9, no raw device id at rest."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from store_config import load_store
from store_config.model import DeliveryConfig
from tests.conftest import free_port, start_agent_process, wait_until, write_store

pytestmark = pytest.mark.broker

TOKEN = "push-secret"


class Receiver:
    """The retailer's push service: answers from a script of statuses (then 200), keeps what it took."""

    def __init__(self):
        self.script: list[int] = []
        self.default = 200
        self.attempts: list[tuple[str, int]] = []  # (Idempotency-Key, status answered)
        self.taken: dict[str, dict] = {}  # key -> body, first 2xx only (the receiver dedupes by key)
        self.duplicates = 0
        self.auth: set[str] = set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        self.auth.add(request.headers.get("Authorization", ""))
        status = self.script.pop(0) if self.script else self.default
        self.attempts.append((key, status))
        if 200 <= status < 300:
            if key in self.taken:
                self.duplicates += 1
            self.taken.setdefault(key, await request.json())
        return web.json_response({"status": status}, status=status)


@pytest.fixture
async def receiver():
    r = Receiver()
    app = web.Application()
    app.router.add_post("/push", r.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    r.url = f"http://127.0.0.1:{port}/push"
    yield r
    await runner.cleanup()


def with_webhook(cfg, url: str):
    return replace(cfg, delivery=DeliveryConfig(webhook_url=url, webhook_token=TOKEN, retry_s=0.05))


async def until(cond, timeout: float = 15.0) -> None:
    await asyncio.wait_for(wait_until(cond), timeout)


async def test_offers_codes_and_notices_reach_the_webhook_after_retries(store_factory, agent_factory, mqtt_client,
                                                                       receiver):
    cfg = with_webhook(store_factory(), receiver.url)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    mq = mqtt_client()
    await mq.subscribe(f"{R}/offer/phone-1")
    receiver.script = [503, 500]
    await mq.publish(f"{R}/ping/uwb/phone-1", {"x": 12, "y": 7, "acc": 0.1})
    offer = await mq.next_json(f"{R}/offer/phone-1")
    oid = offer["offer_id"]
    await until(lambda: oid in receiver.taken)
    assert [s for k, s in receiver.attempts if k == oid] == [503, 500, 200]
    assert receiver.taken[oid] == {"device": "phone-1", "topic": f"{R}/offer/phone-1", "payload": offer}
    assert receiver.auth == {f"Bearer {TOKEN}"}
    # the code after an apply, keyed apart from its offer; a repeated apply is the same key again
    await mq.publish(f"{R}/action/phone-1", {"offer_id": oid, "action": "apply"})
    code = await mq.next_json(f"{R}/offer/phone-1")
    await until(lambda: f"{oid}:code" in receiver.taken)
    assert receiver.taken[f"{oid}:code"]["payload"] == code
    await mq.publish(f"{R}/action/phone-1", {"offer_id": oid, "action": "apply"})
    assert await mq.next_json(f"{R}/offer/phone-1") == code
    # a notice ({R}/notice/{device})
    from edge_agent.pipeline.effects import Publish

    notice = {"kind": "pickup", "order_id": "o-7", "text": "We are bringing your order"}
    agent.touch().fx.publish.append(Publish(f"{R}/notice/phone-1", notice))
    agent.commit()
    await until(lambda: any(k.startswith("notice:") for k in receiver.taken))
    (nkey,) = [k for k in receiver.taken if k.startswith("notice:")]
    assert receiver.taken[nkey] == {"device": "phone-1", "topic": f"{R}/notice/phone-1", "payload": notice}
    await until(lambda: agent.store.delivery.pending() == 0)
    assert receiver.duplicates <= 1  # only the repeated apply: the same code under the same key (dropped there)
    assert agent.metrics.delivery.get("retry") == 2
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as r:
            assert "edge_delivery_pending 0" in await r.text()


async def test_a_refused_message_is_set_aside_and_requeued(store_factory, agent_factory, mqtt_client, receiver):
    cfg = with_webhook(store_factory(), receiver.url)
    server = await agent_factory(cfg)
    agent = server.agent
    R = cfg.root_topic
    mq = mqtt_client()
    await mq.subscribe(f"{R}/offer/phone-2")
    receiver.script = [400]
    await mq.publish(f"{R}/ping/uwb/phone-2", {"x": 24, "y": 10, "acc": 0.1})
    oid = (await mq.next_json(f"{R}/offer/phone-2"))["offer_id"]
    await until(lambda: agent.store.delivery.aside_count() == 1)
    assert agent.store.delivery.pending() == 0 and oid not in receiver.taken
    assert agent.metrics.delivery.get("aside") == 1
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/admin/delivery/requeue") as r:
            assert r.status == 401
        async with http.post(f"{server.url}/v1/admin/delivery/requeue",
                             headers={"Authorization": "Bearer admin-secret"}) as r:
            assert (await r.json()) == {"requeued": 1}
    await until(lambda: oid in receiver.taken)
    assert agent.store.delivery.aside_count() == 0


async def test_nothing_is_lost_across_a_restart_and_no_raw_id_is_at_rest(store_factory, agent_factory, mqtt_client,
                                                                        receiver):
    cfg = with_webhook(store_factory(), receiver.url)
    server = await agent_factory(cfg)
    R = cfg.root_topic
    mq = mqtt_client()
    await mq.subscribe(f"{R}/offer/+")
    receiver.default = 503
    device = "phone-very-raw-id-42"
    await mq.publish(f"{R}/ping/uwb/{device}", {"x": 12, "y": 7, "acc": 0.1})
    oid = (await mq.next_json(f"{R}/offer/+"))["offer_id"]
    await until(lambda: any(k == oid for k, _ in receiver.attempts))
    # the queue holds a pseudonym and the raw id only encrypted (the offer ledger is the privacy helper's)
    rows = server.agent.ledger.conn.execute("SELECT * FROM delivery").fetchall()
    assert len(rows) == 1 and server.agent.pseudonym(device) in rows[0]
    assert not any(device.encode() in (c if isinstance(c, bytes) else str(c).encode()) for c in rows[0])
    await server.stop()
    receiver.default = 200
    await agent_factory(cfg)
    await until(lambda: oid in receiver.taken)
    assert receiver.taken[oid]["device"] == device


async def test_kill_9_in_between_loses_nothing_and_sends_no_duplicate(tmp_path, mosquitto, mqtt_client, receiver):
    """A real `edge-agent run` killed with SIGKILL while the webhook is down; after a restart each offer arrives once."""
    port = free_port()
    path = write_store(tmp_path, broker_url=mosquitto.url, toml_extra=f"""
        [delivery]
        webhook_url = "{receiver.url}"
        retry_s = 0.05
        """)
    path.write_text(path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
    cfg = load_store(path)
    R = cfg.root_topic
    proc = await start_agent_process(path, port, tmp_path / "agent.log")
    mq = mqtt_client()
    await mq.subscribe(f"{R}/offer/+")
    receiver.default = 503
    ids = []
    for i, (x, y) in enumerate([(12, 7), (24, 10)]):
        await mq.publish(f"{R}/ping/uwb/k9-{i}", {"x": x, "y": y, "acc": 0.1})
        ids.append((await mq.next_json(f"{R}/offer/+"))["offer_id"])
    await until(lambda: {k for k, _ in receiver.attempts} >= set(ids))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    receiver.default = 200
    proc = await start_agent_process(path, port, tmp_path / "agent.log")
    try:
        await until(lambda: set(receiver.taken) >= set(ids))
    finally:
        proc.terminate()
        proc.wait(20)
    assert receiver.duplicates == 0
    assert {receiver.taken[i]["device"] for i in ids} == {"k9-0", "k9-1"}
    assert json.dumps(receiver.taken[ids[0]]["payload"]).startswith("{")
