"""The runtime's table and topic records (app/runtime/records.py) and dead letters (app/runtime/deadletter.py)."""

from __future__ import annotations

import hashlib

import msgspec
import orjson
import pytest

from app.runtime.deadletter import DEADLETTER_PREFIX_BYTES, deadletter_headers, deadletter_value
from app.runtime.records import (
    ProfileRow,
    RecState,
    decode_recstate,
    decode_row,
    decode_users,
    encode_recstate,
    encode_row,
    encode_users,
)
from models.profile import ProfileParams, apply_event, decode_profile, encode_profile, new_profile
from schemas.events import Browse, Click, EncodedRecommendation, RecItem, Recommendation

T0 = 1_700_000_000_000


def folded_row() -> ProfileRow:
    row = ProfileRow(user_id="u1")
    params = ProfileParams()
    for i in range(30):
        event = (Click(event_id=f"e{i}", user_id="u1", ts=T0 + i * 1000, item_id=f"i{i % 7}", category=f"c{i % 3}")
                 if i % 2 else Browse(event_id=f"e{i}", user_id="u1", ts=T0 + i * 1000, page="product",
                                      item_id=f"i{i % 5}", category="c1", dwell_ms=1000 * i))
        apply_event(row, event, params, None)
        row.ledger[event.event_id] = (f"ecom.click/0/{i}", 100 + i)
    return row


def test_profile_row_is_the_former_table_value_byte_for_byte() -> None:
    """Rows written before the msgspec codec (orjson of the profile's dict plus `_ledger`) read back whole
    and are written again byte-identical: the table keeps one format across the change."""
    row = folded_row()
    profile_part = {k: v for k, v in orjson.loads(encode_row(row)).items() if k != "_ledger"}
    former = orjson.dumps({**profile_part, "_ledger": {e: list(v) for e, v in row.ledger.items()}})
    back = decode_row(former, "u1")
    assert back == row and back.ledger["e3"] == ("ecom.click/0/3", 103)
    assert encode_row(back) == former


def test_a_profile_read_skips_the_ledger() -> None:
    """The refresh agent decodes a row as the plain profile it ranks on: equal to the folded one."""
    row = folded_row()
    profile = decode_profile(encode_row(row))
    assert type(profile) is not ProfileRow
    for field in msgspec.structs.fields(new_profile("u1")):
        assert getattr(profile, field.name) == getattr(row, field.name), field.name
    # the row is the profile's JSON object with the ledger as its last key
    assert encode_row(row) == encode_profile(profile)[:-1] + b',"_ledger":' + msgspec.json.encode(row.ledger) + b"}"


def test_a_missing_row_is_a_new_users_empty_one() -> None:
    row = decode_row(None, "u9")
    assert row.user_id == "u9" and row.ledger == {} and row.accepted == 0
    assert decode_recstate(None) == RecState()


def test_recstate_keeps_the_former_json_form() -> None:
    former = orjson.dumps({"version": 7, "rec_id": "r7", "shown": ["a", "b"], "generated_at": 5, "source_ts": 4})
    state = decode_recstate(former)
    assert state == RecState(version=7, rec_id="r7", shown=("a", "b"), generated_at=5, source_ts=4)
    assert encode_recstate(state) == former


def test_refresh_message_is_a_json_array_of_user_ids() -> None:
    assert encode_users(["u1", "u2"]) == orjson.dumps(["u1", "u2"])
    assert decode_users(orjson.dumps(["u1", "u2"])) == ["u1", "u2"]
    with pytest.raises(msgspec.ValidationError):
        decode_users(b'{"users": ["u1"]}')


def test_an_encoded_recommendation_carries_its_wire_json() -> None:
    record = Recommendation(rec_id="r", user_id="u1", version=3, generated_at=T0, source_ts=T0 - 5, scene="browsing",
                            model_version="m", items=[RecItem(item_id="i1", score=0.5, reason="popular")])
    encoded = EncodedRecommendation.of(record)
    assert encoded.record is record
    assert msgspec.json.decode(encoded.raw, type=Recommendation) == record
    assert orjson.loads(encoded.raw)["items"] == [{"item_id": "i1", "score": 0.5, "reason": "popular"}]


def test_deadletter_keeps_input_byte_exact_up_to_the_limit() -> None:
    headers = deadletter_headers("invalid_json", "x" * 600, "ecom.click", 2, 41)
    assert dict(headers)["detail"] == b"x" * 512 and dict(headers)["source_offset"] == b"41"
    assert deadletter_value(b"\xff{not json", headers, 100) == b"\xff{not json"
    assert deadletter_value(None, headers, 100) == b""
    assert len(headers) == 5


def test_deadletter_truncates_oversize_input_with_its_size_and_hash() -> None:
    value = bytes(range(256)) * 1000
    headers = deadletter_headers("too_large", "", "ecom.click", 0, 1)
    out = deadletter_value(value, headers, DEADLETTER_PREFIX_BYTES * 2)
    assert out == value[:DEADLETTER_PREFIX_BYTES]
    assert dict(headers)["truncated_from"] == str(len(value)).encode()
    assert dict(headers)["sha256"] == hashlib.sha256(value).hexdigest().encode()
