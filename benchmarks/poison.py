"""Issue 22's first finding, tried again from outside: one phone publishes
``--poison`` pings a second carrying a 400-digit number (on its own topic,
QoS 1) while another publishes ``--good`` valid pings a second; how many of
the good ones does the agent accept?  On the code before issue 22 the answer
was 21 %.

    python benchmarks/poison.py --seconds 10 --poison 100 --good 10 [--root /path/to/other/tree]

Prints accepted/sent for the good phone and the dead letters counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import ROOT, free_port, scrape, start_agent, start_mosquitto  # noqa: E402
from e2e import write_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--poison", type=float, default=100.0, help="poison pings per second")
    ap.add_argument("--good", type=float, default=10.0, help="good pings per second")
    ap.add_argument("--root", type=Path, default=ROOT, help="the tree whose agent runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = start_mosquitto(work)
        http_port = free_port()
        agent = None
        try:
            config = write_store(work, port, http_port, "P1")
            agent = start_agent(config, http_port, root=args.root)
            clients = []
            for name in ("evil", "good"):
                c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"poison-{name}")
                c.connect("127.0.0.1", port)
                c.loop_start()
                clients.append(c)
            evil, good = clients
            poison = b'{"x": 1' + b"0" * 400 + b', "y": 10}'
            t0 = time.monotonic()
            sent_good = sent_poison = 0
            while (now := time.monotonic() - t0) < args.seconds:
                while sent_poison < now * args.poison:
                    evil.publish("store/P1/ping/wifi/evil-phone", poison, qos=1)
                    sent_poison += 1
                while sent_good < now * args.good:
                    good.publish("store/P1/ping/wifi/good-phone",
                                 json.dumps({"x": 5.0 + (sent_good % 3), "y": 5.0, "acc": 3.0}), qos=1)
                    sent_good += 1
                time.sleep(0.002)
            time.sleep(1.0)  # let the last ones land
            m = scrape(http_port)
            accepted = m.get('edge_pings_total{source="wifi"}', 0.0)
            dead = sum(v for k, v in m.items() if k.startswith("edge_deadletters_total"))
            print(f"good pings sent {sent_good}, accepted {accepted:.0f} ({100 * accepted / sent_good:.0f} %); "
                  f"poison sent {sent_poison}, dead letters {dead:.0f}")
            for c in clients:
                c.loop_stop()
                c.disconnect()
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(20)
            broker.terminate()
            broker.wait(5)


if __name__ == "__main__":
    main()
