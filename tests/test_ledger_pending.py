"""A batch that publishes commits twice: its rows as one pending record, then
(after its offers are on the wire) into their tables.  What a crash or a
failed second commit leaves pending is written by the next commit or start.
Pure: a real SQLite file, no broker."""

from __future__ import annotations

import dataclasses
import json
import secrets

import pytest

from edge_agent.pipeline import effects as fx
from edge_agent.storage.privacy import TopicSealer
from edge_agent.storage.store import ROW_KINDS, open_ledger, pack_rows, unpack_rows

RAW = "aa:bb:cc:dd:ee:ff-raw-phone"


def _sample(cls):
    """One instance of a row kind, every field set (None only where the field allows nothing else)."""
    by_type = {"str": "s-1", "str | None": "s-2", "float": 1.5, "float | None": 2.25, "int": 3, "bool": True,
               "bool | None": False, "dict[str, Any]": {"a": 1, "b": "two", "c": None},
               "dict[str, Any] | None": {"k": 2.5}, "bytes | None": b"\x00sealed", "tuple[str, ...]": ("x", "y"),
               "tuple[tuple[int, float, str, str | None, str], ...]": ((1, 2.0, "p", None, "arm"),)}
    return cls(**{f.name: by_type[f.type] for f in dataclasses.fields(cls)})


def test_every_row_kind_comes_back_from_a_record_as_it_went_in():
    rows = [_sample(cls) for cls, _ in ROW_KINDS.values()]
    assert unpack_rows(pack_rows(rows)) == rows
    # the kinds the store writes are all known: a new kind without an entry fails here, not in a crash
    written = {name for name in fx.__all__ if name not in ("Effects", "Publish", "OfferOut", "Notice")}
    assert written == set(ROW_KINDS)


def test_lists_in_a_record_come_back_as_tuples_that_write_the_same_json():
    ev = fx.Event("offer", 1.0, "d_x", {"skus": ["a", "b"], "nested": {"l": [1, [2]]}})
    [back] = unpack_rows(pack_rows([ev]))
    assert json.dumps(back.fields) == json.dumps(ev.fields)


def _offer_batch(pseudo: str) -> list:
    payload = {"offer_id": "o-1", "promotion_id": "chips", "zone": "aisle-1", "expires": 2000.0}
    return [fx.OfferRow("o-1", pseudo, "chips", "aisle-1", 1000.0, 2000.0, payload, topic_device=RAW),
            fx.Audit(1000.0, pseudo, "enter", "aisle-1", "chips", "sent", "eligible", "o-1"),
            fx.Event("offer", 1000.0, pseudo, {"offer_id": "o-1", "promotion_id": "chips"})]


def test_a_record_cut_off_by_a_crash_is_written_at_the_next_start_and_never_holds_the_raw_id(tmp_path):
    path = tmp_path / "edge.sqlite3"
    sealer = TopicSealer(secrets.token_bytes(32))
    ledger, store = open_ledger(path, store_id="S1", sealer=sealer)
    rows, _ = store.hold(_offer_batch("d_phone"))
    store.commit()  # the first commit; the process dies before the second
    files = [p for p in tmp_path.iterdir() if p.name.startswith("edge.sqlite3")]
    assert any(p.name.endswith("-wal") for p in files)
    assert not any(RAW.encode() in p.read_bytes() for p in files)
    ledger.conn.close()

    ledger, store = open_ledger(path, store_id="S1", sealer=sealer)
    assert store.replay_pending() == 1
    store.commit()
    offer = ledger.get_offer("o-1")
    assert offer is not None and offer.delivered is False
    assert sealer.open(offer.sealed, "o-1") == RAW  # still re-sent to its phone after the restart
    assert ledger.read_audit(device="d_phone")[0]["offer_id"] == "o-1"
    [(_, event)] = ledger.outbox.peek(10)
    assert event["kind"] == "offer" and event["offer_id"] == "o-1"
    assert ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    assert store.replay_pending() == 0


def test_records_are_written_in_order_so_a_later_batch_acts_on_an_earlier_offer(tmp_path):
    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    store.hold(_offer_batch("d_phone"))
    store.commit()
    store.hold([fx.Action("o-1", "redeemed", 1010.0)])
    store.commit()
    assert store.replay_pending() == 2
    store.commit()
    assert ledger.get_offer("o-1").action == "redeemed"


def test_a_settled_record_is_gone_and_its_rows_are_in_their_tables(tmp_path):
    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    rows, pending_id = store.hold(_offer_batch("d_phone"))
    assert not any(getattr(r, "topic_device", None) for r in rows)  # sealed (or dropped without a sealer)
    store.commit()
    store.settle(rows, pending_id)
    store.commit()
    assert ledger.get_offer("o-1") is not None
    assert ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)


def test_a_record_takes_what_the_tables_json_takes(tmp_path):
    """A lone surrogate (json.loads makes one of "\\ud800", e.g. a claim's associate) and a
    dict with int keys go into an outbox event's JSON as they are; in a batch with offers
    the pending record must take them too, and give them back to a replay."""
    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    rows = _offer_batch("d_phone") + [fx.Event("alert", 1000.0, None, {"by": "\ud800x", "counts": {1: 2}})]
    store.hold(rows)  # was: UnicodeEncodeError (surrogates not allowed), not a storage error
    store.commit()
    assert store.replay_pending() == 1  # was: ValueError (int is not allowed for map key)
    store.commit()
    bodies = [e for _, e in ledger.outbox.peek(10) if e["kind"] == "alert"]
    assert bodies == [json.loads(json.dumps({**bodies[0], "by": "\ud800x", "counts": {1: 2}}))]


def test_a_record_from_before_an_upgrade_that_changed_a_row_kind_is_read_by_field_name():
    import msgpack
    # written by a version whose Audit had one field more and no offer_id (fields in another order)
    old = msgpack.packb([("Audit", ("device", "ts", "event", "zone", "promotion_id", "outcome", "reason", "gone"),
                          ["d_x", 5.0, "enter", "z1", "p1", "offered", "offered", "dropped"])])
    [row] = unpack_rows(old)
    assert row == fx.Audit(5.0, "d_x", "enter", "z1", "p1", "offered", "offered", None)


def _counted(store) -> list[str]:
    got: list[str] = []
    store.on_dropped = got.append
    return got


@pytest.mark.parametrize("bad, error", [
    (fx.Event("offer", 1000.0, "d_phone", {"blob": b"\x00"}), "TypeError"),  # bytes where the outbox takes JSON
    (fx.Audit(1001.0, "d_phone", "dwell", ("a", "list"), "chips", "suppressed", "cooldown"), "ProgrammingError"),
])
def test_a_record_with_a_row_no_table_takes_is_written_without_that_row_and_holds_nothing_up(tmp_path, caplog, bad,
                                                                                              error):
    """A replay that fails on a row (a bug, not the disk: a value the outbox's JSON or SQLite
    cannot take) writes the record row by row: the bad row is left out, logged and counted once
    the rest is committed, and the records after it are written too."""
    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    counted = _counted(store)
    store.hold(_offer_batch("d_phone") + [bad])
    store.commit()
    store.hold([fx.Action("o-1", "redeemed", 1010.0)])  # a later record acting on the poisoned one's offer
    store.commit()
    with caplog.at_level("ERROR", logger="edge_agent.storage.store"):
        assert store.replay_pending() == 2
        assert counted == []  # not before the commit holds
        store.commit()
    offer = ledger.get_offer("o-1")
    assert offer is not None and offer.action == "redeemed"
    assert [a["offer_id"] for a in ledger.read_audit(device="d_phone")] == ["o-1"]
    assert [e["kind"] for _, e in ledger.outbox.peek(10)] == ["offer"]
    assert ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    assert counted == [error]
    assert any(f"a {type(bad).__name__} row left out ({error})" in r.getMessage() for r in caplog.records)


def test_a_row_left_out_is_counted_once_when_its_replay_was_rolled_back_and_done_again(tmp_path):
    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    counted = _counted(store)
    store.hold(_offer_batch("d_phone") + [fx.Event("offer", 1000.0, "d_phone", {"blob": b"\x00"})])
    store.commit()
    store.replay_pending()
    store.rollback()  # the same commit failed on the disk afterwards: nothing of it holds
    assert ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (1,) and counted == []
    store.replay_pending()
    store.commit()
    assert counted == ["TypeError"]


def test_a_record_replayed_row_by_row_keeps_applys_order_forgets_after_the_rows_they_purge(tmp_path):
    """apply() writes the kinds first and events and forgets last; a record written row by
    row keeps that order, so a forget listed before an audit row still purges its zone."""
    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    _counted(store)
    store.hold(_offer_batch("d_phone")[:1] + [fx.Forget("d_phone"),
                                               fx.Audit(1000.0, "d_phone", "enter", "aisle-1", "chips", "offered",
                                                        "offered", "o-1"),
                                               fx.Event("offer", 1000.0, "d_phone", {"blob": b"\x00"})])
    store.commit()
    store.replay_pending()
    store.commit()
    assert [a["zone"] for a in ledger.read_audit(device="d_phone")] == [None]


def test_rows_a_version_cannot_read_cost_only_themselves(tmp_path):
    """A record written by a newer version (a kind this one does not know) after a downgrade:
    the rows it can read are written; a record that is no msgpack at all is dropped, said once."""
    import msgpack

    ledger, store = open_ledger(tmp_path / "edge.sqlite3", store_id="S1")
    counted = _counted(store)
    entries = msgpack.unpackb(pack_rows(_offer_batch("d_phone")), use_list=False)
    ledger.begin()
    ledger.conn.execute("INSERT INTO pending(rows) VALUES (?)",
                        (msgpack.packb(list(entries) + [("FutureKind", ("x",), (1,))]),))
    ledger.conn.execute("INSERT INTO pending(rows) VALUES (?)", (b"\xc1 not msgpack",))
    store.commit()
    assert store.replay_pending() == 2
    store.commit()
    assert ledger.get_offer("o-1") is not None and ledger.read_audit(device="d_phone")[0]["offer_id"] == "o-1"
    assert ledger.conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    assert len(counted) == 2 and counted[0] == "KeyError"
