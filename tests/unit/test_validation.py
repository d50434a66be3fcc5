"""Decoding and validation of raw input values: every reason reachable, good events pass, never raises."""

from __future__ import annotations

import gzip

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.runtime.settings import Settings
from schemas import topics
from schemas.events import Browse, CatalogItem, Click, OrderItem, Purchase
from schemas.validation import (
    Limits,
    Reason,
    Rejection,
    decode_event,
    decode_tagged,
    encode_event,
    event_type,
)

NOW = 1_700_000_000_000
LIMITS = Limits()


def click(**over: object) -> dict:
    return {"event_id": "e1", "user_id": "u1", "ts": NOW - 1000, "item_id": "i1", **over}


def browse(**over: object) -> dict:
    return {"event_id": "e2", "user_id": "u1", "ts": NOW - 1000, "page": "product", "item_id": "i1",
            "dwell_ms": 1200, **over}


def purchase(**over: object) -> dict:
    return {"event_id": "e3", "user_id": "u1", "ts": NOW - 1000, "order_id": "o1",
            "items": [{"item_id": "i1", "quantity": 2, "price": 9.5, "category": "c1"}], **over}


def catalog(**over: object) -> dict:
    return {"item_id": "i1", "category": "c1", "price": 9.5, "available": True, **over}


def dec(value: dict | bytes | None, topic: str = topics.CLICK, limits: Limits = LIMITS):
    raw = msgspec.json.encode(value) if isinstance(value, dict) else value
    return decode_event(raw, topic, limits, NOW)


def reason(result: object) -> Reason:
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    return result.reason


# --- accepted ------------------------------------------------------------------------------------


def test_good_events_of_each_type_are_accepted() -> None:
    assert dec(click(action="add_to_cart", position=3, rec_id="r1")) == Click(
        event_id="e1", user_id="u1", ts=NOW - 1000, item_id="i1", action="add_to_cart", position=3, rec_id="r1")
    assert dec(browse(), topics.BROWSE) == Browse(event_id="e2", user_id="u1", ts=NOW - 1000, page="product",
                                                  item_id="i1", dwell_ms=1200)
    got = dec(purchase(), topics.PURCHASE)
    assert isinstance(got, Purchase)
    assert got.items == [OrderItem(item_id="i1", quantity=2, price=9.5, category="c1")]
    assert dec(catalog(vector=[0.1, 0.2]), topics.CATALOG) == CatalogItem(
        item_id="i1", category="c1", price=9.5, available=True, vector=[0.1, 0.2])


def test_matching_type_field_and_unknown_extra_fields_are_accepted() -> None:
    got = dec(click(type="click", new_field_from_the_future={"x": [1, 2]}))
    assert isinstance(got, Click)
    assert got.item_id == "i1"


def test_encode_then_decode_round_trips_with_the_type_tag() -> None:
    event = Purchase(event_id="e", user_id="u", ts=NOW, order_id="o",
                     items=[OrderItem(item_id="a", price=1.25), OrderItem(item_id="b", quantity=3)])
    raw = encode_event(event)
    assert orjson.loads(raw)["type"] == "purchase"
    assert decode_event(raw, topics.PURCHASE, LIMITS, NOW) == event
    assert decode_tagged(raw, LIMITS, NOW) == event
    assert event_type(event) == "purchase"


def test_decode_tagged_picks_the_kind_from_type() -> None:
    assert isinstance(decode_tagged(orjson.dumps(browse(type="browse")), LIMITS, NOW), Browse)
    assert isinstance(decode_tagged(orjson.dumps(catalog(type="catalog")), LIMITS, NOW), CatalogItem)


def test_limits_from_settings() -> None:
    settings_ = Settings(max_message_bytes=2048, max_order_items=5, min_event_ts_ms=7, max_future_skew_ms=9)
    assert Limits.from_settings(settings_) == Limits(max_message_bytes=2048, max_order_items=5, min_ts_ms=7,
                                                     max_future_skew_ms=9)


# --- every reason ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, b""])
def test_empty(raw: bytes | None) -> None:
    assert reason(dec(raw)) is Reason.EMPTY


def test_too_large() -> None:
    result = dec(click(pad="x" * 2000), limits=Limits(max_message_bytes=1024))
    assert reason(result) is Reason.TOO_LARGE
    assert len(result.detail) < 100


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"event_id": "\xff"}', gzip.compress(b"{}")])
def test_not_utf8(raw: bytes) -> None:
    assert reason(dec(raw)) is Reason.NOT_UTF8


@pytest.mark.parametrize("raw", [b"{", orjson.dumps(click()) + b"{}", b'{"ts": NaN}', b'{"price": Infinity}', b"nul", b"  "])
def test_invalid_json(raw: bytes) -> None:
    assert reason(dec(raw)) is Reason.INVALID_JSON


def test_deep_nesting_is_invalid_json_not_a_crash() -> None:
    raw = b'{"event_id": "e", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert reason(dec(raw, limits=Limits(max_message_bytes=10_000_000))) is Reason.INVALID_JSON


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"click"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert reason(dec(raw)) is Reason.NOT_AN_OBJECT


def test_unknown_topic_and_unknown_or_missing_tag() -> None:
    assert reason(dec(click(), "ecom.nope")) is Reason.UNKNOWN_TYPE
    assert reason(decode_tagged(orjson.dumps(click(type="refund")), LIMITS, NOW)) is Reason.UNKNOWN_TYPE
    assert reason(decode_tagged(orjson.dumps(click()), LIMITS, NOW)) is Reason.UNKNOWN_TYPE
    assert reason(decode_tagged(orjson.dumps(click(type=3)), LIMITS, NOW)) is Reason.UNKNOWN_TYPE


@pytest.mark.parametrize("tag", ["browse", "purchase", 1])
def test_type_field_must_agree_with_topic(tag: object) -> None:
    assert reason(dec(click(type=tag))) is Reason.TYPE_MISMATCH


def test_a_type_naming_no_event_kind_is_unknown_on_any_topic() -> None:
    assert reason(dec(click(type="refund"))) is Reason.UNKNOWN_TYPE


def test_missing_field_names_the_field() -> None:
    value = click()
    del value["item_id"]
    result = dec(value)
    assert reason(result) is Reason.MISSING_FIELD
    assert "`item_id`" in result.detail


@pytest.mark.parametrize(
    ("value", "topic"),
    [
        (click(ts=True), topics.CLICK),  # bool is not an int (strict)
        (click(ts=1.7e12), topics.CLICK),
        (click(ts=str(NOW)), topics.CLICK),
        (click(user_id=42), topics.CLICK),
        (click(position="3"), topics.CLICK),
        (purchase(items={"item_id": "i1"}), topics.PURCHASE),
        (purchase(items=[{"item_id": "i1", "quantity": True}]), topics.PURCHASE),
        (catalog(available="yes"), topics.CATALOG),
        (catalog(price="9.5"), topics.CATALOG),
    ],
)
def test_wrong_type(value: dict, topic: str) -> None:
    assert reason(dec(value, topic)) is Reason.WRONG_TYPE


@pytest.mark.parametrize(
    ("value", "topic"),
    [
        (click(action="buy_now"), topics.CLICK),
        (browse(page="checkout"), topics.BROWSE),
        (click(ts=LIMITS.min_ts_ms - 1), topics.CLICK),
        (click(ts=NOW + LIMITS.max_future_skew_ms + 1), topics.CLICK),
        (click(user_id=""), topics.CLICK),
        (click(item_id="x" * 257), topics.CLICK),
        (click(event_id="e\n1"), topics.CLICK),
        (click(session_id="s\x00"), topics.CLICK),
        (click(position=-1), topics.CLICK),
        (browse(dwell_ms=-5), topics.BROWSE),
        (browse(dwell_ms=2**70), topics.BROWSE),  # beyond int64
        (browse(query="q" * 5000), topics.BROWSE),
        (purchase(items=[]), topics.PURCHASE),
        (purchase(order_id=""), topics.PURCHASE),
        (purchase(items=[{"item_id": "i1", "quantity": 0}]), topics.PURCHASE),
        (purchase(items=[{"item_id": "i1", "price": -0.01}]), topics.PURCHASE),
        (purchase(items=[{"item_id": "\u200b"}]), topics.PURCHASE),
        (catalog(price=-1.0), topics.CATALOG),
        (catalog(category=""), topics.CATALOG),
        (catalog(ts=5), topics.CATALOG),
        (catalog(vector=[]), topics.CATALOG),
    ],
)
def test_invalid_value(value: dict, topic: str) -> None:
    assert reason(dec(value, topic)) is Reason.INVALID_VALUE


def test_number_overflowing_a_double_is_invalid_value() -> None:
    raw = orjson.dumps(catalog(price=1.0)).replace(b"1.0", b"1e400")
    assert reason(dec(raw, topics.CATALOG)) is Reason.INVALID_VALUE


def test_non_finite_floats_from_a_producer_are_rejected() -> None:
    # JSON has no NaN; msgspec encodes a NaN a producer put in a Struct as null, which must not pass.
    raw = encode_event(CatalogItem(item_id="i1", category="c1", price=float("nan"), available=True))
    assert reason(dec(raw, topics.CATALOG)) is Reason.WRONG_TYPE
    raw = encode_event(CatalogItem(item_id="i1", category="c1", price=1.0, available=True,
                                   vector=[1.0, float("inf")]))
    assert reason(dec(raw, topics.CATALOG)) is Reason.WRONG_TYPE
    assert isinstance(dec(catalog(vector=[1e308, -1e308]), topics.CATALOG), CatalogItem)


def test_too_many_order_items() -> None:
    value = purchase(items=[{"item_id": f"i{k}"} for k in range(6)])
    assert reason(dec(value, topics.PURCHASE, Limits(max_order_items=5))) is Reason.INVALID_VALUE
    assert isinstance(dec(value, topics.PURCHASE, Limits(max_order_items=6)), Purchase)


def test_every_reason_is_reachable() -> None:
    raws = {
        Reason.EMPTY: b"",
        Reason.TOO_LARGE: b"x" * (LIMITS.max_message_bytes + 1),
        Reason.NOT_UTF8: b"\xff",
        Reason.INVALID_JSON: b"{",
        Reason.NOT_AN_OBJECT: b"[]",
        Reason.UNKNOWN_TYPE: None,
        Reason.TYPE_MISMATCH: orjson.dumps(click(type="browse")),
        Reason.MISSING_FIELD: b"{}",
        Reason.WRONG_TYPE: orjson.dumps(click(ts=True)),
        Reason.INVALID_VALUE: orjson.dumps(click(ts=0)),
    }
    assert set(raws) == set(Reason)
    for expected, raw in raws.items():
        topic = "ecom.unknown" if expected is Reason.UNKNOWN_TYPE else topics.CLICK
        assert reason(decode_event(raw, topic, LIMITS, NOW)) is expected


def test_detail_is_short_even_for_huge_bad_values() -> None:
    result = dec(click(action="z" * 50_000))
    assert reason(result) is Reason.INVALID_VALUE
    assert len(result.detail) <= 160


# --- fuzz -----------------------------------------------------------------------------------------

_TOPICS = st.sampled_from([topics.CLICK, topics.BROWSE, topics.PURCHASE, topics.CATALOG, "other"])
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), topic=_TOPICS)
def test_decode_never_raises_on_arbitrary_bytes(raw: bytes, topic: str) -> None:
    result = decode_event(raw, topic, LIMITS, NOW)
    assert isinstance(result, Rejection | Click | Browse | Purchase | CatalogItem)
    assert isinstance(decode_tagged(raw, LIMITS, NOW), Rejection | Click | Browse | Purchase | CatalogItem)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from([click(), browse(), purchase(), catalog()]),
    patch=st.dictionaries(st.sampled_from(["event_id", "user_id", "ts", "item_id", "items", "page", "price",
                                           "action", "type", "dwell_ms", "vector", "quantity"]), _JSONISH),
    topic=_TOPICS,
)
def test_decode_never_raises_on_mutated_events(base: dict, patch: dict, topic: str) -> None:
    raw = msgspec.json.encode({**base, **patch})
    result = decode_event(raw, topic, LIMITS, NOW)
    if isinstance(result, Rejection):
        assert result.reason in set(Reason)
        assert len(result.detail) <= 160
    else:
        assert topics.TOPIC_BY_TYPE[event_type(result)] == topic
