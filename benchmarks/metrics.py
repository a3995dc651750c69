"""Metrics on the hot path: the hand-written edge_agent/metrics.py against
prometheus_client behind the same interface (benchmarks/_prom_metrics.py).

Times the metric operations the pipeline does for pings, on one
``Metrics`` of each implementation, side by side in one run (best of N):

* ``pings.inc(source)``            — every accepted ping;
* ``transitions.inc(event)``       — every enter / exit / dwell;
* ``decisions.inc(outcome, reason)`` — every offer decision;
* ``queue_depth.set(n)``           — every drained batch;
* ``ping_to_offer.observe(s)``     — every acknowledged offer;
* ``render()``                     — one scrape of ``GET /metrics``.

The per-ping figure weights them as ``benchmarks/e2e.py``'s load does: one
``pings.inc`` a ping, and per ``--entry-share`` fresh entry one transition,
one decision and one observation; one ``queue_depth.set`` per batch of
``--batch`` pings.

With ``--agent`` it also runs the whole pipeline: two agents in this
process on e2e's 400-fence store and a private Mosquitto, identical but
for their ``Metrics`` (one of each implementation), fed the same stream
of e2e's pings (``Agent.on_batch``, batches of ``--batch``, alternating
between the two agents); the figure is each agent's CPU time per ping
(``time.thread_time`` around ``on_batch``).

    python benchmarks/metrics.py
    python benchmarks/metrics.py --agent --pings 200000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, table, write_json  # noqa: E402
from benchmarks import _prom_metrics  # noqa: E402
from edge_agent import metrics as hand_written  # noqa: E402
from benchmarks.e2e import ping_stream  # noqa: E402


def time_op(fn, n: int, repeat: int) -> float:
    """Best time of one call of ``fn`` (ns), over ``repeat`` loops of ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def bench(mod, args) -> dict[str, float]:
    m = mod.Metrics()
    m.outbox_pending.fn = lambda: 0
    m.tracked_devices.fn = lambda: 4000
    pings, transitions, decisions = m.pings.inc, m.transitions.inc, m.decisions.inc
    depth, observe = m.queue_depth.set, m.ping_to_offer.observe
    for op in (lambda: pings("uwb"), lambda: transitions("enter"), lambda: decisions("offered", "offered"),
               lambda: observe(0.0007)):
        op()  # the label sets exist, as they do after the first pings
    n, r = args.n, args.repeat
    res = {
        "pings.inc": time_op(lambda: pings("uwb"), n, r),
        "transitions.inc": time_op(lambda: transitions("enter"), n, r),
        "decisions.inc": time_op(lambda: decisions("offered", "offered"), n, r),
        "queue_depth.set": time_op(lambda: depth(50), n, r),
        "ping_to_offer.observe": time_op(lambda: observe(0.0007), n, r),
        "render": time_op(m.render, max(1, n // 1000), r),
    }
    e = args.entry_share
    res["per ping"] = (res["pings.inc"] + e * (res["transitions.inc"] + res["decisions.inc"]
                                               + res["ping_to_offer.observe"]) + res["queue_depth.set"] / args.batch)
    return res


async def bench_agents(impls: dict, args) -> dict[str, dict[str, float]]:
    """CPU per ping of whole agents that differ only in their Metrics."""
    import dataclasses

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import free_port, start_mosquitto
    from e2e import write_store
    from edge_agent.service import Agent
    from store_config import load_store

    work = Path(tempfile.mkdtemp(prefix="metrics-agents-"))
    mosq, port = start_mosquitto(work)
    agents, streams = {}, {}
    try:
        for k, (name, mod) in enumerate(impls.items()):
            sdir = work / f"s{k}"
            sdir.mkdir()
            cfg = load_store(write_store(sdir, port, free_port(), f"M{k}"))
            agent = Agent(cfg)
            agent.metrics = mod.Metrics()  # before start(): everything is wired to this one
            agent.metrics.config_info.set(1, cfg.version)
            await agent.start()
            agents[name] = agent
            streams[name] = ping_stream(f"M{k}", args.pings, args.devices, args.entry_share)
        cpu = {name: 0.0 for name in agents}
        wall = {name: 0.0 for name in agents}
        done = {name: 0 for name in agents}
        names = list(agents)
        for b, start in enumerate(range(0, args.pings, args.batch)):
            for name in (names if b % 2 == 0 else names[::-1]):
                now = time.time()
                batch = [dataclasses.replace(m, received=now) for m in streams[name][start:start + args.batch]]
                c0, w0 = time.thread_time(), time.perf_counter()
                agents[name].on_batch(batch)
                cpu[name] += time.thread_time() - c0
                wall[name] += time.perf_counter() - w0
                done[name] += len(batch)
            await asyncio.sleep(0)  # let the MQTT client write the offers
        out = {}
        for name, agent in agents.items():
            m = agent.metrics
            out[name] = {"pings": done[name], "cpu_us_per_ping": cpu[name] / done[name] * 1e6,
                         "wall_us_per_ping": wall[name] / done[name] * 1e6,
                         "offers": m.decisions.get("offered", "offered"),
                         "pings_counted": sum(m.pings.values.values())}
        return out
    finally:
        for agent in agents.values():
            await agent.stop()
        mosq.terminate()
        mosq.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--n", type=int, default=200_000, help="calls per timed loop (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="best of N loops (default %(default)s)")
    ap.add_argument("--entry-share", type=float, default=0.02, help="fresh entries per ping (default %(default)s)")
    ap.add_argument("--batch", type=int, default=50, help="pings per drained batch (default %(default)s)")
    ap.add_argument("--rate", type=float, default=27_000, help="pings/s the budget is quoted at (default %(default)s)")
    ap.add_argument("--agent", action="store_true", help="also time two whole agents (see above)")
    ap.add_argument("--pings", type=int, default=200_000, help="pings per agent with --agent (default %(default)s)")
    ap.add_argument("--devices", type=int, default=4000, help="devices with --agent (default %(default)s)")
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/metrics.json)")
    args = ap.parse_args(argv)

    impls = {"hand-written": hand_written, "prometheus_client": _prom_metrics}
    # Alternate the implementations so that load on a shared machine hits both alike.
    results: dict[str, dict[str, float]] = {k: {} for k in impls}
    for _ in range(3):
        for name, mod in impls.items():
            for op, ns in bench(mod, args).items():
                results[name][op] = min(ns, results[name].get(op, float("inf")))

    names = list(impls)
    budget_ns = 1e9 / args.rate
    rows = []
    for op in results[names[0]]:
        old, new = results[names[0]][op], results[names[1]][op]
        rows.append([op, old, new, new / old, (new - old) / budget_ns * 100 if op == "per ping" else None])
    headers = ["op"] + [f"{k} ns" for k in names] + ["ratio", f"Δ as % of a ping at {args.rate:,.0f}/s"]
    print(table(headers, rows))
    out = {"benchmark": "metrics", "machine": machine(), "args": dict(vars(args)), "results": results}
    if args.agent:
        agents = asyncio.run(bench_agents(impls, args))
        out["agents"] = agents
        rows = [[name, r["pings"], r["cpu_us_per_ping"], r["wall_us_per_ping"], r["offers"], r["pings_counted"]]
                for name, r in agents.items()]
        print("\nWhole agents, same pings (Agent.on_batch)")
        print(table(["metrics", "pings", "CPU µs/ping", "wall µs/ping", "offers", "edge_pings_total"], rows))
        old, new = (agents[k]["cpu_us_per_ping"] for k in names)
        print(f"CPU per ping, {names[1]} ÷ {names[0]}: {new / old:.3f} ({(new - old) / old:+.1%})")
    p = write_json("metrics.json", out, args.json)
    print(f"\nwritten {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
