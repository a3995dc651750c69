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
import shutil
import signal
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

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


MARKER = ".edge-agent-demo"


def prepare_data_dir(root: Path) -> Path:
    """``root``: a copy of the sample store whose ``[data] dir`` (``root/var``)
    holds the demo's ledger, so ``edge-agent report --config root/store.toml``
    and ``audit`` find it afterwards.  A previous demo's data there is
    replaced; a directory the demo did not make is refused."""
    root = root.resolve()
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise SystemExit(f"edge-agent demo: {root} exists and is not a demo's data dir; give another --data")
    if (root / "var").exists():
        shutil.rmtree(root / "var")
    root.mkdir(parents=True, exist_ok=True)
    for f in sample_path().parent.iterdir():
        if f.is_file():
            shutil.copy(f, root / f.name)
    (root / MARKER).write_text("made by edge-agent demo; removed and rewritten by the next one\n")
    return root / "store.toml"


async def run_demo(*, duration: float | None = None, shoppers: int = 6, port: int = 8080,
                   log_file: Path | None = None, data_root: Path = Path("demo-data")) -> int:
    toml = prepare_data_dir(Path(data_root))
    broker = EmbeddedBroker()
    url = await broker.start()
    cfg = load_store(toml)
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, url=url))
    tz = ZoneInfo(cfg.timezone)
    listen = f"127.0.0.1:{port if _port_free(port) else free_port()}"
    server = Server(cfg, listen=listen)

    def show(kind: str, data: dict) -> None:
        t = datetime.now(tz).strftime("%H:%M:%S")  # store time, as the report and audit show
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
  shop page:         {server.url}/shop  (a shopper without our app: open it on this machine)
  watch MQTT:        .venv/bin/edge-agent watch --broker {url} --store {cfg.store_id}
  your own phone:    .venv/bin/edge-agent ping --broker {url} --store {cfg.store_id} --device my-phone --x 6 --y 10
  logs:              {log_file or "this terminal"}
  data:              {cfg.data_dir} (a copy of the sample store beside it: {toml})
  afterwards:        .venv/bin/edge-agent report --config {toml}
                     .venv/bin/edge-agent audit --config {toml} --limit 20
{shoppers} simulated shoppers are walking in; transitions and offers follow (times are store time,
{cfg.timezone}). Ctrl-C to stop.
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
    chain = await asyncio.to_thread(chain_epilogue, Path(cfg.data_dir).parent / "chain", cfg.promotions)
    print(f"\nthe data stays in {cfg.data_dir}:\n  .venv/bin/edge-agent report --config {toml}\n"
          f"  .venv/bin/edge-agent audit --config {toml} --limit 20\n"
          f"  .venv/bin/edge-agent report --chain {chain}/*.jsonl.gz --promotions {Path(toml).parent}/promotions.json",
          flush=True)
    return 0


def chain_epilogue(folder: Path, promotions, *, stores: int = 12, shoppers: int = 1500) -> Path:
    """A few minutes of one store cannot decide whether a promotion earns money
    (the report above says so); a chain can.  Write what central would
    export from ``stores`` simulated stores (``simulator.exports``: a known
    truth — the chocolate test lifts baskets, the morning bakery offer does
    not) and print the chain report over them.  Returns the folder."""
    from simulator.exports import PromoSpec, StoreSpec, truth, write_export
    from edge_agent.analytics.chain import chain_report
    from edge_agent.analytics.table import format_markdown

    specs = (PromoSpec("snacks-chocolate-test", holdout=0.2, buy_control=0.25, buy_treated=0.3, basket=250.0,
                       lift=1.1),
             PromoSpec("bakery-morning", holdout=0.2, buy_control=0.3, buy_treated=0.3, basket=120.0))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(stores):
        path = folder / f"S{101 + k}.jsonl.gz"
        write_export(path, StoreSpec(f"S{101 + k}", shoppers=shoppers, promos=specs), seed=k)
        paths.append(path)
    ids = {s.id for s in specs}
    report = chain_report(paths, promotions={p.id: p for p in promotions if p.id in ids})
    print(f"\nOne store's few minutes cannot tell (\"not enough data\" above); a chain can. What central "
          f"would export from {stores} simulated stores ({shoppers:,} shoppers each; the truth: the chocolate test "
          f"earns {truth(specs[0]):.0f} per offered shopper before discounts, the bakery offer nothing), "
          f"pooled store by store:", flush=True)
    print("\n" + format_markdown(report, title="Chain campaign report (simulated exports)"), flush=True)
    return folder


class DemoTill:
    """The demo's checkout: most shoppers who leave buy a basket (lognormal,
    around 300 CZK), held out or not; an offered sku goes into it more often
    (35 %) than anything else (12 %) and makes the basket a little bigger, so
    the campaign report at the end has money in both arms and says which
    promotion earned it and how sure we are."""

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
        if skus or self.rng.random() < 0.6:
            basket = 300.0 * float(self.rng.lognormal(0.0, 0.5)) * (1.15 if set(skus) & got else 1.0)
            purchase(agent, {"device": device, "skus": skus or ["bread"], "basket_total": round(basket, 2),
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
        client.disconnect()  # first: it wakes the network thread (else loop_stop waits out a 1 s select)
        client.loop_stop()
