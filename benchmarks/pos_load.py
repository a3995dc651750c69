"""The till beside the pings: ``POST /v1/pos/redeem`` at a fixed rate while
e2e's ping load runs, against the same ping load alone, in one run (issue 15).

One private Mosquitto, one agent (`edge-agent run`, e2e's 400-fence store
with a ``[pos] token``).  First enough redeemable codes are made the way a
phone makes them: fresh devices enter fences, an MQTT client takes each
offer from ``{R}/offer/{device}``, publishes ``apply`` on
``{R}/action/{device}`` and keeps the code that comes back.  Then, on the same
agent, each phase of ``--phases`` (default ``a,b``):

* ``a`` — e2e's ping load alone (``--ping-rate`` pings/s for ``--seconds``);
  ping→offer latency paired exactly as e2e pairs it;
* ``b`` — the same ping load (on devices the agent has not seen) plus
  ``POST /v1/pos/redeem`` at ``--rate`` requests/s for the same seconds, from an
  aiohttp client in its own process, paced open-loop (each request leaves at
  its scheduled time whether or not the earlier ones have been answered).
  Each request carries a fresh valid code (one in four typed lower-case with
  a dash, as tills do), except a small share (``--again-share``) that
  re-sends a code redeemed a second or more earlier (409
  ``already_redeemed``) and a share (``--unknown-share``) of codes that
  never existed (404);
* ``t`` — the till alone, no pings (what the endpoint costs by itself).

Reports the redeem latency p50/p99 by kind and answer status, the answered
rate (below ``--rate``, a queue grew), the ping→offer p99 of ``b`` over the
mean of the ``a`` phases, where the ping→offer time went (entry → the
agent's decision, taken from the offer's ``ts``; decision → arrival), and the
CPU the agent, Mosquitto, the ping generators and the till client used per
phase.  Targets (issue 15): redeem p99 < 20 ms, ratio ≤ 1.2.

    python benchmarks/pos_load.py                              # 200 req/s, 5,000 pings/s, 30 s each
    python benchmarks/pos_load.py --seconds 15 --phases a,b,a  # shorter; a before and after
    python benchmarks/pos_load.py --phases t,a,b,a             # also the till alone, first

Prints the figures and writes benchmarks/results/pos_load.json.  Needs `mosquitto`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    RESULTS,
    free_port,
    listen_until,
    machine,
    metric_total,
    scrape,
    start_agent,
    start_mosquitto,
    table,
    write_json,
)
from e2e import (
    GRID,
    agent_cpu_s,
    pair_latencies,
    percentile,
    run_load,
    write_store,
)

TOKEN = "bench-till-token"
STORE = "POS"


# -- making codes the way phones do


def code_maker(port: int, store_id: str, n: int, rate: float, timeout: float, out: mp.Queue) -> None:
    """``n`` fresh devices enter a fence each; every offer is applied; the codes come back."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    codes: dict[str, str] = {}
    errors: dict[str, int] = {}
    offered = [0]
    ready = [False]

    def on_message(cl, u, m):
        device = m.topic.rsplit("/", 1)[1]
        obj = json.loads(m.payload)
        if "error" in obj:
            errors[obj["error"]] = errors.get(obj["error"], 0) + 1
        elif "code" in obj:
            codes[device] = obj["code"]
        elif "promotion_id" in obj:
            offered[0] += 1
            cl.publish(f"store/{store_id}/action/{device}",
                       json.dumps({"offer_id": obj["offer_id"], "action": "apply"}), qos=1)

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"codes-{os.getpid()}")
    c.max_queued_messages_set(0)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"store/{store_id}/offer/+", 1)
    c.on_subscribe = lambda *a: ready.__setitem__(0, True)
    c.on_socket_open = lambda cl, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 10
    while not ready[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    for i in range(n):
        target = t0 + i / rate
        while (now := time.perf_counter()) < target:
            time.sleep(min(target - now, 0.002))
        f = i % (GRID * GRID)
        fx, fy = (f % GRID) * 4.0, (f // GRID) * 4.0
        c.publish(f"store/{store_id}/ping/uwb/till{i}", json.dumps({"x": fx + 1.0, "y": fy + 1.0, "acc": 0.3}), qos=0)
    deadline = time.monotonic() + timeout
    while len(codes) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    took = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    out.put({"codes": list(codes.values()), "offers": offered[0], "errors": errors, "seconds": took})


# -- the offers, timed


def offer_timer(port: int, store_id: str, ready, stop, out: mp.Queue) -> None:
    """e2e's offer listener, also keeping each offer's ``ts`` (when the agent decided):
    (device, arrival, ts)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[tuple[str, float, float | None]] = []

    def on_message(cl, u, m):
        arrival = time.time()
        try:
            ts = json.loads(m.payload).get("ts")
        except ValueError:
            ts = None
        got.append((m.topic.rsplit("/", 1)[1], arrival, ts))

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"offers-{os.getpid()}")
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"store/{store_id}/offer/+", 1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_socket_open = lambda cl, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listen_until(c, port, stop)
    out.put(got)


def histogram_quantiles(before: dict[str, float], after: dict[str, float], name: str) -> dict:
    """p50/p99 of a Prometheus histogram's growth between two scrapes, as the
    upper bound of the bucket they fall in (seconds → ms)."""
    prefix = name + '_bucket{le="'
    rows = []
    for k, v in after.items():
        if k.startswith(prefix):
            le = k[len(prefix):].split('"', 1)[0]
            rows.append((float("inf") if le == "+Inf" else float(le), v - before.get(k, 0.0)))
    rows.sort()
    total = rows[-1][1] if rows else 0
    out: dict = {"n": total}
    for q in (50, 99):
        bound = next((le for le, c in rows if total and c >= total * q / 100), None)
        out[f"p{q}_ms_at_most"] = None if bound is None or bound == float("inf") else round(bound * 1000, 3)
    return out


# -- the till


def plan_requests(codes: list[str], n: int, rate: float, again_share: float, unknown_share: float,
                  seed: int = 15) -> list[tuple[str, str]]:
    """``n`` (kind, code as typed) in sending order: ``fresh`` (a valid code, never
    sent), ``again`` (a code sent a second or more earlier) or ``unknown``."""
    from edge_agent.pipeline.ids import CODE_ALPHABET, CODE_LEN

    rng = random.Random(seed)
    fresh = iter(codes)
    sent: list[tuple[int, str]] = []  # (index, code) of fresh requests
    plan: list[tuple[str, str]] = []
    gap = int(rate)  # "a second earlier"
    for i in range(n):
        r = rng.random()
        if r < unknown_share:
            plan.append(("unknown", "".join(rng.choice(CODE_ALPHABET) for _ in range(CODE_LEN + 2))))
            continue
        old = [c for j, c in sent[-4 * gap:] if j <= i - gap] if r < unknown_share + again_share else []
        if old:
            plan.append(("again", rng.choice(old)))
            continue
        code = next(fresh, None)
        if code is None:
            raise SystemExit(f"only {len(codes)} codes for {n} requests: raise the margin")
        sent.append((i, code))
        typed = code[:4].lower() + "-" + code[4:].lower() if len(sent) % 4 == 0 else code
        plan.append(("fresh", typed))
    return plan


def till(http_port: int, plan: list[tuple[str, str]], rate: float, ready, go, out: mp.Queue) -> None:
    """Send ``plan`` as ``POST /v1/pos/redeem`` at ``rate``/s, open loop; put the answers."""
    import asyncio

    import aiohttp

    url = f"http://127.0.0.1:{http_port}/v1/pos/redeem"

    async def main() -> dict:
        conn = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            # Warm up: open a few keep-alive connections (unknown codes; not counted).
            for _ in range(3):
                await asyncio.gather(*(s.post(url, json={"code": f"WARM{k}UP", "till": "warm"}) for k in range(8)))
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            results: list[tuple] = []

            async def one(i: int, kind: str, code: str, scheduled: float) -> None:
                body = {"code": code, "till": f"till-{i % 8}", "basket_total": 42.5, "currency": "EUR"}
                t0 = time.perf_counter()
                try:
                    async with s.post(url, json=body, headers={"Idempotency-Key": f"k{i}"}) as r:
                        payload = await r.json(content_type=None)
                        status, what = r.status, payload.get("error") or payload.get("status")
                except Exception as exc:  # noqa: BLE001 (a failed request is a figure too)
                    status, what = 0, type(exc).__name__
                t1 = time.perf_counter()
                results.append((i, kind, status, what, (t1 - t0) * 1000, (t0 - scheduled) * 1000))

            tasks = []
            start = time.perf_counter()
            for i, (kind, code) in enumerate(plan):
                scheduled = start + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, kind, code, scheduled)))
            sent_s = time.perf_counter() - start
            await asyncio.gather(*tasks)
            return {"results": results, "sent_s": sent_s, "answered_s": time.perf_counter() - start,
                    "client_cpu_s": time.process_time()}

    out.put(asyncio.run(main()))


# -- one phase


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


def processed(http_port: int) -> float:
    return metric_total(scrape(http_port), "edge_pings_total")


def run_phase(kind: str, k: int, port: int, http_port: int, agent_pid: int, args, plan, mosq_pid: int) -> dict:
    q: mp.Queue = mp.Queue()
    ready, stop = mp.Event(), mp.Event()
    lst = mp.Process(target=offer_timer, args=(port, STORE, ready, stop, q))
    lst.start()
    ready.wait(10)
    till_proc = None
    if kind in ("b", "t"):
        tq: mp.Queue = mp.Queue()
        t_ready, go = mp.Event(), mp.Event()
        till_proc = mp.Process(target=till, args=(http_port, plan, args.rate, t_ready, go, tq))
        till_proc.start()
        if not t_ready.wait(30):
            raise RuntimeError("the till client did not start")
    load0 = os.getloadavg()[0]
    m0 = scrape(http_port)
    n0 = metric_total(m0, "edge_pings_total")
    cpu0, mcpu0 = agent_cpu_s(agent_pid), agent_cpu_s(mosq_pid)
    # The agent's processed count, sampled during the load (as e2e does): when it caught up.
    samples: list[tuple[float, float]] = []
    polling = threading.Event()

    def poll() -> None:
        while not polling.is_set():
            try:
                samples.append((time.time(), processed(http_port) - n0))
            except OSError:
                pass
            polling.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    if till_proc is not None:
        go.set()
    if kind == "t":  # the till alone: no pings
        gens, published, end_wall = [{"published": 0, "entries": [], "seconds": 1.0}], 0, time.time()
        answers = tq.get()
    else:
        gens = run_load(port, STORE, args.ping_rate, args.seconds, args.workers, args.devices, args.entry_share,
                        prefix=f"{kind}{k}")
        published = sum(g["published"] for g in gens)
        end_wall = max(g["end_wall"] for g in gens)
    deadline = time.monotonic() + 15
    while (not samples or samples[-1][1] < published) and time.monotonic() < deadline:
        time.sleep(0.05)
    polling.set()
    poller.join()
    n = samples[-1][1] if samples else 0.0
    done = [t for t, m in samples if m >= published]
    drain = max(0.0, done[0] - end_wall) if done else None
    if kind == "b":
        answers = tq.get()
    if till_proc is not None:
        till_proc.join()
    cpu1, mcpu1 = agent_cpu_s(agent_pid), agent_cpu_s(mosq_pid)
    time.sleep(0.3)  # the last offers on their way to the listener
    stop.set()
    got = q.get()
    lst.join()
    m1 = scrape(http_port)
    offers = [(d, arrival) for d, arrival, _ in got]
    lat = pair_latencies(gens, offers)
    # Where the time went: entry publish → the agent's decision (offer ts), and decision → arrival.
    to_agent = pair_latencies(gens, [(d, ts) for d, _, ts in got if ts is not None])
    to_listener = [(arrival - ts) * 1000 for _, arrival, ts in got if ts is not None]
    load1 = os.getloadavg()[0]
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    row = {
        "phase": kind, "round": k, "loadavg_1m": [round(load0, 2), round(load1, 2)],
        "ping_rate": args.ping_rate, "achieved_ping_rate": round(published / max(g["seconds"] for g in gens)),
        "published": published, "agent_processed": n, "agent_loss": round(1 - n / published, 4) if published else None,
        "drain_s": round(drain, 2) if drain is not None else None,
        "entries": sum(len(g["entries"]) for g in gens), "offers": len(offers), "paired": len(lat),
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "p999_ms": percentile(lat, 99.9),
        "split": {"entry_to_decision_p50_ms": percentile(to_agent, 50),
                  "entry_to_decision_p99_ms": percentile(to_agent, 99),
                  "decision_to_listener_p50_ms": percentile(to_listener, 50),
                  "decision_to_listener_p99_ms": percentile(to_listener, 99),
                  "agent_receipt_to_puback": histogram_quantiles(m0, m1, "edge_ping_to_offer_seconds")},
        "mosquitto_cpu_s": mcpu1 - mcpu0 if mcpu0 is not None and mcpu1 is not None else None,
        "agent_cpu_s": cpu, "agent_cpu_us_per_ping": round(cpu / n * 1e6, 1) if cpu and n else None,
        "load_generator_cpu_s": sum(g.get("cpu_s", 0.0) for g in gens),
    }
    if till_proc is not None:
        row["till"] = summarise_till(answers, args.rate)
    return row


def summarise_till(answers: dict, rate: float) -> dict:
    res = answers["results"]
    groups: dict[tuple, list[float]] = {}
    for _, kind, status, what, ms, _lag in res:
        groups.setdefault((kind, status, what), []).append(ms)
    all_ms = [r[4] for r in res]
    lags = [r[5] for r in res]
    return {
        "requests": len(res), "rate": rate, "achieved_rate": round(len(res) / answers["sent_s"], 1),
        # answers per second from the first request to the last answer: below the rate, a queue grew
        "answered_rate": round(len(res) / answers["answered_s"], 1), "client_cpu_s": answers["client_cpu_s"],
        "p50_ms": percentile(all_ms, 50), "p99_ms": percentile(all_ms, 99), "max_ms": max(all_ms) if all_ms else None,
        "client_lag_p99_ms": percentile(lags, 99),
        "by_answer": [{"kind": kind, "status": status, "answer": what, "n": len(v),
                       "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "max_ms": max(v)}
                      for (kind, status, what), v in sorted(groups.items(), key=lambda kv: -len(kv[1]))],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="redeem requests/s (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per phase (default %(default)s)")
    ap.add_argument("--ping-rate", type=float, default=5000.0, help="pings/s in every phase (default %(default)s)")
    ap.add_argument("--phases", default="a,b", help="a = pings alone, b = pings + till; in order (default %(default)s)")
    ap.add_argument("--again-share", type=float, default=0.02, help="share of re-sent redeemed codes (409)")
    ap.add_argument("--unknown-share", type=float, default=0.02, help="share of codes that never existed (404)")
    ap.add_argument("--workers", type=int, default=2, help="ping generator processes")
    ap.add_argument("--devices", type=int, default=4000, help="simulated devices per phase")
    ap.add_argument("--entry-share", type=float, default=0.02, help="share of pings that are fresh entries")
    ap.add_argument("--code-rate", type=float, default=2000.0, help="entries/s while making codes")
    ap.add_argument("--out", default=str(RESULTS / "pos_load.json"))
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or any(p not in ("a", "b", "t") for p in phases):
        ap.error("--phases is a list of a, b and t")
    n_req = int(args.rate * args.seconds)
    n_b = phases.count("b") + phases.count("t")
    n_codes = math.ceil(n_req * n_b * (1 - args.unknown_share) * 1.02) + 20 if n_b else 0
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="edge-pos-"))
    mosq, port = start_mosquitto(work)
    http_port = free_port()
    cfg = write_store(work, port, http_port, STORE, extra_toml=f'[pos]\ntoken = "{TOKEN}"\n')
    agent = None
    rows: list[dict] = []
    try:
        agent = start_agent(cfg, http_port)
        codes: list[str] = []
        prep = None
        if n_codes:
            q: mp.Queue = mp.Queue()
            p = mp.Process(target=code_maker, args=(port, STORE, n_codes, args.code_rate, 60.0, q))
            p.start()
            prep = q.get()
            p.join()
            codes = prep.pop("codes")
            prep["codes"] = len(codes)
            print(f"codes: {len(codes)}/{n_codes} from {prep['offers']} offers in {prep['seconds']:.1f} s"
                  f"{' errors ' + json.dumps(prep['errors']) if prep['errors'] else ''}", flush=True)
            random.Random(1).shuffle(codes)
        for k, kind in enumerate(phases):
            plan = None
            if kind in ("b", "t"):
                mine, codes = codes[:n_req], codes[n_req:]
                plan = plan_requests(mine, n_req, args.rate, args.again_share, args.unknown_share, seed=15 + k)
            row = run_phase(kind, k, port, http_port, agent.pid, args, plan, mosq.pid)
            rows.append(row)
            t = row.get("till")
            extra = (f"  till {t['requests']} req at {t['achieved_rate']}/s: p50 {t['p50_ms']:.2f} ms "
                     f"p99 {t['p99_ms']:.2f} ms max {t['max_ms']:.1f} ms") if t else ""
            print(f"phase {kind} ({k}): pings {row['achieved_ping_rate']}/s loss {_pct(row['agent_loss'])} "
                  f"drain {row['drain_s']} s  offers {row['offers']}/{row['entries']}  ping→offer p50 "
                  f"{row['p50_ms'] or 0:.2f} ms p99 {row['p99_ms'] or 0:.2f} ms p99.9 {row['p999_ms'] or 0:.2f} ms"
                  f"{extra}", flush=True)
            sp = row["split"]
            print(f"    split: entry→decision p50 {sp['entry_to_decision_p50_ms'] or 0:.2f} p99 "
                  f"{sp['entry_to_decision_p99_ms'] or 0:.2f} ms; decision→listener p50 "
                  f"{sp['decision_to_listener_p50_ms'] or 0:.2f} p99 {sp['decision_to_listener_p99_ms'] or 0:.2f} ms; "
                  f"agent receipt→PUBACK {sp['agent_receipt_to_puback']}", flush=True)
        series = scrape(http_port)
        redemptions = {k: v for k, v in series.items() if k.startswith("edge_redemptions_total{")}
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except Exception:  # noqa: BLE001
                agent.kill()
        mosq.terminate()
        mosq.wait()
        shutil.rmtree(work, ignore_errors=True)

    a_p99 = [r["p99_ms"] for r in rows if r["phase"] == "a" and r["p99_ms"] is not None]
    b_rows = [r for r in rows if r["phase"] == "b"]
    t_rows = [r for r in rows if r["phase"] == "t"]
    a_ref = sum(a_p99) / len(a_p99) if a_p99 else None
    ratios = [round(r["p99_ms"] / a_ref, 3) for r in b_rows if a_ref and r["p99_ms"] is not None]
    till_p99 = [r["till"]["p99_ms"] for r in b_rows]
    summary = {
        "machine": info,
        "args": vars(args),
        "prepare": prep,
        "phases": rows,
        "agent_redemptions_total": redemptions,
        "ping_to_offer_p99_a_ms": a_ref,
        "ping_to_offer_p99_ratio_b_over_a": ratios,
        "targets": {
            "redeem_p99_under_20ms": bool(till_p99) and all(p < 20 for p in till_p99),
            "ping_to_offer_p99_ratio_at_most_1.2": bool(ratios) and all(x <= 1.2 for x in ratios),
        },
    }
    print()
    print(table(["phase", "load 1m", "pings/s", "loss", "drain s", "offers/entries", "p50 ms", "p99 ms", "p99.9 ms",
                 "agent CPU µs/ping", "cores: agent / Mosquitto / ping generators"],
                [[f"{r['phase']} ({r['round']})", "→".join(f"{x:.1f}" for x in r["loadavg_1m"]), r["achieved_ping_rate"], _pct(r["agent_loss"]), r["drain_s"],
                  f"{r['offers']}/{r['entries']}", r["p50_ms"], r["p99_ms"], r["p999_ms"], r["agent_cpu_us_per_ping"],
                  " / ".join(f"{(x or 0) / args.seconds:.2f}" for x in (r["agent_cpu_s"], r["mosquitto_cpu_s"],
                                                                       r["load_generator_cpu_s"]))]
                 for r in rows]))
    for r in [*t_rows, *b_rows]:
        t = r["till"]
        print(f"\ntill in phase {r['phase']} ({r['round']}): {t['requests']} requests at {t['achieved_rate']}/s, "
              f"p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms, max {t['max_ms']:.1f} ms; answered "
              f"{t['answered_rate']}/s (client's own lag p99 {t['client_lag_p99_ms']:.2f} ms, "
              f"client CPU {t['client_cpu_s']:.1f} s)")
        print(table(["kind", "status", "answer", "n", "p50 ms", "p99 ms", "max ms"],
                    [[g["kind"], g["status"], g["answer"], g["n"], g["p50_ms"], g["p99_ms"], g["max_ms"]]
                     for g in t["by_answer"]]))
    print(f"\nping→offer p99: a {a_ref or 0:.2f} ms; b/a {ratios}   targets: {summary['targets']}")
    path = write_json("pos_load.json", summary, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
