"""What each piece of an offer's path costs, paired inside one process.

``offer_batch.py`` times an offer's batch from its hand-over to the offer's write.
Comparing two trees that way swings by ±10 % from run to run on a shared VM, more
than most single pieces cost.  Here every offer batch of one run is assigned at
random to A (the code as it is) or B (one piece replaced), so both see the same
machine, the same warm-up and the same cold caches; the difference of their
medians is what the piece costs *where it runs*, once in ~50 batches, with the
other batches' code in the caches.  (In a tight loop the same pieces cost a
third to a tenth as much.)  The replacements are measurement devices, not
alternatives: they drop work the agent needs.

    python benchmarks/offer_pieces.py                        # every piece, 60,000 pings each
    python benchmarks/offer_pieces.py --pieces seal,record --seeds 1,2,3

Pieces (B):
  seal        the raw topic is not sealed (AES-GCM) into the pending record
  pack        the rows are not packed (msgpack): a blob of the same size instead
  record      the packed record is appended to a file instead of SQLite's
              INSERT into ``pending`` and its COMMIT (the journal, not built)
  paho        the offer goes through paho's ``publish(qos=1)`` instead of
              ``MqttClient.publish_qos1`` (B - A: what the short path saves)
  publish     the offer is not published at all (JSON, topic, paho, in-flight)
  alerts      associates' alert checks on the entry and the offer are skipped

Writes benchmarks/results/offer_pieces.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time

from _common import machine, write_json

import offer_batch
from edge_agent import service
from edge_agent.pipeline import alerts as alerts_mod
from edge_agent.pipeline import effects as fx
from edge_agent.storage import store as store_mod
from edge_agent.transport import mqtt as mqtt_mod
from edge_agent.transport import offers as offers_mod

B = False  # the batch in progress runs piece B


def _patch(obj, name: str, replacement_for):
    """obj.name becomes ``replacement_for(original)`` while B is on, the original otherwise."""
    orig = getattr(obj, name)
    alt = replacement_for(orig)

    def w(*a, **k):
        return (alt if B else orig)(*a, **k)

    setattr(obj, name, w)


def piece_seal():
    _patch(store_mod.Store, "_sealed", lambda orig: lambda self, r: fx.OfferRow(
        r.offer_id, r.device, r.promotion_id, r.zone, r.ts, r.expires, r.payload, None, None))


def piece_pack():
    _patch(store_mod, "pack_rows", lambda orig: lambda rows: b"x" * 950)


def piece_record():
    fd = os.open(os.path.join(tempfile.mkdtemp(prefix="offer-pieces-"), "journal"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def alt(orig):
        def hold(self, rows):
            rows = [self._sealed(r) if type(r) is fx.OfferRow and r.topic_device else r for r in rows]
            os.write(fd, store_mod.pack_rows(rows))
            return rows, 0  # no pending row: settle drops "record 0", which is none
        return hold
    _patch(store_mod.Store, "hold", alt)


def piece_paho():
    _patch(mqtt_mod.MqttClient, "publish_qos1",
           lambda orig: lambda self, topic, payload: self.client.publish(topic, payload, qos=1).mid)


def piece_publish():
    _patch(offers_mod.OfferWire, "publish", lambda orig: lambda self, device, payload, received: None)


def piece_alerts():
    for name in ("on_enter", "on_offer"):
        _patch(alerts_mod.AlertManager, name, lambda orig: lambda self, *a, **k: None)


PIECES = {"seal": piece_seal, "pack": piece_pack, "record": piece_record, "paho": piece_paho,
          "publish": piece_publish, "alerts": piece_alerts}


def run(piece: str, seed: int, pings: int) -> dict:
    """One process per piece and seed (the patches stay): A and B medians, µs."""
    global B
    PIECES[piece]()
    rng = random.Random(seed)
    times: dict[bool, list[float]] = {False: [], True: []}
    t0 = [0]
    on_batch = service.Agent.on_batch

    def timed_on_batch(self, msgs):
        global B
        B = any(offer_batch.is_entry(m.payload) for m in msgs) and rng.random() < 0.5
        t0[0] = time.thread_time_ns()
        try:
            return on_batch(self, msgs)
        finally:
            B = False

    send_now = mqtt_mod.MqttClient.send_now

    def timed_send_now(self):
        times[B].append((time.thread_time_ns() - t0[0]) / 1e3)
        return send_now(self)

    service.Agent.on_batch = timed_on_batch
    mqtt_mod.MqttClient.send_now = timed_send_now
    args = argparse.Namespace(pings=pings, batch=2, devices=4000, entry_share=0.02, profile=None, out=None)
    asyncio.run(offer_batch.measure(args))
    out = {}
    for k, xs in times.items():
        xs = xs[len(xs) // 5:]  # the first fifth warms up
        out["B" if k else "A"] = {"n": len(xs), "p50_us": round(statistics.median(xs), 1)}
    out["B_minus_A_us"] = round(out["B"]["p50_us"] - out["A"]["p50_us"], 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pieces", default=",".join(PIECES))
    ap.add_argument("--seeds", default="1,2", help="one run per piece and seed (different random assignments)")
    ap.add_argument("--pings", type=int, default=60000)
    ap.add_argument("--one", nargs=2, metavar=("PIECE", "SEED"), help=argparse.SUPPRESS)  # a child run
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.one:
        import json
        print(json.dumps(run(args.one[0], int(args.one[1]), args.pings)))
        return 0
    import json
    import subprocess
    import sys
    results: dict[str, list[dict]] = {}
    print(f"{'piece':<8} {'seed':>4} {'A n':>5} {'A p50':>7} {'B n':>5} {'B p50':>7} {'B-A µs':>7}")
    for piece in args.pieces.split(","):
        for seed in args.seeds.split(","):
            r = subprocess.run([sys.executable, __file__, "--one", piece, seed, "--pings", str(args.pings)],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            results.setdefault(piece, []).append({"seed": int(seed), **res})
            print(f"{piece:<8} {seed:>4} {res['A']['n']:>5} {res['A']['p50_us']:>7.1f} {res['B']['n']:>5} "
                  f"{res['B']['p50_us']:>7.1f} {res['B_minus_A_us']:>7.1f}")
    write_json("offer_pieces.json", {"machine": machine(), "args": vars(args), "pieces": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
