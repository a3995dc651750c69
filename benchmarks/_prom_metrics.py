"""edge_agent/metrics.py on ``prometheus_client``: the baseline that keeps
the hand-written metrics measured (issue 12; ``benchmarks/metrics.py``).

Same interface and the same ``GET /metrics`` semantics as
``edge_agent.metrics`` (the test suite passed with it in place), so it can
replace that module as it stands.  Each :class:`Metrics` has its own
``CollectorRegistry`` (several agents share a test process); the text
format is ``prometheus_client``'s, without the ``*_created`` series.

* ``counter.inc(*labelvalues, n=1)``, ``gauge.set(value, *labelvalues)``,
  ``histogram.observe(seconds)``: the hot path.  A label set's child is
  looked up once and cached, so an increment is a dict lookup plus
  ``prometheus_client``'s own (locked) increment.
* ``metric.get(*labelvalues)`` and ``metric.values`` (``{labelvalues: value}``,
  read-only, with ``clear()`` to drop every label set), read through
  ``collect()``.
* ``gauge.fn = callable``: read at scrape time; a probe that raises reads NaN.

It was not adopted: it costs 1.6-9x per metric operation and 2.7-4.5 % of
a whole agent's CPU per ping (BENCHMARKS.md, "Metrics: prometheus_client vs
hand-written").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import prometheus_client
from prometheus_client.registry import Collector, CollectorRegistry

LabelValues = tuple[str, ...]


class _Values(Mapping):
    """A metric's current values, ``{labelvalues: value}`` (a live, read-only view)."""

    __slots__ = ("_metric",)

    def __init__(self, metric: "Counter"):
        self._metric = metric

    def _snapshot(self) -> dict[LabelValues, float]:
        m = self._metric
        out: dict[LabelValues, float] = {}
        for family in m.prom.collect():
            sample = family.name + "_total" if family.type == "counter" else family.name
            for s in family.samples:
                if s.name == sample:
                    out[tuple(s.labels[n] for n in m.labels)] = s.value
        return out

    def __getitem__(self, key: LabelValues) -> float:
        return self._snapshot()[key]

    def __iter__(self) -> Iterator[LabelValues]:
        return iter(self._snapshot())

    def __len__(self) -> int:
        return len(self._snapshot())

    def keys(self):
        return self._snapshot().keys()

    def values(self):
        return self._snapshot().values()

    def items(self):
        return self._snapshot().items()

    def __repr__(self) -> str:
        return repr(self._snapshot())

    def clear(self) -> None:
        """Drop every label set (a labelled metric) or reset to 0 (an unlabelled one)."""
        self._metric._clear()


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: LabelValues = ()):
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.prom = self._make()
        self._children: dict[LabelValues, object] = {} if self.labels else {(): self.prom}
        self.values = _Values(self)

    def _make(self):
        return prometheus_client.Counter(self.name, self.help, self.labels, registry=None)

    def _child(self, labelvalues: LabelValues):
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = self.prom.labels(*labelvalues)
        return child

    def inc(self, *labelvalues: str, n: float = 1.0) -> None:
        child = self._children.get(labelvalues)
        if child is None:
            child = self._child(labelvalues)
        child.inc(n)

    def get(self, *labelvalues: str) -> float:
        return self.values._snapshot().get(tuple(str(v) for v in labelvalues), 0.0)

    def _clear(self) -> None:
        if self.labels:
            self.prom.clear()
            self._children.clear()
        elif self.kind == "gauge":
            self.prom.set(0.0)
        else:
            self.prom.reset()


class Gauge(Counter):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: LabelValues = (), fn: Callable[[], float] | None = None):
        super().__init__(name, help, labels)
        self._fn: Callable[[], float] | None = None
        if fn is not None:
            self.fn = fn

    def _make(self):
        return prometheus_client.Gauge(self.name, self.help, self.labels, registry=None)

    def set(self, v: float, *labelvalues: str) -> None:
        child = self._children.get(labelvalues)
        if child is None:
            child = self._child(labelvalues)
        child.set(v)

    @property
    def fn(self) -> Callable[[], float] | None:
        """Read the gauge from this callable at scrape time (unlabelled gauges)."""
        return self._fn

    @fn.setter
    def fn(self, fn: Callable[[], float] | None) -> None:
        if self._fn is None and fn is not None:
            self.prom.set_function(self._probe)
        self._fn = fn

    def _probe(self) -> float:
        fn = self._fn
        if fn is None:
            return math.nan
        try:
            return float(fn())
        except Exception:  # a broken probe must not break the scrape
            return math.nan


class Histogram:
    kind = "histogram"
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.5, 1.0, 2.5, 5.0)

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = BUCKETS):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.prom = prometheus_client.Histogram(name, help, buckets=self.buckets, registry=None)
        self.observe: Callable[[float], None] = self.prom.observe


class _Exposition(Collector):
    """Collects every metric of one :class:`Metrics` (those added after
    construction too), without the ``*_created`` series."""

    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def collect(self):
        for m in self.metrics.all():
            for family in m.prom.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


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
        self.storage_errors = Counter("edge_storage_errors_total", "Failed SQLite writes, by error.", ("error",))
        self.extra: list = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exposition(self))

    def all(self) -> list:
        return [v for v in vars(self).values() if isinstance(v, (Counter, Histogram))] + self.extra

    def render(self) -> str:
        """The Prometheus text format (``GET /metrics``)."""
        return prometheus_client.generate_latest(self.registry).decode()
