"""The transport's read path alone: loop-thread CPU per message of ``MqttClient``
with its short path for QoS 0 messages (``fast``) and with paho's own message
handling (``paho``), on the same flood through Mosquitto, alternated.

    python benchmarks/read_ab.py            # 3 rounds of 30,000 pings at 5,000/s each

A publisher process sends e2e-like pings at QoS 0; ``on_batch`` only counts, so
the figure is what reading and parsing a message costs the agent's loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_mosquitto  # noqa: E402  (puts this checkout first on sys.path)



def publisher(port: int, n: int, rate: float) -> None:
    """``n`` e2e-like pings at QoS 0 at ``rate``/s, then a QoS 1 ``done``."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"read-ab-pub-{os.getpid()}")
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for i in range(n):
        while time.perf_counter() < t0 + i / rate:
            time.sleep(0.0005)
        c.publish(f"store/S/ping/uwb/d{i % 4000}", json.dumps({"x": 1.0, "y": 2.0, "acc": 0.3, "seq": i}), qos=0)
    c.publish("store/S/done", b"", qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


async def run(port: int, variant: str, n: int, rate: float) -> tuple[float, float]:
    """(loop-thread CPU µs per message, messages per batch) of one variant."""
    from edge_agent.transport.mqtt import MqttClient
    from store_config.model import MqttConfig

    got, batches, done = [0], [0], asyncio.Event()

    def on_batch(msgs):
        batches[0] += 1
        for m in msgs:
            if m.topic.endswith("/done"):
                done.set()
            else:
                got[0] += 1

    cl = MqttClient(MqttConfig(url=f"mqtt://127.0.0.1:{port}"), client_id=f"read-ab-{variant}-{time.time()}",
                    subscriptions=[("store/S/#", 0)], on_batch=on_batch)
    if variant == "paho":
        cl.client.fast_message = None  # every message through paho's _handle_publish
    await cl.start()
    await cl.subscribed.wait()
    pub = mp.Process(target=publisher, args=(port, n, rate))
    pub.start()
    c0 = time.thread_time()
    await done.wait()
    cpu = time.thread_time() - c0
    await cl.stop()
    pub.join()
    return cpu / got[0] * 1e6, got[0] / batches[0]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--rate", type=float, default=5000.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="read-ab-"))
    mosq, port = start_mosquitto(work)
    res: dict[str, list[float]] = {"fast": [], "paho": []}
    try:
        for r in range(args.rounds):
            for v in (("fast", "paho") if r % 2 == 0 else ("paho", "fast")):
                us, per = await run(port, v, args.messages, args.rate)
                res[v].append(us)
                print(f"round {r + 1}  {v:<5} {us:6.1f} µs/message  {per:.1f} messages/batch", flush=True)
    finally:
        mosq.terminate()
        mosq.wait()
        shutil.rmtree(work, ignore_errors=True)
    for v, xs in res.items():
        print(f"{v:<5} median {statistics.median(xs):6.1f}  best {min(xs):6.1f} µs/message")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
