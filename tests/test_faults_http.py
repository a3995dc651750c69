"""Fault injection, HTTP: slow and partial bodies, and half-open sockets at
the process's file limit.  A slow body is read whole; a partial one (the
client gave up) stores nothing; idle sockets are closed at the header
deadline, so the agent answers again and its log does not flood."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from store_config import load_store

from .conftest import write_store
from .hardening_kit import IN_AISLE, TOML
from .test_hardening import offer_for, raw_post

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent


async def _session(url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/shop/session") as r:
            return await r.json()


async def test_a_slow_body_is_read_whole_and_a_partial_one_stores_nothing(tmp_path, mosquitto, agent_factory,
                                                                          mqtt_client):
    cfg = load_store(write_store(tmp_path, broker_url=mosquitto.url, toml_extra=TOML))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    await phone.subscribe(f"{agent.root}/offer/+")
    s = await _session(server.url)
    auth = {"Authorization": f"Bearer {s['token']}"}
    # Partial: the headers promise 500 bytes, 20 come, then the client goes away.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"POST /v1/ping?device={s['device']}&source=uwb HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {s['token']}\r\nContent-Length: 500\r\n\r\n".encode()
                 + json.dumps(IN_AISLE).encode()[:20])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # Slow: the body in many small writes (each pause is the fault, a slow radio link).
    body = json.dumps({**IN_AISLE, "pad": "s" * 300}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"POST /v1/ping?device={s['device']}&source=uwb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 f"Authorization: Bearer {s['token']}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    for i in range(0, len(body), 40):
        writer.write(body[i:i + 40])
        await writer.drain()
        await asyncio.sleep(0.05)
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"202", answer
    offer = await offer_for(phone, agent.root, s["device"])
    # The partial body changed nothing: exactly one offer, from the slow body.
    assert agent.ledger.conn.execute("SELECT count(*) FROM offers").fetchone()[0] == 1
    assert agent.ledger.get_offer(offer["offer_id"]) is not None
    status, _ = await raw_post(server.port, f"/v1/ping?device={s['device']}", b'{"x": 1, "y"', auth)
    assert status == 400  # a body that ends short of its JSON: malformed (its dead letter, 400), not a hang


def _limit_files(n: int):
    def fn() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return fn


async def test_half_open_sockets_at_the_file_limit_are_shed_and_the_agent_serves_again(tmp_path, mosquitto,
                                                                                        mqtt_client):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    http_port = port.getsockname()[1]
    port.close()
    config = write_store(tmp_path, broker_url=mosquitto.url, toml_extra=TOML)
    text = config.read_text().replace('listen = "127.0.0.1:0"',
                                      f'listen = "127.0.0.1:{http_port}"\nheader_timeout_s = 1')
    config.write_text(text)
    cfg = load_store(config)
    R = cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    log = open(tmp_path / "agent.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_files(256))
    url = f"http://127.0.0.1:{http_port}"
    socks: list[socket.socket] = []
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> None:
                while True:
                    try:
                        async with http.get(url + "/readyz") as r:
                            if r.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(ready(), 30)
            # 300 connections that never send a byte: more than the agent's 256 descriptors, the rest
            # waiting in the listen backlog (128). Not more: a SYN the full backlog drops is retried by
            # the kernel after 1, 3, 7, 15, 31 s, which times the kernel, not the agent.
            for _ in range(300):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", http_port))
                except BlockingIOError:
                    pass
                socks.append(s)

            loop = asyncio.get_running_loop()

            async def closed_by_the_agent(s: socket.socket) -> None:
                try:
                    assert await loop.sock_recv(s, 1) == b""  # the agent closed it (it never sends a byte)
                except OSError:
                    pass  # reset: closed too

            async def all_closed_by_the_agent() -> None:
                await asyncio.gather(*(closed_by_the_agent(s) for s in socks))

            # Each idle socket is closed at the header deadline, backlog included.
            await asyncio.wait_for(all_closed_by_the_agent(), 60)
            async with http.get(url + "/healthz") as r:
                assert r.status == 200
            await phone.publish(f"{R}/ping/uwb/after-flood", IN_AISLE, qos=1)
            assert (await phone.next_json(f"{R}/offer/+", timeout=10))["zone"] == "aisle-1"
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(20)
        log.close()
    text = (tmp_path / "agent.log").read_text()
    # "out of system resource" is said once a minute with a count, not for every refused accept.
    assert text.count("Too many open files") <= 2 and text.count("Traceback") == 0, text[-2000:]
