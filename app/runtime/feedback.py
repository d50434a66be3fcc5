"""The feedback stage (DESIGN.md §2 step 7), fed from the batches the profile and refresh agents hold.

The profile agent hands it each user's newly accepted events of a batch (`on_events`), the refresh agent
the lists it has just built, before they go to Kafka (`on_lists`). So the worker no longer reads
`streamrec.events` a second time nor its own `reco.recommendations` back: two Faust message operations
fewer per input event (issue 18, docs/BENCHMARKS.md). `reco.recommendations` is still published for
downstream apps; the stage just does not wait for it.

Each user's attribution state (`models.feedback.UserFeedback`) is one row of the `feedback` table,
read and written once per user per call, in the partition of that user's own message (`in_partition_of`),
so it moves with the user's partition like the `profiles` and `recstate` rows do. The window aggregates
live in memory (`FeedbackWindows`): a crash loses the open windows' partial sums, never a user's
attribution state. `close` hands back the windows the watermark has passed; the feedback timer
(agents/feedback.py) publishes them.

Every call reads and writes the row without awaiting in between, so the profile and refresh agents,
which both update a user's row, never interleave inside one update.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING

import orjson
from faust.types import EventT

from app.runtime.faust_fixes.batches import in_partition_of
from app.serving import lag
from models.feedback import FeedbackParams, FeedbackWindows, UserFeedback, WindowMetrics
from schemas import topics
from schemas.events import Recommendation, UserEvent

if TYPE_CHECKING:
    from app.runtime.faust_app import StreamRec

RECENT_WINDOWS = 2_000  # closed window records kept for the dashboard
RECENT_FRESHNESS = 20_000  # (wall time seen, freshness ms) of recent lists, for the dashboard


class FeedbackStage:
    """Attribution and windowed quality of one worker: one instance per runtime (`StreamRec.feedback_stage`).

    `table` is the `feedback` table, or any mapping of user id bytes to the row's JSON (unit tests).
    """

    def __init__(self, table: MutableMapping[bytes, bytes], params: FeedbackParams | None = None, *,
                 category_of: Callable[[str], str | None] = lambda _item: None,
                 catalog_size: Callable[[], int] = lambda: 0,
                 accuracy: Callable[[], float | None] = lambda: None) -> None:
        self.table = table
        self.windows = FeedbackWindows(params or FeedbackParams(), category_of=category_of,
                                       catalog_size=catalog_size)
        self.accuracy = accuracy  # the scene model's progressive-validation accuracy, repeated on each window
        self.recent: deque[WindowMetrics] = deque(maxlen=RECENT_WINDOWS)  # closed windows, newest last
        self.fresh: deque[tuple[float, float]] = deque(maxlen=RECENT_FRESHNESS)
        self.last_arrival = time.monotonic()  # an idle stream's watermark advances by wall time since

    def _read(self, key: bytes) -> UserFeedback:
        raw = self.table.get(key)
        return UserFeedback.from_dict(orjson.loads(raw)) if raw else UserFeedback()

    def on_events(self, user_id: str, delivered: Sequence[tuple[UserEvent, EventT]], *,
                  restart: bool = False) -> None:
        """A user's newly accepted events of one profile batch, in order, each with its Faust event.

        The profile agent passes only events its dedupe ledger accepted, so a redelivered batch is not
        counted twice; the row's own short ring of event ids still guards a redelivery the ledger missed.
        `restart`: the user was forgotten earlier in the same batch, so these events start a new row.
        """
        if not delivered:
            return
        now = time.time()
        anchor = delivered[-1][1]
        key = user_id.encode()
        with in_partition_of(anchor):
            state = UserFeedback() if restart else self._read(key)
            for record, event in delivered:
                appended = event.message.timestamp or now
                lag.PROCESSING.labels(topics.EVENTS).observe(max(0.0, now - appended))
                self.windows.on_event(state, record)
            self.table[key] = orjson.dumps(state.to_dict())
        self.last_arrival = time.monotonic()

    def on_lists(self, lists: Sequence[tuple[Recommendation, EventT]]) -> list[Recommendation]:
        """Lists the refresh agent has built, each with the message of its user's partition, before they
        are sent: a user's next event can only answer a list the stage already holds.

        Returns the lists new to the stage (a redelivered one is counted once), for `published`.
        """
        new: list[Recommendation] = []
        by_user: dict[str, list[Recommendation]] = {}
        anchors: dict[str, EventT] = {}
        for record, anchor in lists:
            by_user.setdefault(record.user_id, []).append(record)
            anchors[record.user_id] = anchor
        for user_id, own in by_user.items():
            key = user_id.encode()
            with in_partition_of(anchors[user_id]):
                state = self._read(key)
                new += [record for record in own if self.windows.on_list(state, record)]
                self.table[key] = orjson.dumps(state.to_dict())
        if lists:
            self.last_arrival = time.monotonic()
        return new

    def published(self, lists: Sequence[Recommendation]) -> None:
        """Lists Kafka has acknowledged: `streamrec_recommendations_total` and the freshness histogram
        keep counting published lists (the no-lists alert reads them), and the dashboard's freshness."""
        now = time.time()
        for record in lists:
            lag.RECOMMENDATIONS.labels(record.scene).inc()
            freshness_ms = record.generated_at - record.source_ts
            lag.FRESHNESS.observe(max(0.0, freshness_ms / 1000.0))
            self.fresh.append((now, float(freshness_ms)))

    def forget(self, user_id: str, anchor: EventT) -> None:
        """Erase a user's attribution state (a privacy request; its changelog gets a tombstone)."""
        with in_partition_of(anchor):
            self.table.pop(user_id.encode(), None)

    def idle_ms(self) -> int:
        return int((time.monotonic() - self.last_arrival) * 1000)

    def close(self, idle_ms: int | None = None) -> list[WindowMetrics]:
        """The windows the watermark has passed, closed; kept among the recent ones for the dashboard.

        `idle_ms`: wall time to advance the watermark by; None means the time since the last event or
        list arrived, so a quiet stream still closes its windows.
        """
        idle = self.idle_ms() if idle_ms is None else idle_ms
        closed = self.windows.close(idle_ms=idle, scene_model_accuracy=self.accuracy())
        self.recent.extend(closed)
        return closed


def stage_for(runtime: StreamRec) -> FeedbackStage:
    """The runtime's stage: item categories and catalog size from the model the worker serves now, and
    what the dashboard reads of it left in `runtime.extras` under the names it has always had."""

    def vectors():  # the services are attached after the runtime is built
        services = runtime.services
        model = services.recommender.model if services is not None else None
        return model.vectors if model is not None else None

    def category_of(item_id: str) -> str | None:
        found = vectors()
        return found.categories.get(item_id) if found is not None else None

    def catalog_size() -> int:
        found = vectors()
        return len(found.ids) if found is not None else 0

    def accuracy() -> float | None:
        services = runtime.services
        return services.scene_model.metrics().accuracy if services is not None else None

    stage = FeedbackStage(runtime.feedback, category_of=category_of, catalog_size=catalog_size,
                          accuracy=accuracy)
    runtime.extras["feedback"] = stage.windows  # open windows (dashboard, /experiments)
    runtime.extras["feedback_recent"] = stage.recent
    runtime.extras["freshness_recent"] = stage.fresh
    return stage
