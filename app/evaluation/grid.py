"""Named configurations `streamrec tune` can score: baselines, V-SKNN variants, StreamRec's re-rank blends.

Each entry makes a ``models.ranking.Ranker`` from the run's shared model (``SharedModel``); tuning
another system's hyperparameters is one more entry here. The StreamRec entries are the blends of the
search recorded in docs/EVALUATION.md ("How the re-rank blend was chosen"), by the names used there:
each is (``RecommenderOptions`` overrides: how history candidates are ordered, ``RerankParams``).
The configurations `streamrec evaluate` runs (``VARIANTS``: the full system, its ablations and the
bought-item rules) are here under their report names too. ``SCENE_BLENDS`` are the scene strategies
and diversity settings of issue 21 (the accuracy-diversity trade-off).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from app.evaluation.baselines import BASELINES, VSKNN
from app.evaluation.systems import LIST_SIZE, VARIANTS, SharedModel, Variant, streamrec_ranker
from models.ranking import Ranker
from models.recommender import RecommenderOptions
from models.rerank import DESIGNED_PARAMS, RELEVANCE_PARAMS, RerankParams

Config = Callable[[SharedModel], Ranker]


def _sw(base, **kw):
    return dataclasses.replace(base, **kw)


def _allscenes(base: RerankParams = DESIGNED_PARAMS, post: dict | None = None, **kw) -> RerankParams:
    """``kw`` in every warm scene, then ``post`` overrides in post_purchase only."""
    return RerankParams(browsing=_sw(base.browsing, **kw), shopping=_sw(base.shopping, **kw),
                        post_purchase=_sw(base.post_purchase, **kw, **(post or {})))


# The blend shipped before round 1 (substitutes excluded).
_F = {"history": 3.0, "cooccur": 1.5, "ann": 0.2, "popularity": 0.05, "category": 0.1, "item": 0.5,
      "focus_boost": 0.0, "mmr_lambda": 1.0, "recall": 0.2}


def _f(sub: float = 0.0, **kw) -> RerankParams:
    """F with overrides; ``sub`` is the post-purchase substitute_factor."""
    return _allscenes(**{**_F, **kw}, post={"substitute_factor": sub})


def _mixed(share: float, power: float = 0.5, order: str = "mixed") -> dict:
    return {"history_order": order, "history_recency_share": share, "history_rank_power": power}


_W = {"history_order": "weight"}  # the history order every blend used before round 1
_R = {"history_order": "recency", "history_rank_power": 1.0}
_ALL = {"sub": 0.5, "item": 0.0, "cooccur": 2.0}

BLENDS: dict[str, tuple[dict, RerankParams]] = {
    "designed": (_W, DESIGNED_PARAMS),
    "shipped": ({}, RerankParams()),  # the current defaults
    "A": (_W, _allscenes(history=2.0, cooccur=1.0, ann=0.3, popularity=0.1, mmr_lambda=0.95)),
    "B": (_W, _allscenes(history=3.0, cooccur=1.0, ann=0.2, popularity=0.05, category=0.1, item=0.0,
                         focus_boost=0.0, mmr_lambda=0.98, substitute_factor=1.0, recall=0.2)),
    "C": (_W, _allscenes(history=2.0, cooccur=1.5, ann=0.5, popularity=0.1, category=0.2, mmr_lambda=0.9,
                         recall=0.5)),
    "D": (_W, _allscenes(history=3.0, cooccur=1.0, ann=0.2, popularity=0.05, category=0.1, item=0.0,
                         focus_boost=0.0, mmr_lambda=1.0, recall=0.2)),
    "E": (_W, _allscenes(history=4.0, cooccur=1.5, ann=0.1, popularity=0.05, category=0.1, item=0.0,
                         focus_boost=0.0, mmr_lambda=1.0, recall=0.1)),
    "F": (_W, _f()),
    # round 1: post-purchase substitutes, history order, single weights
    "F_sub0.25": (_W, _f(0.25)),
    "F_sub0.5": (_W, _f(0.5)),
    "F_sub0.75": (_W, _f(0.75)),
    "F_sub1": (_W, _f(1.0)),
    "F_recency": ({"history_order": "recency"}, _f()),
    "F_mixed": ({"history_order": "mixed"}, _f()),
    "F_pow1": ({**_W, "history_rank_power": 1.0}, _f()),
    "F_recency_pow1": (_R, _f()),
    "F_mixed_pow1": ({"history_order": "mixed", "history_rank_power": 1.0}, _f()),
    "F_item0": (_W, _f(item=0.0)),
    "F_item1": (_W, _f(item=1.0)),
    "F_hist4": (_W, _f(history=4.0)),
    "F_co1": (_W, _f(cooccur=1.0)),
    "F_co2": (_W, _f(cooccur=2.0)),
    # round 2: history by recency, steeper rank scores
    "R_pow0.75": ({"history_order": "recency", "history_rank_power": 0.75}, _f()),
    "R_pow1.5": ({"history_order": "recency", "history_rank_power": 1.5}, _f()),
    "R_pow2": ({"history_order": "recency", "history_rank_power": 2.0}, _f()),
    "R_pow1_sub0.5": (_R, _f(0.5)),
    "R_pow1_sub1": (_R, _f(1.0)),
    "R_pow1_item0": (_R, _f(item=0.0)),
    "R_pow1_item1": (_R, _f(item=1.0)),
    "R_pow1_hist4": (_R, _f(history=4.0)),
    "R_pow1_co1": (_R, _f(cooccur=1.0)),
    "R_pow1_co2": (_R, _f(cooccur=2.0)),
    # round 3: weight and recency orders mixed
    "F_item0_co2_sub0.5": (_W, _f(**_ALL)),
    "M50_item0": (_mixed(0.5), _f(item=0.0)),
    "M50_co2": (_mixed(0.5), _f(cooccur=2.0)),
    "M50_all": (_mixed(0.5), _f(**_ALL)),
    "M50_all_sub0.25": (_mixed(0.5), _f(**{**_ALL, "sub": 0.25})),
    "M50_all_sub1": (_mixed(0.5), _f(**{**_ALL, "sub": 1.0})),
    "M30_all": (_mixed(0.3), _f(**_ALL)),
    "M70_all": (_mixed(0.7), _f(**_ALL)),
    "M50_p0.75_all": (_mixed(0.5, 0.75), _f(**_ALL)),
    "M70_p1_all": (_mixed(0.7, 1.0), _f(**_ALL)),
    # round 4: recency only within the current session
    "S_all": ({"history_order": "session"}, _f(**_ALL)),
    "S_p1_all": ({"history_order": "session", "history_rank_power": 1.0}, _f(**_ALL)),
    "MS50_all": (_mixed(0.5, order="mixed_session"), _f(**_ALL)),
    "MS70_all": (_mixed(0.7, order="mixed_session"), _f(**_ALL)),
    "MS70_p1_all": (_mixed(0.7, 1.0, order="mixed_session"), _f(**_ALL)),
    # round 5: a history inside the current session by recency, any longer one mixed ("adaptive");
    # on the blend shipped then (RELEVANCE_PARAMS), so these rows stay reproducible
    "AD_p1": ({"history_order": "adaptive", "history_session_power": 1.0}, RELEVANCE_PARAMS),
    "AD_p075": ({"history_order": "adaptive", "history_session_power": 0.75}, RELEVANCE_PARAMS),
    "AD_p15": ({"history_order": "adaptive", "history_session_power": 1.5}, RELEVANCE_PARAMS),
    "AD_p1_co1": ({"history_order": "adaptive", "history_session_power": 1.0}, _f(**{**_ALL, "cooccur": 1.0})),
    "AD_p05": ({"history_order": "adaptive", "history_session_power": 0.5}, RELEVANCE_PARAMS),
    "AD_p075_h4": ({"history_order": "adaptive", "history_session_power": 0.75},
                   _f(**{**_ALL, "history": 4.0})),
    "AD_p075_co15": ({"history_order": "adaptive", "history_session_power": 0.75},
                     _f(**{**_ALL, "cooccur": 1.5})),
}

# Issue 21, item 6: scene strategies and diversity (docs/EVALUATION.md, "Scene strategies and
# diversity"). Every entry is the shared evidence blend (RELEVANCE_PARAMS' weights) with the round's
# reference strategy per scene, one scene changed: browsing explores (category coverage below a
# kept head, popularity 0.1), shopping focuses (focus_boost 0.3 on the current top categories),
# post-purchase shows complements (complement 0.5) and excludes the order's substitutes. Written
# out rather than taken from the defaults, so a row means the same after the defaults change.
_REFERENCE_SCENES = {
    "browsing": {"popularity": 0.1, "category_decay": 0.6, "mmr_lambda": 1.0, "diversity_head": 3},
    "shopping": {"focus_boost": 0.3},
    "post_purchase": {"substitute_factor": 0.0, "complement": 0.5},
}


def _scenes(browsing: dict | None = None, shopping: dict | None = None,
            post_purchase: dict | None = None) -> RerankParams:
    """The reference scene strategies with the given settings changed."""
    base = RELEVANCE_PARAMS.browsing  # the evidence blend every warm scene shares
    given = {"browsing": browsing, "shopping": shopping, "post_purchase": post_purchase}
    return RerankParams(**{scene: _sw(base, **{**reference, **(given[scene] or {})})
                           for scene, reference in _REFERENCE_SCENES.items()})


DIVERSITY_DECAYS = (0.8, 0.6, 0.4)
DIVERSITY_HEADS = (0, 3, 5)
MMR_LAMBDAS = (0.9, 0.7)
_NO_DIVERSITY = {"category_decay": 1.0, "mmr_lambda": 1.0, "diversity_head": 0}

SCENE_BLENDS: dict[str, RerankParams] = {
    "browse_nodiv": _scenes(browsing=_NO_DIVERSITY),
    # category coverage: the factor per item of a category already listed x the head kept as is
    **{f"cov_d{decay}_h{head}": _scenes(browsing={"category_decay": decay, "diversity_head": head})
       for decay in DIVERSITY_DECAYS for head in DIVERSITY_HEADS},
    # MMR over item vectors (category where an item has none) instead, same heads
    **{f"mmr_l{lam}_h{head}": _scenes(browsing={**_NO_DIVERSITY, "mmr_lambda": lam, "diversity_head": head})
       for lam in MMR_LAMBDAS for head in (0, 5)},
    "browse_pop0.05": _scenes(browsing={"popularity": 0.05}),
    "shop_focus0": _scenes(shopping={"focus_boost": 0.0}),
    "shop_focus0.6": _scenes(shopping={"focus_boost": 0.6}),
    "post_sub0.5": _scenes(post_purchase={"substitute_factor": 0.5}),
    "post_comp0": _scenes(post_purchase={"complement": 0.0}),
    "post_comp1": _scenes(post_purchase={"complement": 1.0}),
}


def _blend(name: str, overrides: dict, params: RerankParams) -> Config:
    options = dataclasses.replace(RecommenderOptions(list_size=LIST_SIZE), **overrides)
    return lambda shared: streamrec_ranker(Variant(name), shared, options=options, rerank_params=params)


# V-SKNN (app/evaluation/baselines/vsknn.py): round 1 varies one hyperparameter at a time from the
# reference's defaults (k 100, sample_size 1000, weighting div, weighting_score div, no IDF, remind on);
# the ``vsknn`` entry (from BASELINES) is the tuned configuration the evaluation runs.
VSKNN_CONFIGS: dict[str, dict] = {
    "vsknn_ref": {},
    **{f"vsknn_k{k}": {"k": k} for k in (50, 200, 500)},
    **{f"vsknn_s{size}": {"sample_size": size} for size in (250, 500, 2500, 5000)},
    **{f"vsknn_w_{kind}": {"weighting": kind} for kind in ("linear", "same", "log", "quadratic")},
    **{f"vsknn_ws_{kind}": {"weighting_score": kind} for kind in ("linear", "same", "log", "quadratic")},
    **{f"vsknn_idf{weight}": {"idf_weighting": weight} for weight in (1, 2, 5, 10)},
    "vsknn_noremind": {"remind": False},
    "vsknn_push": {"push_reminders": True},
    "vsknn_add": {"add_reminders": True},
    "vsknn_noprev": {"previous_session": False},
    # round 2: the round-1 winners together (same position weights and step decay, reminders pushed/added)
    "vsknn_push_add": {"push_reminders": True, "add_reminders": True},
    "vsknn_wsame_push": {"weighting": "same", "push_reminders": True},
    "vsknn_wssame_push": {"weighting_score": "same", "push_reminders": True},
    "vsknn_same_push": {"weighting": "same", "weighting_score": "same", "push_reminders": True},
    "vsknn_same_add": {"weighting": "same", "weighting_score": "same", "add_reminders": True},
    "vsknn_same_push_add": {"weighting": "same", "weighting_score": "same", "push_reminders": True,
                            "add_reminders": True},
    "vsknn_same_log_push": {"weighting": "same", "weighting_score": "log", "push_reminders": True},
    "vsknn_log_log_push": {"weighting": "log", "weighting_score": "log", "push_reminders": True},
    # round 3: the best of round 2 with reminders added as well
    "vsknn_same_log_push_add": {"weighting": "same", "weighting_score": "log", "push_reminders": True,
                                "add_reminders": True},
    "vsknn_wsame_push_add": {"weighting": "same", "push_reminders": True, "add_reminders": True},
}


def _vsknn(name: str, options: dict) -> Config:
    return lambda shared: VSKNN(name=name, **options)


def _variant(variant: Variant) -> Config:
    return lambda shared: streamrec_ranker(variant, shared)


GRID: dict[str, Config] = {
    **{name: (lambda shared, make=make: make()) for name, make in BASELINES.items()},
    **{variant.name: _variant(variant) for variant in VARIANTS},
    **{name: _blend(name, overrides, params) for name, (overrides, params) in BLENDS.items()},
    **{name: _blend(name, {}, params) for name, params in SCENE_BLENDS.items()},
    **{name: _vsknn(name, options) for name, options in VSKNN_CONFIGS.items()},
}
DEFAULT_CONFIGS = ("user_pop", "item_knn", "session_knn", "shipped")
