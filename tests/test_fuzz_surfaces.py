"""The isolation property (issue 22): whatever arrives on any ingest surface,
a canary device in the same batch gets its offer.

Two layers. The pure one drives the batch step itself with Hypothesis over
every MQTT surface (pings as native JSON, msgpack, HTML5 positions, lat/lon
and beacons; consent; actions; inventory; claims; OwnTracks; Aruba over MQTT)
and the messages the HTTP surfaces become (``/v1/ping``, the shop's WebSocket,
the Meraki and Aruba receivers' pings): many examples, no broker.  The live
one sends a smaller sample through aiohttp and Mosquitto to the HTTP surfaces
and the WebSocket, and asserts the answer is never a 5xx and the canary's
offer still arrives."""

from __future__ import annotations

import asyncio
import itertools
import json
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.http.app import sources
from edge_agent.metrics import Metrics
from edge_agent.pipeline import Pipeline, State, build_runtime
from edge_agent.http.sources import aruba, meraki
from edge_agent.http.sources._common import plans_for
from store_config.load import load_store
from sync.pseudonym import Pseudonymizer

from .conftest import write_store
from .hardening_kit import ARUBA, IN_AISLE, MERAKI_SECRET, TOML
from .test_pipeline import Msg

T0 = 1_763_800_000.0
PSEUDO = Pseudonymizer(b"k" * 32)
R = "store/S1"

# -- values an attacker sends where a number, a string or a flag belongs ---------------------------
huge = st.integers(min_value=10**18, max_value=10**400) | st.integers(min_value=-10**400, max_value=-10**18)
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), huge,
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["1e400", "-1e400", "NaN", "12.5", "", " 3 "]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def enc(obj, how: str) -> bytes:
    if how == "msgpack":
        try:
            return msgpack.packb(obj, default=str)
        except (OverflowError, ValueError, TypeError):
            pass
    return json.dumps(obj, allow_nan=True, default=str).encode()


def ping_bodies() -> st.SearchStrategy:
    native = st.fixed_dictionaries({}, optional={k: anything for k in ("x", "y", "acc", "floor", "ts", "seq",
                                                                       "device", "mock")})
    html5 = st.fixed_dictionaries({"coords": st.fixed_dictionaries(
        {}, optional={"latitude": anything, "longitude": anything, "accuracy": anything}) | anything},
        optional={"timestamp": anything, "floor": anything})
    geo = st.fixed_dictionaries({"lat": anything, "lon": anything}, optional={"acc": anything, "ts": anything})
    beacons = st.fixed_dictionaries({"beacons": st.lists(st.fixed_dictionaries(
        {"id": st.sampled_from(["u:1:0", "U:1:1"]) | anything, "rssi": anything}), max_size=3) | anything})
    return native | html5 | geo | beacons


def mqtt_messages() -> st.SearchStrategy:
    """(topic, payload) on one of the agent's MQTT surfaces."""
    src = st.sampled_from(["wifi", "ble", "html5", "gps", "uwb", "nope"])
    device = st.sampled_from(["evil", "evil-2", "x" * 300, "canary-0"])  # canary-0: a real device's own topic
    how = st.sampled_from(["json", "msgpack"])
    ping = st.builds(lambda s, d, b, h: (f"{R}/ping/{s}/{d}", enc(b, h)), src, device, ping_bodies(), how)
    consent = st.builds(lambda d, b: (f"{R}/consent/{d}", enc(b, "json")), device, st.fixed_dictionaries(
        {}, optional={"offers": anything, "tracking": anything, "ts": anything}))
    action = st.builds(lambda d, b: (f"{R}/action/{d}", enc(b, "json")), device, st.fixed_dictionaries(
        {}, optional={"offer_id": anything, "action": st.sampled_from(["apply", "dismiss"]) | anything}))
    item = st.fixed_dictionaries({"sku": st.sampled_from(["chips", "apple"]) | anything},
                                 optional={"qty": anything, "ts": anything})
    inventory = st.builds(lambda b, h: (f"{R}/inventory", enc(b, h)), item | st.lists(item, max_size=3), how)
    claim = st.builds(lambda b: (f"{R}/alert/claim", enc(b, "json")), st.fixed_dictionaries(
        {}, optional={"alert_id": anything, "associate": anything}))
    owntracks = st.builds(lambda b: ("owntracks/evil/phone", enc(b, "json")), st.fixed_dictionaries(
        {"_type": st.sampled_from(["location", "transition"]) | anything},
        optional={"lat": anything, "lon": anything, "acc": anything, "tst": anything}))
    ale = st.builds(lambda b: ("ale/location", enc(b, "json")), st.fixed_dictionaries(
        {"hashed_sta_eth_mac": st.just("AB") | anything, "floor_id": st.just("plan-1") | anything},
        optional={"sta_location_x": anything, "sta_location_y": anything, "error_level": anything,
                  "unit": anything, "latitude": anything, "longitude": anything, "timestamp": anything}))
    raw = st.builds(lambda t, b: (t, b), st.sampled_from([f"{R}/ping/wifi/evil", f"{R}/consent/evil",
                                                          f"{R}/inventory", "owntracks/evil/phone", "ale/location"]),
                    st.binary(max_size=64) | st.integers(1, 5000).map(deep))
    return ping | consent | action | inventory | claim | owntracks | ale | raw


def meraki_bodies() -> st.SearchStrategy:
    loc = st.fixed_dictionaries({}, optional={k: anything for k in ("x", "y", "lat", "lng", "variance", "time",
                                                                    "floorPlanId")})
    ob = st.fixed_dictionaries({"clientMac": st.just("aa:bb") | anything},
                               optional={"locations": st.lists(loc, max_size=2) | anything,
                                         "latestRecord": st.fixed_dictionaries({}, optional={
                                             "nearestApMac": anything, "time": anything}) | anything})
    return st.fixed_dictionaries({"version": st.just("3.0"), "secret": st.just(MERAKI_SECRET),
                                  "type": st.just("WiFi"),
                                  "data": st.fixed_dictionaries({"observations": st.lists(ob, max_size=3)})})


def message(topic: str, payload: bytes, qos: int = 0) -> Msg:
    return Msg(topic, payload, qos, 0, T0, False)


class NoOffers:
    def get_offer(self, offer_id):
        return None


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = write_store(tmp_path_factory.mktemp("fuzz"), broker_url="mqtt://127.0.0.1:1", store_id="S1",
                       toml_extra=TOML)
    cfg = load_store(path)
    p = Pipeline(State(build_runtime(cfg), pseudonym=PSEUDO.device, fraction=PSEUDO.fraction), metrics=Metrics(),
                 offers=NoOffers())
    shell = SimpleNamespace(cfg=cfg, pseudonym=PSEUDO.device, metrics=p.metrics)
    p.source_routes = [(lambda t, f=flt: t == f, decode) for flt, _, decode in sources.mqtt_routes(shell)]
    p.shell = shell
    return p


canaries = itertools.count(1)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def canary_gets_its_offer(p: Pipeline, fx, device: str) -> None:
    offers = [o for o in fx.offers if o.device == device]
    assert len(offers) == 1 and offers[0].payload["zone"] == "aisle-1"


@FUZZ
@given(st.lists(mqtt_messages(), min_size=1, max_size=6), st.integers(0, 6), st.booleans())
def test_any_mqtt_batch_leaves_the_canary_its_offer(pipeline, poison, at, qos1):
    device = f"canary-{next(canaries)}"
    # Actions, consent, inventory and claims come at QoS 1 (pings and feeds at QoS 0: nothing to acknowledge).
    msgs = [message(t, b, qos=int(qos1 and t.split("/")[2:3] in (["action"], ["consent"], ["inventory"],
                                                                ["alert"]))) for t, b in poison]
    canary = message(f"{R}/ping/uwb/{device}", json.dumps(IN_AISLE).encode())
    msgs.insert(min(at, len(msgs)), canary)
    fx = pipeline.step(msgs, T0)
    canary_gets_its_offer(pipeline, fx, device)
    if qos1:  # every QoS 1 message is acknowledged: a poison never comes back at a reconnect
        assert {id(m) for m in fx.acks} >= {id(m) for m in msgs if m.qos}


@FUZZ
@given(meraki_bodies(), st.lists(st.dictionaries(st.sampled_from(
    ["sta_location_x", "sta_location_y", "error_level", "unit", "floor_id", "hashed_sta_eth_mac", "latitude",
     "longitude", "timestamp"]), anything, max_size=9), max_size=3))
def test_vendor_bodies_leave_the_canary_its_offer(pipeline, body, records):
    """What the Meraki and Aruba receivers do with a body that passed their secret."""
    cfg = pipeline.cfg
    dev = lambda raw: "v:" + str(raw)[:40]  # noqa: E731 - the receivers' pseudonym, in short
    pings, _ = meraki.parse_observations(body, plans=plans_for(cfg), aps={}, ap_acc=10.0, min_acc=1.0, wifi_acc=8.0,
                                         received=T0, max_future_skew_s=300.0, device=dev)
    try:
        more, _ = aruba.parse_payload(records, plans=plans_for(cfg), min_acc=1.0, wifi_acc=8.0, received=T0,
                                      max_future_skew_s=300.0, device=dev)
    except aruba.PayloadError:
        more = []  # no ALE record at all: the receiver answers 400
    device = f"canary-{next(canaries)}"
    canary = message(f"{R}/ping/uwb/{device}", json.dumps(IN_AISLE).encode())
    fx = pipeline.ingest([*pings, *more, *pipeline_pings(pipeline, canary)], T0)
    canary_gets_its_offer(pipeline, fx, device)


def pipeline_pings(p: Pipeline, m: Msg):
    from edge_agent.pipeline import codecs

    obj = codecs.decode_object(m.payload)
    return [codecs.parse_ping(obj, device=m.topic.rsplit("/", 1)[1], source="uwb", received=T0)]


# -- live: the HTTP surfaces and the WebSocket through aiohttp and Mosquitto -----------------------

LIVE = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.broker
async def test_http_surfaces_never_answer_5xx_and_the_next_shopper_gets_the_offer(tmp_path, mosquitto,
                                                                                  agent_factory, mqtt_client):
    import aiohttp

    from .hardening_kit import hard_store

    cfg = hard_store(tmp_path, mosquitto.url)
    from dataclasses import replace
    cfg = replace(cfg, http=replace(cfg.http, ping_rate=1e6, ping_burst=10**6, address_rate=1e6, vendor_rate=1e6))
    server = await agent_factory(cfg)
    agent = server.agent
    phone = mqtt_client()
    await phone.subscribe(f"{agent.root}/offer/+")
    loop = asyncio.get_running_loop()
    http = aiohttp.ClientSession()
    try:
        async with http.post(server.url + "/v1/shop/session") as r:
            s = await r.json()
        auth = {"Authorization": f"Bearer {s['token']}"}
        page: dict = {}

        async def socket() -> aiohttp.ClientWebSocketResponse:
            """The page's socket, reconnected as the page does after the server closed it (1009: a
            frame over max_msg_size); a page reads its socket, which answers the heartbeat pings."""
            if "ws" not in page or page["ws"].closed:
                ws = page["ws"] = await http.ws_connect(server.url.replace("http", "ws")
                                                        + f"/shop/ws?device={s['device']}&token={s['token']}")

                async def read_page() -> None:
                    async for _ in ws:
                        pass
                page["reader"] = asyncio.create_task(read_page())
            return page["ws"]

        await socket()

        async def one(surface: str, body: bytes) -> None:
            if surface == "ping":
                async with http.post(server.url + f"/v1/ping?device={s['device']}&source=wifi", data=body,
                                     headers=auth) as r:
                    assert r.status < 500, await r.text()
            elif surface == "meraki":
                async with http.post(server.url + "/v1/ingest/meraki", data=body) as r:
                    assert r.status < 500, await r.text()
            elif surface == "aruba":
                async with http.post(server.url + "/v1/ingest/aruba", data=body, headers=ARUBA) as r:
                    assert r.status < 500, await r.text()
            else:
                for attempt in (1, 2):  # the server may have closed it after the previous frame
                    ws = await socket()
                    try:
                        await ws.send_bytes(body) if surface == "ws-bytes" else await ws.send_str(
                            body.decode("utf-8", "replace"))
                        break
                    except aiohttp.ClientConnectionResetError:
                        await page["reader"]  # the server's close, read: the next socket() reconnects
                        assert attempt == 1
            device = f"live-canary-{next(canaries)}"
            agent.on_batch([message(f"{agent.root}/ping/uwb/{device}", json.dumps(IN_AISLE).encode())])
            while True:
                m = await phone.next(f"{agent.root}/offer/+", timeout=5)
                if m.topic.endswith("/" + device):
                    break

        ws_bodies = st.builds(lambda kind, b: json.dumps({"type": kind, **b}, allow_nan=True, default=str).encode(),
                              st.sampled_from(["ping", "action", "consent", "nope"]),
                              st.dictionaries(st.sampled_from(["x", "y", "acc", "offers", "ts", "offer_id",
                                                               "action", "coords"]), anything, max_size=4))
        bodies = st.one_of(
            st.tuples(st.just("ping"), ping_bodies().map(lambda b: enc(b, "json"))),
            st.tuples(st.just("meraki"), meraki_bodies().map(lambda b: enc(b, "json"))),
            st.tuples(st.just("aruba"), st.lists(st.dictionaries(st.sampled_from(
                ["sta_location_x", "sta_location_y", "floor_id", "hashed_sta_eth_mac"]), anything), max_size=3)
                .map(lambda b: enc(b, "json"))),
            st.tuples(st.sampled_from(["ping", "meraki", "aruba", "ws"]),
                      st.binary(max_size=64) | st.integers(1, 100_000).map(deep)),
            st.tuples(st.sampled_from(["ws", "ws-bytes"]), ws_bodies),
        )

        @LIVE
        @given(bodies)
        def prop(case):
            asyncio.run_coroutine_threadsafe(one(*case), loop).result(30)

        await asyncio.to_thread(prop)
        await page["ws"].close()
        await page["reader"]
    finally:
        await http.close()
