"""The transport's buffered packet reader (``_Client.read_buffered``): one recv per readable
event, every whole MQTT packet in it parsed at once, QoS 0 PUBLISHes under 3.1.1 to the
short path and every other packet through paho's own handlers.

The pure tests give a paho client one end of a socket pair and write a broker's bytes into
the other, cut wherever the test says (an AF_UNIX pair delivers each send before it returns,
so a read after a send sees it all); what the client calls back and writes must be what
paho's own reader (``loop_read``) gives on the same bytes.  The broker tests run the
transport against a real Mosquitto: a flood with a message larger than one read, QoS 1
acknowledged by hand, a broker restart, and TLS."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import subprocess
import textwrap
import threading

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.transport.mqtt import READ_SIZE, MqttClient, _Client
from store_config.model import MqttConfig

from .conftest import wait_until


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(cmd: int, body: bytes) -> bytes:
    return bytes([cmd]) + varint(len(body)) + body


def publish(topic: bytes, payload: bytes = b"", qos: int = 0, mid: int = 0, retain: bool = False,
            dup: bool = False, v5: bool = False) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + (b"\x00" if v5 else b"")
    return packet(0x30 | dup << 3 | qos << 1 | retain, body + payload)


CONNACK = b"\x20\x02\x00\x00"
CONNACK_V5 = b"\x20\x03\x00\x00\x00"
PINGRESP = b"\xd0\x00"


def puback(mid: int) -> bytes:
    return packet(0x40, struct.pack("!H", mid))


class Peer:
    """A ``_Client`` as the transport makes it, on one end of a socket pair, its callbacks
    recorded in order; ``far`` is the broker's end."""

    def __init__(self, protocol: int = paho.MQTTv311):
        self.client = c = _Client(CallbackAPIVersion.VERSION2, client_id="reader-test", protocol=protocol,
                                  manual_ack=True)
        near, self.far = socket.socketpair()
        near.setblocking(False)
        c._sock = near  # paho's socket: the client reads what the test writes into ``far``
        self.events: list[tuple] = []
        c.fast_message = lambda topic, payload, retain: self.events.append(
            ("short", topic.encode(), payload, 0, retain, 0))
        c.on_message = lambda cl, u, m: self.events.append(
            ("paho", m._topic, m.payload, m.qos, bool(m.retain), m.mid))  # raw topic: it may not be UTF-8
        c.on_connect = lambda cl, u, flags, rc, props: self.events.append(("connect", str(rc)))
        c.on_publish = lambda cl, u, mid, rc, props: self.events.append(("published", mid))
        c.on_disconnect = lambda cl, u, flags, rc, props: self.events.append(("disconnect", str(rc)))

    def close(self) -> None:
        if self.client.socket() is not None:
            self.client.socket().close()
        self.far.close()

    def written(self) -> bytes:
        """What the client has written to the broker so far."""
        self.far.setblocking(False)
        out = b""
        try:
            while chunk := self.far.recv(1 << 20):
                out += chunk
        except BlockingIOError:
            pass
        self.far.setblocking(True)
        return out


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()


def read_buffered(p: Peer) -> paho.MQTTErrorCode:
    """All the socket holds now, through the buffered reader, as the transport's read callback."""
    while (rc := p.client.read_buffered()) == paho.MQTT_ERR_SUCCESS:
        pass
    return rc


def read_paho(p: Peer) -> paho.MQTTErrorCode:
    """The same through paho's own reader: a packet per loop_read while the socket is readable."""
    c = p.client
    rc = paho.MQTT_ERR_SUCCESS
    while c.socket() is not None and select.select([c.socket()], [], [], 0)[0]:
        rc = c.loop_read()
        if rc:
            break
    return rc


def run(pieces: list[bytes], reader, *, eof: bool = False, protocol: int = paho.MQTTv311,
        before=None) -> tuple[list[tuple], bytes, bool]:
    """The callbacks, the bytes written back and whether the socket was closed, after the
    pieces were sent one by one with a read after each (and then the peer's EOF)."""
    p = Peer(protocol)
    if before:
        before(p)
    for piece in pieces:
        if p.client.socket() is None:
            break  # the client closed the connection (a protocol error): nothing more reaches it
        p.far.sendall(piece)
        reader(p)
    if eof and p.client.socket() is not None:
        p.far.shutdown(socket.SHUT_WR)
        reader(p)
    closed = p.client.socket() is None
    written = p.written() if not closed else b""
    p.close()
    return p.events, written, closed


def cut(stream: bytes, at) -> list[bytes]:
    points = sorted({a % (len(stream) + 1) for a in at})
    return [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)])]


topics = st.one_of(st.text(min_size=1, max_size=20).map(lambda t: t.encode()),
                   st.binary(min_size=0, max_size=6))  # not UTF-8 or empty: paho's path
payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=300),
                     st.just(b"z" * 17_000))  # remaining lengths of one, two and three bytes
packets = st.one_of(
    st.builds(publish, topics, payloads, st.just(0), st.just(0), st.booleans(), st.booleans()),
    st.builds(publish, topics, payloads, st.integers(1, 2), st.integers(1, 65535), st.booleans(), st.booleans()),
    st.just(PINGRESP), st.just(CONNACK), st.integers(1, 65535).map(puback),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(packets, min_size=1, max_size=6), st.lists(st.integers(min_value=0), max_size=8), st.booleans())
def test_any_stream_cut_anywhere_gives_what_pahos_reader_gives(stream, at, eof):
    pieces = cut(b"".join(stream), at)
    assert run(pieces, read_buffered, eof=eof) == run(pieces, read_paho, eof=eof)


def test_a_stream_fed_one_byte_at_a_time():
    big3 = b"y" * 20_000  # remaining length in three bytes
    stream = (CONNACK + publish(b"s/ping/a", b'{"x":1}') + publish(b"s/ping/b", b"p" * 200, retain=True)
              + PINGRESP + publish(b"s/q1", b"one", qos=1, mid=7) + publish("s/zóna".encode(), big3)
              + puback(1) + publish(b"s/last"))

    def queue_a_qos1_publish(p: Peer):  # mid 1: the PUBACK in the stream acknowledges it
        p.client.publish("s/out", b"o", qos=1)

    events, written, closed = run([bytes([b]) for b in stream], read_buffered, before=queue_a_qos1_publish)
    assert events == [
        ("connect", "Success"),
        ("short", b"s/ping/a", b'{"x":1}', 0, False, 0),
        ("short", b"s/ping/b", b"p" * 200, 0, True, 0),
        ("paho", b"s/q1", b"one", 1, False, 7),
        ("short", "s/zóna".encode(), big3, 0, False, 0),
        ("published", 1),
        ("short", b"s/last", b"", 0, False, 0),
    ]
    assert not closed
    assert (events, written, closed) == run([bytes([b]) for b in stream], read_paho, before=queue_a_qos1_publish)


def test_a_qos1_message_is_acknowledged_when_the_agent_says_so(peer):
    p = peer
    p.far.sendall(publish(b"s/ack", b"a", qos=1, mid=513))
    read_buffered(p)
    assert p.events == [("paho", b"s/ack", b"a", 1, False, 513)]
    assert p.written() == b""  # manual acknowledgement: nothing yet
    p.client.ack(513, 1)
    assert p.written() == puback(513)


def test_a_packet_many_times_the_buffer_with_a_four_byte_remaining_length(peer):
    big = bytes(range(256)) * (2_200_000 // 256)  # > 2,097,151: remaining length in four bytes
    stream = publish(b"s/big", big) + publish(b"s/after", b"a")
    assert stream[1] & stream[2] & stream[3] & 0x80 and len(stream) > 30 * READ_SIZE
    p = peer
    sender = threading.Thread(target=p.far.sendall, args=(stream,))  # more than the socket buffers
    sender.start()
    try:
        while len(p.events) < 2:
            assert select.select([p.client.socket()], [], [], 10)[0], "nothing more to read"
            read_buffered(p)
    finally:
        sender.join()
    assert p.events == [("short", b"s/big", big, 0, False, 0), ("short", b"s/after", b"a", 0, False, 0)]


def test_a_fifth_remaining_length_byte_closes_the_connection_as_paho_does():
    bad = [CONNACK + publish(b"s/ok") + b"\x30\xff\xff\xff\xff\x01" + publish(b"s/never")]
    events, _, closed = run(bad, read_buffered)
    assert events == [("connect", "Success"), ("short", b"s/ok", b"", 0, False, 0), ("disconnect", "Protocol error")]
    assert closed
    assert run(bad, read_paho) == (events, b"", True)


def test_eof_mid_packet_closes_as_paho_does():
    pieces = [CONNACK + publish(b"s/a", b"1") + publish(b"s/half", b"2")[:5]]
    events, _, closed = run(pieces, read_buffered, eof=True)
    assert events == [("connect", "Success"), ("short", b"s/a", b"1", 0, False, 0), ("disconnect", "Unspecified error")]
    assert closed and run(pieces, read_paho, eof=True) == (events, b"", True)


def test_mqtt5_goes_through_paho_and_its_disconnect_drops_the_rest():
    stream = [CONNACK_V5 + publish(b"s/v5", b"five", v5=True) + publish(b"s/v5q1", b"q", qos=1, mid=3, v5=True)
              + packet(0xE0, b"\x8b\x00") + publish(b"s/after", v5=True)]  # DISCONNECT: server shutting down
    events, _, closed = run(stream, read_buffered, protocol=paho.MQTTv5)
    assert [e[0] for e in events] == ["connect", "paho", "paho", "disconnect"]
    assert events[1:3] == [("paho", b"s/v5", b"five", 0, False, 0), ("paho", b"s/v5q1", b"q", 1, False, 3)]
    assert closed and run(stream, read_paho, protocol=paho.MQTTv5) == (events, b"", True)


def test_a_packet_paho_began_reading_is_left_to_paho(peer):
    p = peer
    sock = p.client.socket()
    assert p.client.buffered_for(sock)
    p.far.sendall(publish(b"s/one", b"1")[:3])
    p.client.loop_read()  # paho holds the command byte and the length
    assert not p.client.buffered_for(sock)
    p.far.sendall(publish(b"s/one", b"1")[3:])
    p.client.loop_read()
    assert p.client.buffered_for(sock)
    p.far.sendall(publish(b"s/two", b"2"))
    read_buffered(p)
    assert [e[1] for e in p.events] == [b"s/one", b"s/two"]
    assert not p.client.buffered_for(object())  # not a socket (paho's websocket wrapper): paho reads it


def test_a_new_connection_starts_with_nothing_carried_over():
    """Half a packet read, then a new connection (as paho's reconnect opens one after a keepalive
    timeout): the half is not glued to the new stream."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        c = _Client(CallbackAPIVersion.VERSION2, client_id="reader-reconnect", protocol=paho.MQTTv311,
                    manual_ack=True)
        got: list = []
        c.fast_message = lambda topic, payload, retain: got.append(topic)
        c.on_connect = lambda *a: got.append("connect")

        def serve(first: bytes) -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)  # the client's CONNECT
                conn.sendall(first)
                conn.recv(1024)  # until the client closes the connection

        def pump(until) -> None:
            while not until():
                sock = c.socket()
                assert sock is not None and select.select([sock], [], [], 10)[0], "nothing to read"
                while c.read_buffered() == paho.MQTT_ERR_SUCCESS:
                    pass

        half = publish(b"s/b", b"bb")[:4]
        first = threading.Thread(target=serve, args=(CONNACK + publish(b"s/a") + half,))
        first.start()
        c.connect("127.0.0.1", port)
        pump(lambda: "s/a" in got)
        assert c._rbuf == half  # waiting for the rest
        second = threading.Thread(target=serve, args=(CONNACK + publish(b"s/c"),))
        second.start()
        c.reconnect()  # closes the first connection, opens the second
        first.join()
        c._last_bytes_received = 0.0  # paho's keepalive clock: the reader stamps it when bytes come in
        pump(lambda: "s/c" in got)
        assert got == ["connect", "s/a", "connect", "s/c"]
        assert c._last_bytes_received > 0
        c.disconnect()
        second.join()


# -- the transport on a real Mosquitto

class Inbox:
    """An ``on_batch`` that keeps every message, acknowledges QoS 1 as the agent does, and
    wakes the test when a topic arrives."""

    def __init__(self):
        self.client: MqttClient | None = None
        self.got: list = []
        self.seen: dict[str, asyncio.Event] = {}

    def on_batch(self, msgs) -> None:
        for m in msgs:
            self.got.append(m)
            if m.qos:
                self.client.ack(m.mid, m.qos)
            self.seen.setdefault(m.topic, asyncio.Event()).set()

    async def wait(self, topic: str) -> None:
        await asyncio.wait_for(self.seen.setdefault(topic, asyncio.Event()).wait(), 30)

    async def start(self, url: str, client_id: str, **cfg) -> MqttClient:
        self.client = MqttClient(MqttConfig(url=url, **cfg), client_id=client_id, subscriptions=[("r/#", 1)],
                                 on_batch=self.on_batch)
        await self.client.start()
        await asyncio.wait_for(self.client.subscribed.wait(), 10)
        return self.client


def reading_buffered(client: MqttClient) -> bool:
    """The transport reads its current connection with the buffered reader."""
    return client.client._rsock is client.client.socket() is not None


@pytest.mark.broker
async def test_a_flood_with_a_message_larger_than_a_read_arrives_whole_and_qos1_is_acknowledged(
        mosquitto, mqtt_client):
    phone = mqtt_client()
    big = bytes(range(256)) * 1200  # 300 KiB: several reads
    inbox = Inbox()
    client = await inbox.start(mosquitto.url, "reader-flood")
    try:
        for i in range(600):
            phone.client.publish(f"r/ping/d{i % 7}", f'{{"seq":{i}}}'.encode(), qos=0)
            if i == 300:
                phone.client.publish("r/big", big, qos=0)
            if i % 100 == 50:
                phone.client.publish(f"r/q1/{i}", b"q", qos=1)
        await phone.publish("r/end", b"", qos=1)
        await inbox.wait("r/end")
        assert reading_buffered(client)
    finally:
        await client.stop()
    pings = [m for m in inbox.got if m.topic.startswith("r/ping/")]
    assert [int(m.payload[7:-1]) for m in pings] == list(range(600))  # all, in order
    assert [m.payload for m in inbox.got if m.topic == "r/big"] == [big]
    assert sorted(m.topic for m in inbox.got if m.qos == 1) == sorted(["r/end"] + [f"r/q1/{i}" for i in range(50, 600, 100)])
    # every QoS 1 message was acknowledged: the session, resumed, has nothing to redeliver before the next one
    again = Inbox()
    client = await again.start(mosquitto.url, "reader-flood")
    try:
        await phone.publish("r/next", b"", qos=1)
        await again.wait("r/next")
    finally:
        await client.stop()
    assert [m.topic for m in again.got] == ["r/next"]


@pytest.mark.broker
async def test_after_the_broker_restarts_the_new_connection_is_read_from_its_first_byte(mosquitto_factory,
                                                                                       mqtt_client):
    broker = mosquitto_factory()
    inbox = Inbox()
    client = await inbox.start(broker.url, "reader-restart")
    try:
        first = mqtt_client(broker.url)
        await first.publish("r/before", b"1", qos=1)
        await inbox.wait("r/before")
        first.close()
        broker.restart()
        await asyncio.wait_for(wait_until(lambda: client.connects == 2 and client.subscribed.is_set()), 30)
        second = mqtt_client(broker.url)
        for i in range(200):
            second.client.publish("r/ping/after", str(i).encode(), qos=0)
        await second.publish("r/after", b"2", qos=1)
        await inbox.wait("r/after")
        assert reading_buffered(client)
    finally:
        await client.stop()
    assert [m.payload for m in inbox.got if m.topic == "r/ping/after"] == [str(i).encode() for i in range(200)]


@pytest.mark.broker
async def test_over_tls_every_record_is_read(tmp_path, mosquitto_factory, mqtt_client):
    """A read of a TLS socket returns at most one record (16 KiB): a flood and a message of
    many records still arrive whole and in order."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"],
                   cwd=certs, check=True, capture_output=True)
    broker = mosquitto_factory(scheme="mqtts", listener_conf=textwrap.dedent(f"""\
        listener {{port}} 127.0.0.1
        allow_anonymous true
        certfile {certs}/cert.pem
        keyfile {certs}/key.pem
        """))
    ca = str(certs / "cert.pem")
    phone = mqtt_client(broker.url, ca=ca)
    big = bytes(range(256)) * 400  # 100 KiB: seven records
    inbox = Inbox()
    client = await inbox.start(broker.url, "reader-tls", tls_ca=ca)
    try:
        for i in range(300):
            phone.client.publish("r/ping/tls", str(i).encode(), qos=0)
        phone.client.publish("r/big", big, qos=0)
        await phone.publish("r/end", b"", qos=1)
        await inbox.wait("r/end")
        assert reading_buffered(client) and client.client._rpending is not None  # TLS: pending() is asked
    finally:
        await client.stop()
    assert [m.payload for m in inbox.got if m.topic == "r/ping/tls"] == [str(i).encode() for i in range(300)]
    assert [m.payload for m in inbox.got if m.topic == "r/big"] == [big]
