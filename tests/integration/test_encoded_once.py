"""One encoding per hop, end to end: what the store holds is what the worker wrote elsewhere, byte for byte.

A list's history row holds the very bytes published on reco.recommendations, and the profile snapshot's
payload is the worker's profile table value (the refresh agent encodes neither again).
"""

from __future__ import annotations

import sqlite3
import time

import orjson

from schemas import topics
from schemas.events import Browse, Click
from tests.waiting import wait_for


def now_ms() -> int:
    return int(time.time() * 1000)


def test_store_rows_are_the_published_list_and_the_table_row(worker, kafka) -> None:
    user = "it-encoded-once"
    t = now_ms()
    events = [Click(event_id=f"{user}-1", user_id=user, ts=t - 2000, item_id="eo-1", category="eo-cat"),
              Browse(event_id=f"{user}-2", user_id=user, ts=t - 1000, page="product", item_id="eo-2",
                     category="eo-cat", dwell_ms=4000)]
    kafka.send_events(events)
    published = kafka.read_until(topics.RECOMMENDATIONS, key=user.encode(),
                                 done=lambda ms: any(orjson.loads(m.value)["source_ts"] == t - 1000 for m in ms))
    last = [m.value for m in published if orjson.loads(m.value)["source_ts"] == t - 1000][-1]
    version = orjson.loads(last)["version"]

    def stored() -> tuple[bytes, bytes] | None:
        with sqlite3.connect(f"file:{worker.data_dir / 'streamrec.db'}?mode=ro", uri=True, timeout=30) as db:
            record = db.execute("SELECT record FROM rec_history WHERE user_id = ? AND version = ?",
                                (user, version)).fetchone()
            payload = db.execute("SELECT payload FROM profiles WHERE user_id = ?", (user,)).fetchone()
        if not record or not payload or orjson.loads(payload[0])["clock_ms"] != t - 1000:
            return None  # the list is written just before its profile snapshot
        return bytes(record[0]), bytes(payload[0])

    record, payload = wait_for(stored)
    assert record == last
    table_row = worker.get(f"/users/{user}/state").json()["profile"]
    assert orjson.loads(payload) == table_row  # the endpoint answers the row decoded: same object, same keys
    assert table_row["accepted"] == 2 and set(table_row["_ledger"]) == {e.event_id for e in events}
