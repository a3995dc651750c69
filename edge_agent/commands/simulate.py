"""`edge-agent simulate`: start what the simulator needs, then hand it the broker.

Self-contained (default): a broker started for the run — Mosquitto (the
production broker) when it is installed, else the embedded amqtt; or
``--broker URL`` — and an agent on the given store with ``[tracking] clock = "ping"`` (simulated time
runs faster than real time) and ``publish_events = true``, its data in a
temporary directory (with a pseudonym key derived from the seed, so holdout
groups are the same on every run), no central sync.  ``--attach`` drives the
agent already serving the config's broker instead.

``--crowd`` replaces the shoppers with a rush at the tills
(``simulator/crowd.py``) and runs paced (``--speed`` 10 unless given);
``[floor] publish_s`` is divided by the speed, so ``{R}/floor`` comes as
often in simulated time as it would in the store.

``--compare-fusion`` runs the same shoppers twice, first with the
single-fix rule (``[tracking] fusion = false``, its report in
``OUT/single-fix/``), then with the fused tracker; the main report carries
both side by side.

The simulator itself (``simulator/``) never imports this package: it talks
to the agent over MQTT only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

log = logging.getLogger("edge_agent.commands.simulate")


def _sim_config(cfg, *, broker_url: str, data_dir: Path, keep_auth: bool, fusion: bool | None = None,
                speed: float = 0.0):
    mqtt = replace(cfg.mqtt, url=broker_url, client_id=f"edge-agent-{cfg.store_id}-sim-{secrets.token_hex(3)}")
    if not keep_auth:
        mqtt = replace(mqtt, username=None, password=None, tls_ca=None, tls_cert=None, tls_key=None)
    return replace(
        cfg,
        mqtt=mqtt,
        data_dir=data_dir,
        tracking=replace(cfg.tracking, clock="ping", publish_events=True,
                         fusion=cfg.tracking.fusion if fusion is None else fusion),
        sync=replace(cfg.sync, central_url=None, mqtt_url=None),  # simulated events never leave the box
        http=replace(cfg.http, listen="127.0.0.1:0", tls_cert=None, tls_key=None),
        # {R}/floor's pace is wall-clock: at --speed S it would come S times rarer in simulated time
        floor=replace(cfg.floor, publish_s=cfg.floor.publish_s / speed) if speed > 0 else cfg.floor,
    )


async def _start_broker(args: argparse.Namespace):
    """``(broker or None, url, name)`` for a self-contained run."""
    from edge_agent.transport.embedded import EmbeddedBroker, run_broker

    if args.broker is not None:
        return None, args.broker, "external"
    broker = run_broker()
    try:
        url = await broker.start()
    except (OSError, RuntimeError) as exc:  # a Mosquitto that will not start: the embedded one still serves
        log.warning("%s; using the embedded broker", exc)
        broker = EmbeddedBroker()
        url = await broker.start()
    return broker, url, broker.name


async def _one_run(cfg, args: argparse.Namespace, out: Path, url: str, broker_name: str, *,
                   fusion: bool | None = None, baseline: dict | None = None) -> dict:
    from simulator.run import simulate

    from edge_agent.runner import Server

    data = Path(tempfile.mkdtemp(prefix="edge-sim-"))
    # a seed-derived pseudonym key: the agent's holdout groups then repeat run to run
    (data / "pseudonym.key").write_bytes(hashlib.sha256(f"edge-sim:{args.seed}".encode()).digest())
    server = None
    try:
        sim_cfg = _sim_config(cfg, broker_url=url, data_dir=data, keep_auth=args.broker is not None, fusion=fusion,
                              speed=args.speed)
        server = Server(sim_cfg, listen="127.0.0.1:0")
        await server.start()
        await asyncio.wait_for(server.agent.mqtt.subscribed.wait(), 15)
        return await asyncio.to_thread(
            simulate, sim_cfg, url, shoppers=args.shoppers, duration=args.duration, seed=args.seed, tech=args.tech,
            out=out, speed=args.speed, mac_randomisation=args.mac_randomisation, progress=not args.no_progress,
            mode="broker" if args.broker else "embedded", now=time.time(),
            username=sim_cfg.mqtt.username, password=sim_cfg.mqtt.password, tls_ca=sim_cfg.mqtt.tls_ca,
            broker=broker_name, baseline=baseline, crowd=getattr(args, "crowd", False))
    finally:
        if server is not None:
            await server.stop()
        shutil.rmtree(data, ignore_errors=True)


async def _self_contained(cfg, args: argparse.Namespace, out: Path) -> dict:
    if getattr(args, "log_level", "info") == "info":
        logging.getLogger("amqtt").setLevel(logging.ERROR)  # its shutdown chatter is not the report
    broker, url, name = await _start_broker(args)
    try:
        if not getattr(args, "compare_fusion", False):
            return await _one_run(cfg, args, out, url, name)
        single = await _one_run(cfg, args, out / "single-fix", url, name, fusion=False)
        return await _one_run(cfg, args, out, url, name, fusion=True, baseline=single)
    finally:
        if broker is not None:
            await broker.stop()


def run_simulate(cfg, args: argparse.Namespace) -> int:
    """Simulate over ``cfg`` (the store the CLI loaded from ``--config``) with the CLI's options."""
    from simulator.crowd import CROWD_SPEED
    from simulator.drive import DriveError
    from simulator.run import simulate

    out = Path(args.out)
    crowd = getattr(args, "crowd", False)
    if args.speed is None:
        args.speed = CROWD_SPEED if crowd else 0.0
    if crowd and args.speed == 0:
        print("--crowd needs --speed > 0 (default 10): the agent decides crowding and queues once a wall-clock "
              "second, so an unpaced run would skip past them", file=sys.stderr)
        return 2
    if args.shoppers < 0 or args.duration <= 0 or args.speed < 0:
        print("--shoppers must be ≥ 0, --duration > 0 and --speed ≥ 0", file=sys.stderr)
        return 2
    if getattr(args, "log_level", "info") == "info":
        # keep the progress bar readable: the agent's and broker's routine logs are not the report
        logging.getLogger().setLevel(logging.WARNING)
    try:
        if args.attach:
            if getattr(args, "compare_fusion", False):
                print("--compare-fusion needs a self-contained run (it starts the agent twice); drop --attach",
                      file=sys.stderr)
                return 2
            if cfg.mqtt.url is None:
                print("--attach needs [mqtt] url in the config (the broker the running agent uses)",
                      file=sys.stderr)
                return 2
            m = cfg.mqtt
            report = simulate(cfg, m.url, shoppers=args.shoppers, duration=args.duration, seed=args.seed,
                              tech=args.tech, out=out, speed=args.speed, mac_randomisation=args.mac_randomisation,
                              progress=not args.no_progress, mode="attach", now=time.time(),
                              username=m.username, password=m.password, tls_ca=m.tls_ca, crowd=crowd)
        else:
            report = asyncio.run(_self_contained(cfg, args, out))
    except DriveError as exc:
        print(f"simulation failed: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"simulation refused: {exc}", file=sys.stderr)
        return 2
    t = report["totals"]
    lat = report["latency_ms"]
    print(f"{report['tech']}: {report['shoppers']} shoppers, {t['pings']} pings, {t['true_visits']} true visits, "
          f"{t['offers']} offers; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    if "compare" in report:
        worse = report["compare"]["worse"]
        print(f"  fused tracker vs single-fix rule: {len(worse)} zone(s) worse"
              + (f" ({', '.join(w['zone'] for w in worse)})" if worse else "")
              + f"; single-fix report in {out / 'single-fix'}")
    print(f"  broker: {report['broker']}")
    for a in report.get("floor", {}).get("advice", ()):
        print(f"  {a['text']}")
    for a in report["advice"]:
        if a["verdict"] in ("will fail", "fails", "false entries"):
            print(f"  {a['zone']}: {a['verdict']}")
    print(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'map.png'}")
    return 0
