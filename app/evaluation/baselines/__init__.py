"""Offline baselines StreamRec must beat, one module each, all ``models.ranking.Ranker``s.

They live here, not in models/: nothing in the serving pipeline runs them; they exist to be compared
with in ``streamrec evaluate`` and ``streamrec tune``. Adding one is a module with a ``Ranker``
subclass and a line in ``BASELINES``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from models.ranking import Ranker

from .item_knn import ItemKNN
from .popularity import Popularity
from .recent_popularity import RecentPopularity
from .session_knn import SessionKNN
from .user_pop import UserPop
from .vsknn import TUNED as VSKNN_TUNED
from .vsknn import VSKNN

RankerFactory = Callable[[], Ranker]

BASELINES: dict[str, RankerFactory] = {
    "popularity": Popularity,
    "recent_popularity": RecentPopularity,
    "user_pop": UserPop,
    "item_knn": ItemKNN,
    "session_knn": SessionKNN,
    "vsknn": partial(VSKNN, **VSKNN_TUNED),  # V-SKNN with the values tuned on validation
}


def baseline_factories() -> dict[str, RankerFactory]:
    """The baselines under their report names; each factory makes a fresh instance per run."""
    return dict(BASELINES)


__all__ = ["BASELINES", "VSKNN", "ItemKNN", "Popularity", "RankerFactory", "RecentPopularity", "SessionKNN", "UserPop",
           "baseline_factories"]
