"""An in-memory stand-in for a Cassandra session that understands exactly the statements
app/store/cassandra.py prepares, with Cassandra's documented write semantics: last write wins by write
timestamp (client time unless ``USING TIMESTAMP``), per-row TTL, and delete tombstones that shadow every
write with a timestamp at or below theirs.

It lets the contract suite check the Cassandra store's own logic (bucket walk, dedupe, TTL and
timestamp arithmetic, forget-user) on every run. It does not replace the run against a real cluster
(``STREAMREC_CASSANDRA_HOSTS``), which is the only proof of the CQL itself.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.store.cassandra import _STATEMENTS

ProfileRow = namedtuple("ProfileRow", "user_id scene interests updated_at payload")
HistoryRow = namedtuple("HistoryRow", "version generated_at record")
BucketRow = namedtuple("BucketRow", "bucket")
ItemRow = namedtuple("ItemRow", "item_id category price available updated_at")


@dataclass
class Cell:
    value: Any
    stamp: int
    expires: float | None


@dataclass
class Table:
    rows: dict[tuple, Cell] = field(default_factory=dict)
    tombstones: dict[tuple, int] = field(default_factory=dict)  # partition key -> delete timestamp

    def write(self, partition: tuple, key: tuple, value: Any, stamp: int, ttl_s: int = 0) -> None:
        if stamp <= self.tombstones.get(partition, -1):
            return
        old = self.rows.get(partition + key)
        if old is None or stamp >= old.stamp:
            self.rows[partition + key] = Cell(value, stamp, time.time() + ttl_s if ttl_s else None)

    def delete(self, partition: tuple, stamp: int) -> None:
        self.tombstones[partition] = max(stamp, self.tombstones.get(partition, -1))
        for full_key in [k for k, c in self.rows.items() if k[:len(partition)] == partition and c.stamp <= stamp]:
            del self.rows[full_key]

    def live(self, partition: tuple) -> list[tuple[tuple, Any]]:
        now = time.time()
        return [(k, c.value) for k, c in self.rows.items()
                if k[:len(partition)] == partition and (c.expires is None or c.expires > now)]


class _Done:
    """What ``execute_async`` returns: a response that is already complete."""

    def __init__(self, rows: list[Any] | None, error: BaseException | None) -> None:
        self._rows, self._error = rows, error

    def add_callbacks(self, callback: Callable[[Any], None], errback: Callable[[BaseException], None]) -> None:
        # Like the driver, complete from another thread than the caller's event loop.
        target = (lambda: errback(self._error)) if self._error else (lambda: callback(self._rows))
        threading.Thread(target=target).start()


class EmulatedSession:
    def __init__(self) -> None:
        self.profiles, self.history, self.buckets = Table(), Table(), Table()
        self.latest, self.items = Table(), Table()
        self._lock = threading.Lock()

    def execute_async(self, name: str, params: Sequence[Any]) -> _Done:
        assert name in _STATEMENTS, f"unknown prepared statement {name}"
        try:
            with self._lock:
                return _Done(getattr(self, f"_{name}")(*params), None)
        except Exception as error:  # noqa: BLE001 - delivered to the caller like a driver error
            return _Done(None, error)

    @staticmethod
    def _now_us() -> int:
        return int(time.time() * 1_000_000)

    def _put_profile(self, user_id, scene, interests, updated_at, payload) -> list:
        self.profiles.write((user_id,), (), ProfileRow(user_id, scene, dict(interests), updated_at, payload),
                            self._now_us())
        return []

    def _get_profile(self, user_id) -> list:
        return [v for _, v in self.profiles.live((user_id,))]

    def _put_history(self, user_id, bucket, version, generated_at, record, ttl, stamp) -> list:
        self.history.write((user_id, bucket), (version,), HistoryRow(version, generated_at, record), stamp, ttl)
        return []

    def _put_bucket(self, user_id, bucket, ttl) -> list:
        self.buckets.write((user_id,), (bucket,), BucketRow(bucket), self._now_us(), ttl)
        return []

    def _put_latest(self, user_id, version, generated_at, record, ttl, stamp) -> list:
        self.latest.write((user_id,), (), HistoryRow(version, generated_at, record), stamp, ttl)
        return []

    def _get_latest(self, user_id) -> list:
        return [v for _, v in self.latest.live((user_id,))]

    def _get_buckets(self, user_id, since_bucket) -> list:
        found = [v for _, v in self.buckets.live((user_id,)) if v.bucket >= since_bucket]
        return sorted(found, key=lambda r: r.bucket, reverse=True)

    def _get_history(self, user_id, bucket, limit) -> list:
        found = sorted((v for _, v in self.history.live((user_id, bucket))), key=lambda r: r.version, reverse=True)
        return found[:limit]

    def _put_item(self, item_id, category, price, available, updated_at) -> list:
        self.items.write((item_id,), (), ItemRow(item_id, category, price, available, updated_at), self._now_us())
        return []

    def _get_item(self, item_id) -> list:
        return [v for _, v in self.items.live((item_id,))]

    def _del_profile(self, stamp, user_id) -> list:
        self.profiles.delete((user_id,), stamp)
        return []

    def _del_history(self, stamp, user_id, bucket) -> list:
        self.history.delete((user_id, bucket), stamp)
        return []

    def _del_buckets(self, stamp, user_id) -> list:
        self.buckets.delete((user_id,), stamp)
        return []

    def _del_latest(self, stamp, user_id) -> list:
        self.latest.delete((user_id,), stamp)
        return []


class EmulatedCluster:
    def shutdown(self) -> None:
        pass
