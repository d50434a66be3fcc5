"""A Milvus recall that times out, in a real worker: nothing is lost, lists fall back to popularity, flagged.

STREAMREC_RECALL_TIMEOUT_S=1e-6 gives every milvus-lite search of the worker a 1 us gRPC deadline, which
it cannot meet: each refresh micro-batch is served from popularity (models/recommender.py), every item's
reason says so, and `refresh.fallback` counts the lists. A second worker on the same state with the
default deadline then serves normal lists again, which shows that the deadline (and nothing else) made
the first worker fall back.
"""

from __future__ import annotations

import msgspec
import pytest

from models.recommender import FALLBACK_NOTE
from schemas import topics
from schemas.events import Recommendation
from tests.reliability.conftest import Cluster, report, scale, shop_events

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TIMEOUT_ENV = "STREAMREC_RECALL_TIMEOUT_S"
FLAG = f"({FALLBACK_NOTE})"
_decode = msgspec.json.Decoder(Recommendation).decode


def item_events(n: int, n_users: int, seed: int) -> list:
    """Only events that name an item, so every user has a history (and goes to Milvus) from its first
    refresh on; a user without one gets popularity by design, not as a fallback."""
    return [e for e in shop_events(n, n_users=n_users, seed=seed) if getattr(e, "item_id", None)]


def published(cluster: Cluster) -> list[Recommendation]:
    return [_decode(m.value) for m in cluster.read_topic(topics.RECOMMENDATIONS) if m.value is not None]


def assert_ledger(stats: dict, accepted: int) -> None:
    assert stats["profile.accepted"] == accepted
    assert stats["ingest.consumed"] == stats["profile.accepted"] + stats.get("profile.duplicates", 0) + \
        stats.get("ingest.deadlettered", 0)


def test_recall_timeout_in_the_worker_falls_back_to_popularity_and_loses_nothing(cluster: Cluster) -> None:
    events = item_events(scale(3_000, 30_000), n_users=scale(80, 500), seed=41)
    users = {e.user_id for e in events}
    cluster.env[TIMEOUT_ENV] = "1e-6"
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    cluster.send_events(events)
    drain_s = cluster.wait_drained(worker, timeout_s=scale(300, 900))

    stats = worker.stats()
    assert_ledger(stats, len(events))  # every event accepted although every search failed
    lists = published(cluster)
    assert lists and {r.user_id for r in lists} == users  # every user still got lists
    assert stats["refresh.published"] == len(lists)
    assert stats["refresh.fallback"] == len(lists)  # each one counted as a fallback ...
    for record in lists:  # ... non-empty, from the real model's worker, and flagged on every item
        assert record.items, record
        assert record.model_version != "popularity-only"
        assert all(item.reason.endswith(FLAG) for item in record.items), record.items
        assert not any(item.reason.startswith("similar to item") for item in record.items)  # no ANN hits
    versions: dict[str, int] = {}
    for record in lists:  # the topic is read per partition in offset order: a user's lists in order
        assert record.version > versions.get(record.user_id, 0)
        versions[record.user_id] = record.version
    timeouts = worker.log_path.read_text(errors="replace").count("recall timed out for")
    assert timeouts >= 1  # one warning per micro-batch whose search missed the deadline
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.stop() == 0

    # the same state, the default deadline: normal lists, and the fallback count stays where it was
    del cluster.env[TIMEOUT_ENV]
    again = cluster.worker()
    again.wait_ready(timeout_s=180)
    more = item_events(scale(600, 6_000), n_users=scale(80, 500), seed=42)
    cluster.send_events(more)
    cluster.wait_drained(again, timeout_s=scale(300, 900))
    after = again.stats()
    assert_ledger(after, len(events) + len(more))
    fresh = published(cluster)
    new = [r for r in fresh if r.generated_at > max(r.generated_at for r in lists)]
    assert new and len(fresh) == after["refresh.published"]
    assert after["refresh.fallback"] == stats["refresh.fallback"]
    assert not any(FALLBACK_NOTE in item.reason for r in new for item in r.items)
    assert any(item.reason.startswith("similar to item") for r in new for item in r.items)  # ANN is back
    report("Milvus recall timeout in the worker (STREAMREC_RECALL_TIMEOUT_S=1e-6)", injected=timeouts,
           events_sent=len(events), events_accounted=stats["profile.accepted"], state_mismatches=0,
           fallback_lists=stats["refresh.fallback"], users=len(users), drain_s=round(drain_s, 1),
           normal_lists_after=len(new))
