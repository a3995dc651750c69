"""One simulation run: plan (pure, seeded), drive (MQTT), score, report.

``simulate(cfg, broker_url, ...)`` needs an agent already serving the store
on that broker with ``[tracking] publish_events = true`` (and, to run faster
than real time, ``clock = "ping"``).  ``edge-agent simulate`` starts one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from geometry.frames import LocalFrame
from store_config.lint import lint

from .crowd import floor_report, make_rush
from .drive import Driver
from .render import render_map
from .report import build_report, write_report
from .sensors import TECHS, reported_fixes, sample_shopper
from .shoppers import make_shoppers
from .space import build_space
from .truth import presences, score, tolerance_s, true_visits

__all__ = ["Plan", "plan", "simulate", "sim_epoch"]


@dataclass
class Plan:
    space: object
    shoppers: list
    samples: list
    device_shopper: dict


def sim_epoch(timezone: str, duration: float, now: float) -> tuple[float, str]:
    """Start of the simulated day: 09:00 store time on the latest day whose run
    ends at least a minute before ``now`` (pings must not come from the
    future).  Deterministic for a given day."""
    tz = ZoneInfo(timezone)
    day = datetime.fromtimestamp(now, tz).date()
    while True:
        start = datetime(day.year, day.month, day.day, 9, 0, tzinfo=tz)
        if start.timestamp() + duration + 60 <= now:
            return start.timestamp(), start.isoformat()
        day -= timedelta(days=1)


def plan(cfg, *, shoppers: int, duration: float, seed: int, tech: str, mac_randomisation: bool = False,
         crowd: bool = False) -> Plan:
    """Shoppers and every sensor sample of the run (pure, seeded).  ``crowd``:
    the rush at the tills of :mod:`simulator.crowd` instead of ordinary shoppers."""
    if tech not in TECHS:
        raise ValueError(f"unknown tech {tech!r} (known: {', '.join(TECHS)})")
    if shoppers < 0 or duration <= 0:
        raise ValueError("--shoppers must be ≥ 0 and --duration > 0")
    space = build_space(cfg, 0)
    make = make_rush if crowd else make_shoppers
    people = make(cfg, space, n=shoppers, duration=duration, seed=seed)
    frame = LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing)
    samples = []
    device_shopper: dict[str, int] = {}
    for p in people:
        ss = sample_shopper(p, tech, cfg=cfg, frame=frame, seed=seed, duration=duration,
                            mac_randomisation=mac_randomisation)
        for s in ss:
            device_shopper[s.device] = s.shopper
        samples.extend(ss)
    return Plan(space, people, samples, device_shopper)


def simulate(cfg, broker_url: str, *, shoppers: int, duration: float, seed: int, tech: str, out: Path,
             speed: float = 0.0, mac_randomisation: bool = False, progress: bool = True, mode: str = "embedded",
             now: float, username: str | None = None, password: str | None = None,
             tls_ca: str | None = None, broker: str = "external", baseline: dict | None = None,
             crowd: bool = False) -> dict:
    """Run the simulation against the agent behind ``broker_url``; write
    ``out/report.json``, ``out/report.md`` and ``out/map.png``; return the report.

    ``cfg`` is the store as the agent runs it: its ``[tracking] fusion`` names
    the tracker the report scores (``fused`` or ``single_fix``).  ``broker``
    names the broker the latency figures come from (``mosquitto``, ``amqtt``,
    or ``external`` for one the caller gave).  ``baseline``: the report of the
    same run (same seed, store and technology) under the other tracker; the
    report then carries both side by side (``compare``).  ``crowd``: the
    rush at the tills (:mod:`simulator.crowd`); the report gains ``floor``
    (peak occupancy against capacity, when crowding and queue alerts fired),
    learnt from ``{R}/floor`` and ``{R}/alert/#``.  Run it paced (``speed`` > 0):
    the agent decides crowding and queues once a wall-clock second.
    """
    out = Path(out)
    problems = list(cfg.warnings) + lint(cfg, tech=tech)
    pl = plan(cfg, shoppers=shoppers, duration=duration, seed=seed, tech=tech,
              mac_randomisation=mac_randomisation, crowd=crowd)
    if crowd and speed <= 0:
        raise ValueError("a crowd run needs --speed > 0: the agent decides crowding and queues once a second")
    epoch, sim_start = sim_epoch(cfg.timezone, duration, now)
    driver = Driver(broker_url, cfg.store_id, username=username, password=password, tls_ca=tls_ca)
    driver.connect()
    try:
        collected = driver.run(pl.samples, epoch=epoch, duration=duration, speed=speed, progress=progress)
    finally:
        driver.close()

    visits = true_visits(cfg, pl.samples)
    pres = presences(collected.events, pl.device_shopper, end=duration)
    offers_by_zone: dict[str, int] = {}
    latencies = []
    for device, body, at in collected.offers:
        z = str(body.get("zone"))
        offers_by_zone[z] = offers_by_zone.get(z, 0) + 1
        ts = body.get("ts")
        if isinstance(ts, (int, float)) and math.isfinite(ts):
            sent = collected.pub_wall.get((device, round(float(ts), 3)))
            if sent is not None:
                latencies.append(max(0.0, (at - sent) * 1000.0))
    scored = score(cfg, visits, pres, offers_by_zone, tol=tolerance_s(tech))
    report = build_report(cfg=cfg, tech=tech, seed=seed, shoppers=shoppers, duration=duration,
                          mac_randomisation=mac_randomisation, mode=mode, zones=scored.zones, problems=problems,
                          samples=pl.samples, collected=collected, latencies_ms=latencies, visits=visits,
                          sim_start=sim_start, device_count=len(pl.device_shopper), broker=broker,
                          tracker="fused" if cfg.tracking.fusion else "single_fix", baseline=baseline,
                          misses=scored.misses, false_entries=scored.false_entries,
                          floor=floor_report(cfg, pl.shoppers, duration=duration, floor_msgs=collected.floor,
                                             alert_msgs=collected.alerts, timeline=collected.timeline,
                                             speed=speed) if crowd else None)
    write_report(report, out)
    frame = LocalFrame(cfg.anchor.lat, cfg.anchor.lon, cfg.anchor.bearing)
    render_map(cfg, pl.space, pl.shoppers, pl.samples, report, out / "map.png",
               fixes=reported_fixes(pl.samples, cfg=cfg, frame=frame), misses=scored.misses,
               false_entries=scored.false_entries)
    return report
