"""Pick the re-rank blend on a validation split of the TRAINING period only (issue 8; docs/EVALUATION.md).

usage: .venv/bin/python scripts/tune_rerank.py DATA [USER_MOD] [names,comma,separated]

The evaluated period (app.evaluation.evaluate.split_events) is dropped first; the last quarter of the rest is
the validation period (everything before it is the fit period: model training, profiles, trending).
Every USER_MOD-th user (crc32) with an earlier event is scored there; everyone is replayed.

All blends are scored in ONE replay: re-ranking parameters do not change the profiles, trending or
the model, so before each scored event the production ``Recommender.prepare`` builds the user's
candidates and context once (per candidate-ordering option), and ``rerank`` ranks them with every
blend, exactly as ``Recommender.recommend`` would with that blend. Baselines replay on their own.
Prints one line per blend: HR@20 and MRR@20 in %, and the number of scored targets.
"""
import dataclasses
import logging
import sys
import time
import zlib
from pathlib import Path

from app.evaluation.baselines import baseline_factories
from app.evaluation.evaluate import load_events, split_events
from app.evaluation.evaluate_streamrec import SharedModel, StreamRecSystem, Variant
from models.recommender import Recommender, RecommenderOptions, UserRequest
from models.rerank import DESIGNED_PARAMS, RerankParams, rerank
from schemas.events import event_items

K = 20
logging.basicConfig(level=logging.WARNING)


def sw(base, **kw):
    return dataclasses.replace(base, **kw)


def allscenes(base: RerankParams = DESIGNED_PARAMS, post: dict | None = None, **kw) -> RerankParams:
    """``kw`` in every warm scene, then ``post`` overrides in post_purchase only."""
    return RerankParams(browsing=sw(base.browsing, **kw), shopping=sw(base.shopping, **kw),
                        post_purchase=sw(base.post_purchase, **kw, **(post or {})))


P = DESIGNED_PARAMS  # the hand-set blend before tuning: diverse browsing, focused shopping
# the blend shipped before this round (substitutes excluded)
F = {"history": 3.0, "cooccur": 1.5, "ann": 0.2, "popularity": 0.05, "category": 0.1, "item": 0.5,
     "focus_boost": 0.0, "mmr_lambda": 1.0, "recall": 0.2}


def f(sub: float = 0.0, **kw) -> RerankParams:
    """F with overrides; ``sub`` is the post-purchase substitute_factor."""
    return allscenes(**{**F, **kw}, post={"substitute_factor": sub})


def mixed(share: float, power: float = 0.5, order: str = "mixed") -> dict:
    return {"history_order": order, "history_recency_share": share, "history_rank_power": power}


W = {"history_order": "weight"}  # the history order every blend used before round 1


# name -> (RecommenderOptions overrides: how history candidates are ordered, blend)
CONFIGS: dict[str, tuple[dict, RerankParams]] = {
    "designed": (W, P),
    "shipped": ({}, RerankParams()),  # the current defaults (= M50_all since this round; = F before)
    "A": (W, allscenes(history=2.0, cooccur=1.0, ann=0.3, popularity=0.1, mmr_lambda=0.95)),
    "B": (W, allscenes(history=3.0, cooccur=1.0, ann=0.2, popularity=0.05, category=0.1, item=0.0,
                        focus_boost=0.0, mmr_lambda=0.98, substitute_factor=1.0, recall=0.2)),
    "C": (W, allscenes(history=2.0, cooccur=1.5, ann=0.5, popularity=0.1, category=0.2, mmr_lambda=0.9,
                        recall=0.5)),
    "D": (W, allscenes(history=3.0, cooccur=1.0, ann=0.2, popularity=0.05, category=0.1, item=0.0,
                        focus_boost=0.0, mmr_lambda=1.0, recall=0.2)),
    "E": (W, allscenes(history=4.0, cooccur=1.5, ann=0.1, popularity=0.05, category=0.1, item=0.0,
                        focus_boost=0.0, mmr_lambda=1.0, recall=0.1)),
    "F": (W, f()),
    # round 1 (both files). Everything up to F ran with history_order "weight", the default then.
    # post-purchase substitutes: softer than exclusion
    "F_sub0.25": (W, f(0.25)),
    "F_sub0.5": (W, f(0.5)),
    "F_sub0.75": (W, f(0.75)),
    "F_sub1": (W, f(1.0)),
    # how the user's own items are ordered (short windows: the decayed weight favours the first
    # item after a gap; recency or a mix may order a session's items better)
    "F_recency": ({"history_order": "recency"}, f()),
    "F_mixed": ({"history_order": "mixed"}, f()),
    "F_pow1": ({**W, "history_rank_power": 1.0}, f()),
    "F_recency_pow1": ({"history_order": "recency", "history_rank_power": 1.0}, f()),
    "F_mixed_pow1": ({"history_order": "mixed", "history_rank_power": 1.0}, f()),
    "F_item0": (W, f(item=0.0)),
    "F_item1": (W, f(item=1.0)),
    "F_hist4": (W, f(history=4.0)),
    "F_co1": (W, f(cooccur=1.0)),
    "F_co2": (W, f(cooccur=2.0)),
    # round 2: history ordered by recency, steeper rank scores, with the other knobs
    "R_pow0.75": ({"history_order": "recency", "history_rank_power": 0.75}, f()),
    "R_pow1.5": ({"history_order": "recency", "history_rank_power": 1.5}, f()),
    "R_pow2": ({"history_order": "recency", "history_rank_power": 2.0}, f()),
    "R_pow1_sub0.5": ({"history_order": "recency", "history_rank_power": 1.0}, f(0.5)),
    "R_pow1_sub1": ({"history_order": "recency", "history_rank_power": 1.0}, f(1.0)),
    "R_pow1_item0": ({"history_order": "recency", "history_rank_power": 1.0}, f(item=0.0)),
    "R_pow1_item1": ({"history_order": "recency", "history_rank_power": 1.0}, f(item=1.0)),
    "R_pow1_hist4": ({"history_order": "recency", "history_rank_power": 1.0}, f(history=4.0)),
    "R_pow1_co1": ({"history_order": "recency", "history_rank_power": 1.0}, f(cooccur=1.0)),
    "R_pow1_co2": ({"history_order": "recency", "history_rank_power": 1.0}, f(cooccur=2.0)),
    # round 3: both files. Weight order wins on the 9-day file, recency on the 2-hour one: mix them.
    "F_item0_co2_sub0.5": (W, f(0.5, item=0.0, cooccur=2.0)),
    "M50_item0": (mixed(0.5), f(item=0.0)),
    "M50_co2": (mixed(0.5), f(cooccur=2.0)),
    "M50_all": (mixed(0.5), f(0.5, item=0.0, cooccur=2.0)),
    "M50_all_sub0.25": (mixed(0.5), f(0.25, item=0.0, cooccur=2.0)),
    "M50_all_sub1": (mixed(0.5), f(1.0, item=0.0, cooccur=2.0)),
    "M30_all": (mixed(0.3), f(0.5, item=0.0, cooccur=2.0)),
    "M70_all": (mixed(0.7), f(0.5, item=0.0, cooccur=2.0)),
    "M50_p0.75_all": (mixed(0.5, 0.75), f(0.5, item=0.0, cooccur=2.0)),
    "M70_p1_all": (mixed(0.7, 1.0), f(0.5, item=0.0, cooccur=2.0)),
    # round 4: recency only within the current session (older items by weight)
    "S_all": ({"history_order": "session"}, f(0.5, item=0.0, cooccur=2.0)),
    "S_p1_all": ({"history_order": "session", "history_rank_power": 1.0}, f(0.5, item=0.0, cooccur=2.0)),
    "MS50_all": (mixed(0.5, order="mixed_session"), f(0.5, item=0.0, cooccur=2.0)),
    "MS70_all": (mixed(0.7, order="mixed_session"), f(0.5, item=0.0, cooccur=2.0)),
    "MS70_p1_all": (mixed(0.7, 1.0, order="mixed_session"), f(0.5, item=0.0, cooccur=2.0)),
    # round 5: recency (S-POP-like) for a history that lies inside the current session, else M50
    "AD_p1": ({"history_order": "adaptive"}, RerankParams()),
    "AD_p075": ({"history_order": "adaptive", "history_session_power": 0.75}, RerankParams()),
    "AD_p15": ({"history_order": "adaptive", "history_session_power": 1.5}, RerankParams()),
    "AD_p1_co1": ({"history_order": "adaptive"}, f(0.5, item=0.0, cooccur=1.0)),
    "AD_p05": ({"history_order": "adaptive", "history_session_power": 0.5}, RerankParams()),
    "AD_p075_h4": ({"history_order": "adaptive", "history_session_power": 0.75},
                   f(0.5, item=0.0, cooccur=2.0, history=4.0)),
    "AD_p075_co15": ({"history_order": "adaptive", "history_session_power": 0.75},
                     f(0.5, item=0.0, cooccur=1.5)),
}


def needs_vectors(params: RerankParams) -> bool:
    return any(params.for_scene(s, False).mmr_lambda < 1.0 for s in ("browsing", "shopping", "post_purchase"))


def main() -> None:
    data = Path(sys.argv[1])
    mod = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else ["user_pop", "item_knn", "session_knn", *CONFIGS]
    events, _ = load_events(data)
    train, _test = split_events(events)
    cut = train[int(len(train) * 0.75)].ts  # validation = last quarter of the TRAINING period
    fit = [e for e in train if e.ts < cut]
    val = [e for e in train if e.ts >= cut]

    def scored(e, known) -> list[str]:
        items = [i for i, _ in event_items(e)]
        return items if items and e.user_id in known and zlib.crc32(e.user_id.encode()) % mod == 0 else []

    def report(name: str, hit: int, mrr: float, n: int, started: float) -> None:
        print(f"{data.name} {name}: HR {100 * hit / n:.2f} MRR {100 * mrr / n:.2f} n={n} "
              f"({time.time() - started:.0f}s)", flush=True)

    factories = baseline_factories()
    for name in [n for n in names if n in factories]:
        started = time.time()
        system = factories[name]()
        system.fit(fit)
        known = {e.user_id for e in fit}
        n = hit = 0
        mrr = 0.0
        for e in val:
            targets = scored(e, known)
            if targets:
                lst = list(system.recommend(e.user_id, K, e.ts).items)
                for i in targets:
                    n += 1
                    if i in lst:
                        hit += 1
                        mrr += 1 / (lst.index(i) + 1)
            system.observe(e)
            known.add(e.user_id)
        report(name, hit, mrr, n, started)

    blends = {n: CONFIGS[n] for n in names if n in CONFIGS}
    if not blends:
        return
    started = time.time()
    shared = SharedModel()
    try:
        state = StreamRecSystem(Variant(), shared, RecommenderOptions(list_size=K))
        state.fit(fit)  # trains the model on the fit period, warms profiles, scene model, trending
        groups: dict[tuple, tuple[Recommender, list[str]]] = {}
        for name, (opts, params) in blends.items():
            key = tuple(sorted(opts.items())) + (needs_vectors(params),)
            if key not in groups:
                options = dataclasses.replace(RecommenderOptions(list_size=K), **opts)
                rec = Recommender(state.recommender.model, state.recommender.recall, state.trending, options,
                                  params)
                groups[key] = (rec, [])
            groups[key][1].append(name)
        known = {e.user_id for e in fit}
        hits = dict.fromkeys(blends, 0)
        mrrs = dict.fromkeys(blends, 0.0)
        n = 0
        for e in val:
            targets = scored(e, known)
            if targets:
                profile = state.profiles[e.user_id]
                n += len(targets)
                for rec, members in groups.values():
                    prepared, _ = rec.prepare([UserRequest(profile)], e.ts)
                    for name in members:
                        lst = [r.item_id for r in rerank(prepared[0].candidates, prepared[0].context, K,
                                                         blends[name][1])]
                        for i in targets:
                            if i in lst:
                                hits[name] += 1
                                mrrs[name] += 1 / (lst.index(i) + 1)
            state.observe(e)
            known.add(e.user_id)
        for name in blends:
            report(name, hits[name], mrrs[name], n, started)
    finally:
        shared.close()


if __name__ == "__main__":
    main()
