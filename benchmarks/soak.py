"""Soak: the simulator drives a separately running agent for a while; memory
and latency are sampled over time (they should plateau, not climb).

    python benchmarks/soak.py --minutes 10 --shoppers 60 --tech uwb

Starts a private Mosquitto and `edge-agent run` on a copy of the sample
store, then runs `edge-agent simulate --attach` back to back (a new seed
each round) until the time is up.  Every `--every` seconds it samples the
agent's RSS (/proc), tracked devices, pings processed and the
ping->offer latency histogram from /metrics.  Prints a table and writes
benchmarks/results/soak.json.  Needs `mosquitto`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, free_port, scrape as metrics, start_agent, start_mosquitto  # noqa: E402

from store_config import sample_path  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative Prometheus buckets (upper bound of the bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for le, c in buckets:
        if c >= target:
            return le
    return buckets[-1][0]


def latency_buckets(m: dict[str, float]) -> list[tuple[float, float]]:
    out = []
    for k, v in m.items():
        if k.startswith("edge_ping_to_offer_seconds_bucket"):
            le = k.split('le="')[1].rstrip('"}')
            out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--shoppers", type=int, default=60)
    ap.add_argument("--tech", default="uwb", choices=["exact", "uwb", "ble", "wifi", "html5"])
    ap.add_argument("--speed", type=float, default=30.0, help="simulated seconds per real second")
    ap.add_argument("--every", type=float, default=15.0, help="sampling interval, seconds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    mosq, port = start_mosquitto(work)
    http_port = free_port()
    store = work / "store"
    shutil.copytree(sample_path().parent, store, ignore=shutil.ignore_patterns("var"))
    toml = (store / "store.toml").read_text()
    toml = toml.replace('url = "mqtt://127.0.0.1:1883"', f'url = "mqtt://127.0.0.1:{port}"')
    toml = toml.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{http_port}"')
    toml += "\n[tracking]\npublish_events = true\n"
    (store / "store.toml").write_text(toml)
    samples = []
    sim = None
    agent = start_agent(store / "store.toml", http_port)
    try:
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        seed = 1
        next_sample = t0
        prev = metrics(http_port)
        print(f"{'t s':>6} {'RSS MB':>7} {'devices':>7} {'pings/s':>8} {'offers':>6} {'p50 ms':>7} {'p99 ms':>7}")
        while time.monotonic() < end:
            if sim is None or sim.poll() is not None:
                sim = subprocess.Popen([sys.executable, "-m", "edge_agent", "--log-level", "warning", "simulate",
                                        "--config", str(store / "store.toml"), "--attach", "--no-progress",
                                        "--shoppers", str(args.shoppers), "--duration", "1800",
                                        "--speed", str(args.speed), "--tech", args.tech, "--seed", str(seed),
                                        "--out", str(work / f"sim-{seed}")],
                                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                seed += 1
            now = time.monotonic()
            if now >= next_sample:
                m = metrics(http_port)
                pings = sum(v for k, v in m.items() if k.startswith("edge_pings_total"))
                prev_pings = sum(v for k, v in prev.items() if k.startswith("edge_pings_total"))
                b_now, b_prev = latency_buckets(m), dict(latency_buckets(prev))
                delta = [(le, c - b_prev.get(le, 0.0)) for le, c in b_now]
                p50, p99 = hist_quantile(delta, 0.5), hist_quantile(delta, 0.99)
                row = {"t": round(now - t0, 1), "rss_mb": round(rss_mb(agent.pid), 1),
                       "devices": m.get("edge_tracked_devices", 0),
                       "pings_per_s": round((pings - prev_pings) / max(args.every, 1e-9), 1),
                       "offers": m.get("edge_ping_to_offer_seconds_count", 0) - prev.get("edge_ping_to_offer_seconds_count", 0),
                       "p50_ms_le": p50 * 1000 if p50 is not None else None,
                       "p99_ms_le": p99 * 1000 if p99 is not None else None}
                samples.append(row)
                print(f"{row['t']:>6.0f} {row['rss_mb']:>7.1f} {row['devices']:>7.0f} {row['pings_per_s']:>8.1f} "
                      f"{row['offers']:>6.0f} {row['p50_ms_le'] or 0:>7.1f} {row['p99_ms_le'] or 0:>7.1f}", flush=True)
                prev = m
                next_sample = now + args.every
            time.sleep(0.5)
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            sim.wait(10)
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        mosq.terminate()
        mosq.wait()
        shutil.rmtree(work, ignore_errors=True)
    rss = [s["rss_mb"] for s in samples[1:]]
    half = len(rss) // 2
    summary = {"command": " ".join(sys.argv), "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
               "samples": samples}
    if half >= 1:
        summary["rss_first_half_mb"] = max(rss[:half])
        summary["rss_second_half_mb"] = max(rss[half:])
        print(f"RSS max first half {summary['rss_first_half_mb']} MB, second half {summary['rss_second_half_mb']} MB "
              f"({'plateau' if summary['rss_second_half_mb'] <= summary['rss_first_half_mb'] * 1.1 else 'CLIMBING'})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
