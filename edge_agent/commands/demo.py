"""`edge-agent demo`: an embedded broker, the sample store, simulated shoppers.

Everything runs in one process with no set-up.  The shoppers are the
simulator's (walking the aisles, stopping at sections and displays), replayed
at 3x real time by a plain MQTT client publishing pings exactly as phones do;
the agent answers them over the same broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from store_config import load_store, sample_path

from edge_agent.transport.embedded import EmbeddedBroker, free_port
from edge_agent.runner import Server

log = logging.getLogger("edge_agent.commands.demo")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


async def run_demo(*, duration: float | None = None, shoppers: int = 6, port: int = 8080,
                   log_file: Path | None = None) -> int:
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
    till = DemoTill(server.agent)
    server.agent.listeners.append(till.on_notice)
    await server.start()
    await asyncio.wait_for(server.agent.mqtt.subscribed.wait(), 10)
    print(f"""
edge-agent demo — store {cfg.store_id} ({cfg.name}), embedded broker at {url}
  metrics:           {server.url}/metrics
  health:            {server.url}/readyz
  associates' page:  {server.url}/associates?token={cfg.associates.token or ''}
  watch MQTT:        .venv/bin/edge-agent watch --broker {url} --store {cfg.store_id}
  your own phone:    .venv/bin/edge-agent ping --broker {url} --store {cfg.store_id} --device my-phone --x 6 --y 10
  logs:              {log_file or "this terminal"}
{shoppers} simulated shoppers are walking in; transitions and offers follow. Ctrl-C to stop.
""", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    walker = asyncio.create_task(_walk(cfg, broker.port, shoppers, stop, on_leave=till.leave))
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
    till.print_report()
    await server.stop()
    await broker.stop()
    return 0


class DemoTill:
    """The demo's checkout: a shopper who leaves buys some of the promoted
    skus — an offered one more often (35 %) than anything else (12 %) — so
    the campaign report at the end has treated and control conversions."""

    def __init__(self, agent, seed: int = 7):
        self.agent = agent
        self.offered: dict[str, set[str]] = {}  # device pseudonym -> offered skus
        self.rng = np.random.default_rng(seed)

    def on_notice(self, kind: str, data: dict) -> None:
        if kind == "offer" and data.get("sku"):
            self.offered.setdefault(data["device"], set()).add(data["sku"])

    def leave(self, device: str) -> None:
        from edge_agent.http.pos import purchase

        agent = self.agent
        got = self.offered.get(agent.pseudonym(device), set())
        skus = sorted({s for p in agent.cfg.promotions for s in p.skus
                       if self.rng.random() < (0.35 if s in got else 0.12)})
        if skus:
            purchase(agent, {"device": device, "skus": skus, "basket_total": round(float(self.rng.uniform(5, 80)), 2),
                             "currency": "CZK"})

    def print_report(self) -> None:
        from .report import build_report, format_markdown

        agent = self.agent
        rep = build_report(agent.ledger.conn, since=None, until=agent.clock(), tz=agent.rt.tz,
                           promotions=agent.cfg.promotions)
        rep["promotions"] = {k: v for k, v in rep["promotions"].items()
                             if any(c["offered"] or c["holdout"] for c in v["variants"].values())}
        print("\n" + format_markdown(rep), flush=True)


async def _walk(cfg, port: int, n: int, stop: asyncio.Event, *, pace: float = 3.0, on_leave=None) -> None:
    """Replay the simulator's shoppers (walking the aisles, never through
    shelves, stopping at sections and displays) at ``pace`` x real time, in
    rounds; the first shoppers of the first round are the sample profiles'
    devices, so VIP alerts and loyalty offers show too."""
    from simulator.shoppers import make_shoppers
    from simulator.space import build_space

    space = await asyncio.to_thread(build_space, cfg)
    known = list(cfg.profiles)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-shoppers-{free_port()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        round_no = 0
        while not stop.is_set():
            round_s = max(240.0, 40.0 * n)  # simulated seconds per round
            people = make_shoppers(cfg, space, n=n, duration=round_s, seed=round_no + 1)
            ids = [known[i] if round_no == 0 and i < len(known) else f"demo-phone-{round_no}-{i + 1}"
                   for i in range(len(people))]
            t0 = time.monotonic()
            gone: set[str] = set()
            while not stop.is_set():
                sim_t = (time.monotonic() - t0) * pace
                active = 0
                for shopper, device in zip(people, ids):
                    if shopper.arrive <= sim_t <= shopper.leave:
                        active += 1
                        x, y = shopper.position(np.array([sim_t]))
                        payload = json.dumps({"x": round(float(x[0]), 2), "y": round(float(y[0]), 2), "acc": 0.5})
                        client.publish(f"{cfg.root_topic}/ping/uwb/{device}", payload, qos=0)
                    elif sim_t > shopper.leave and device not in gone:
                        gone.add(device)
                        if on_leave is not None:
                            try:
                                on_leave(device)  # at the till on the way out
                            except Exception:
                                log.exception("demo purchase failed")
                if sim_t > max(p.leave for p in people) and not active:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
            round_no += 1
    finally:
        client.loop_stop()
        client.disconnect()
