"""Black Friday, all at once: every path of one store together, against a real `edge-agent run` (issue 24).

One agent (its own process, e2e's 400-fence store plus a click-and-collect
zone, ``[ingest] stages = true``) on a private Mosquitto, with its uplink to a
second Mosquitto standing in for central (``[sync] transport = "mqtt"``).
Together for ``--seconds``:

* **pings**: e2e's load generator at ``--rate`` pings/s (2 processes, 4,000
  devices, one ping in 50 a fresh entry that gets an offer); ping → offer
  timed by e2e's listener;
* **shop**: ``--pages`` shop-page WebSockets (``/shop/ws``), each pinging once
  a second, every 5th ping a fresh entry; entering ping → offer on the socket;
* **till**: ``POST /v1/pos/redeem`` at ``--till-rate``/s, open loop, with codes
  made the way phones make them (pos_load.py's till and plan);
* **associates**: the associates' page's WebSocket (``/associates/ws``);
  ``--orders`` pickup orders arrive spread over the run (pickup.py's
  arrivals); entering ping → ``pickup_arrival`` alert on the page;
* **sync**: every event the agent commits goes to central's broker; event
  ``ts`` → receipt by a subscriber there;
* **reload**: at half time the promotions file changes and ``POST
  /v1/admin/reload`` swaps it in; its answer time, and the offers whose
  entering ping fell within a second of it.

Before that, ``--solo`` seconds each of the pings alone, of nothing (the
agent's own ticks) and of the till alone
give the agent's CPU per ping and per redeem on their own; the agent's and
the brokers' CPU comes from ``/proc`` (CPU time holds when wall time does
not: every generator competes for the same cores).  ``4-core`` says what a
4-core gateway has left: 4 minus the agent and the store's broker (the load
generators and central live elsewhere), and what the agent's one loop thread
has left of its core.

    python benchmarks/black_friday.py                       # ~60 s: --seconds 30 --solo 4
    python benchmarks/black_friday.py --seconds 60 --rate 5000 --pages 300 --till-rate 50

Prints the table and writes benchmarks/results/black_friday.json.  Needs `mosquitto`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _common import (RESULTS, free_port, listen_until, machine, metric_total, scrape, start_agent, start_mosquitto,
                     table, write_json)
from e2e import GRID, agent_cpu_s, offer_listener, pair_latencies, percentile, run_load, stage_figures, write_store
from pickup import ZONE, _client
from pos_load import TOKEN, code_maker, plan_requests, till

STORE = "BF"
ADMIN = "bench-admin"
ASSOC = "bench-associates"


def bf_store(work: Path, port: int, http_port: int, central_port: int) -> Path:
    """e2e's store + a pickup zone, the till's and the associates' tokens, the shop's
    limits opened for one address, the uplink to central's broker, stages on."""
    cfg = write_store(work, port, http_port, STORE, stages=True)
    layout = json.loads((work / "layout.geojson").read_text())
    x, y, w, h = ZONE["x"], ZONE["y"], ZONE["w"], ZONE["h"]
    layout["features"].append({"type": "Feature", "properties": {"id": "pickup", "kind": "entrance"},
                               "geometry": {"type": "Polygon", "coordinates": [
                                   [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]}})
    (work / "layout.geojson").write_text(json.dumps(layout))
    text = cfg.read_text().replace(
        "[http]\n", f'[http]\nadmin_token = "{ADMIN}"\nping_rate = 50\naddress_rate = 100000\n')
    text += (f'[pos]\ntoken = "{TOKEN}"\n[associates]\ntoken = "{ASSOC}"\n'
             f'[sync]\ntransport = "mqtt"\nmqtt_url = "mqtt://127.0.0.1:{central_port}"\ninterval_s = 1\n')
    cfg.write_text(text)
    return cfg


def http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict, float]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        payload = json.loads(r.read() or b"{}")
        return r.status, payload, (time.perf_counter() - t0) * 1000


# -- central: a subscriber on the second broker


def central(port: int, ready, stop, out: mp.Queue) -> None:
    got: list[tuple[float, float, str]] = []  # (arrival, event ts, kind)
    c = _client(port, "central")

    def on_message(cl, u, m):
        t = time.time()
        try:
            ev = json.loads(m.payload)
            got.append((t, float(ev["ts"]), str(ev.get("kind"))))
        except (ValueError, KeyError, TypeError):
            pass

    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"central/{STORE}/events/#", 1)
    c.on_subscribe = lambda *a: ready.set()
    listen_until(c, port, stop)
    out.put(got)


# -- the shop's pages and the associates' page, in one asyncio process


def web_clients(http_port: int, pages: int, seconds: float, ready, go, out: mp.Queue) -> None:
    import aiohttp

    base = f"http://127.0.0.1:{http_port}"
    shop_lat: list[float] = []
    alerts: dict[str, float] = {}
    cpu0 = time.process_time()
    connected = [0]

    async def page(s: aiohttp.ClientSession, i: int, start_evt: asyncio.Event) -> None:
        async with s.post(f"{base}/v1/shop/session") as r:
            sess = await r.json()
        ws = await s.ws_connect(f"{base}/shop/ws?device={sess['device']}&token={sess['token']}")
        connected[0] += 1
        fx, fy = (i % GRID) * 4.0, ((i // GRID) % GRID) * 4.0
        pending: list[float] = []

        async def reader() -> None:
            async for msg in ws:
                m = json.loads(msg.data)
                if "title" in m and pending:
                    shop_lat.append((time.perf_counter() - pending.pop(0)) * 1000)

        task = asyncio.create_task(reader())
        await start_evt.wait()
        await asyncio.sleep(i / pages)  # spread the pages over the second
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += 1
            if n % 5 == 1:
                await ws.send_json({"type": "ping", "x": fx + 3.0, "y": fy + 3.0, "acc": 0.3})
                pending.append(time.perf_counter())
                await ws.send_json({"type": "ping", "x": fx + 1.0, "y": fy + 1.0, "acc": 0.3})
            else:
                await ws.send_json({"type": "ping", "x": fx + 1.1, "y": fy + 0.9, "acc": 0.3})
            await asyncio.sleep(max(0.0, t0 + n - time.perf_counter()))
        await asyncio.sleep(1.0)  # the last offers
        await ws.close()
        task.cancel()

    async def associates(s: aiohttp.ClientSession, done: asyncio.Event) -> None:
        async with s.ws_connect(f"{base}/associates/ws?token={ASSOC}") as ws:
            async def read() -> None:
                async for msg in ws:
                    m = json.loads(msg.data)
                    a = m.get("alert") if m.get("type") == "alert" else None
                    if a and a.get("kind") == "pickup_arrival":
                        alerts.setdefault(str(a.get("order_id")), time.time())
            task = asyncio.create_task(read())
            await done.wait()
            task.cancel()

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=0)
        start_evt, done = asyncio.Event(), asyncio.Event()
        async with aiohttp.ClientSession(connector=conn) as s:
            assoc = asyncio.create_task(associates(s, done))
            runs = [asyncio.create_task(page(s, i, start_evt)) for i in range(pages)]
            while connected[0] < pages and not all(r.done() for r in runs):
                await asyncio.sleep(0.05)
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            start_evt.set()
            await asyncio.gather(*runs, return_exceptions=True)
            done.set()
            await assoc

    asyncio.run(main())
    out.put({"shop_ms": shop_lat, "alerts": alerts, "cpu_s": time.process_time() - cpu0})


# -- phases


def cpu(pids: dict[str, int]) -> dict[str, float | None]:
    return {k: agent_cpu_s(p) for k, p in pids.items()}


def cores(c0: dict, c1: dict, wall: float) -> dict[str, float | None]:
    return {k: (round((c1[k] - c0[k]) / wall, 3) if c0.get(k) is not None and c1.get(k) is not None else None)
            for k in c0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of everything together (default %(default)s)")
    ap.add_argument("--solo", type=float, default=4.0,
                    help="seconds of the pings alone and of the till alone before it, for CPU per operation "
                         "(0: skip; default %(default)s)")
    ap.add_argument("--rate", type=float, default=5000.0, help="pings/s (default %(default)s)")
    ap.add_argument("--pages", type=int, default=300, help="shop WebSockets (default %(default)s)")
    ap.add_argument("--till-rate", type=float, default=50.0, help="redeems/s (default %(default)s)")
    ap.add_argument("--orders", type=int, default=100, help="pickup arrivals over the run (default %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="ping generator processes")
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--entry-share", type=float, default=0.02)
    ap.add_argument("--out", default=str(RESULTS / "black_friday.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-bf-"))
    (work / "c").mkdir()
    mosq, port = start_mosquitto(work)
    cmosq, cport = start_mosquitto(work / "c")
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    cfg = bf_store(work, port, http_port, cport)
    agent = None
    procs: list[mp.Process] = []
    res: dict = {"machine": machine(), "args": vars(args)}
    try:
        agent = start_agent(cfg, http_port)
        pids = {"agent": agent.pid, "broker": mosq.pid, "central_broker": cmosq.pid}
        root = f"store/{STORE}"

        # central's subscriber, throughout
        cq: mp.Queue = mp.Queue()
        cready, cstop = mp.Event(), mp.Event()
        cp = mp.Process(target=central, args=(cport, cready, cstop, cq))
        cp.start()
        procs.append(cp)
        cready.wait(10)

        # codes for the till, made the way phones make them
        n_redeems = int(args.till_rate * (args.seconds + args.solo))
        need = int(n_redeems * 1.1) + 50
        kq: mp.Queue = mp.Queue()
        maker = mp.Process(target=code_maker, args=(port, STORE, need, 1000.0, 30.0, kq))
        maker.start()
        made = kq.get()
        maker.join()
        codes = made["codes"]
        print(f"{len(codes)} codes made in {made['seconds']:.1f} s", flush=True)
        solo_codes, codes = codes[:int(args.till_rate * args.solo) + 10], codes[int(args.till_rate * args.solo) + 10:]

        # pickup orders
        devices = [f"pk{i}" for i in range(args.orders)]
        for i, d in enumerate(devices):
            status, _, _ = http("POST", f"{base}/v1/pickups", TOKEN, {"order_id": f"O-{i}", "device": d,
                                                                      "zone": "pickup"})
            assert status == 201, status

        solo: dict = {}
        if args.solo > 0:
            # the pings alone
            oq: mp.Queue = mp.Queue()
            ready, stop = mp.Event(), mp.Event()
            lst = mp.Process(target=offer_listener, args=(port, STORE, ready, stop, oq))
            lst.start()
            ready.wait(10)
            n0 = metric_total(scrape(http_port), "edge_pings_total")
            c0, t0 = cpu(pids), time.time()
            gens = run_load(port, STORE, args.rate, args.solo, args.workers, args.devices, args.entry_share,
                            prefix="s")
            time.sleep(0.3)
            c1, t1 = cpu(pids), time.time()
            n1 = metric_total(scrape(http_port), "edge_pings_total")
            stop.set()
            lat = pair_latencies(gens, oq.get())
            lst.join()
            solo["pings"] = {"pings": n1 - n0, "wall_s": t1 - t0,
                             "cpu_us_per_ping": (c1["agent"] - c0["agent"]) / (n1 - n0) * 1e6,
                             "cores": cores(c0, c1, t1 - t0), "offer_p50_ms": percentile(lat, 50),
                             "offer_p99_ms": percentile(lat, 99)}
            # nothing (the agent's own ticks over the devices it tracks): the baseline both solos pay
            c0, t0 = cpu(pids), time.time()
            time.sleep(args.solo)
            c1, t1 = cpu(pids), time.time()
            idle = (c1["agent"] - c0["agent"]) / (t1 - t0)
            solo["idle"] = {"agent_cores": round(idle, 4)}
            sp = solo["pings"]
            sp["cpu_us_per_ping_over_idle"] = sp["cpu_us_per_ping"] - idle * sp["wall_s"] / sp["pings"] * 1e6
            # the till alone
            tq: mp.Queue = mp.Queue()
            tready, tgo = mp.Event(), mp.Event()
            plan = plan_requests(solo_codes, int(args.till_rate * args.solo), args.till_rate, 0.02, 0.02)
            tp = mp.Process(target=till, args=(http_port, plan, args.till_rate, tready, tgo, tq))
            tp.start()
            tready.wait(30)
            c0, t0 = cpu(pids), time.time()
            tgo.set()
            ans = tq.get()
            tp.join()
            c1, t1 = cpu(pids), time.time()
            rl = [r[4] for r in ans["results"]]
            solo["till"] = {"requests": len(rl), "cpu_us_per_redeem": (c1["agent"] - c0["agent"]) / len(rl) * 1e6,
                            "cpu_us_per_redeem_over_idle": (c1["agent"] - c0["agent"] - idle * (t1 - t0))
                            / len(rl) * 1e6,
                            "cores": cores(c0, c1, t1 - t0), "p50_ms": percentile(rl, 50),
                            "p99_ms": percentile(rl, 99)}
            print(f"solo: {solo}", flush=True)
        res["solo"] = solo

        # -- together
        oq = mp.Queue()
        ready, stop = mp.Event(), mp.Event()
        lst = mp.Process(target=offer_listener, args=(port, STORE, ready, stop, oq))
        lst.start()
        ready.wait(10)
        wq: mp.Queue = mp.Queue()
        wready, wgo = mp.Event(), mp.Event()
        wp = mp.Process(target=web_clients, args=(http_port, args.pages, args.seconds, wready, wgo, wq))
        wp.start()
        if not wready.wait(60):
            raise RuntimeError("the shop's pages did not connect")
        tq = mp.Queue()
        tready, tgo = mp.Event(), mp.Event()
        plan = plan_requests(codes, int(args.till_rate * args.seconds), args.till_rate, 0.02, 0.02)
        tp = mp.Process(target=till, args=(http_port, plan, args.till_rate, tready, tgo, tq))
        tp.start()
        tready.wait(30)

        pub = _client(port, "pickups")
        pub.connect("127.0.0.1", port)
        while not pub.is_connected():
            pub.loop(timeout=0.1)
        sent: dict[str, float] = {}
        cx, cy = ZONE["x"] + ZONE["w"] / 2, ZONE["y"] + ZONE["h"] / 2

        def arrivals(t0: float) -> None:
            span = max(0.5, args.seconds - 1.5)
            plan_ = []
            for i in range(len(devices)):
                due = t0 + 1.0 + span * i / max(1, len(devices))
                plan_ += [(due - 0.3, i, False), (due, i, True)]
            for due, i, inside in sorted(plan_):
                time.sleep(max(0.0, due - time.perf_counter()))
                body = json.dumps({"x": cx, "y": cy + (0.0 if inside else -10.0), "acc": 0.3, "seq": 2 if inside else 1})
                t = time.time()
                pub.publish(f"{root}/ping/uwb/{devices[i]}", body)
                pub.loop_write()
                if inside:
                    sent[f"O-{i}"] = t

        reload_info: dict = {}

        def reload_mid(t0: float) -> None:
            time.sleep(max(0.0, t0 + args.seconds / 2 - time.perf_counter()))
            promos = json.loads((work / "promotions.json").read_text())
            promos[0]["message"] = "Black Friday: m"
            (work / "promotions.json").write_text(json.dumps(promos))
            reload_info["at"] = time.time()
            status, body, ms = http("POST", f"{base}/v1/admin/reload", ADMIN)
            reload_info.update({"status": status, "answer_ms": ms, "body": body})

        m0 = scrape(http_port)
        c0, t0w = cpu(pids), time.time()
        tstart = time.perf_counter()
        wgo.set()
        tgo.set()
        threads = [threading.Thread(target=arrivals, args=(tstart,), daemon=True),
                   threading.Thread(target=reload_mid, args=(tstart,), daemon=True)]
        for th in threads:
            th.start()
        gens = run_load(port, STORE, args.rate, args.seconds, args.workers, args.devices, args.entry_share,
                        prefix="t")
        for th in threads:
            th.join()
        answers = tq.get()
        tp.join()
        web = wq.get()
        wp.join()
        time.sleep(0.5)
        c1, t1w = cpu(pids), time.time()
        m1 = scrape(http_port)
        stop.set()
        offers = oq.get()
        lst.join()
        pub.disconnect()
        cstop.set()
        events = cq.get()
        cp.join()

        # -- figures
        lat = pair_latencies(gens, offers)
        entries = [(t, d) for g in gens for d, t in g["entries"]]
        rl = [r[4] for r in answers["results"]]
        statuses: dict[str, int] = {}
        for r in answers["results"]:
            statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
        alert_ms = [(web["alerts"][o] - t) * 1000 for o, t in sent.items() if o in web["alerts"]]
        sync_ms = [(a - ts) * 1000 for a, ts, _ in events if t0w <= ts <= t1w]
        near = []
        if reload_info.get("at"):
            near = pair_latencies([{"entries": [(d, t) for t, d in entries
                                                if abs(t - reload_info["at"]) <= 1.0]}], offers)
        pings = metric_total(m1, "edge_pings_total") - metric_total(m0, "edge_pings_total")
        shop_pings = m1.get('edge_pings_total{source="html5"}', 0.0) - m0.get('edge_pings_total{source="html5"}', 0.0)
        wall = t1w - t0w
        agent_cpu = c1["agent"] - c0["agent"]
        ops = {"pings (MQTT + shop)": pings, "redeems": len(rl), "decisions": metric_total(m1, "edge_decisions_total") -
               metric_total(m0, "edge_decisions_total"), "events to central": len(sync_ms)}
        rows = [
            ["pings → offer (MQTT)", f"{len(lat)}/{len(entries)}", percentile(lat, 50), percentile(lat, 99)],
            [f"shop page → offer ({args.pages} WebSockets)", len(web["shop_ms"]), percentile(web["shop_ms"], 50),
             percentile(web["shop_ms"], 99)],
            [f"till redeem ({args.till_rate:g}/s)", f"{len(rl)} ({statuses})", percentile(rl, 50), percentile(rl, 99)],
            ["pickup ping → associates' page alert", f"{len(alert_ms)}/{len(sent)}", percentile(alert_ms, 50),
             percentile(alert_ms, 99)],
            ["event → central's broker", len(sync_ms), percentile(sync_ms, 50), percentile(sync_ms, 99)],
            ["reload: POST /v1/admin/reload answered", reload_info.get("status"), reload_info.get("answer_ms"), None],
            ["offers entering within 1 s of the reload", len(near), percentile(near, 50), percentile(near, 99)],
        ]
        used = cores(c0, c1, wall)
        gateway = {"agent_cores": used["agent"], "broker_cores": used["broker"],
                   "left_of_4_cores": round(4 - (used["agent"] or 0) - (used["broker"] or 0), 2),
                   "agent_loop_left_of_its_core": round(1 - (used["agent"] or 0), 2)}
        res.update({
            "together": {"wall_s": round(wall, 2), "achieved_ping_rate": round(
                sum(g["published"] for g in gens) / max(g["seconds"] for g in gens)),
                "mqtt_pings_lost": round(1 - (pings - shop_pings) / (sum(g["published"] for g in gens) + 2 * len(sent)),
                                         4), "shop_pings": shop_pings,
                "rows": rows, "cores": used, "agent_cpu_s": agent_cpu, "ops": ops,
                "agent_cpu_us_per_ping_all_in": agent_cpu / pings * 1e6 if pings else None,
                "agent_cpu_us_per_operation": agent_cpu / sum(v for v in ops.values() if v) * 1e6,
                "reload": reload_info, "stages_ms": stage_figures(m0, m1),
                "web_clients_cpu_s": web["cpu_s"], "till_client_cpu_s": answers.get("client_cpu_s"),
                "gens_cpu_s": sum(g["cpu_s"] for g in gens), "loadavg_end": os.getloadavg()},
            "gateway_4_cores": gateway,
        })
        if solo.get("pings") and solo.get("till"):
            explained = (solo["idle"]["agent_cores"] * wall
                         + solo["pings"]["cpu_us_per_ping_over_idle"] * (pings - shop_pings)
                         + solo["till"]["cpu_us_per_redeem_over_idle"] * len(rl)) / 1e6
            res["together"]["agent_cpu_rest_s"] = round(agent_cpu - explained, 2)
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        for p in procs:
            if p.is_alive():
                p.kill()
        for m in (mosq, cmosq):
            m.terminate()
            m.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(table(["path", "n", "p50 ms", "p99 ms"], res["together"]["rows"]))
    t = res["together"]
    print(f"together {t['wall_s']} s, MQTT pings {t['achieved_ping_rate']}/s asked {args.rate:g}, "
          f"not processed {t['mqtt_pings_lost']:.2%}, shop pings {t['shop_pings']:.0f}; "
          f"cores used: {t['cores']}; agent CPU {t['agent_cpu_s']:.1f} s = "
          f"{t['agent_cpu_us_per_ping_all_in']:.0f} µs per ping all in, "
          f"{t['agent_cpu_us_per_operation']:.0f} µs per operation ({t['ops']})")
    if "agent_cpu_rest_s" in t:
        s = res["solo"]
        print(f"solo: idle {s['idle']['agent_cores']:.3f} cores; over it {s['pings']['cpu_us_per_ping_over_idle']:.0f} µs "
              f"per MQTT ping, {s['till']['cpu_us_per_redeem_over_idle']:.0f} µs per redeem; together minus idle and "
              f"those: {t['agent_cpu_rest_s']:.1f} s of agent CPU (negative: together, batches are larger and a ping "
              f"costs less than alone, so the solo figures do not add up; the together figures are the ones to use)")
    print(f"a 4-core gateway: {res['gateway_4_cores']}")
    print("stages per batch (mean ms): " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in t["stages_ms"].items()))
    write_json("black_friday", res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
