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

from edge_agent.transport.mqtt import MqttError, parse_url, tls_context
from store_config.model import MqttConfig


def _client(url: str, name: str, mqtt: MqttConfig | None = None) -> paho.Client:
    """A connected client, its network thread started; ``mqtt`` (a store's ``[mqtt]``)
    gives the login and TLS files.  A broker that is not up or refuses is an MqttError."""
    host, port, tls = parse_url(url)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-{name}-{int(time.time() * 1000) % 10**8}")
    if mqtt is not None and mqtt.username:
        c.username_pw_set(mqtt.username, mqtt.password)
    if tls:
        c.tls_set_context(tls_context(mqtt or MqttConfig()))  # without a config: the system's CAs
    answered = threading.Event()
    refused: list[str] = []

    def on_connect(client, userdata, flags, rc, props=None):
        if rc.is_failure:
            refused.append(str(rc))
        answered.set()

    c.on_connect = on_connect
    try:
        c.connect(host, port, 30)
    except (OSError, ValueError) as exc:
        raise MqttError(f"cannot connect to broker {host}:{port}: {exc}; is the broker up at that address?") from exc
    c.loop_start()
    if not answered.wait(30) or refused:
        c.disconnect()  # first: it wakes the network thread (else loop_stop waits out a 1 s select)
        c.loop_stop()
        login = (f" as [mqtt] username {mqtt.username!r}: {refused[0]}; check [mqtt] username and password"
                 if mqtt is not None and mqtt.username else
                 f": {refused[0]}; a broker that wants a login: give --config with the store's [mqtt] username")
        raise MqttError(f"broker {host}:{port} refused the connection{login}" if refused
                        else f"broker {host}:{port} did not answer the MQTT CONNECT within 30 s")
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
          out: TextIO = sys.stdout, ready: threading.Event | None = None, banner: str | None = None,
          mqtt: MqttConfig | None = None) -> int:
    """Print every message on ``root/#`` (or ``topics``) until Ctrl-C or ``count`` messages
    (``banner`` goes to stderr once the broker has acknowledged the subscription)."""
    seen = 0
    done = threading.Event()
    announced = False

    def subscribe(client):
        client.subscribe([(t, 1) for t in topics or [f"{root}/#"]])

    def on_connect(client, userdata, flags, rc, props=None):  # after a reconnect
        if not rc.is_failure:
            subscribe(client)

    def on_subscribe(client, userdata, mid, rcs, props=None):
        nonlocal announced
        if banner is not None and not announced:
            announced = True
            print(banner, file=sys.stderr, flush=True)
        if ready is not None:
            ready.set()

    def on_message(client, userdata, msg):
        nonlocal seen
        print(describe(msg.topic, msg.payload, root), file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    c = _client(url, "watch", mqtt)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    subscribe(c)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        c.disconnect()  # first: it wakes the network thread (else loop_stop waits out a 1 s select)
        c.loop_stop()
    return 0


def publish(url: str, topic: str, body: dict, *, mqtt: MqttConfig | None = None) -> str:
    """Publish one JSON message at QoS 1, as a phone's app would; returns the topic."""
    c = _client(url, "pub", mqtt)
    try:
        sent = c.publish(topic, json.dumps(body).encode(), qos=1)
        sent.wait_for_publish(10)
        if not sent.is_published():
            raise MqttError(f"the broker did not acknowledge the message on {topic} within 10 s")
    finally:
        c.disconnect()  # first: it wakes the network thread (else loop_stop waits out a 1 s select)
        c.loop_stop()
    return topic


def ping(url: str, root: str, device: str, body: dict, *, source: str = "uwb", mqtt: MqttConfig | None = None) -> str:
    """Publish one ping as a phone would; returns the topic."""
    return publish(url, f"{root}/ping/{source}/{device}", body, mqtt=mqtt)
