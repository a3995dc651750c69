"""`edge-agent demo`: an embedded broker, the sample store, simulated shoppers.

Everything runs in one process with no set-up.  The shoppers are plain MQTT
clients publishing pings exactly as phones do; the agent answers them over
the same broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from store_config import load_store, sample_path

from .embedded import EmbeddedBroker, free_port
from .runner import Server

log = logging.getLogger("edge_agent.demo")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Shopper:
    """A shopper walking from the entrance through a few fences and out again."""

    def __init__(self, device: str, route: list[tuple[float, float]], speed: float, start: float):
        self.device = device
        self.route = route
        self.speed = speed
        self.start = start
        self.leg = 0
        self.pos = route[0]
        self.pause_until = start

    def advance(self, now: float, dt: float) -> tuple[float, float] | None:
        if now < self.start:
            return None
        if self.leg >= len(self.route) - 1:
            return None
        if now < self.pause_until:
            return self.pos
        tx, ty = self.route[self.leg + 1]
        x, y = self.pos
        d = math.hypot(tx - x, ty - y)
        step = self.speed * dt
        if d <= step:
            self.pos = (tx, ty)
            self.leg += 1
            self.pause_until = now + random.uniform(3, 10)  # browse a while
        else:
            self.pos = (x + (tx - x) * step / d, y + (ty - y) * step / d)
        return self.pos


async def run_demo(*, duration: float | None = None, shoppers: int = 6, port: int = 8080) -> int:
    broker = EmbeddedBroker()
    url = await broker.start()
    cfg = load_store(sample_path())
    data = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, url=url), data_dir=data)
    listen = f"127.0.0.1:{port if _port_free(port) else free_port()}"
    server = Server(cfg, listen=listen)

    def show(kind: str, data: dict) -> None:
        t = time.strftime("%H:%M:%S")
        if kind == "transition":
            print(f"{t}  {data['device'][:10]:<10}  {data['event']:<5} {data['zone']}", flush=True)
        elif kind == "offer":
            extra = f"  (out of stock here: go to {data['alternative_zone']})" if data.get("alternative_zone") else ""
            print(f"{t}  {data['device'][:10]:<10}  OFFER {data['promotion_id']}: {data['title']}{extra}", flush=True)
        elif kind == "alert":
            print(f"{t}  ASSOCIATES  ALERT {data.get('kind')}: {data.get('text')}", flush=True)

    server.agent.listeners.append(show)
    await server.start()
    await asyncio.wait_for(server.agent.mqtt.subscribed.wait(), 10)
    print(f"""
edge-agent demo — store {cfg.store_id} ({cfg.name}), embedded broker at {url}
  metrics:           {server.url}/metrics
  health:            {server.url}/readyz
  associates' page:  {server.url}/associates?token={cfg.associates.token or ''}
  MQTT:              mosquitto_sub -h 127.0.0.1 -p {broker.port} -t 'store/{cfg.store_id}/#' -v
{shoppers} simulated shoppers are walking in; transitions and offers follow. Ctrl-C to stop.
""", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    walker = asyncio.create_task(_walk(cfg, broker.port, shoppers, stop))
    try:
        if duration:
            await asyncio.wait_for(stop.wait(), duration)
        else:
            await stop.wait()
    except asyncio.TimeoutError:
        pass
    stop.set()
    await walker
    m = server.agent.metrics
    print(f"\nstopping: {int(sum(m.pings.values.values()))} pings, "
          f"{int(sum(m.transitions.values.values()))} transitions, "
          f"{int(m.decisions.get('offered', 'offered') + m.decisions.get('offered', 'alternative_zone'))} offers",
          flush=True)
    await server.stop()
    await broker.stop()
    return 0


async def _walk(cfg, port: int, n: int, stop: asyncio.Event) -> None:
    rng = random.Random(42)
    fences = [f for f in cfg.fences if f.kind not in ("staff_only", "entrance", "checkout")]
    entrance = next((f for f in cfg.fences if f.kind == "entrance"), None)
    door = entrance.geometry.representative_point() if entrance else None
    start_xy = (door.x, door.y) if door else (0.0, 0.0)
    known = list(cfg.profiles)[:3]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-shoppers-{free_port()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        people: list[Shopper] = []
        t0 = time.monotonic()
        for i in range(n):
            stops = rng.sample(fences, k=min(len(fences), rng.randint(3, 5)))
            route = [start_xy] + [(p.x, p.y) for p in (f.geometry.representative_point() for f in stops)] + [start_xy]
            device = known[i] if i < len(known) else f"demo-phone-{i + 1}"
            people.append(Shopper(device, route, rng.uniform(0.8, 1.4), t0 + i * 4.0))
        while not stop.is_set():
            now = time.monotonic()
            for s in people:
                pos = s.advance(now, 0.5)
                if pos is not None:
                    payload = json.dumps({"x": round(pos[0], 2), "y": round(pos[1], 2), "acc": 0.5})
                    client.publish(f"{cfg.root_topic}/ping/uwb/{s.device}", payload, qos=0)
                elif s.leg >= len(s.route) - 1:  # done: a new shopper takes the slot
                    stops = rng.sample(fences, k=min(len(fences), rng.randint(3, 5)))
                    s.route = [start_xy] + [(p.x, p.y) for p in (f.geometry.representative_point() for f in stops)] + [start_xy]
                    s.leg, s.pos, s.start = 0, start_xy, now + rng.uniform(2, 8)
                    s.device = f"demo-phone-{rng.randint(100, 999)}"
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
    finally:
        client.loop_stop()
        client.disconnect()
