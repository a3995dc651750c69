"""Small MQTT tools for people at a terminal: ``edge-agent watch`` (see what
the store's topics carry) and ``edge-agent ping`` (publish a ping by hand),
so a first offer needs no extra package.  Plain paho, no agent."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.transport.mqtt import MqttError, parse_url


def _client(url: str, name: str) -> paho.Client:
    host, port, tls = parse_url(url)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-{name}-{int(time.time() * 1000) % 10**8}")
    if tls:
        c.tls_set()
    try:
        c.connect(host, port, 30)
    except OSError as exc:
        raise MqttError(f"cannot connect to broker {host}:{port}: {exc}") from exc
    return c


def describe(topic: str, payload: bytes, root: str) -> str:
    """One line for a message: its topic below the store's root and its payload."""
    short = topic[len(root) + 1:] if topic.startswith(root + "/") else topic
    try:
        body = json.dumps(json.loads(payload), ensure_ascii=False, separators=(", ", ": "))
    except (ValueError, UnicodeDecodeError):
        body = payload.decode("utf-8", "replace") if payload.isascii() else f"<{len(payload)} bytes>"
    return f"{time.strftime('%H:%M:%S')}  {short:<28} {body}"


def watch(url: str, root: str, *, topics: list[str] | None = None, count: int | None = None,
          out: TextIO = sys.stdout, ready: threading.Event | None = None, banner: str | None = None) -> int:
    """Print every message on ``root/#`` (or ``topics``) until Ctrl-C or ``count`` messages
    (``banner`` goes to stderr once the broker is reached)."""
    seen = 0
    done = threading.Event()
    c = _client(url, "watch")
    if banner is not None:
        print(banner, file=sys.stderr, flush=True)

    def on_connect(client, userdata, flags, rc, props=None):
        for t in topics or [f"{root}/#"]:
            client.subscribe(t, 1)

    def on_subscribe(client, userdata, mid, rcs, props=None):
        if ready is not None:
            ready.set()

    def on_message(client, userdata, msg):
        nonlocal seen
        print(describe(msg.topic, msg.payload, root), file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.loop_start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        c.disconnect()  # first: it wakes the network thread (else loop_stop waits out a 1 s select)
        c.loop_stop()
    return 0


def publish(url: str, topic: str, body: dict) -> str:
    """Publish one JSON message at QoS 1, as a phone's app would; returns the topic."""
    c = _client(url, "pub")
    c.loop_start()
    try:
        c.publish(topic, json.dumps(body).encode(), qos=1).wait_for_publish(10)
    finally:
        c.disconnect()  # first: it wakes the network thread (else loop_stop waits out a 1 s select)
        c.loop_stop()
    return topic


def ping(url: str, root: str, device: str, body: dict, *, source: str = "uwb") -> str:
    """Publish one ping as a phone would; returns the topic."""
    return publish(url, f"{root}/ping/{source}/{device}", body)
