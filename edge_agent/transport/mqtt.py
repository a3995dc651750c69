"""paho-mqtt driven by the asyncio event loop.

The client's socket is registered with the loop (``add_reader`` /
``add_writer``), so every paho callback runs on the loop thread and there is
no network thread.  Incoming messages are handed to ``on_batch`` in batches:
one socket-readable callback drains everything the socket holds (bounded),
so under load a batch grows and at low load a batch of one goes out at once.

QoS 1 messages are acknowledged manually (``ack``) after their effect is
committed; pings are subscribed at QoS 0.  Reconnection runs in one loop
with exponential backoff and jitter; the retained ``status`` topic carries
``online`` and the will carries ``offline``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from store_config.model import EdgeError, MqttConfig

log = logging.getLogger("edge_agent.transport.mqtt")

MAX_DRAIN = 2000  # packets read per readable callback before yielding to the loop


class MqttError(EdgeError):
    """The broker connection failed or a request was refused."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    mid: int
    received: float
    retain: bool = False


def nodelay(sock) -> None:
    """Disable Nagle: paho does not, and small MQTT packets then wait ~40 ms
    for the peer's delayed ACK — most of an offer's latency budget."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class _Client(paho.Client):
    """paho's client with a short path for the bulk of the agent's traffic.

    A QoS 0 PUBLISH under MQTT 3.1.1 (every ping) goes from paho's packet
    reader straight to ``fast_message(topic, payload, retain)``: no
    ``MQTTMessage`` (with its ``threading.Condition``), no walk of the
    per-topic callback tree (the transport registers none) and no callback
    locks.  Everything else -- QoS 1 (manual acknowledgement), MQTT 5, a
    malformed packet, a topic that is not UTF-8 -- goes through paho's own
    ``_handle_publish``, unchanged.  Measured at 5,000 messages/s through
    Mosquitto: BENCHMARKS.md section 13."""

    fast_message: Callable[[str, bytes, bool], None] | None = None

    # The short path reads paho's private packet state (``_in_packet``, ``_protocol``), as paho 2.x
    # keeps it; with any other major version the transport leaves it off and paho does it all.
    SHORT_PATH_OK = paho_version.split(".")[0] == "2"
    # The QoS 1 publish mirrors paho's publish bookkeeping as 2.2 has it (checked line by line); with
    # any other version offers go through paho's own publish.
    PUBLISH_SHORT_OK = paho_version.split(".")[:2] == ["2", "2"]

    def _handle_publish(self):
        cmd = self._in_packet["command"]
        fast = self.fast_message
        if cmd & 0x06 or fast is None or self._protocol == paho.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        end = 2 + ((packet[0] << 8) | packet[1]) if len(packet) >= 2 else 0
        if end <= 2 or end > len(packet):
            return super()._handle_publish()  # malformed (or an empty topic): paho says so
        try:
            topic = packet[2:end].decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        fast(topic, bytes(packet[end:]), bool(cmd & 0x01))
        return paho.MQTT_ERR_SUCCESS

    def publish_qos1(self, topic: str, payload: bytes) -> int:
        """``publish(topic, payload, qos=1).mid`` for the common case -- connected, under the
        in-flight limit -- in a fraction of paho's Python: the same packet, and the same
        bookkeeping (``_out_messages``, ``_inflight_messages``, the packet queue), so paho's
        PUBACK handling and its re-send after a reconnect see an ordinary message.  Its
        ``info`` has no ``threading.Condition``: nobody waits on an offer's.  Anything else
        (not connected, the limit reached, a topic paho refuses, a paho other than 2.2)
        goes through paho's own ``publish``.  Measured on an offer's path: BENCHMARKS.md §13."""
        tb = topic.encode()
        v5 = self._protocol == paho.MQTTv5
        n = 4 + len(tb) + len(payload) + v5  # topic length, topic, message id, (no properties), payload
        limit, queued = self._max_inflight_messages, self._max_queued_messages
        if (not self.PUBLISH_SHORT_OK or self._sock is None or (limit and self._inflight_messages >= limit)
                or (queued and len(self._out_messages) >= queued)
                or not 0 < len(tb) <= 65535 or b"+" in tb or b"#" in tb or n > 268_435_455):
            return self.publish(topic, payload, qos=1).mid
        mid = self._mid_generate()
        packet = bytearray(b"\x32")  # PUBLISH, QoS 1, no DUP, no RETAIN
        while n > 0x7F:
            packet.append((n & 0x7F) | 0x80)
            n >>= 7
        packet.append(n)
        packet += _U16.pack(len(tb))
        packet += tb
        packet += _U16.pack(mid)
        if v5:
            packet.append(0)
        packet += payload
        m = paho.MQTTMessage.__new__(paho.MQTTMessage)
        m.timestamp, m.state, m.dup, m.mid, m._topic = paho.time_func(), paho.mqtt_ms_wait_for_puback, False, mid, tb
        m.payload, m.qos, m.retain, m.info, m.properties = payload, 1, False, _Info(mid), None
        with self._out_message_mutex:
            if mid in self._out_messages:  # 65,535 unacknowledged: paho's publish decides (the next mid)
                return self.publish(topic, payload, qos=1).mid
            self._out_messages[mid] = m
            self._inflight_messages += 1
            self._out_packet.append({"command": paho.PUBLISH, "mid": mid, "qos": 1, "pos": 0,
                                     "to_process": len(packet), "packet": packet, "info": m.info})
        if self._sockpairW is not None:  # as paho's _packet_queue (a threaded loop's wake-up)
            try:
                self._sockpairW.send(b"\0")
            except BlockingIOError:
                pass
        self._call_socket_register_write()
        return mid


_U16 = struct.Struct("!H")


class _Info(paho.MQTTMessageInfo):
    """A publish's info without the ``threading.Condition`` paho makes for ``wait_for_publish``."""

    __slots__ = ()

    def __init__(self, mid: int):
        self.mid = mid
        self._published = False
        self.rc = paho.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        self._published = True

    def is_published(self) -> bool:
        return self._published

    def wait_for_publish(self, timeout: float | None = None) -> None:
        raise NotImplementedError("a short-path publish cannot be waited on (is_published polls)")


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context ``[mqtt]`` asks for (tls_ca, tls_cert and tls_key, tls_insecure)."""
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca) if cfg.tls_ca else ssl.create_default_context()
    except OSError as exc:  # ssl.SSLError included: say which file, not only OpenSSL's words
        raise MqttError(f"[mqtt] tls_ca {cfg.tls_ca}: cannot load it ({exc})") from exc
    if cfg.tls_cert:
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except OSError as exc:
            raise MqttError(f"[mqtt] tls_cert {cfg.tls_cert} / tls_key {cfg.tls_key}: "
                            f"cannot load them ({exc})") from exc
    if cfg.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise MqttError(f"unsupported MQTT URL scheme in {url!r} (use mqtt:// or mqtts://)")
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


class MqttClient:
    """One paho client on the running loop.

    ``subscriptions`` is a list of (topic filter, qos).  ``on_batch`` gets a
    list of :class:`Message`; ``on_connected`` runs after every (re)connect.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        subscriptions: list[tuple[str, int]],
        on_batch: Callable[[list[Message]], None],
        status_topic: str | None = None,
        on_connected: Callable[[], None] | None = None,
        on_published: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
        stages=None,
    ):
        if cfg.url is None:
            raise MqttError("no [mqtt] url configured")
        self.host, self.port, tls = parse_url(cfg.url)
        self.cfg = cfg
        self.subscriptions = subscriptions
        self.on_batch = on_batch
        self.on_connected = on_connected
        self.on_published = on_published
        self.status_topic = status_topic
        self.clock = clock
        self.stages = stages  # metrics.Stages when [ingest] stages is on: readable, handed and written stamps
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()  # SUBACK of the last (re)subscription received
        self._lost = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._batch: list[Message] = []
        self._reading = False  # in the socket's read callback: its writes go out when it ends (_flush)
        self._writer = False  # the socket is registered with the loop for writing
        self._stopping = False
        self._sock = None
        self._misc_task: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self.connects = 0
        self.v5 = cfg.protocol == "5"

        if self.v5:
            self.client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5, manual_ack=True)
        else:
            self.client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        c = self.client
        c.fast_message = self._on_fast_message if _Client.SHORT_PATH_OK else None
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password)
        if tls:
            c.tls_set_context(tls_context(cfg))
        if status_topic:
            c.will_set(status_topic, b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write

    # -- socket plumbing: callbacks may come from the connect executor thread
    def _in_loop(self, fn, *args) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._sock = sock
        nodelay(sock)
        self._in_loop(self._loop.add_reader, sock, self._readable)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self._in_loop(self._remove, sock)

    def _remove(self, sock) -> None:
        self._writer = False
        try:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        except (ValueError, OSError):
            pass

    def _on_register_write(self, client, userdata, sock) -> None:
        if self._reading and threading.get_ident() == self._loop_thread:
            return  # the read callback writes before it returns (_flush): no writer to add and remove
        self._in_loop(self._add_writer, sock)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        self._in_loop(self._remove_writer, sock)

    def _add_writer(self, sock) -> None:
        if not self._writer and sock is self._sock:
            self._loop.add_writer(sock, self._writable)
            self._writer = True

    def _remove_writer(self, sock) -> None:
        if self._writer:
            self._writer = False
            self._loop.remove_writer(sock)

    def _writable(self) -> None:
        self.client.loop_write()
        if self.stages is not None:
            self.stages.writable()

    def _readable(self) -> None:
        if self.stages is not None:
            self.stages.readable()
        sock = self._sock
        c = self.client
        self._reading = True
        try:
            for _ in range(MAX_DRAIN):
                rc = c.loop_read()
                if rc != paho.MQTT_ERR_SUCCESS or sock is None or c.socket() is not sock:
                    break
                pending = getattr(sock, "pending", None)
                if pending is not None and pending():
                    continue
                try:
                    r, _, _ = select.select([sock], [], [], 0)
                except (OSError, ValueError):
                    break
                if not r:
                    break
            self._flush()
        finally:
            self._reading = False
            self._write_now()

    def _write_now(self) -> None:
        """Write what paho holds now; what the socket does not take yet, the loop's
        writer callback writes when it can.  Only while paho has a socket: ``self._sock``
        outlives a lost connection (closed, fd -1), and paho keeps unwritten packets
        until it reconnects, so ``want_write()`` may hold without one."""
        c = self.client
        if c.socket() is None or not c.want_write():
            return
        self._writable()
        if c.want_write():
            self._add_writer(self._sock)

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            st = self.stages
            if st is not None:
                st.begin()
            try:
                self.on_batch(batch)
            except Exception:  # never let one bad batch kill the transport
                log.exception("message batch handler failed; %d messages", len(batch))
            # the batch's offers, alerts and acks leave now, in one write: left to the loop's writer
            # callback they waited behind the next readable batch and every other ready callback
            # (0.8-1.6 ms mean at 5,000 pings/s, the largest stage: BENCHMARKS.md section 13)
            self._write_now()
            if st is not None:
                st.done()

    # -- paho callbacks (loop thread)
    def _on_message(self, client, userdata, msg) -> None:
        self._batch.append(Message(msg.topic, msg.payload, msg.qos, msg.mid, self.clock(), msg.retain))

    def _on_fast_message(self, topic: str, payload: bytes, retain: bool) -> None:
        """A QoS 0 message (``_Client``): the same ``Message`` as :meth:`_on_message` makes."""
        self._batch.append(Message(topic, payload, 0, 0, self.clock(), retain))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self.on_published:
            self.on_published(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("broker refused subscriptions: %s", bad)
        self.subscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        self.connects += 1
        log.info("connected to broker %s:%s (session present: %s)", self.host, self.port,
                 getattr(flags, "session_present", None))
        if self.subscriptions:
            client.subscribe(self.subscriptions)
        if self.status_topic:
            client.publish(self.status_topic, b"online", qos=1, retain=True)
        self.connected.set()
        self._lost.clear()
        if self.on_connected:
            self._in_loop(self.on_connected)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._stopping:
            log.warning("broker %s:%s connection lost: %s", self.host, self.port, reason_code)
        self.connected.clear()
        self.subscribed.clear()
        self._in_loop(self._lost.set)

    # -- lifecycle
    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-supervisor")
        self._misc_task = asyncio.create_task(self._misc(), name="mqtt-misc")

    async def _connect_once(self) -> None:
        kwargs = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": False, "properties": props}
        try:
            await self._loop.run_in_executor(
                None, lambda: self.client.connect(self.host, self.port, self.cfg.keepalive, **kwargs))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise MqttError(f"cannot connect to broker {self.host}:{self.port}: {exc}") from exc

    async def _supervise(self) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                await self._connect_once()
                await asyncio.wait_for(self.connected.wait(), timeout=15)
                delay = 1.0
                await self._lost.wait()
            except (MqttError, asyncio.TimeoutError) as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
            if self._stopping:
                return
            self._lost.clear()
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 30.0)

    async def _misc(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self.client.loop_misc()

    async def stop(self) -> None:
        """Publish ``offline``, disconnect cleanly, stop every task."""
        self._stopping = True
        if self.connected.is_set() and self.status_topic:
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            try:
                await asyncio.wait_for(self._wait_published(info), timeout=2)
            except asyncio.TimeoutError:
                pass
        self.client.disconnect()
        for t in (self._supervisor, self._misc_task):
            if t:
                t.cancel()
        for t in (self._supervisor, self._misc_task):
            if t:
                try:
                    await t
                except asyncio.CancelledError:
                    pass
        if self._sock is not None:
            self._remove(self._sock)

    async def _wait_published(self, info) -> None:
        while not info.is_published():
            await asyncio.sleep(0.01)

    # -- API
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Queue a publish; returns the message id (PUBACK reported via on_published)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid

    def publish_qos1(self, topic: str, payload: bytes) -> int:
        """A QoS 1 publish on the short path (an offer): :meth:`_Client.publish_qos1`."""
        return self.client.publish_qos1(topic, payload)

    def resubscribe(self, subscriptions: list[tuple[str, int]]) -> None:
        """Take a new list of (filter, qos): filters no longer listed are
        unsubscribed and new ones subscribed, now when connected (``subscribed``
        is set again by their SUBACK), else at the next connect."""
        old = {f for f, _ in self.subscriptions}
        gone = sorted(old - {f for f, _ in subscriptions})
        added = [(f, q) for f, q in subscriptions if f not in old]
        self.subscriptions = list(subscriptions)
        if not self.connected.is_set():
            return
        if gone:
            self.client.unsubscribe(gone)
        if added:
            self.subscribed.clear()
            self.client.subscribe(added)

    def send_now(self) -> None:
        """Write what is queued now (a batch's offers, before the second commit that
        follows them); inside the read callback paho's writes otherwise wait for its end."""
        if threading.get_ident() == self._loop_thread:
            self._write_now()

    def forget(self, mids: list[int]) -> None:
        """Give up on unacknowledged QoS 1 publishes: paho keeps every one of them and
        re-sends it after a reconnect on its own, so an expired offer must leave its queue
        too (paho has no public call for it: its ``_out_messages`` and in-flight count)."""
        c = self.client
        with c._out_message_mutex:
            for mid in mids:
                m = c._out_messages.pop(mid, None)
                if m is not None and m.state == paho.mqtt_ms_wait_for_puback and c._inflight_messages > 0:
                    c._inflight_messages -= 1

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)
