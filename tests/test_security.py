"""Security and lifecycle: TLS + passwords + the sample ACL on a real Mosquitto,
admin tokens, SIGTERM drain, and no raw ids or coordinates in logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from store_config import load_store

from .conftest import TestClient, write_store

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def secure_broker(tmp_path, mosquitto_factory):
    """Mosquitto with TLS on 127.0.0.1, a password file and the repo's sample ACL."""
    certs = tmp_path / "certs"
    certs.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=certs)
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=certs)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.cnf", "-out", "server.crt", cwd=certs)
    passwd = tmp_path / "passwd"
    users = {"edge-agent": "agent-pw", "phone-a": "pw-a", "phone-b": "pw-b", "pos": "pos-pw"}
    passwd.write_text("")
    for user, pw in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    store_id = "SEC1"
    acl = tmp_path / "acl"
    acl.write_text((ROOT / "deploy" / "acl").read_text().replace("S042", store_id))
    listener = textwrap.dedent(f"""\
        per_listener_settings false
        allow_anonymous false
        password_file {passwd}
        acl_file {acl}
        listener {{port}} 127.0.0.1
        certfile {certs}/server.crt
        keyfile {certs}/server.key
        """)
    broker = mosquitto_factory(listener_conf=listener, scheme="mqtts")
    return broker, str(certs / "ca.crt"), store_id, users


async def test_tls_password_and_acl(tmp_path, secure_broker, agent_factory):
    broker, ca, store_id, users = secure_broker
    cfg = load_store(write_store(tmp_path, broker_url=broker.url, store_id=store_id, toml_extra="""
        """))
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, username="edge-agent", password="agent-pw", tls_ca=ca))
    server = await agent_factory(cfg)
    assert server.agent.mqtt.connected.is_set()
    loop = asyncio.get_running_loop()
    R = cfg.root_topic
    a = TestClient(broker.url, loop, client_id="phone-a", username="phone-a", password="pw-a", ca=ca)
    b = TestClient(broker.url, loop, client_id="phone-b", username="phone-b", password="pw-b", ca=ca)
    try:
        await a.subscribe(f"{R}/offer/phone-a")
        await a.subscribe(f"{R}/offer/phone-b")  # allowed to subscribe, never delivered (ACL)
        await b.subscribe(f"{R}/offer/phone-b")
        # phone-a forges a ping as phone-b: the broker drops it.
        await a.publish(f"{R}/ping/uwb/phone-b", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=1)
        # phone-b's own ping gets phone-b an offer...
        await b.publish(f"{R}/ping/uwb/phone-b", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=1)
        offer_b = await b.next_json(f"{R}/offer/phone-b")
        assert offer_b["zone"] == "aisle-1"
        # ...then phone-a's own one; once it arrives, phone-a has seen nothing of phone-b.
        await a.publish(f"{R}/ping/uwb/phone-a", {"x": 24.0, "y": 10.0, "acc": 0.5}, qos=1)
        assert (await a.next_json(f"{R}/offer/phone-a"))["zone"] == "aisle-1"
        assert a.queues[f"{R}/offer/phone-b"].empty()
        assert server.agent.metrics.pings.get("uwb") == 2  # the forged ping never reached the agent
    finally:
        a.close()
        b.close()
    # A wrong password is refused: the agent stays disconnected and says so.
    # (its own data dir: one agent per data dir, and the first one is still running)
    bad = replace(cfg, mqtt=replace(cfg.mqtt, password="wrong", client_id="edge-agent-bad"), data_dir=tmp_path / "bad")
    from edge_agent.service import Agent

    agent = Agent(bad)
    with pytest.raises(RuntimeError):
        TestClient(broker.url, loop, username="phone-a", password="nope", ca=ca)
    await agent.start()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(agent.mqtt.connected.wait(), 1.5)
    finally:
        await agent.stop()


async def test_admin_endpoints_need_the_token(store_factory, agent_factory):
    server = await agent_factory(store_factory())
    async with aiohttp.ClientSession() as http:
        for method, path in (("POST", "/v1/admin/reload"), ("DELETE", "/v1/admin/devices/x"),
                             ("GET", "/v1/admin/audit")):
            async with http.request(method, server.url + path) as r:
                assert r.status == 401, path
            async with http.request(method, server.url + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
        async with http.delete(server.url + "/v1/admin/devices/x",
                               headers={"Authorization": "Bearer admin-secret"}) as r:
            assert r.status == 200


async def _read_until(proc_stream, needle: bytes, timeout: float) -> bytes:
    buf = b""

    async def read():
        nonlocal buf
        while needle not in buf:
            chunk = await proc_stream.read(4096)
            if not chunk:
                break
            buf += chunk

    await asyncio.wait_for(read(), timeout)
    return buf


async def test_sigterm_drains_publishes_offline_and_logs_no_raw_ids(tmp_path, mosquitto, mqtt_client):
    path = write_store(tmp_path, broker_url=mosquitto.url, toml_extra="""
        [tracking]
        publish_events = true
    """)
    cfg = load_store(path)
    R = cfg.root_topic
    phone = mqtt_client()
    await phone.subscribe(f"{R}/status")
    await phone.subscribe(f"{R}/offer/+")
    await phone.subscribe(f"{R}/deadletter")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", "--log-level", "debug", "run", "--config", str(path),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env)
    try:
        while (await phone.next(f"{R}/status", timeout=15)).payload != b"online":
            pass
        secret_id = "aa:bb:cc:dd:ee:ff-secret-device"
        await phone.publish(f"{R}/ping/uwb/{secret_id}", {"x": 24.125, "y": 10.375, "acc": 0.5})
        offer = await phone.next_json(f"{R}/offer/+")
        await phone.publish(f"{R}/action/{secret_id}", {"offer_id": offer["offer_id"], "action": "apply"})
        await phone.publish(f"{R}/consent/{secret_id}", {"tracking": False})
        await phone.publish(f"{R}/ping/uwb/{secret_id}", b'{"x": 24.125, "y": "10.375"', qos=1)
        await phone.next(f"{R}/deadletter")
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
        assert rc == 0
        status = await phone.next(f"{R}/status")
        assert status.payload == b"offline"
        logs = await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = logs.decode()
    assert "agent stopped" in text
    assert secret_id not in text and "aa:bb:cc" not in text
    assert "24.125" not in text and "10.375" not in text
