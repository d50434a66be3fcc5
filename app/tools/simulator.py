"""A synthetic shop's event stream, for demos and load tests on a fresh clone without data.

Never the judge of quality (DESIGN.md §6): its structure is plausible, not learned from anyone.
What it models:

- categories with Zipf popularity, each with a price band; items spread over categories with a Zipf
  long tail inside each category;
- users with a few preferred categories and an activity weight;
- sessions (a user returns only after a 30-minute gap, so gap-based sessionisation agrees) that move
  through scenes: *browsing* (home/category/search/product views and clicks across categories),
  *shopping* (repeated product views and comparisons in one category, wishlist, add_to_cart, the cart
  page), a *purchase* of the cart, then *post-purchase* (order and review pages);
- new users and new items appearing over the run; a new item's catalog event comes before any use,
  and the initial catalog is emitted first, at ``start_ts_ms``;
- ``dwell_ms`` on page views, events in ts order, all ids strings, deterministic for a seed.

``n_events`` counts user events (click/browse/purchase); catalog events come on top.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from schemas.events import Browse, CatalogItem, Click, OrderItem, Purchase, UserEvent

SESSION_GAP_MS: Final = 30 * 60 * 1000
_INITIAL_ITEMS: Final = 0.8
_INITIAL_USERS: Final = 0.7
_MEAN_STEP_MS: Final = 25_000
_MAX_STEP_MS: Final = 10 * 60 * 1000
_SESSIONS_PER_USER_PER_DAY: Final = 4.0


@dataclass(frozen=True, slots=True)
class _Item:
    item_id: str
    category: int
    price: float


@dataclass(slots=True)
class _Session:
    """One visit's mutable walk through the scenes (private to one simulate() call)."""

    user: int
    session_id: str
    scene: str = "browsing"
    focus: int | None = None
    cart: list[_Item] = field(default_factory=list)
    bought: list[_Item] = field(default_factory=list)
    viewed: list[_Item] = field(default_factory=list)
    steps: int = 0


class _Shop:
    """Catalog, users and the random choices over them, for one seeded run."""

    def __init__(self, rng: random.Random, n_users: int, n_items: int, n_categories: int) -> None:
        self.rng = rng
        self.cat_cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.1 for r in range(n_categories)))
        self.price_band = [math.exp(rng.uniform(math.log(3.0), math.log(800.0))) for _ in range(n_categories)]
        self.items = [self._new_item(i) for i in range(n_items)]
        self.live: list[list[_Item]] = [[] for _ in range(n_categories)]  # released items per category
        self.live_cum: list[list[float]] = [[] for _ in range(n_categories)]
        self.prefs = [self._preferences(n_categories) for _ in range(n_users)]
        self.activity_cum: list[float] = []
        self.released_users = 0
        self.user_weight = [rng.lognormvariate(0.0, 1.0) for _ in range(n_users)]

    def _new_item(self, index: int) -> _Item:
        category = self.category()
        price = round(self.price_band[category] * self.rng.lognormvariate(0.0, 0.35), 2)
        return _Item(item_id=f"i{index}", category=category, price=max(price, 0.5))

    def _preferences(self, n_categories: int) -> list[int]:
        return sorted({self.category() for _ in range(self.rng.randint(1, min(3, n_categories)))})

    def category(self) -> int:
        return bisect_left(self.cat_cum, self.rng.random() * self.cat_cum[-1])

    def release_item(self, item: _Item) -> None:
        shelf, cum = self.live[item.category], self.live_cum[item.category]
        shelf.append(item)
        # Zipf by arrival rank inside the category: early items are the established bestsellers.
        cum.append((cum[-1] if cum else 0.0) + 1.0 / len(shelf) ** 1.05)

    def release_user(self) -> None:
        weight = self.user_weight[self.released_users]
        self.activity_cum.append((self.activity_cum[-1] if self.activity_cum else 0.0) + weight)
        self.released_users += 1

    def pick_user(self) -> int:
        return bisect_left(self.activity_cum, self.rng.random() * self.activity_cum[-1])

    def pick_item(self, category: int) -> _Item | None:
        cum = self.live_cum[category]
        if not cum:
            return None
        return self.live[category][bisect_left(cum, self.rng.random() * cum[-1])]

    def user_category(self, user: int) -> int:
        """Mostly one of the user's preferred categories, sometimes exploring by popularity."""
        if self.rng.random() < 0.75:
            return self.rng.choice(self.prefs[user])
        return self.category()


def simulate(
    n_users: int, n_items: int, n_categories: int, n_events: int, seed: int, start_ts_ms: int
) -> Iterator[UserEvent | CatalogItem]:
    """Yield n_events user events (plus catalog events) of a synthetic shop, in ts order."""
    if min(n_users, n_items, n_categories) < 1 or n_events < 0:
        raise ValueError("need at least one user, item and category, and n_events >= 0")
    rng = random.Random(seed)
    shop = _Shop(rng, n_users, n_items, n_categories)
    n_initial_items = max(1, int(n_items * _INITIAL_ITEMS))
    for item in shop.items[:n_initial_items]:
        shop.release_item(item)
        yield _catalog(item, start_ts_ms)
    n_initial_users = max(1, int(n_users * _INITIAL_USERS))
    for _ in range(n_initial_users):
        shop.release_user()
    # Newcomers are released when this many user events have gone out (spread over 5%..90% of the run).
    item_due = _spread(n_items - n_initial_items, n_events)
    user_due = _spread(n_users - n_initial_users, n_events)
    next_item = n_initial_items
    arrival_ms = 86_400_000 / (_SESSIONS_PER_USER_PER_DAY * n_users)

    counter = itertools.count()
    heap: list[tuple[int, int, _Session]] = []
    busy_until: dict[int, int] = {}  # user -> ts of their last event (active or resting)
    sessions_of: dict[int, int] = {}
    next_arrival = start_ts_ms
    emitted = 0
    while emitted < n_events:
        if not heap or next_arrival <= heap[0][0]:
            now = next_arrival
            next_arrival += max(1, int(rng.expovariate(1.0) * arrival_ms))
            user = shop.pick_user()
            if user in busy_until and busy_until[user] + SESSION_GAP_MS >= now:
                continue  # still in (or just after) a session: this arrival is part of it
            number = sessions_of.get(user, -1) + 1
            sessions_of[user] = number
            heapq.heappush(heap, (now, next(counter), _Session(user=user, session_id=f"u{user}-{number}")))
            busy_until[user] = now
            continue
        now, _, session = heapq.heappop(heap)
        while next_item < n_items and item_due[next_item - n_initial_items] <= emitted:
            shop.release_item(shop.items[next_item])
            yield _catalog(shop.items[next_item], now)
            next_item += 1
        while shop.released_users < n_users and user_due[shop.released_users - n_initial_users] <= emitted:
            shop.release_user()
        step = min(_MAX_STEP_MS, max(1000, int(rng.expovariate(1.0 / _MEAN_STEP_MS))))
        event = _step(shop, session, now, step, f"sim{seed}-{emitted}")
        busy_until[session.user] = now
        if event is not None:
            yield event
            emitted += 1
        if session.scene != "done":
            heapq.heappush(heap, (now + step, next(counter), session))


def _spread(count: int, n_events: int) -> list[int]:
    if count <= 0:
        return []
    return [int(n_events * (0.05 + 0.85 * (k + 1) / (count + 1))) for k in range(count)]


def _catalog(item: _Item, ts: int) -> CatalogItem:
    return CatalogItem(item_id=item.item_id, category=f"c{item.category}", price=item.price, available=True,
                       ts=ts)


def _step(shop: _Shop, s: _Session, ts: int, step_ms: int, event_id: str) -> UserEvent | None:
    """Emit the session's next event and move it to its next scene; None if it had nothing to show."""
    rng = shop.rng
    s.steps += 1
    common = {"event_id": event_id, "user_id": f"u{s.user}", "ts": ts, "session_id": s.session_id}
    dwell = int(step_ms * rng.uniform(0.5, 0.95))
    if s.scene == "browsing":
        return _browse_step(shop, s, common, dwell)
    if s.scene == "shopping":
        return _shopping_step(shop, s, common, dwell)
    if s.scene == "checkout":
        s.bought, s.cart = list(s.cart), []
        s.scene = "post_purchase"
        lines = [OrderItem(item_id=i.item_id, quantity=rng.choice((1, 1, 1, 2)), price=i.price,
                           category=f"c{i.category}") for i in s.bought]
        return Purchase(order_id=f"o-{event_id}", items=lines, **common)
    # post_purchase: the order page, reviews of what was bought, then leave.
    s.scene = "done" if s.steps > 2 and rng.random() < 0.45 else "post_purchase"
    if rng.random() < 0.5:
        return Browse(page="order", dwell_ms=dwell, **common)
    item = rng.choice(s.bought)
    return Browse(page="review", item_id=item.item_id, category=f"c{item.category}", dwell_ms=dwell, **common)


def _browse_step(shop: _Shop, s: _Session, common: dict, dwell: int) -> UserEvent | None:
    rng = shop.rng
    roll = rng.random()
    if s.steps > 2 and roll < 0.08:
        s.scene = "done"
    elif s.steps > 1 and roll < 0.25:
        s.scene, s.focus = "shopping", (s.viewed[-1].category if s.viewed else shop.user_category(s.user))
    category = shop.user_category(s.user)
    page = rng.choices(("home", "category", "search", "product", "click"), (2, 3, 2, 5, 3))[0]
    if s.steps == 1 or page == "home":
        return Browse(page="home", dwell_ms=dwell, **common)
    if page == "category":
        return Browse(page="category", category=f"c{category}", dwell_ms=dwell, **common)
    if page == "search":
        return Browse(page="search", query=f"c{category} q{rng.randint(0, 30)}", dwell_ms=dwell, **common)
    item = shop.pick_item(category)
    if item is None:
        return Browse(page="category", category=f"c{category}", dwell_ms=dwell, **common)
    s.viewed.append(item)
    if page == "click":
        return Click(item_id=item.item_id, category=f"c{item.category}", position=rng.randint(0, 19),
                     **common)
    return Browse(page="product", item_id=item.item_id, category=f"c{item.category}", dwell_ms=dwell, **common)


def _shopping_step(shop: _Shop, s: _Session, common: dict, dwell: int) -> UserEvent | None:
    rng = shop.rng
    assert s.focus is not None
    if s.cart and rng.random() < 0.3:
        s.scene = "checkout"
        return Browse(page="cart", dwell_ms=dwell, **common)
    if rng.random() < 0.07:
        s.scene = "done" if rng.random() < 0.6 else "browsing"  # abandoned, or back to exploring
    # Comparisons: revisit an item seen in this category, or open another one of it.
    seen = [i for i in s.viewed if i.category == s.focus]
    item = rng.choice(seen) if seen and rng.random() < 0.4 else shop.pick_item(s.focus)
    if item is None:
        s.scene = "browsing"
        return None
    s.viewed.append(item)
    action = rng.choices(("view", "open", "add_to_cart", "wishlist"), (5, 2, 2, 1))[0]
    if action == "view":
        return Browse(page="product", item_id=item.item_id, category=f"c{item.category}", dwell_ms=dwell, **common)
    if action == "add_to_cart" and item not in s.cart:
        s.cart.append(item)
    return Click(item_id=item.item_id, category=f"c{item.category}", action=action, **common)  # type: ignore[arg-type]
