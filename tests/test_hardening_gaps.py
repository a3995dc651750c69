"""Gaps an outside audit found between DESIGN.md's hardening contracts and the
code, each tried from outside through Mosquitto, aiohttp and SQLite."""

from __future__ import annotations

import json

import aiohttp
import pytest

from .hardening_kit import ARUBA, IN_AISLE, hard_store, meraki_body, meraki_obs

pytestmark = pytest.mark.broker


@pytest.fixture
async def hard(tmp_path, mosquitto, agent_factory):
    return await agent_factory(hard_store(tmp_path, mosquitto.url))


def refuse_writes(agent) -> None:
    """Every write fails, as on a full or read-only disk (test_faults_disk.py fills a real one)."""
    agent.ledger.conn.execute("PRAGMA query_only = 1")


def offers(agent) -> int:
    return agent.ledger.conn.execute("SELECT count(*) FROM offers").fetchone()[0]


# -- "A request whose effect cannot be stored is answered 503, never 2xx" --------------------------

async def test_pings_over_http_answer_503_when_their_offer_cannot_be_stored(hard):
    """/v1/ping, /v1/shop/checkin and the vendor receivers each bring an offer (rows to write);
    with the ledger refusing writes, none of them may say 202."""
    server = hard
    agent = server.agent
    aruba = json.dumps({"sta_location_x": 24.0, "sta_location_y": 10.0, "floor_id": "plan-1",
                        "hashed_sta_eth_mac": "ABCDEF", "unit": "METERS", "error_level": 1}).encode()
    meraki = json.dumps(meraki_body([meraki_obs("aa:00:00:00:00:09", 24.0, 10.0)])).encode()
    async with aiohttp.ClientSession() as http:
        sessions = []
        for _ in range(2):  # one device for the ping, one for the check-in: each its own offer
            async with http.post(server.url + "/v1/shop/session") as r:
                sessions.append(await r.json())
        s, c = sessions
        auth = {"Authorization": f"Bearer {s['token']}"}
        refuse_writes(agent)
        answers = {}
        async with http.post(server.url + f"/v1/ping?device={s['device']}&source=uwb", json=IN_AISLE,
                             headers=auth) as r:
            answers["ping"] = r.status
        async with http.post(server.url + f"/v1/shop/checkin?device={c['device']}&zone=aisle-1",
                             headers={"Authorization": f"Bearer {c['token']}"}) as r:
            answers["checkin"] = r.status
        async with http.post(server.url + "/v1/ingest/aruba", data=aruba, headers=ARUBA) as r:
            answers["aruba"] = r.status
        async with http.post(server.url + "/v1/ingest/meraki", data=meraki) as r:
            answers["meraki"] = r.status
        async with http.get(server.url + "/readyz") as r:
            answers["readyz"] = r.status
    assert answers == {"ping": 503, "checkin": 503, "aruba": 503, "meraki": 503, "readyz": 503}
    assert offers(agent) == 0


# -- "Forget removes everything that names the device's pseudonym or person ... and counts each kind" --

ADMIN = {"Authorization": "Bearer admin-secret"}
POS = {"Authorization": "Bearer till-secret"}


def count(agent, sql: str, *args) -> int:
    return agent.ledger.conn.execute(sql, args).fetchone()[0]


async def ada_got_an_offer(cfg, agent_factory, mqtt_client):
    """An agent on ``cfg`` once device ``ada``, in an aisle, has its offer (the server)."""
    server = await agent_factory(cfg)
    phone = mqtt_client()
    await phone.subscribe(f"{cfg.root_topic}/offer/ada")
    await phone.publish(f"{cfg.root_topic}/ping/uwb/ada", IN_AISLE, qos=0)
    await phone.next_json(f"{cfg.root_topic}/offer/ada")
    return server


async def test_forget_removes_the_webhook_queue_of_the_device_and_counts_it(tmp_path, mosquitto, agent_factory,
                                                                           mqtt_client):
    """An offer waiting for the retailer's push service (its receiver down) names the device's
    pseudonym, and its raw id encrypted: a forget deletes it, and says how many."""
    from dataclasses import replace

    from store_config.model import DeliveryConfig

    from .conftest import free_port, wait_until

    import asyncio

    cfg = hard_store(tmp_path, mosquitto.url)
    cfg = replace(cfg, delivery=DeliveryConfig(webhook_url=f"http://127.0.0.1:{free_port()}/push",
                                               webhook_token="t", retry_s=30.0))
    server = await ada_got_an_offer(cfg, agent_factory, mqtt_client)
    agent = server.agent
    pseudo = agent.pseudonym("ada")
    await asyncio.wait_for(wait_until(lambda: count(agent, "SELECT count(*) FROM delivery WHERE device = ?",
                                                    pseudo) == 1), 5)
    async with aiohttp.ClientSession() as http:
        async with http.delete(server.url + "/v1/admin/devices/ada", headers=ADMIN) as r:
            assert r.status == 200
            body = await r.json()
    assert count(agent, "SELECT count(*) FROM delivery") == 0
    assert body["removed"]["delivery"] == 1


async def test_forget_removes_the_rows_that_name_the_devices_person(tmp_path, mosquitto, agent_factory,
                                                                   mqtt_client):
    """A device with a loyalty id is a person: the till's purchase under that loyalty id names the
    person (not the device's pseudonym), and so do its attribution and its event for central."""
    cfg = hard_store(tmp_path, mosquitto.url, profiles=[{"device": "ada", "loyalty_id": "L-1"}])
    server = await ada_got_an_offer(cfg, agent_factory, mqtt_client)
    agent = server.agent
    person = agent.state.person_for("ada")
    assert person != agent.pseudonym("ada")
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/pos/purchase", headers=POS,
                             json={"loyalty_id": "L-1", "skus": ["chips"], "basket_total": 2.0}) as r:
            assert r.status == 202 and (await r.json())["attributed"]
        assert count(agent, "SELECT count(*) FROM purchases WHERE person = ?", person) == 1
        async with http.delete(server.url + "/v1/admin/devices/ada", headers=ADMIN) as r:
            assert r.status == 200
            body = await r.json()
    for table in ("purchases", "attributions", "exposures", "redemptions"):
        assert count(agent, f"SELECT count(*) FROM {table} WHERE person = ?", person) == 0, table
    assert count(agent, "SELECT count(*) FROM outbox WHERE json_extract(body, '$.person') = ?", person) == 0
    assert body["removed"]["purchases"] == 1


# -- "One bad message never costs another" ----------------------------------------------------------

async def test_a_lone_surrogate_in_an_mqtt_json_string_is_a_dead_letter_and_costs_the_canary_nothing(
        tmp_path, mosquitto, agent_factory, mqtt_client):
    """Python's json takes "\\ud800" (orjson, and so every HTTP body, does not); SQLite cannot bind
    it. A POS inventory update carrying one, in a batch with a good ping, failed the batch's
    commit: the canary's offer went out with no row behind it."""
    from .hardening_kit import msg
    from .test_hardening import dead, offer_for

    server = await agent_factory(hard_store(tmp_path, mosquitto.url))
    agent = server.agent
    R = agent.root
    phone = mqtt_client()
    await phone.subscribe(f"{R}/offer/+")
    before = dead(agent, "decode")
    agent.on_batch([msg(f"{R}/inventory", b'{"sku": "\\ud800", "qty": 1, "note": NaN}', qos=1),
                    msg(f"{R}/inventory", b'[{"sku": "pear\\udfff", "qty": 2}]', qos=1),
                    msg(f"{R}/ping/uwb/canary", IN_AISLE)])
    offer = await offer_for(phone, R, "canary")
    assert offer["zone"] == "aisle-1"
    assert dead(agent, "decode") == before + 2
    assert not agent.metrics.storage_errors.values
    assert agent.ledger.get_offer(offer["offer_id"]) is not None
    # a surrogate pair is a character like any other (an emoji): taken
    agent.on_batch([msg(f"{R}/inventory", b'{"sku": "\\ud83c\\udf4f", "qty": 3, "note": NaN}', qos=1)])
    assert ("\U0001f34f", 3) in [(s, q) for s, q, _ in agent.store.inventory.load()]


async def test_the_requeue_endpoints_answer_503_and_readyz_follows_while_storage_fails(tmp_path, mosquitto,
                                                                                       agent_factory):
    """POST /v1/admin/delivery/requeue answered 500 on a refused write; POST /v1/admin/outbox/requeue
    answered 503 but left /readyz at 200, though that write had just failed."""
    from dataclasses import replace

    from store_config.model import DeliveryConfig

    from .conftest import free_port

    cfg = hard_store(tmp_path, mosquitto.url)
    cfg = replace(cfg, delivery=DeliveryConfig(webhook_url=f"http://127.0.0.1:{free_port()}/push",
                                               webhook_token="t", retry_s=30.0))
    server = await agent_factory(cfg)
    agent = server.agent
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/admin/outbox/requeue", "/v1/admin/delivery/requeue"):
            refuse_writes(agent)
            async with http.post(server.url + path, headers=ADMIN) as r:
                assert r.status == 503, (path, r.status)
            async with http.get(server.url + "/readyz") as r:
                assert r.status == 503, path
                assert (await r.json())["storage_ok"] is False
            agent.ledger.conn.execute("PRAGMA query_only = 0")
            agent.tick()  # the retry path's probe: storage works again
            async with http.get(server.url + "/readyz") as r:
                assert r.status == 200, path
            async with http.post(server.url + path, headers=ADMIN) as r:
                assert r.status == 200 and (await r.json()) == {"requeued": 0}


# -- "Headers must arrive within 10 s" -------------------------------------------------------------

def self_signed(tmp_path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1 (the store's own, as [http] tls_cert / tls_key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_over_tls_a_connection_that_never_finishes_its_handshake_is_closed_too(tmp_path, mosquitto,
                                                                                    agent_factory):
    """With [http] tls_cert set, aiohttp's header deadline starts only once the TLS handshake is
    done; asyncio gives a handshake 60 s. A client that connects and sends nothing (or half a
    ClientHello) held its socket that long, not the 10 s of the contract."""
    import asyncio
    import ssl
    from dataclasses import replace

    cert, key = self_signed(tmp_path)
    cfg = hard_store(tmp_path, mosquitto.url)
    cfg = replace(cfg, http=replace(cfg.http, tls_cert=cert, tls_key=key, header_timeout_s=0.5))
    server = await agent_factory(cfg)
    assert server.url.startswith("https://")
    for first in (b"", b"\x16\x03\x01\x02\x00\x01"):  # silence; the start of a ClientHello, never finished
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            if first:
                writer.write(first)
                await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the agent
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
    # A real client still gets its answer over TLS.
    ctx = ssl.create_default_context(cafile=cert)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/healthz", ssl=ctx) as r:
            assert r.status == 200


async def test_a_meraki_body_with_a_number_for_reporting_aps_keeps_its_observations(hard):
    """'every number is parsed defensively': a body whose reportingAps is a number (not the list
    Meraki documents) raised TypeError before any observation was looked at; the body was
    answered 202 and all its observations were lost, with no dead letter."""
    server = hard
    agent = server.agent
    body = meraki_body([meraki_obs("aa:00:00:00:00:07", 24.0, 10.0)])
    body["data"]["reportingAps"] = 1e308
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/ingest/meraki", data=json.dumps(body).encode()) as r:
            assert r.status == 202
    assert agent.metrics.pings.get("meraki") == 1
    assert offers(agent) == 1


async def chips_in_stock(hard, mqtt_client):
    """Five chips in stock (a QoS 1 inventory update) and an associate on the alerts: (agent, root, staff)."""
    from .hardening_kit import msg

    agent = hard.agent
    staff = mqtt_client()
    await staff.subscribe(f"{agent.root}/alert/#")
    agent.on_batch([msg(f"{agent.root}/inventory", {"sku": "chips", "qty": 5}, qos=1)])
    return agent, agent.root, staff


async def test_a_claim_answered_503_is_not_held_in_memory(hard, mqtt_client):
    """A claim (or a resolve) the ledger refused was answered 503, but the alert stayed claimed by
    that associate in memory: the retry, and every other associate, got 409 already_claimed."""
    from .hardening_kit import ASSOC, msg

    server = hard
    agent, R, staff = await chips_in_stock(hard, mqtt_client)
    agent.on_batch([msg(f"{R}/inventory", {"sku": "chips", "qty": 0}, qos=1)])  # a promoted sku runs out
    alert = await staff.next_json(f"{R}/alert/#")
    assert alert["kind"] == "stock_out"
    url = server.url + f"/v1/alerts/{alert['alert_id']}"
    async with aiohttp.ClientSession() as http:
        for action, then in (("claim", "claimed"), ("resolve", "resolved")):
            refuse_writes(agent)
            async with http.post(f"{url}/{action}", headers=ASSOC, json={"associate": "bob"}) as r:
                assert r.status == 503, action
            agent.ledger.conn.execute("PRAGMA query_only = 0")
            agent.tick()  # storage works again
            async with http.post(f"{url}/{action}", headers=ASSOC, json={"associate": "amy"}) as r:
                assert r.status == 200, (action, await r.text())
                assert (await r.json())["state"] == then and (await r.json())["by"] == "amy"


# -- "malformed JSON (deep nesting, huge numbers) 400" (docs/contract.md: "Every path") -------------

async def test_the_ping_path_answers_400_to_deep_json_huge_numbers_and_nan(hard):
    """POST /v1/ping answered 422 (its dead letter's status) to the malformed JSON the contract
    answers 400 on every path (cut short too); a ping that is JSON but unusable, or a msgpack
    body that is no ping, stays 422 with its reason."""
    from .hardening_kit import BIG

    server = hard
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/shop/session") as r:
            s = await r.json()
        url = server.url + f"/v1/ping?device={s['device']}&source=uwb"
        auth = {"Authorization": f"Bearer {s['token']}"}
        for body in (b'{"x": 24, "y": 10, "z": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
                     b'{"x": ' + str(BIG).encode() + b', "y": 10}', b'{"x": 1e400, "y": 10}',
                     b'{"x": NaN, "y": 10}', b'{"x": 24, "y"', b"{nope"):
            async with http.post(url, data=body, headers=auth) as r:
                assert r.status == 400, (body[:30], r.status)
                assert (await r.json())["accepted"] is False
        for body, reason in ((b"\x93\x01", "decode"), (b'{"x": "24", "y": 10}', "schema"),
                             (b'{"x": 1e300, "y": 10}', "range")):
            async with http.post(url, data=body, headers=auth) as r:
                assert (r.status, (await r.json())["reason"]) == (422, reason), body


async def test_a_since_that_is_no_time_is_400_not_500(hard):
    """'every number is parsed defensively': GET /v1/admin/report?since=nan (or 1e400, 5,000 digits,
    an ISO time past year 9999 in UTC) raised out of the report (500)."""
    server = hard
    async with aiohttp.ClientSession() as http:
        for since in ("nan", "1e400", "-1e400", "inf", "9" * 5000, "9999-12-31T23:59:59-14:00"):
            for path in ("/v1/admin/report", "/v1/admin/audit"):
                async with http.get(server.url + path, params={"since": since}, headers=ADMIN) as r:
                    assert r.status == 400, (path, since[:20], r.status)
        for since in ("0", "1700000000", "2026-11-22T08:00"):
            for path in ("/v1/admin/report", "/v1/admin/audit"):
                async with http.get(server.url + path, params={"since": since}, headers=ADMIN) as r:
                    assert r.status == 200, (path, since)


async def test_a_stock_out_whose_commit_failed_is_alerted_when_the_update_is_retried(hard, mqtt_client):
    """An inventory update that ran a promoted sku out could not be stored: it was kept for a retry (QoS 1),
    but memory already held the sku at 0 and the alert as raised (its dedupe window), so the retry,
    once storage was back, raised no ``stock_out`` and the associates never heard of it."""
    from .hardening_kit import msg

    agent, R, staff = await chips_in_stock(hard, mqtt_client)
    refuse_writes(agent)
    assert agent.on_batch([msg(f"{R}/inventory", {"sku": "chips", "qty": 0}, qos=1)]) is False
    agent.ledger.conn.execute("PRAGMA query_only = 0")
    agent.tick()  # storage works again: the kept update is retried
    alert = await staff.next_json(f"{R}/alert/#")
    assert (alert["kind"], alert["sku"]) == ("stock_out", "chips")
    assert agent.metrics.alerts.get("stock_out") == 1


# -- "a missing or wrong token gets 401": a token sent twice is not the token --------------------

async def test_a_repeated_authorization_header_or_token_is_401_whichever_comes_first(hard):
    """Two Authorization headers (or two ?token=) were judged by the first alone: [right, wrong]
    was let in and [wrong, right] refused, so what a proxy that appends its own header lets
    through depended on order. Found by an outside audit sending duplicated headers; now a
    repeated credential is no credential (401) on every guarded path, and it changes nothing."""
    server = hard
    led = server.agent.ledger.conn
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v1/shop/session") as r:
            s = await r.json()
        ping = f"/v1/ping?device={s['device']}&source=uwb"
        cases = [("POST", "/v1/pickups", "till-secret", {"order_id": "o-dup", "device": "d1", "zone": "aisle-1"}),
                 ("POST", "/v1/admin/promotions/chips/pause", "admin-secret", None),
                 ("GET", "/v1/floor", "assoc-secret", None),
                 ("POST", "/v1/ingest/aruba", "ale-token", []),
                 ("POST", ping, s["token"], IN_AISLE)]
        for method, path, token, body in cases:
            for pair in ((token, "wrong"), ("wrong", token)):
                headers = [("Authorization", f"Bearer {t}") for t in pair]
                async with http.request(method, server.url + path, headers=headers, json=body) as r:
                    assert r.status == 401, (path, pair, r.status)
            async with http.request(method, server.url + path, headers={"Authorization": f"Bearer {token}"},
                                    json=body) as r:
                assert r.status < 300, (path, r.status)  # the token alone is let in
        for path, token in (("/associates", "assoc-secret"), (f"/shop/code.svg?device={s['device']}&offer_id=x",
                                                              s["token"])):
            sep = "&" if "?" in path else "?"
            for pair in ((token, "wrong"), ("wrong", token)):
                async with http.get(server.url + path + f"{sep}token={pair[0]}&token={pair[1]}") as r:
                    assert r.status == 401, (path, pair, r.status)
    assert led.execute("SELECT count(*) FROM pickups").fetchone()[0] == 1  # only the lone token's
    assert server.agent.metrics.pings.get("uwb") == 1
