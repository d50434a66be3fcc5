"""How much of a baseline's MRR@20 comes from items the user had already bought (issue 8 analysis).

StreamRec never lists an item the user bought (DESIGN.md §2.3/§2.5); S-POP (user_pop) does. This
replays a file's evaluation split through user_pop exactly as `streamrec evaluate` does (warm
targets, list before each event) and splits its MRR@20 into targets the user had bought before and
the rest. Usage: python scripts/bought_again.py PATH [PATH ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.evaluation.baselines import UserPop
from app.evaluation.evaluate import load_events, split_events
from schemas.events import Purchase, event_items

K = 20


def main() -> None:
    for path in sys.argv[1:]:
        events, _ = load_events(Path(path))
        train, test = split_events(events)
        system = UserPop()
        system.fit(train)
        known = {e.user_id for e in train}
        bought: dict[str, set[str]] = {}
        for e in train:
            if isinstance(e, Purchase):
                bought.setdefault(e.user_id, set()).update(i for i, _ in event_items(e))
        n = n_bought = 0
        rr_all = rr_bought = 0.0
        for e in test:
            items = [i for i, _ in event_items(e)]
            if items and e.user_id in known:
                listed = list(system.recommend(e.user_id, K, e.ts).items)
                for item in items:
                    rr = 1.0 / (listed.index(item) + 1) if item in listed else 0.0
                    n += 1
                    rr_all += rr
                    if item in bought.get(e.user_id, ()):
                        n_bought += 1
                        rr_bought += rr
            system.observe(e)
            known.add(e.user_id)
            if isinstance(e, Purchase):
                bought.setdefault(e.user_id, set()).update(items)
        print(f"{Path(path).name}: {n:,} warm targets, {n_bought:,} already bought by the user; user_pop MRR@{K} "
              f"{100 * rr_all / n:.2f}%, of which {100 * rr_bought / n:.2f} points from those targets "
              f"({100 * (rr_all - rr_bought) / n:.2f}% without them)")


if __name__ == "__main__":
    main()
