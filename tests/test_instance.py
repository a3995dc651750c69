"""One agent per data dir (issue 18): a second `edge-agent run` on the same
config stops at once with one line and exit status 2, before it touches the
broker, and the live agent never goes offline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store_config import load_store

from .conftest import free_port, write_store

@pytest.mark.broker
async def test_a_second_agent_on_one_data_dir_exits_2_and_the_first_stays_online(
        tmp_path, mosquitto, agent_factory, mqtt_client):
    path = write_store(tmp_path, broker_url=mosquitto.url)
    cfg = load_store(path)
    await agent_factory(cfg)
    watcher = mqtt_client()
    status = await watcher.subscribe(f"{cfg.root_topic}/status")
    assert (await watcher.next(f"{cfg.root_topic}/status")).payload == b"online"  # retained
    second = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "already serving data dir" in lines[0] and "Traceback" not in second.stderr
    # The first agent still answers, and nobody announced it offline.
    offers = await watcher.subscribe(f"{cfg.root_topic}/offer/p1")
    await watcher.publish(f"{cfg.root_topic}/ping/uwb/p1", {"x": 12, "y": 7, "acc": 0.5})
    assert (await watcher.next_json(f"{cfg.root_topic}/offer/p1"))["zone"] == "produce"
    assert offers.empty() and all(m.payload == b"online" for m in watcher.all if m.topic.endswith("/status"))
    assert status.empty()


def test_a_taken_http_port_is_one_line_and_exit_2(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = write_store(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}")
        text = path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        path.write_text(text)
        r = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "mqtt://127.0.0.1:abc", "127.0.0.1:1883"])
def test_a_bad_broker_override_is_one_line_and_exit_2(tmp_path, url):
    """`run --broker URL` overrides [mqtt] url: a URL the config would refuse is
    refused the same way (one line naming --broker, exit 2), not a traceback."""
    path = write_store(tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's code
    r = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(path), "--broker", url],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--broker" in r.stderr and url in r.stderr


@pytest.mark.parametrize("section,keys", [("mqtt", ("tls_ca",)), ("http", ("tls_cert", "tls_key"))])
def test_an_unloadable_tls_file_is_one_line_naming_key_and_file(tmp_path, section, keys):
    """operations.md: unreadable TLS files are one line and exit 2; at 3 a.m. the
    line must say which setting and which file, not only OpenSSL's 'PEM lib'."""
    broker = f"mqtts://127.0.0.1:{free_port()}" if section == "mqtt" else f"mqtt://127.0.0.1:{free_port()}"
    path = write_store(tmp_path, broker_url=broker)
    (path.parent / "garbage.pem").write_text("not a certificate\n")
    lines = "".join(f'{k} = "garbage.pem"\n' for k in keys)
    text = path.read_text().replace(f"[{section}]\n", f"[{section}]\n{lines}", 1)
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's code
    r = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-agent: ") and f"[{section}] {keys[0]}" in last
    assert str(path.parent / "garbage.pem") in last
