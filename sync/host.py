"""What the sync layer needs from the service that runs it — and nothing more.

``sync/`` never imports ``edge_agent``: the composition root
(``edge_agent/service.py``) hands :class:`~sync.tasks.Sync` the objects
below, and the uplinks and the downlink reach them through the
:class:`SyncHost` that ``Sync`` is.  Each protocol lists exactly what sync
uses, so a new shell only has to provide these few names.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Callable, Protocol

from store_config.model import MqttConfig, StoreConfig

from .outbox import Outbox


class SyncStore(Protocol):
    """The SQLite file holding the outbox (the agent's ledger): sync runs its
    own short transactions on it, on the loop thread."""

    conn: sqlite3.Connection
    outbox: Outbox

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """End a failed transaction (also when SQLite has already rolled it back)."""
        ...


class CounterLike(Protocol):
    def inc(self, *labelvalues: str, n: float = 1.0) -> None: ...


class GaugeLike(Protocol):
    fn: Callable[[], float] | None

    def set(self, v: float, *labelvalues: str) -> None: ...


class SyncMetrics(Protocol):
    """The metrics sync updates (names as in DESIGN.md / ``edge_agent.metrics``)."""

    bundles: CounterLike  # edge_bundles_total{result}
    sync_errors: CounterLike  # edge_sync_errors_total{kind}
    outbox_shed: CounterLike  # edge_outbox_shed_total{kind}
    last_sync: GaugeLike  # edge_last_sync_timestamp_seconds
    outbox_aside: GaugeLike  # edge_outbox_set_aside (sync sets its probe)


class UplinkMqttClient(Protocol):
    """The loop-driven paho client the MQTT uplink publishes with."""

    connected: asyncio.Event

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int: ...


class MqttClientFactory(Protocol):
    """Builds an :class:`UplinkMqttClient` (``edge_agent.transport.mqtt.MqttClient`` itself fits)."""

    def __call__(self, cfg: MqttConfig, *, client_id: str, subscriptions: list[tuple[str, int]],
                 on_batch: Callable[[list[Any]], None], on_published: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = ...) -> UplinkMqttClient: ...


class SyncHost(Protocol):
    """What the uplinks and the downlink use (implemented by :class:`~sync.tasks.Sync`)."""

    store: SyncStore
    metrics: SyncMetrics
    mqtt_client: MqttClientFactory | None

    @property
    def cfg(self) -> StoreConfig:
        """The configuration in force (it changes when a bundle or a reload is installed)."""
        ...

    def clock(self) -> float: ...

    def install(self, cfg: StoreConfig, *, inventory_ts: float | None = None) -> None:
        """Swap in a validated configuration (the agent's ``install``)."""
        ...

    def notify(self, kind: str, data: dict[str, Any]) -> None: ...

    def write(self, fn: Callable[[Any], Any]) -> Any: ...
