"""Fixtures: a real Mosquitto per test session (and on demand), a threaded
paho client bridged into asyncio, and small stores written to tmp files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.transport.mqtt import nodelay
from store_config import load_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A real Mosquitto on a free loopback port; ``restart`` keeps the port."""

    def __init__(self, workdir: Path, extra_conf: str = "", *, listener_conf: str | None = None,
                 scheme: str = "mqtt"):
        # $MOSQUITTO names the binary (an empty or missing path: no broker, e.g. to prove the pure suite needs none)
        exe = os.environ.get("MOSQUITTO")
        if exe is None:
            exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        elif not Path(exe).is_file():
            exe = None
        if exe is None:
            raise RuntimeError("mosquitto is not installed: run `make test` (installs it) or "
                               "`apt-get install -y mosquitto`")
        self.exe = exe
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        listener = listener_conf.format(port=self.port) if listener_conf else (
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.conf.write_text(listener + textwrap.dedent(f"""\
            user root
            set_tcp_nodelay true
            persistence true
            persistence_location {workdir}/
            max_queued_messages 100000
            log_dest file {workdir}/mosquitto.log
            """) + extra_conf)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.workdir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.workdir / 'stderr.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)  # polling a port until it accepts: the event itself
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


BROKER_FIXTURES = {"mosquitto", "mosquitto_factory"}


def pytest_collection_modifyitems(config, items):
    """A test that needs Mosquitto (directly or through another fixture) must carry
    the ``broker`` marker, so ``pytest -m "not broker"`` runs with no broker at all."""
    unmarked = [it.nodeid for it in items
                if BROKER_FIXTURES & set(getattr(it, "fixturenames", ())) and it.get_closest_marker("broker") is None]
    if unmarked:
        raise pytest.UsageError("tests that need a broker without @pytest.mark.broker: " + ", ".join(unmarked))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory) -> Mosquitto:
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def mosquitto_factory(tmp_path_factory):
    made: list[Mosquitto] = []

    def make(extra_conf: str = "", **kw) -> Mosquitto:
        m = Mosquitto(tmp_path_factory.mktemp("mosq"), extra_conf, **kw)
        m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


class TestClient:
    """A paho client on its own thread; received messages land in asyncio queues."""

    __test__ = False  # not a test class

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, client_id: str | None = None, *,
                 username: str | None = None, password: str | None = None, ca: str | None = None,
                 clean_session: bool = True):
        scheme, rest = url.split("://")
        host, port = rest.split(":")
        self.loop = loop
        self.queues: dict[str, asyncio.Queue] = {}
        self.all: list[paho.MQTTMessage] = []
        # clean_session=False: a phone's persistent session (QoS 1 messages wait in the broker while it is away)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{free_port()}",
                                  clean_session=clean_session)
        if username:
            self.client.username_pw_set(username, password)
        if scheme == "mqtts":
            self.client.tls_set(ca_certs=ca)
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, sock: nodelay(sock)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: rc.is_failure or self._connected.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._connected.wait(5):
            raise RuntimeError("test client could not connect")

    def _on_message(self, client, userdata, msg) -> None:
        self.loop.call_soon_threadsafe(self._deliver, msg)

    def _deliver(self, msg) -> None:
        self.all.append(msg)
        for flt, q in self.queues.items():
            if paho.topic_matches_sub(flt, msg.topic):
                q.put_nowait(msg)

    async def subscribe(self, flt: str, qos: int = 1) -> asyncio.Queue:
        q = self.queues.setdefault(flt, asyncio.Queue())
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(flt, qos)
        await asyncio.to_thread(done.wait, 5)
        return q

    async def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)

    async def next(self, flt: str, timeout: float = 5.0) -> paho.MQTTMessage:
        return await asyncio.wait_for(self.queues[flt].get(), timeout)

    async def next_json(self, flt: str, timeout: float = 5.0) -> dict:
        return json.loads((await self.next(flt, timeout)).payload)

    def close(self) -> None:
        # disconnect first: it wakes the network thread, which then ends at once; loop_stop
        # first waits out the thread's select (up to 1 s per client)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def mqtt_client(mosquitto):
    clients: list[TestClient] = []

    def make(url: str | None = None, **kw) -> TestClient:
        c = TestClient(url or mosquitto.url, asyncio.get_running_loop(), **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


async def wait_until(cond, interval: float = 0.02) -> None:
    """Wait for a condition on the agent's own state (it has no event for
    these); callers bound it with ``asyncio.wait_for``."""
    while not cond():
        await asyncio.sleep(interval)


# A small store: 30 x 20 m, local frame; an aisle, a section with a hole,
# a display circle, an entrance.
BASE_LAYOUT = {
    "type": "FeatureCollection",
    "frame": "local",
    "features": [
        {"type": "Feature", "properties": {"id": "entrance", "kind": "entrance"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [6, 0], [6, 3], [0, 3], [0, 0]]]}},
        {"type": "Feature", "properties": {"id": "produce", "kind": "section", "category": "fruit",
                                           "skus": ["apple", "pear"], "dwell_s": 5},
         "geometry": {"type": "Polygon", "coordinates": [
             [[10, 5], [20, 5], [20, 15], [10, 15], [10, 5]],
             [[14, 9], [16, 9], [16, 11], [14, 11], [14, 9]]]}},
        {"type": "Feature", "properties": {"id": "aisle-1", "kind": "aisle", "category": "snacks",
                                           "skus": ["chips"]},
         "geometry": {"type": "Polygon", "coordinates": [[[22, 2], [26, 2], [26, 18], [22, 18], [22, 2]]]}},
        {"type": "Feature", "properties": {"id": "coffee-display", "kind": "display", "category": "coffee",
                                           "skus": ["espresso"], "radius_m": 0.9},
         "geometry": {"type": "Point", "coordinates": [5, 12]}},
    ],
}

BASE_PROMOTIONS = [
    {"id": "fruit-week", "title": "Fruit week", "message": "2 for 1 on apples", "zones": ["produce"],
     "skus": ["apple"], "priority": 5, "cooldown_s": 3600},
    {"id": "coffee-tasting", "title": "Coffee tasting", "message": "Free espresso sample",
     "categories": ["coffee"], "cooldown_s": 3600},
    {"id": "chips", "title": "Chips", "message": "Crunchy deal", "skus": ["chips"], "cooldown_s": 3600},
]


def write_store(tmp_path: Path, *, broker_url: str | None, layout=None, promotions=None, profiles=None,
                inventory=None, toml_extra: str = "", store_id: str | None = None,
                anchor=(49.1875, 16.6130, 0.0)) -> Path:
    """Write a store's files under tmp_path and return the store.toml path."""
    store_id = store_id or f"T{free_port()}"
    d = tmp_path / "store"
    d.mkdir(parents=True, exist_ok=True)
    (d / "layout.geojson").write_text(json.dumps(layout or BASE_LAYOUT))
    (d / "promotions.json").write_text(json.dumps(BASE_PROMOTIONS if promotions is None else promotions))
    (d / "profiles.json").write_text(json.dumps(profiles or []))
    (d / "inventory.json").write_text(json.dumps(inventory or {}))
    mqtt = f'url = "{broker_url}"' if broker_url else ""
    (d / "store.toml").write_text(textwrap.dedent(f"""\
        [store]
        id = "{store_id}"
        name = "Test store"
        timezone = "Europe/Prague"
        layout = "layout.geojson"
        promotions = "promotions.json"
        profiles = "profiles.json"
        inventory = "inventory.json"

        [store.anchor]
        lat = {anchor[0]}
        lon = {anchor[1]}
        bearing = {anchor[2]}

        [mqtt]
        {mqtt}

        [http]
        listen = "127.0.0.1:0"
        admin_token = "admin-secret"

        [data]
        dir = "var"
        """) + textwrap.dedent(toml_extra))
    return d / "store.toml"


@pytest.fixture
def store_factory(tmp_path, mosquitto):
    def make(**kw):
        kw.setdefault("broker_url", mosquitto.url)
        return load_store(write_store(tmp_path, **kw))
    return make


@pytest.fixture
async def agent_factory():
    """Start agents (HTTP + MQTT) on a config; stopped at teardown."""
    from edge_agent.runner import Server

    servers: list[Server] = []

    async def make(cfg, **kw) -> Server:
        kw.setdefault("listen", "127.0.0.1:0")
        s = Server(cfg, **kw)
        await s.start()
        await asyncio.wait_for(s.agent.mqtt.subscribed.wait(), 10)
        servers.append(s)
        return s

    yield make
    for s in servers:
        await s.stop()


async def start_agent_process(config: Path, port: int, log: Path) -> subprocess.Popen:
    """`edge-agent run` on ``config`` as a child process (this checkout's code, stderr to ``log``),
    returned once its /readyz on ``port`` answers 200."""
    import aiohttp

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    return r.status == 200
        except aiohttp.ClientError:
            return False

    async def until_ready() -> None:  # a child process has no event to wait on: poll its /readyz
        while not await ready():
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.05)

    await asyncio.wait_for(until_ready(), 60)
    return proc
