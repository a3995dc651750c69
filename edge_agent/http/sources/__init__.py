"""Location feeds stores already run, adapted to the one :class:`Ping`.

Every adapter only turns a vendor's records into pings (device ids
pseudonymised, positions in the local frame or WGS84, accuracy in metres) and
hands them to :meth:`Agent.ingest_pings` (HTTP) or returns them to
``Agent.on_batch`` (MQTT); tracking, decisions, metrics and dead letters are
the agent's, shared by every source.

- :mod:`.meraki` — Cisco Meraki Scanning API v3 webhooks (HTTP).
- :mod:`.aruba` — Aruba ALE location records (MQTT topic and HTTP).
- Raw BLE beacon sightings need no adapter: they are ``beacons`` in a ping
  (``geometry.beacons``; ``[sources.ble]`` tunes the model).
"""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from . import aruba, meraki

__all__ = ["add_routes", "mqtt_routes"]


def add_routes(app: web.Application) -> None:
    """Register the vendor ingest endpoints (each answers 404 until its
    ``[sources.NAME]`` table is configured)."""
    meraki.add_routes(app)
    aruba.add_routes(app)


def mqtt_routes(agent) -> list[tuple[str, int, Callable]]:
    """``(topic filter, qos, decoder(Message) -> [Ping])`` for the agent to
    subscribe to, from the running config."""
    routes = []
    r = aruba.mqtt_route(agent)
    if r is not None:
        routes.append(r)
    return routes
