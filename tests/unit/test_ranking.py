"""Every ranker, production or baseline, honours the one interface the same way (models/ranking.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.evaluation.baselines import BASELINES
from app.evaluation.systems import SharedModel, Variant, streamrec_ranker
from models.ranking import Ranker, RankRequest
from schemas.events import Browse, OrderItem, Purchase, UserEvent

T0 = 1_700_000_000_000
MIN = 60_000

RANKERS: dict[str, Callable[[SharedModel], Ranker]] = {
    **{name: (lambda shared, make=make: make()) for name, make in BASELINES.items()},
    "streamrec": lambda shared: streamrec_ranker(Variant(), shared),
}


def _events() -> list[UserEvent]:
    """Twelve users in three sessions each over 30 items of three categories; some buy."""
    events: list[UserEvent] = []
    for n in range(12 * 3 * 6):
        user, step = n % 12, n // 12
        item = f"i{(user * 7 + step * 3) % 30}"
        ts = T0 + step * 12 * MIN + user * 1000
        if step % 6 == 5:
            events.append(Purchase(event_id=f"e{n}", user_id=f"u{user}", ts=ts, order_id=f"o{n}",
                                   items=[OrderItem(item_id=item, category=f"c{int(item[1:]) % 3}")]))
        else:
            events.append(Browse(event_id=f"e{n}", user_id=f"u{user}", ts=ts, page="product", item_id=item,
                                 category=f"c{int(item[1:]) % 3}"))
    return events


@pytest.fixture(scope="module", params=sorted(RANKERS))
def fitted(request, shared) -> tuple[str, Ranker, int]:
    events = _events()
    ranker = RANKERS[request.param](shared)
    ranker.fit(events[:-12])
    ranker.observe(events[-12:])
    return request.param, ranker, events[-1].ts + 1


def test_a_batch_gives_the_lists_one_request_at_a_time_would(fitted) -> None:
    name, ranker, now = fitted
    users = ["u3", "stranger", "u0", "u11", "u3"]
    batch = ranker.recommend([RankRequest(u) for u in users], now, k=10)
    assert [lst.user_id for lst in batch] == users
    for user, lst in zip(users, batch, strict=True):
        (alone,) = ranker.recommend([RankRequest(user)], now, k=10)
        assert alone.item_ids == lst.item_ids, (name, user)
        assert len(lst.items) == 10 and len(set(lst.item_ids)) == 10
        assert all(r.reason for r in lst.items)
    assert batch[1].cold_start and not batch[0].cold_start


def test_excluded_items_are_never_listed_and_the_list_is_still_full(fitted) -> None:
    name, ranker, now = fitted
    (first,) = ranker.recommend([RankRequest("u5")], now, k=8)
    drop = frozenset(first.item_ids[:4])
    (again,) = ranker.recommend([RankRequest("u5", exclude=drop)], now, k=8)
    assert drop.isdisjoint(again.item_ids), name
    assert len(again.items) == 8
    assert again.item_ids[:4] == first.item_ids[4:]  # the rest keep their order, and move up


def test_a_ranker_without_either_form_says_which_one_it_lacks() -> None:
    class Nothing(Ranker):
        pass

    with pytest.raises(NotImplementedError, match="Nothing implements neither observe nor observe_one"):
        Nothing().fit(_events()[:1])
    with pytest.raises(NotImplementedError, match="neither recommend nor recommend_one"):
        Nothing().recommend([RankRequest("u")], T0)
