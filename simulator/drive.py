"""Drive an agent over MQTT exactly as phones and location engines do.

The driver is a plain paho client on its own network thread (no asyncio, so
it can run beside an agent's event loop in the same process, or against a
remote one).  It

1. subscribes to ``{R}/event/+`` (transitions; the agent needs
   ``[tracking] publish_events = true``), ``{R}/offer/+``,
   ``{R}/deadletter``, and the floor as a client sees it: ``{R}/floor``
   (retained occupancy; the copy retained from before the run is ignored)
   and ``{R}/alert/#`` (crowding and queue alerts);
2. opts its synthetic devices in (``{R}/consent/{device}`` with
   ``{"offers": true, "tracking": true}``: anonymous devices default to no
   tracking, and the agent publishes no transitions for them), at QoS 0 so
   they stay in order with the marker that follows them;
3. publishes the pings in simulated-time order (by publish time), as fast as
   the agent keeps up or paced at ``speed`` simulated seconds per second;
4. paces itself with *markers*: after every ``chunk`` pings it publishes a
   ping without a position on device ``sim-marker-{run}``, which the agent
   dead-letters (``no_position``) after everything published before it; at
   most ``window`` chunks are in flight, so the agent is never buried under
   a backlog.  At the end two markers in a row drain every event and offer.

With ``speed`` 0 the pings go out as fast as the agent takes them, so the
latency measured is under that load (an upper bound); ``speed`` 1 replays
in real time.

Ping→offer latency is wall-clock, from publishing the ping whose ``ts`` the
offer carries (the agent stamps an offer with the time of the ping that
caused it when ``[tracking] clock = "ping"``) to receiving the offer.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["Driver", "DriveError", "Collected"]


class DriveError(Exception):
    """The broker or the agent did not answer as the contract says."""


@dataclass
class Collected:
    events: list = field(default_factory=list)  # (device, event, zone, ts)
    offers: list = field(default_factory=list)  # (device, payload dict, recv perf_counter)
    deadletters: dict = field(default_factory=dict)  # reason -> count (our devices, markers excluded)
    published: int = 0
    pub_wall: dict = field(default_factory=dict)  # (device, ts rounded to ms) -> perf_counter
    timeline: list = field(default_factory=list)  # (perf_counter, simulated publish time) per ping
    floor: list = field(default_factory=list)  # (recv perf_counter, {R}/floor body) during the run
    alerts: list = field(default_factory=list)  # (recv perf_counter, {R}/alert/... body)
    wall_s: float = 0.0


class _Progress:
    def __init__(self, total: float, enabled: bool, stream=None):
        self.total = max(total, 1e-9)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.last = 0.0

    def update(self, done: float, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        frac = min(1.0, max(0.0, done / self.total))
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        self.stream.write(f"\rsimulating [{bar}] {100 * frac:3.0f}% {text}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class Driver:
    """One MQTT connection to the store's broker."""

    def __init__(self, url: str, store_id: str, *, username: str | None = None, password: str | None = None,
                 tls_ca: str | None = None, tls_insecure: bool = False, marker_timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise DriveError(f"unsupported MQTT URL {url!r} (use mqtt:// or mqtts://)")
        tls = parts.scheme in ("mqtts", "ssl")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if tls else 1883)
        self.root = f"store/{store_id}"
        self.run_id = secrets.token_hex(4)
        self.marker_device = f"sim-marker-{self.run_id}"
        self.marker_timeout = marker_timeout
        self._lock = threading.Condition()
        self._markers: set[int] = set()
        self._raw: list[tuple[str, bytes, float]] = []
        self._connected = threading.Event()
        self._subacks = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-sim-{self.run_id}")
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=tls_ca)
            if tls_insecure:
                self.client.tls_insecure_set(True)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # -- paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:
        if not rc.is_failure:
            sock = client.socket()
            try:  # paho leaves Nagle on: small pings and markers would wait for delayed ACKs
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
            self._connected.set()

    def _on_subscribe(self, client, userdata, mid, rcs, props=None) -> None:
        with self._lock:
            self._subacks += 1
            self._lock.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.perf_counter()
        if msg.topic == f"{self.root}/deadletter":
            k = self._marker_of(msg.payload)
            if k is not None:
                with self._lock:
                    self._markers.add(k)
                    self._lock.notify_all()
                return
        if msg.retain and msg.topic == f"{self.root}/floor":
            return  # retained from before this run
        with self._lock:
            self._raw.append((msg.topic, msg.payload, now))

    def _marker_of(self, payload: bytes) -> int | None:
        try:
            body = json.loads(payload)
            if not body.get("topic", "").endswith("/" + self.marker_device):
                return None
            inner = json.loads(base64.b64decode(body["payload_b64"]))
            return int(inner["sim_marker"])
        except (ValueError, KeyError, TypeError):
            return None

    # -- setup
    def connect(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise DriveError(f"cannot reach the broker at {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise DriveError(f"the broker at {self.host}:{self.port} refused or did not answer the connection")
        filters = [f"{self.root}/event/+", f"{self.root}/offer/+", f"{self.root}/deadletter",
                   f"{self.root}/floor", f"{self.root}/alert/#"]
        for flt in filters:
            # QoS 0 throughout: one QoS keeps the broker's per-connection order,
            # so a marker's dead letter cannot overtake an earlier offer
            self.client.subscribe(flt, qos=0)
        with self._lock:
            if not self._lock.wait_for(lambda: self._subacks >= len(filters), timeout):
                raise DriveError("the broker did not acknowledge the subscriptions")

    def close(self) -> None:
        # disconnect before loop_stop: it wakes the network thread (loop_stop alone waits out a 1 s select)
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        self.client.loop_stop()

    # -- markers
    def _send_marker(self, k: int) -> None:
        self.client.publish(f"{self.root}/ping/uwb/{self.marker_device}",
                            json.dumps({"sim_marker": k}).encode(), qos=0)

    def _wait_marker(self, k: int) -> None:
        with self._lock:
            ok = self._lock.wait_for(lambda: k in self._markers, self.marker_timeout)
        if not ok:
            raise DriveError(
                f"the agent did not dead-letter marker {k} within {self.marker_timeout:.0f} s: is an agent "
                f"serving store {self.root!r} on this broker (and for --attach, with "
                f"[tracking] publish_events = true)?")

    # -- the run
    def run(self, samples, *, epoch: float, duration: float, speed: float = 0.0, chunk: int = 100,
            window: int = 2, progress: bool = True) -> Collected:
        """Publish ``samples`` (those with a payload) and collect what comes back."""
        out = Collected()
        devices = sorted({s.device for s in samples})
        for dev in devices:
            self.client.publish(f"{self.root}/consent/{dev}",
                                json.dumps({"offers": True, "tracking": True}).encode(), qos=0)
        marker = 0
        self._send_marker(marker)
        self._wait_marker(marker)

        sendable = sorted((s for s in samples if s.payload is not None), key=lambda s: (s.pub, s.shopper, s.t))
        bar = _Progress(duration, progress)
        seq: dict[str, int] = {}
        wall0 = time.perf_counter()
        pub_wall = out.pub_wall
        timeline = out.timeline
        for i, s in enumerate(sendable):
            if i and i % chunk == 0:
                marker += 1
                self._send_marker(marker)
                if marker - window >= 1:
                    self._wait_marker(marker - window)
                bar.update(s.pub, f"{s.pub:.0f}/{duration:.0f} s simulated, {out.published} pings, "
                                  f"{self._count('/offer/')} offers")
            if speed > 0:
                delay = wall0 + s.pub / speed - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing to --speed, not synchronisation
            n = seq.get(s.device, 0) + 1
            seq[s.device] = n
            body = dict(s.payload)
            if "coords" in body:
                ms = round((epoch + s.t) * 1000.0)
                body["timestamp"] = ms
                key_ts = round(ms / 1000.0, 3)
            else:
                key_ts = round(epoch + s.t, 3)
                body["ts"] = key_ts
                body["seq"] = n
            topic = f"{self.root}/ping/{s.source}/{s.device}"
            payload = json.dumps(body, separators=(",", ":")).encode()
            sent = pub_wall[(s.device, key_ts)] = time.perf_counter()
            timeline.append((sent, s.pub))
            self.client.publish(topic, payload, qos=0)
            out.published += 1
        # drain: the second marker goes out after the first came back, so it is
        # processed in a later batch than every ping (and its events/offers)
        for _ in range(2):
            marker += 1
            self._send_marker(marker)
            self._wait_marker(marker)
        out.wall_s = time.perf_counter() - wall0
        bar.update(duration, f"{duration:.0f}/{duration:.0f} s simulated, {out.published} pings, "
                             f"{self._count('/offer/')} offers", force=True)
        bar.close()
        self._collect(out, set(devices), epoch)
        return out

    def _count(self, part: str) -> int:
        with self._lock:
            return sum(1 for t, _, _ in self._raw if part in t)

    def _collect(self, out: Collected, devices: set[str], epoch: float) -> None:
        with self._lock:
            raw = list(self._raw)
        ev_prefix = f"{self.root}/event/"
        of_prefix = f"{self.root}/offer/"
        for topic, payload, at in raw:
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            if topic.startswith(ev_prefix):
                dev = topic[len(ev_prefix):]
                if dev in devices and isinstance(body, dict):
                    out.events.append((dev, body.get("event"), body.get("zone"), float(body.get("ts", 0)) - epoch))
            elif topic.startswith(of_prefix):
                dev = topic[len(of_prefix):]
                if dev in devices and isinstance(body, dict) and "promotion_id" in body:
                    out.offers.append((dev, body, at))
            elif topic == f"{self.root}/floor" and isinstance(body, dict):
                out.floor.append((at, body))
            elif topic.startswith(f"{self.root}/alert/") and isinstance(body, dict):
                out.alerts.append((at, body))
            elif topic == f"{self.root}/deadletter" and isinstance(body, dict):
                dev = body.get("topic", "").rsplit("/", 1)[-1]
                if dev in devices:
                    r = str(body.get("reason"))
                    out.deadletters[r] = out.deadletters.get(r, 0) + 1
