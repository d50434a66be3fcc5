"""The Cassandra adapter's CQL, checked without a cluster: each prepared statement parses with cqlsh's
grammar, names tables, columns and keys the migrations create, and binds its markers in the order the
adapter passes values; the emulator runs the statement text, so a typo fails here and in the contract."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.store import cassandra
from app.store.base import ItemMeta, ProfileSnapshot
from app.store.cassandra import BUCKET_MS, CassandraStore, _prepare_all
from schemas.events import EncodedRecommendation, RecItem, Recommendation
from tests.contract.cql_check import CqlError, check_statement, load_schema
from tests.contract.cql_emulator import EmulatedCluster, EmulatedSession

SCHEMA = load_schema()

# What each statement binds, in order, with Cassandra's names for the markers: the adapter's call sites
# pass their values in this order (app/store/cassandra.py).
BINDS = {
    "put_profile": ["user_id", "scene", "interests", "updated_at", "payload"],
    "get_profile": ["user_id"],
    "put_history": ["user_id", "bucket", "version", "generated_at", "record", "[ttl]", "[timestamp]"],
    "put_bucket": ["user_id", "bucket", "[ttl]"],
    "put_latest": ["user_id", "version", "generated_at", "record", "[ttl]", "[timestamp]"],
    "get_latest": ["user_id"],
    "get_buckets": ["user_id", "bucket"],
    "get_history": ["user_id", "bucket", "[limit]"],
    "put_item": ["item_id", "category", "price", "available", "updated_at"],
    "get_item": ["item_id"],
    "del_profile": ["[timestamp]", "user_id"],
    "del_history": ["[timestamp]", "user_id", "bucket"],
    "del_buckets": ["[timestamp]", "user_id"],
    "del_latest": ["[timestamp]", "user_id"],
}


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def test_the_migrations_make_the_documented_tables() -> None:
    assert {name: (t.partition_key, t.clustering, sorted(t.descending), t.default_ttl_s)
            for name, t in SCHEMA.items()} == {
        "profiles": (("user_id",), (), [], 0),
        "rec_history": (("user_id", "bucket"), ("version",), ["version"], 2_592_000),
        "rec_buckets": (("user_id",), ("bucket",), ["bucket"], 2_592_000),
        "rec_latest": (("user_id",), (), [], 2_592_000),
        "items": (("item_id",), (), [], 0),
    }
    assert SCHEMA["profiles"].columns == {"user_id": "text", "scene": "text", "interests": "map<text,double>",
                                          "updated_at": "bigint", "payload": "blob"}
    assert SCHEMA["items"].columns["price"] == "double" and SCHEMA["items"].columns["available"] == "boolean"


@pytest.mark.parametrize("name", sorted(cassandra._STATEMENTS))
def test_every_prepared_statement_fits_the_schema_and_binds_in_order(name: str) -> None:
    statement = check_statement(cassandra._STATEMENTS[name], SCHEMA)
    assert [b.name for b in statement.binds] == BINDS[name]


def test_the_store_prepares_exactly_its_statements_and_marks_them_idempotent() -> None:
    session = EmulatedSession()
    prepared = _prepare_all(session)  # type: ignore[arg-type]
    assert session.prepared == list(cassandra._STATEMENTS.values())
    assert set(prepared) == set(BINDS) and all(p.is_idempotent for p in prepared.values())


@pytest.mark.parametrize(("cql", "why"), [
    ("SELECT version, generated_at, record FROM rec_history WHERE user_id = ? AND bucket = ? LIMT ?",
     "not valid CQL"),
    ("SELECT version, generated_at, record FROM rec_histroy WHERE user_id = ? AND bucket = ?", "does not exist"),
    ("SELECT version, generatd_at FROM rec_history WHERE user_id = ? AND bucket = ?", "undefined column"),
    ("SELECT version FROM rec_history WHERE user_id = ?", "partition key column bucket"),
    ("SELECT version FROM rec_history WHERE user_id = ? AND bucket >= ?", "partition key column bucket"),
    ("SELECT user_id FROM profiles WHERE scene = ?", "not a primary key column"),
    ("SELECT * FROM profiles WHERE user_id = ?", "only plain column names"),
    ("SELECT user_id FROM profiles WHERE user_id = ? ALLOW FILTERING", "outside the subset"),
    ("INSERT INTO rec_history (user_id, bucket, generated_at) VALUES (?, ?, ?)", "lacks primary key"),
    ("INSERT INTO rec_buckets (user_id, bucket) VALUES (?, ?, ?)", "2 columns but 3 values"),
    ("INSERT INTO rec_buckets (user_id, bucket, bucket) VALUES (?, ?, ?)", "written twice"),
    ("INSERT INTO rec_buckets (user_id, bucket) VALUES (?, ?) USING TTL 999999999", "out of range"),
    ("DELETE FROM rec_latest USING TTL ? WHERE user_id = ?", "not valid CQL"),
    ("DELETE FROM rec_history USING TIMESTAMP ? WHERE user_id = ?", "partition key column bucket"),
    ("DELETE FROM streamrec.rec_latest WHERE user_id = ?", "must not name one"),
    ("UPDATE items SET price = ? WHERE item_id = ?", "only INSERT, SELECT and DELETE"),
])
def test_statements_cassandra_would_refuse_are_refused(cql: str, why: str) -> None:
    with pytest.raises(CqlError, match=why):
        check_statement(cql, SCHEMA)


def test_a_typo_in_an_adapter_statement_fails_at_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    typo = cassandra._STATEMENTS["get_history"].replace("generated_at", "generatedat")
    monkeypatch.setitem(cassandra._STATEMENTS, "get_history", typo)
    with pytest.raises(CqlError, match="undefined column generatedat"):
        _prepare_all(EmulatedSession())  # type: ignore[arg-type]


def test_each_write_puts_its_values_in_the_columns_its_cql_names() -> None:
    clock = Clock(1_700_000_000.0)
    session = EmulatedSession(clock)
    store = CassandraStore(EmulatedCluster(), session, _prepare_all(session), 3600, clock)  # type: ignore[arg-type]
    generated_at = int(clock() * 1000) - 1_500  # 1.5 s old: 3598.5 s left, a TTL of 3599 s
    rec = EncodedRecommendation.of(Recommendation(
        rec_id="r", user_id="u", version=7, generated_at=generated_at, source_ts=generated_at - 5, scene="browsing",
        model_version="m", items=[RecItem(item_id="i", score=1.0, reason="why")]))
    profile = ProfileSnapshot(user_id="u", scene="shopping", interests={"c": 0.5}, updated_at=11, payload=b"{}")
    item = ItemMeta(item_id="i", category="c", price=2.5, available=False, updated_at=12)

    async def writes() -> None:
        await store.put_recommendations([rec])
        await store.put_profiles([profile])
        await store.put_items([item])

    asyncio.run(writes())
    expires = int(clock()) + 3599
    bucket = generated_at // BUCKET_MS
    history = session.tables["rec_history"].partitions[("u", bucket)].rows[(7,)]
    assert {c: (cell.value, cell.stamp, cell.expires_s) for c, cell in history.cells.items()} == {
        "generated_at": (generated_at.to_bytes(8, "big"), generated_at * 1000, expires),
        "record": (rec.raw, generated_at * 1000, expires),
    }
    latest = session.tables["rec_latest"].partitions[("u",)].rows[()]
    assert latest.cells["version"].value == (7).to_bytes(8, "big") and latest.cells["record"].value == rec.raw
    assert session.tables["rec_buckets"].partitions[("u",)].rows[(bucket,)].marker.expires_s == expires
    profiles = session.tables["profiles"].partitions[("u",)].rows[()].cells
    assert profiles["scene"].value == b"shopping" and profiles["updated_at"].value == (11).to_bytes(8, "big")
    items = session.tables["items"].partitions[("i",)].rows[()].cells
    assert items["category"].value == b"c" and items["available"].value == b"\x00"


def test_the_emulator_binds_like_the_driver() -> None:
    session = EmulatedSession()
    get_item = session.prepare(cassandra._STATEMENTS["get_item"])
    put_item = session.prepare(cassandra._STATEMENTS["put_item"])
    with pytest.raises(ValueError, match="2 values bound to 1 markers"):
        session.execute_async(get_item, ("i", "j"))
    with pytest.raises(TypeError, match='column "price"'):
        session.execute_async(put_item, ("i", "c", "cheap", True, 1))
    with pytest.raises(TypeError, match="not a statement prepared by this session"):
        session.execute_async(cassandra._STATEMENTS["get_item"], ("i",))  # type: ignore[arg-type]


def test_the_emulator_reconciles_and_expires_as_cassandra_does() -> None:
    clock = Clock(100.9)
    session = EmulatedSession(clock)

    def run(name: str, *params: object) -> list:
        answered, answer = threading.Event(), []
        session.execute_async(session.prepare(cassandra._STATEMENTS[name]), params).add_callbacks(
            lambda rows: (answer.append(rows), answered.set()), lambda error: (answer.append(error), answered.set()))
        assert answered.wait(10), "no answer"
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]

    run("put_latest", "u", 1, 10, b"old", 0, 5_000)
    run("put_latest", "u", 2, 20, b"new", 0, 4_000)  # an older timestamp loses, whatever arrives last
    assert [(r.version, r.record) for r in run("get_latest", "u")] == [(1, b"old")]
    run("put_latest", "u", 3, 30, b"tie", 0, 5_000)  # same timestamp: the greater value wins, cell by cell
    assert [(r.version, r.generated_at, r.record) for r in run("get_latest", "u")] == [(3, 30, b"tie")]
    run("del_latest", 5_000, "u")  # a tombstone at the same timestamp shadows the cells
    assert run("get_latest", "u") == []
    run("put_latest", "u", 4, 40, b"later", 0, 5_001)
    assert [r.version for r in run("get_latest", "u")] == [4]
    # TTLs count from the coordinator's whole second: written at 100.9 s with TTL 1, dead at 101 s
    run("put_bucket", "v", 9, 1)
    assert [r.bucket for r in run("get_buckets", "v", 0)] == [9]
    clock.now_s = 101.0
    assert run("get_buckets", "v", 0) == []
    run("put_bucket", "v", 1, 0)  # TTL 0: never expires, whatever the table's default
    run("put_bucket", "v", 3, 0)
    run("put_bucket", "v", 2, 0)
    clock.now_s += 10 * 365 * 86_400
    assert [r.bucket for r in run("get_buckets", "v", 2)] == [3, 2]  # clustering order DESC, range on it
