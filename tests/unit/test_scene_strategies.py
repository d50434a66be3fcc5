"""Scene strategies and diversity of the shipped re-rank defaults (issue 21, item 6): the head of the
list stays in relevance order, category coverage below it, shopping focuses, post-purchase shows
complements and never the order's substitutes, and the three scenes make different lists."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.metrics import category_diversity
from models.rerank import (
    RELEVANCE_PARAMS,
    Candidate,
    RerankContext,
    RerankParams,
    SceneWeights,
    category_codes,
    coverage_order,
    mmr,
    rerank,
)

SHIPPED = RerankParams()


def ctx(scene: str, purchased=(), pcats=(), cats=None) -> RerankContext:
    return RerankContext(
        scene=scene,
        category_weights=cats if cats is not None else {"A": 1.0, "B": 0.4, "C": 0.2},
        item_weights={},
        purchased=frozenset(purchased),
        purchased_categories=frozenset(pcats),
        recently_shown=frozenset(),
        popularity={},
        now_ms=0,
    )


def candidates() -> list[Candidate]:
    """A user deep in category A: eight of their own A items lead on relevance; co-occurring items of
    B and C (some recalled from the bought item ``bought``) and trending D items follow."""
    out = [Candidate(f"a{i}", 1.0 - i * 0.05, "history", "A", None, f"a{i}") for i in range(8)]
    out += [Candidate(f"b{i}", 0.6 - i * 0.05, "cooccur", "B", None, "bought" if i % 2 else "a0") for i in range(4)]
    out += [Candidate(f"c{i}", 0.5 - i * 0.05, "cooccur", "C", None, "a1") for i in range(3)]
    out += [Candidate(f"d{i}", 50.0 - i, "trending", "D") for i in range(4)]
    return out


def greedy_coverage(rel: np.ndarray, codes: np.ndarray, k: int, decay: float, head: int) -> list[int]:
    """The definition, one pick at a time: what ``coverage_order`` must equal."""
    chosen: list[int] = []
    counts: dict[int, int] = {}
    free = list(range(len(rel)))
    for step in range(min(k, len(rel))):
        def worth(i: int, step: int = step) -> tuple[float, float, int]:
            n = counts.get(int(codes[i]), 0) if codes[i] >= 0 else 0
            value = rel[i] if step < head else rel[i] * decay**n
            return (-value, -rel[i], i)

        best = min(free, key=worth)
        free.remove(best)
        chosen.append(best)
        counts[int(codes[best])] = counts.get(int(codes[best]), 0) + 1
    return chosen


def test_the_head_is_kept_in_relevance_order_and_diversity_works_below_it() -> None:
    rel = np.array([1.0, 0.95, 0.9, 0.85, 0.5, 0.4])
    codes = np.array([0, 0, 0, 0, 1, 2])
    assert coverage_order(rel, codes, 6, 0.5, head=3) == [0, 1, 2, 4, 5, 3]  # a0 a1 a2, then B and C before a3
    assert coverage_order(rel, codes, 6, 0.5, head=0) == [0, 4, 1, 5, 2, 3]
    assert coverage_order(rel, codes, 6, 1.0) == [0, 1, 2, 3, 4, 5]  # decay 1: relevance order
    # MMR keeps its head the same way.
    sim = (codes[:, None] == codes[None, :]).astype(float)
    assert mmr(rel, sim, 4, 0.3, head=3)[:3] == [0, 1, 2]
    # The shipped browsing list starts with the three most relevant items, in order.
    plain = [r.item_id for r in rerank(candidates(), ctx("browsing"), k=10, params=RELEVANCE_PARAMS)]
    browsing = [r.item_id for r in rerank(candidates(), ctx("browsing"), k=10)]
    head = SHIPPED.browsing.diversity_head
    assert head >= 1 and browsing[:head] == plain[:head]
    assert browsing != plain


def test_coverage_order_is_the_greedy_pick_loop_without_the_loop() -> None:
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        rel = np.round(rng.random(n), 2)  # rounded: ties happen
        codes = rng.integers(-1, 5, size=n)
        decay = float(rng.choice([0.0, 0.3, 0.6, 0.9, 1.0]))
        head, k = int(rng.integers(0, 6)), int(rng.integers(1, 45))
        assert coverage_order(rel, codes, k, decay, head) == greedy_coverage(rel, codes, k, decay, head), trial


def test_category_codes() -> None:
    codes = category_codes(["x", None, "y", "x"])
    assert codes[1] == -1 and codes[0] == codes[3] != codes[2] >= 0
    assert category_codes([None, None]).tolist() == [-1, -1]
    assert category_codes([]).tolist() == []


def test_browsing_diversity_raises_the_number_of_categories() -> None:
    plain = rerank(candidates(), ctx("browsing"), k=7, params=RELEVANCE_PARAMS)
    diverse = rerank(candidates(), ctx("browsing"), k=7)
    cats = {r.item_id: r.item_id[0].upper() for r in [*plain, *diverse]}
    assert {cats[r.item_id] for r in plain} == {"A"}
    assert len({cats[r.item_id] for r in diverse}) >= 3
    assert (category_diversity([cats[r.item_id] for r in diverse])
            > category_diversity([cats[r.item_id] for r in plain]))


def test_shopping_focuses_on_the_current_categories() -> None:
    shopping = [r.item_id[0].upper() for r in rerank(candidates(), ctx("shopping"), k=8)]
    browsing = [r.item_id[0].upper() for r in rerank(candidates(), ctx("browsing"), k=8)]
    assert shopping.count("A") > browsing.count("A")
    assert set(shopping) <= {"A", "B", "C"}  # the user's categories, no trending D
    assert SHIPPED.shopping.focus_boost > 0 and SHIPPED.shopping.category_decay == 1.0
    assert SHIPPED.shopping.mmr_lambda == 1.0


def test_post_purchase_shows_complements_never_the_order_or_its_substitutes() -> None:
    cands = [*candidates(), Candidate("bought", 1.0, "history", "A", None, "bought")]
    out = rerank(cands, ctx("post_purchase", purchased={"bought"}, pcats={"A"}), k=10)
    ids = [r.item_id for r in out]
    assert "bought" not in ids
    assert not [i for i in ids if i.startswith("a")]  # the order's category: substitutes, excluded
    # Complements (recalled from the bought item) move up, with the reason saying so.
    assert ids[0] == "b1" and ids.index("b3") < ids.index("b2")
    assert {r.reason for r in out if r.item_id in ("b1", "b3")} == {"goes with your purchase of bought"}
    # The same candidates without the complement term: relevance alone puts b0 first.
    flat = dataclasses.replace(SHIPPED, post_purchase=dataclasses.replace(SHIPPED.post_purchase, complement=0.0))
    relevance_first = rerank(cands, ctx("post_purchase", purchased={"bought"}, pcats={"A"}), k=1, params=flat)
    assert [r.item_id for r in relevance_first] == ["b0"]


def test_the_three_scenes_make_different_lists_from_the_same_candidates() -> None:
    lists = {scene: [r.item_id for r in rerank(candidates(), ctx(scene, purchased={"bought"}, pcats={"A"}), k=10)]
             for scene in ("browsing", "shopping", "post_purchase")}
    assert len({tuple(items) for items in lists.values()}) == 3
    # The relevance-only blend (the ablation) makes the same list in browsing and shopping.
    same = {scene: [r.item_id for r in rerank(candidates(), ctx(scene), k=10, params=RELEVANCE_PARAMS)]
            for scene in ("browsing", "shopping")}
    assert same["browsing"] == same["shopping"]


def test_one_diversity_method_at_a_time() -> None:
    base = SHIPPED.shopping
    with pytest.raises(ValueError):
        dataclasses.replace(base, category_decay=0.5, mmr_lambda=0.7)
    with pytest.raises(ValueError):
        dataclasses.replace(base, category_decay=1.5)
    with pytest.raises(ValueError):
        dataclasses.replace(base, diversity_head=-1)
    assert isinstance(dataclasses.replace(base, category_decay=0.5), SceneWeights)


def test_the_browsing_diversity_is_set_from_the_settings(tmp_path, monkeypatch) -> None:
    from app.runtime.services import Services
    from app.runtime.settings import Settings
    from models.rerank import with_browsing_diversity

    shipped = Services.load(Settings(model_dir=tmp_path / "none", data_dir=tmp_path)).recommender.rerank_params
    assert shipped == SHIPPED  # the defaults are the measured ones (docs/EVALUATION.md)
    monkeypatch.setenv("STREAMREC_BROWSING_CATEGORY_DECAY", "1")
    params = Services.load(Settings(model_dir=tmp_path / "none", data_dir=tmp_path)).recommender.rerank_params
    assert params.browsing.category_decay == 1.0 and params.browsing.diversity_head == 0
    assert params.shopping == SHIPPED.shopping and params.post_purchase == SHIPPED.post_purchase
    # decay 1: the list is in relevance order; the shipped decay re-orders it below the head
    def scores(p: RerankParams) -> list[float]:
        return [r.score for r in rerank(candidates(), ctx("browsing"), k=10, params=p)]

    assert scores(params) == sorted(scores(params), reverse=True)
    assert scores(SHIPPED) != sorted(scores(SHIPPED), reverse=True)
    stronger = with_browsing_diversity(SHIPPED, 0.3, 2)
    assert (stronger.browsing.category_decay, stronger.browsing.diversity_head) == (0.3, 2)
    for bad in ("1.5", "-0.1"):
        monkeypatch.setenv("STREAMREC_BROWSING_CATEGORY_DECAY", bad)
        with pytest.raises(ValueError):
            Settings()
