"""Pick the re-rank blend on a validation split of the TRAINING period only (issue 8; docs/EVALUATION.md).

usage: .venv/bin/python scripts/tune_rerank.py DATA [USER_MOD] [names,comma,separated]
The evaluated period (app.evaluate.split_events) is dropped first; the last quarter of the rest is
the validation period; every USER_MOD-th user (crc32) is scored there, everyone is replayed.
"""
import dataclasses
import logging
import sys
import time
import zlib
from pathlib import Path

from app.evaluate import load_events, split_events
from app.evaluate_streamrec import SharedModel, StreamRecSystem, Variant
from models.recommender import RecommenderOptions
from models.rerank import DESIGNED_PARAMS, RerankParams
from schemas.events import event_items

logging.basicConfig(level=logging.WARNING)
data = Path(sys.argv[1]); mod = int(sys.argv[2]) if len(sys.argv) > 2 else 3
events, _ = load_events(data)
train, _test = split_events(events)
cut = train[int(len(train) * 0.75)].ts  # validation = last quarter of the TRAINING period
fit = [e for e in train if e.ts < cut]; val = [e for e in train if e.ts >= cut]
shared = SharedModel()
def sw(base, **kw): return dataclasses.replace(base, **kw)
# The hand-set blend before tuning ("designed"): diverse browsing, focused shopping.
P = DESIGNED_PARAMS
def allscenes(**kw):
    return RerankParams(browsing=sw(P.browsing, **kw), shopping=sw(P.shopping, **kw), post_purchase=sw(P.post_purchase, **kw))
configs = {
  "designed": P,
  "shipped": RerankParams(),
  "A": allscenes(history=2.0, cooccur=1.0, ann=0.3, popularity=0.1, mmr_lambda=0.95),
  "B": allscenes(history=3.0, cooccur=1.0, ann=0.2, popularity=0.05, category=0.1, item=0.0, focus_boost=0.0, mmr_lambda=0.98, substitute_factor=1.0, recall=0.2),
  "C": allscenes(history=2.0, cooccur=1.5, ann=0.5, popularity=0.1, category=0.2, mmr_lambda=0.9, recall=0.5),
  "D": allscenes(history=3.0, cooccur=1.0, ann=0.2, popularity=0.05, category=0.1, item=0.0, focus_boost=0.0, mmr_lambda=1.0, recall=0.2),
  "E": allscenes(history=4.0, cooccur=1.5, ann=0.1, popularity=0.05, category=0.1, item=0.0, focus_boost=0.0, mmr_lambda=1.0, recall=0.1),
  "F": allscenes(history=3.0, cooccur=1.5, ann=0.2, popularity=0.05, category=0.1, item=0.5, focus_boost=0.0, mmr_lambda=1.0, recall=0.2),
}
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(configs)
from models.baselines import baseline_factories

bf = baseline_factories()
for name in names:
    t = time.time()
    s = bf[name]() if name in bf else StreamRecSystem(Variant(), shared, RecommenderOptions(list_size=50), configs[name])
    s.fit(fit); known = {e.user_id for e in fit}
    n = hit = 0; mrr = 0.0
    for e in val:
        tg = [i for i, _ in event_items(e)]
        if tg and e.user_id in known and zlib.crc32(e.user_id.encode()) % mod == 0:
            lst = s.recommend(e.user_id, 20, e.ts).items
            for i in tg:
                n += 1
                if i in lst: hit += 1; mrr += 1 / (lst.index(i) + 1)
        s.observe(e); known.add(e.user_id)
    print(f"{data.name} {name}: HR {100*hit/n:.2f} MRR {100*mrr/n:.2f} n={n} ({time.time()-t:.0f}s)", flush=True)
shared.close()
