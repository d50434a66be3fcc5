"""Scheduled retraining during the replay (issue 21, item 4): `streamrec evaluate --retrain-every-hours`
retrains on every event before each period's end, never on a later one, and the retrained model knows
items first seen after the training period, while `streamrec_no_retrain` keeps the first model."""

from __future__ import annotations

from collections.abc import Sequence

from app.evaluation.evaluate import evaluate_streams
from app.evaluation.systems import SharedModel, Variant, streamrec_factories
from models.ranking import RankedList, Ranker, RankRequest, Request
from schemas.events import Browse, UserEvent

T0 = 1_700_000_000_000
HOUR = 3_600_000


def _views(hours: float, items: Sequence[str], users: int, prefix: str) -> list[UserEvent]:
    """Each of ``users`` users views ``items`` in order, one a minute, starting ``hours`` after T0."""
    start = T0 + int(hours * HOUR)
    return [Browse(event_id=f"{prefix}{u}-{k}", user_id=f"{prefix}{u}", ts=start + u * 1000 + k * 60_000,
                   page="product", item_id=item, category=item.split("-")[0], dwell_ms=30_000)
            for u in range(users) for k, item in enumerate(items)]


class Recorder(Ranker):
    """Records what each retrain saw and when, against the events it is asked about."""

    name = "recorder"

    def __init__(self) -> None:
        self.retrained: list[tuple[int, int]] = []  # (events seen, newest ts among them)
        self.observed: list[UserEvent] = []
        self.asked_at: list[int] = []

    def observe(self, events: Sequence[UserEvent]) -> None:
        self.observed.extend(events)

    def retrain(self, history: Sequence[UserEvent]) -> None:
        assert list(history) == self.observed  # everything observed so far, nothing else
        self.retrained.append((len(history), max(e.ts for e in history)))

    def recommend(self, requests: Sequence[Request], now_ms: int, *, k: int | None = None) -> list[RankedList]:
        self.asked_at.append(now_ms)
        return [RankedList(r.user_id, ()) for r in requests]


def test_the_replay_retrains_on_the_past_only_once_per_period() -> None:
    train = _views(0, ["a-1", "a-2", "a-3"], 5, "t")
    test = sorted(_views(1, ["a-1", "a-2"], 5, "x") + _views(3.5, ["b-1", "b-2"], 5, "y"),
                  key=lambda e: (e.ts, e.event_id))
    recorder = Recorder()
    evaluate_streams(train, test, {"recorder": lambda: recorder}, progress=False, retrain_every_ms=HOUR)
    # the replay starts 1 h after T0: periods end at 2 h, 3 h, 4 h; the clock jumps from ~1.1 h to 3.5 h,
    # so one retrain covers the periods ending at 2 h and 3 h, and none follows (the last event is < 4.5 h)
    first_test = len(train) + 10
    assert recorder.retrained == [(first_test, max(e.ts for e in test[:10]))]
    assert all(ts < T0 + int(3.5 * HOUR) for _, ts in recorder.retrained)
    # without the option nothing is retrained
    plain = Recorder()
    evaluate_streams(train, test, {"recorder": lambda: plain}, progress=False)
    assert plain.retrained == []


def test_a_retrained_model_knows_the_items_first_seen_in_the_replay() -> None:
    train = _views(0, ["a-1", "a-2", "a-3", "a-4"], 12, "t")
    test = sorted(_views(1, ["n-1", "n-2", "n-3", "n-4"], 12, "x") + _views(2.5, ["n-1", "n-2"], 6, "y"),
                  key=lambda e: (e.ts, e.event_id))
    shared = SharedModel(dim=16)
    try:
        factories = streamrec_factories(shared, [Variant("streamrec"), Variant("streamrec_no_retrain", retrain=False)])
        systems = {name: make() for name, make in factories.items()}
        result = evaluate_streams(train, test, {name: (lambda s=s: s) for name, s in systems.items()},
                                  progress=False, retrain_every_ms=HOUR)
        assert shared.trainings == 2  # the training period, then one retrain shared by both configurations
        retrained, frozen = systems["streamrec"], systems["streamrec_no_retrain"]
        assert "n-1" in retrained.model.vectors.ids and "n-1" not in frozen.model.vectors.ids
        assert frozen.model is not retrained.model and frozen.recall is not retrained.recall
        # both still serve lists after the retrain (the frozen one from its own, still open, collection)
        for system in (retrained, frozen):
            assert system.recommend([RankRequest("y0")], T0 + 3 * HOUR, k=10)[0].items
        assert result.systems["streamrec"].retrain_seconds > 0
        assert result.systems["streamrec_no_retrain"].retrain_seconds < result.systems["streamrec"].retrain_seconds
    finally:
        shared.close()

