"""What a redelivered events message counts as (app/runtime/ledger.py)."""

from __future__ import annotations

from app.runtime.ledger import bounded, classify, header, source_id


def test_classify_covers_every_redelivery_case() -> None:
    src = source_id("ecom.click", 0, 41)
    assert classify(True, [src, 7], src, 7) == "accepted"  # applied now
    assert classify(False, [src, 7], src, 7) == "accepted"  # applied in a batch whose counts were lost
    assert classify(False, [src, 7], src, 9) == "redelivered"  # ingest re-forwarded the same input message
    assert classify(False, [source_id("ecom.click", 0, 99), 7], src, 9) == "duplicates"  # sent twice upstream
    assert classify(False, None, src, 9) == "duplicates"  # in the ring, from before ledgers were kept


def test_header_reads_faust_header_shapes_and_bounded_follows_the_ring() -> None:
    assert header([("src", b"t/0/1")], "src") == "t/0/1"
    assert header({"src": b"t/0/2"}, "src") == "t/0/2"
    assert header(None, "src") is None and header([("other", b"x")], "src") is None
    seen = {"a": ["s", 1], "b": ["s", 2], "c": ["s", 3]}
    assert bounded(seen, ["b", "c", "d"]) == {"b": ["s", 2], "c": ["s", 3]}
