"""Prometheus metrics, hand-rolled to stay cheap on the hot path.

A counter increment is one dict update; rendering happens only on scrape.
Names follow DESIGN.md (``edge_pings_total{source}``, ...).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from functools import partial
from typing import Callable


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labelvalues: str, n: float = 1.0) -> None:
        self.values[labelvalues] = self.values.get(labelvalues, 0.0) + n

    def get(self, *labelvalues: str) -> float:
        return self.values.get(labelvalues, 0.0)

    def render(self, out: list[str], kind: str = "counter") -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {kind}")
        if not self.labels and not self.values:
            out.append(f"{self.name} 0")
        for lv, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labels, lv)} {_num(v)}")


class Gauge(Counter):
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), fn: Callable[[], float] | None = None):
        super().__init__(name, help, labels)
        self.fn = fn

    def set(self, v: float, *labelvalues: str) -> None:
        self.values[labelvalues] = v

    def render(self, out: list[str], kind: str = "gauge") -> None:
        if self.fn is not None:
            try:
                self.values[()] = float(self.fn())
            except Exception:  # a broken probe must not break the scrape
                self.values[()] = math.nan
        super().render(out, "gauge")


class Histogram:
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.5, 1.0, 2.5, 5.0)

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = BUCKETS):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} histogram")
        acc = 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{_num(b)}"}} {acc}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {_num(self.sum)}")
        out.append(f"{self.name}_count {self.count}")


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values)) + "}"


def _num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class Metrics:
    """Every metric of one agent."""

    def __init__(self) -> None:
        self.pings = Counter("edge_pings_total", "Accepted location pings by source.", ("source",))
        self.deadletters = Counter("edge_deadletters_total", "Rejected payloads by reason.", ("reason",))
        self.transitions = Counter("edge_transitions_total", "Fence transitions by event.", ("event",))
        self.decisions = Counter("edge_decisions_total", "Offer decisions by outcome and reason.",
                                 ("outcome", "reason"))
        self.alerts = Counter("edge_alerts_total", "Associate alerts raised by kind.", ("kind",))
        self.outbox_pending = Gauge("edge_outbox_pending", "Events waiting in the outbox for central.")
        self.ping_to_offer = Histogram("edge_ping_to_offer_seconds",
                                       "From ping receipt to the broker's acknowledgement of the offer.")
        self.broker_connected = Gauge("edge_broker_connected", "1 when the MQTT broker connection is up.")
        self.config_info = Gauge("edge_config_info", "The running configuration version.", ("version",))
        self.config_reloads = Counter("edge_config_reloads_total", "Configuration reloads by result.", ("result",))
        self.actions_refused = Counter("edge_actions_refused_total", "Refused offer actions (apply/dismiss) by reason.",
                                       ("reason",))
        self.commit_seconds = Gauge("edge_commit_seconds", "Duration of the last SQLite commit.")
        self.queue_depth = Gauge("edge_queue_depth", "Messages in the batch last drained from the broker (grows when the agent falls behind) plus QoS 1 messages awaiting a storage retry.")
        self.tracked_devices = Gauge("edge_tracked_devices", "Devices currently tracked.")
        self.offers_expired = Counter("edge_offers_expired_total", "Offers dropped undelivered at expiry.")
        self.last_sync = Gauge("edge_last_sync_timestamp_seconds", "Time of the last successful sync.")
        self.outbox_shed = Counter("edge_outbox_shed_total", "Outbox events shed over the bound, by kind.",
                                   ("kind",))
        self.outbox_aside = Gauge("edge_outbox_set_aside", "Events central refused (4xx), kept aside.")
        self.sync_errors = Counter("edge_sync_errors_total", "Failed sync attempts by kind.", ("kind",))
        self.bundles = Counter("edge_bundles_total", "Central bundles by result.", ("result",))
        self.spoofed = Counter("edge_spoofed_pings_total", "Pings ignored for triggering, by reason.", ("reason",))
        self.unknown_beacons = Counter("edge_unknown_beacons_total",
                                       "BLE readings naming a beacon not in the layout (ignored).")
        self.pings_shed = Counter("edge_pings_shed_total", "Pings shed under overload, by reason.", ("reason",))
        self.storage_errors = Counter("edge_storage_errors_total", "Failed SQLite writes, by error: full, readonly, "
                                      "busy, io, corrupt (moved aside) or the error's type.", ("error",))
        self.storage_ok = Gauge("edge_storage_ok", "0 while the ledger takes no writes (then /readyz is 503), else 1.")
        self.internal_errors = Counter("edge_internal_errors_total", "Messages dead-lettered as 'internal': a "
                                       "failure in the step no contract reason names, by exception type; also "
                                       "second commits and pending rows that failed on one (a bug, not the disk).",
                                       ("error",))
        self.http_accept_errors = Counter("edge_http_accept_errors_total", "HTTP connections the agent could not "
                                          "accept (out of file descriptors), by errno name.", ("error",))
        self.http_limited = Counter("edge_http_limited_total",
                                    "Shop requests and page messages refused by a rate limit, by path and limit "
                                    "(device or address).", ("path", "by"))
        self.shop_sockets = Gauge("edge_shop_sockets", "Open WebSockets of the shop page.")
        self.delivery_pending = Gauge("edge_delivery_pending",
                                      "Offers, codes and notices waiting for the push webhook.")
        self.delivery = Counter("edge_delivery_total", "Push webhook attempts by result (ok, retry, aside).",
                                ("result",))
        self.redemptions = Counter("edge_redemptions_total", "Till redemption attempts by promotion and outcome "
                                   "(redeemed, retry, already_redeemed, unknown_code, expired, budget).",
                                   ("promotion", "outcome"))
        self.conversions = Counter("edge_conversions_total", "Treated conversions (redemptions and attributed "
                                   "purchases) by promotion.", ("promotion",))
        self.budget_remaining = Gauge("edge_budget_remaining", "What is left of a promotion's tighter budget "
                                      "(max_offers or max_redemptions).", ("promotion",))

        self.zone_occupancy = Gauge("edge_zone_occupancy", "Devices in each fence now (associates' devices "
                                    "not counted).", ("zone",))
        self.visits = Counter("edge_visits_total", "Visits ended (silence), by class: bounce, visit, engaged.",
                              ("class",))
        self.extra: list = []

    def all(self) -> list:
        return [v for v in vars(self).values() if isinstance(v, (Counter, Histogram))] + self.extra

    def render(self) -> str:
        out: list[str] = []
        for m in self.all():
            m.render(out)
        return "\n".join(out) + "\n"


STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Stages:
    """Where an MQTT batch's milliseconds go (``[ingest] stages = true``): one
    ``edge_stage_{name}_seconds`` histogram per stage, observed once per batch,
    and a debug log line per batch (logger ``edge_agent.stages``).

    The stamps (``time.perf_counter``), in order:

    ``read``     the socket turned readable (the transport's callback began);
    ``handed``   paho read and parsed the batch (``on_message`` for each message)
                 and the transport handed it to the agent;
    ``decoded``  the pipeline routed and decoded its messages (the step's ping
                 work begins);
    ``stepped``  the pure step returned its effects;
    ``committed`` the batch's first SQLite commit returned (its rows, or for a
                 batch that publishes, its pending record: ``Store.hold``);
    ``published`` offers, alerts and acks were handed to paho and the outlets;
    ``written``  the socket's writer was called (only for batches that published:
                 at once for one that holds its rows, before its second commit;
                 otherwise when the loop next schedules it).

    Stage *k* is the time between stamp *k* and stamp *k + 1*; ``batch`` is
    ``read`` → ``published``.  The debug line follows the write, and gives beside
    ``batch`` the loop thread's CPU time over it (``time.thread_time``): where the
    two agree, the batch computed; where ``batch`` is longer, it waited (for a
    core, the disk, or the GIL)."""

    NAMES = ("read", "decode", "step", "commit", "publish")
    HELP = {
        "read": "From the socket turning readable to the batch handed to the agent: paho's read and parse "
                "(per batch).",
        "decode": "The pipeline's routing and decoding of the batch's messages (per batch).",
        "step": "The pure step's positioning, matching, tracking and decisions (per batch).",
        "commit": "The batch's rows (or, when it publishes, its pending record) written and committed (per batch).",
        "publish": "Offers, alerts and acks handed to paho and the in-process outlets (per batch).",
        "write": "From the batch's publishes to the loop calling the socket's writer (per batch that published).",
        "batch": "From the socket turning readable to the batch's publishes handed to paho (per batch).",
    }

    def __init__(self, metrics: "Metrics", clock: Callable[[], float] | None = None):
        self.clock = clock or time.perf_counter
        self.log = logging.getLogger("edge_agent.stages")
        self.hist = {name: Histogram(f"edge_stage_{name}_seconds", self.HELP[name], STAGE_BUCKETS)
                     for name in (*self.NAMES, "write", "batch")}
        self.size = Histogram("edge_stage_batch_messages", "Messages per MQTT batch (per batch).", SIZE_BUCKETS)
        metrics.extra += [*self.hist.values(), self.size]
        self.read_at = 0.0  # set by the transport when its socket turns readable
        self.cpu_at = self.cpu_end = 0.0  # the loop thread's CPU time (time.thread_time) at read and published
        self.stamps: list | None = None  # the batch in progress (None: outside a transport batch)
        self.last: dict | None = None  # the last batch: {"n", "stamps": [read, handed, ..., published, written?]}
        self._unwritten: list[dict] = []
        self._logline: dict | None = None

    def around(self, pipeline) -> "Stages":
        """Stamp ``decoded`` when the pipeline's ping work begins (after routing and decoding)."""
        pipeline.on_decoded = partial(self.mark, 2)
        return self

    # the transport
    def readable(self) -> None:
        self.read_at = self.clock()
        self.cpu_at = time.thread_time()

    def begin(self) -> None:
        """The transport hands a batch to the agent."""
        self.stamps = [self.read_at, self.clock(), None, None, None, None]

    def done(self) -> None:
        """The batch is over and written (one that failed keeps no record): its debug line,
        after the write so that the line's own cost delays no offer."""
        self.stamps = None
        b, self._logline = self._logline, None
        if b is not None and self.log.isEnabledFor(logging.DEBUG):
            n, offers, s = b["n"], b["offers"], b["stamps"]
            self.log.debug("batch of %d, %d offers: read %.3f decode %.3f step %.3f commit %.3f publish %.3f = %.3f ms"
                           " (cpu %.3f ms)%s", n, offers, *((y - x) * 1e3 for x, y in zip(s, s[1:6])),
                           (s[5] - s[0]) * 1e3, b["cpu"] * 1e3,
                           f", written +{(s[6] - s[5]) * 1e3:.3f} ms" if len(s) > 6 else "")

    def writable(self) -> None:
        s = self.stamps
        if s is not None and s[5] is not None and len(s) == 6:  # the batch in progress wrote its publishes
            s.append(self.clock())
            self.hist["write"].observe(s[6] - s[5])
        if self._unwritten:
            t = self.clock()
            for b in self._unwritten:
                b["stamps"].append(t)
                self.hist["write"].observe(t - b["stamps"][5])
            self._unwritten = []

    # the agent (no-ops outside a transport batch: ticks, HTTP, retries)
    def mark(self, i: int) -> None:
        """Stamp ``i`` (2 decoded, 3 stepped, 4 committed, 5 published) of the batch in progress."""
        if self.stamps is not None:
            if i == 5:  # CPU inside the wall interval: read after read_at, here before the stamp
                self.cpu_end = time.thread_time()
            self.stamps[i] = self.clock()

    def end(self, n: int, offers: int, published: bool) -> None:
        s, self.stamps = self.stamps, None
        if s is None:
            return
        if s[5] is None:
            self.cpu_end = time.thread_time()
            s[5] = self.clock()
        if None in s:
            return
        cpu = self.cpu_end - self.cpu_at
        for name, a, b in zip(self.NAMES, s, s[1:]):
            self.hist[name].observe(b - a)
        self.hist["batch"].observe(s[5] - s[0])
        self.size.observe(n)
        self.last = self._logline = {"n": n, "offers": offers, "stamps": s, "cpu": cpu}
        if published and len(s) == 6:
            self._unwritten.append(self.last)
