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
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from store_config.model import EdgeError, MqttConfig

log = logging.getLogger("edge_agent.transport.mqtt")

MAX_DRAIN = 2000  # packets read per readable callback before yielding to the loop (paho's reader)
READ_SIZE = 65536  # bytes asked of the socket per recv by the buffered reader (_Client.read_buffered)
MAX_READS = 4  # full recvs per readable callback before yielding to the loop (buffered reader)


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
    Mosquitto: BENCHMARKS.md section 13.

    ``read_buffered`` reads the socket itself: one recv per readable event for
    every packet in it, where paho's ``loop_read`` takes a recv for the command
    byte, one per remaining-length byte and one for the body of each packet."""

    fast_message: Callable[[str, bytes, bool], None] | None = None

    # The short path reads paho's private packet state (``_in_packet``, ``_protocol``), as paho 2.x
    # keeps it; with any other major version the transport leaves it off and paho does it all.
    SHORT_PATH_OK = paho_version.split(".")[0] == "2"

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

    # -- the buffered reader
    # paho reads a packet with a recv for its command byte, one per remaining-length byte and
    # then the body's, each with its Python around it.  ``read_buffered`` takes what the socket
    # holds in one recv (up to READ_SIZE) and parses every whole packet in it: a QoS 0 PUBLISH
    # under 3.1.1 goes to ``fast_message`` as above, every other packet to paho's own
    # ``_packet_handle`` with ``_in_packet`` set as paho's ``_packet_read`` sets it once a packet
    # is whole.  A partial packet waits in ``_rbuf`` for the next recv; a new socket starts empty.
    _rsock = None  # the socket _rbuf's bytes came from
    _rbuf = b""
    _rpending = None  # _rsock.pending (TLS): decrypted bytes that select() does not see

    def buffered_for(self, sock) -> bool:
        """Whether ``read_buffered`` may read ``sock``: paho 2.x, a plain or TLS socket (not
        paho's websocket wrapper), and no packet half read by paho's own reader."""
        if sock is self._rsock:
            return True
        return (self.SHORT_PATH_OK and isinstance(sock, socket.socket) and sock is self._sock
                and self._in_packet["command"] == 0)

    def read_buffered(self) -> paho.MQTTErrorCode:
        """One recv and every whole packet in it, in order.  ``MQTT_ERR_SUCCESS``: the recv
        filled its buffer (or TLS holds more), so read again; ``MQTT_ERR_AGAIN``: drained for
        now; an error: as paho's ``loop_read`` (socket closed, ``on_disconnect`` called)."""
        sock = self._sock
        if sock is None:
            return paho.MQTT_ERR_NO_CONN
        if sock is not self._rsock:  # a new connection: nothing carried over
            self._rsock, self._rbuf, self._rpending = sock, b"", getattr(sock, "pending", None)
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            return paho.MQTT_ERR_AGAIN
        except ssl.SSLWantWriteError:
            self._call_socket_register_write()
            return paho.MQTT_ERR_AGAIN
        except OSError as err:  # TimeoutError included, as in paho's _packet_read
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            self._rbuf = b""
            return self._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
        if not data:
            self._rbuf = b""
            return self._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:  # keepalive: paho stamps this for every chunk it receives
            self._last_bytes_received = paho.time_func()
        more = len(data) == READ_SIZE
        buf = self._rbuf
        if buf:
            buf += data  # a bytearray: a packet larger than one recv grows in place
        else:
            buf = data
        n = len(buf)
        pos = 0
        rc = paho.MQTT_ERR_SUCCESS
        fast = self.fast_message if self._protocol != paho.MQTTv5 else None
        try:
            while n - pos >= 2:
                cmd = buf[pos]
                rl = buf[pos + 1]
                i = pos + 2
                if rl & 0x80:  # the remaining length goes on for up to 3 more bytes
                    rl &= 0x7F
                    mult = 128
                    while i < n:
                        b = buf[i]
                        i += 1
                        rl += (b & 0x7F) * mult
                        if not b & 0x80:
                            break
                        if i - pos > 4:  # a fifth length byte: paho says so too
                            rc = paho.MQTT_ERR_PROTOCOL
                            break
                        mult *= 128
                    else:
                        break  # the length itself is not whole yet
                    if rc:
                        break
                end = i + rl
                if end > n:
                    break
                if fast is not None and cmd & 0xF6 == 0x30 and rl >= 2:  # QoS 0 PUBLISH, 3.1.1
                    t = i + 2 + ((buf[i] << 8) | buf[i + 1])
                    if i + 2 < t <= end:
                        try:
                            topic = buf[i + 2:t].decode("utf-8")
                        except UnicodeDecodeError:
                            pass  # paho's path says what it does with such a topic
                        else:
                            pos = end
                            fast(topic, bytes(buf[t:end]), bool(cmd & 0x01))
                            continue
                pos = end
                rc = self._handle_whole(cmd, buf, i, end)
                if rc > 0 or self._sock is not sock:
                    break
        finally:
            if pos < n and self._sock is sock and rc <= 0:
                if buf is self._rbuf:
                    del buf[:pos]
                else:
                    self._rbuf = bytearray(buf[pos:])
            else:
                self._rbuf = b""
        if rc > 0:
            return self._loop_rc_handle(rc)
        if self._sock is not sock:
            return paho.MQTT_ERR_NO_CONN  # a handler closed the connection (MQTT 5 DISCONNECT)
        if more or (self._rpending is not None and self._rpending()):
            return paho.MQTT_ERR_SUCCESS
        return paho.MQTT_ERR_AGAIN

    def _handle_whole(self, cmd: int, buf, start: int, end: int) -> paho.MQTTErrorCode:
        """A whole packet through paho's own handler, its state as paho's reader leaves it."""
        self._in_packet = {
            "command": cmd,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": end - start,
            "packet": bytearray(buf[start:end]),
            "to_process": 0,
            "pos": 0,
        }
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return paho.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }


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
        self.buffered = True  # read with _Client.read_buffered where it can (False: paho's loop_read)

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
            ctx = ssl.create_default_context(cafile=cfg.tls_ca) if cfg.tls_ca else ssl.create_default_context()
            if cfg.tls_cert:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            if cfg.tls_insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            c.tls_set_context(ctx)
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
            if self.buffered and c.buffered_for(sock):
                for _ in range(MAX_READS):  # one recv each, every whole packet in it
                    if c.read_buffered() != paho.MQTT_ERR_SUCCESS:
                        break
            else:
                self._read_paho(sock)
            self._flush()
        finally:
            self._reading = False
            if c.want_write() and c.socket() is not None:
                self._write_now()

    def _read_paho(self, sock) -> None:
        """paho's own reader: a packet per loop_read, a select between them."""
        c = self.client
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

    def _write_now(self) -> None:
        """Write what paho holds now; what the socket does not take yet, the loop's
        writer callback writes when it can."""
        self._writable()
        if self.client.want_write():
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
            if self.client.want_write():
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

    def send_now(self) -> None:
        """Write what is queued now (a batch's offers, before the second commit that
        follows them); inside the read callback paho's writes otherwise wait for its end."""
        if self._sock is not None and threading.get_ident() == self._loop_thread and self.client.want_write():
            self._write_now()

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)
