"""Sync under load: does the uplink keep delivering while pings pour in?

    python benchmarks/sync_load.py --rate 25000 --entry-share 0.1 --seconds 12

A private Mosquitto, a minimal central (aiohttp, counts events), the agent
as its own process with `[sync] central_url` set and anonymous tracking on
(so transitions are events too), and the e2e load generator.  Every 2 s it
prints pings processed, `edge_outbox_pending` and events central received.
Writes benchmarks/results/sync_load.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, metric_total, scrape, start_agent, start_mosquitto  # noqa: E402
from e2e import run_load, write_store  # noqa: E402


def central(port: int) -> None:
    from aiohttp import web

    got = {"events": 0, "posts": 0}

    async def events(req: web.Request) -> web.Response:
        body = await req.json()
        got["events"] += len(body["events"])
        got["posts"] += 1
        return web.json_response({"ok": True})

    async def count(req: web.Request) -> web.Response:
        return web.json_response(got)

    async def bundle(req: web.Request) -> web.Response:
        return web.Response(status=304)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/stores/{s}/events", events)
    app.router.add_get("/v1/stores/{s}/bundle", bundle)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def metric(http_port: int, name: str) -> float:
    return metric_total(scrape(http_port), name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=25000.0)
    ap.add_argument("--entry-share", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sync_load.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-syncload-"))
    mosq, port = start_mosquitto(work)
    cport, hport = free_port(), free_port()
    cproc = mp.Process(target=central, args=(cport,), daemon=True)
    cproc.start()
    cfg = write_store(work, port, hport, "SL1")
    cfg.write_text(cfg.read_text() + f'\n[sync]\ncentral_url = "http://127.0.0.1:{cport}"\ninterval_s = 1\n'
                   "\n[privacy]\nanonymous_tracking = true\n")
    samples = []
    agent = start_agent(cfg, hport)
    try:
        stop = threading.Event()
        t0 = time.time()

        def monitor():
            while not stop.is_set():
                got = json.load(urllib.request.urlopen(f"http://127.0.0.1:{cport}/count", timeout=5))
                row = {"t": round(time.time() - t0, 1), "pings": metric(hport, "edge_pings_total"),
                       "pending": metric(hport, "edge_outbox_pending"), "central_events": got["events"]}
                samples.append(row)
                print(f"t={row['t']:5.1f}s  pings {row['pings']:>9.0f}  outbox pending {row['pending']:>7.0f}  "
                      f"central got {row['central_events']:>8}", flush=True)
                stop.wait(2)

        th = threading.Thread(target=monitor)
        th.start()
        run_load(port, "SL1", args.rate, args.seconds, 2, 4000, args.entry_share)
        end = time.monotonic() + 15
        while time.monotonic() < end and (not samples or samples[-1]["pending"] > 0):
            time.sleep(0.5)
        stop.set()
        th.join()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        cproc.terminate()
        mosq.terminate()
        mosq.wait()
    peak = max((s["pending"] for s in samples), default=0)
    print(f"peak outbox pending {peak:.0f}; central received {samples[-1]['central_events'] if samples else 0} events")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "samples": samples,
                                          "peak_pending": peak}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
