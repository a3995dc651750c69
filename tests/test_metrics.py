"""The hand-written Prometheus metrics: pure, no broker."""

from __future__ import annotations

import math

from edge_agent.metrics import Metrics


def test_a_broken_probe_reads_nan_and_the_scrape_still_renders():
    m = Metrics()
    m.outbox_pending.fn = lambda: 1 / 0
    m.tracked_devices.fn = lambda: math.inf
    m.pings.inc("uwb")
    text = m.render()
    assert "edge_outbox_pending NaN\n" in text
    assert "edge_tracked_devices +Inf\n" in text
    assert 'edge_pings_total{source="uwb"} 1\n' in text
