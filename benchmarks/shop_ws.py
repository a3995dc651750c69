"""The shop page at scale: N page WebSockets, each pinging once a second.

Each simulated page makes a session, opens ``/shop/ws`` and sends one ping a
second; every ``--entry-every``-th ping of a page steps out of its fence and
back in, which must produce an offer on that page's socket.  Measured: the
time from sending the entering ping to the offer arriving on the socket
(p50/p99), the pings the agent counted, and the rate-limit drops (expected 0).
The agent runs as its own process (`edge-agent run`, same store as e2e.py).

    python benchmarks/shop_ws.py --pages 1000 --seconds 20

Prints a table and writes benchmarks/results/shop_ws.json.  Needs `mosquitto`.
Not yet measured here: the MQTT path's throughput with these pages running
beside it (run e2e.py at the same time for that figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import free_port, machine, metric_total, scrape, start_agent, start_mosquitto, table, write_json
from e2e import GRID, write_store


async def page(http: aiohttp.ClientSession, base: str, i: int, seconds: float, every: int,
               lat: list[float], start: float) -> None:
    async with http.post(f"{base}/v1/shop/session") as r:
        s = await r.json()
    ws = await http.ws_connect(f"{base}/shop/ws?device={s['device']}&token={s['token']}")
    fx, fy = (i % GRID) * 4.0, ((i // GRID) % GRID) * 4.0
    sent: dict[str, float] = {}
    pending: list[float] = []

    async def reader() -> None:
        async for msg in ws:
            m = json.loads(msg.data)
            if "title" in m and pending:
                lat.append(time.perf_counter() - pending.pop(0))

    task = asyncio.create_task(reader())
    await asyncio.sleep(start)  # spread the pages over the second
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
        if n % every == 1:
            await ws.send_json({"type": "ping", "x": fx + 3.0, "y": fy + 3.0, "acc": 0.3})  # out
            pending.append(time.perf_counter())
            await ws.send_json({"type": "ping", "x": fx + 1.0, "y": fy + 1.0, "acc": 0.3})  # in
        else:
            await ws.send_json({"type": "ping", "x": fx + 1.1, "y": fy + 0.9, "acc": 0.3})
        await asyncio.sleep(max(0.0, t0 + n - time.perf_counter()))
    del sent
    await ws.close()
    task.cancel()


async def run(base: str, pages: int, seconds: float, every: int) -> list[float]:
    lat: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        await asyncio.gather(*(page(http, base, i, seconds, every, lat, i / pages) for i in range(pages)))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--entry-every", type=int, default=5, help="every N-th ping of a page is a fresh entry")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    broker, port = start_mosquitto(work)
    http_port = free_port()
    cfg = write_store(work, port, http_port, "BSHOP")
    cfg.write_text(cfg.read_text().replace("[http]\n", "[http]\nping_rate = 50\naddress_rate = 100000\n"))
    agent = start_agent(cfg, http_port)
    try:
        lat = asyncio.run(run(f"http://127.0.0.1:{http_port}", args.pages, args.seconds, args.entry_every))
        m = scrape(http_port)
    finally:
        agent.terminate()
        agent.wait(30)
        broker.terminate()
        shutil.rmtree(work, ignore_errors=True)
    lat.sort()
    q = (lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2)) if lat else (lambda p: None)
    res = {"pages": args.pages, "seconds": args.seconds, "offers": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99),
           "pings": metric_total(m, "edge_pings_total"), "limited": metric_total(m, "edge_http_limited_total"),
           "machine": machine()}
    print(table(["pages", "offers", "p50 ms", "p99 ms", "pings", "limited"],
                [[res["pages"], res["offers"], res["p50_ms"], res["p99_ms"], res["pings"], res["limited"]]]))
    write_json("shop_ws", res, args.out)


if __name__ == "__main__":
    main()
