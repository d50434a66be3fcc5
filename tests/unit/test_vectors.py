"""Item2vec on a synthetic corpus with two co-occurring groups: the vectors must separate them."""

from __future__ import annotations

import numpy as np
import pytest

from models.vectors import ItemVectors, train_item_vectors

GROUP_A = [f"a{i}" for i in range(10)]
GROUP_B = [f"b{i}" for i in range(10)]


@pytest.fixture(scope="module")
def vectors() -> ItemVectors:
    rng = np.random.default_rng(1)
    sessions = []
    for s in range(400):
        group, cat = (GROUP_A, "catA") if s % 2 == 0 else (GROUP_B, "catB")
        items = rng.choice(group, size=8)
        sessions.append([(str(i), cat) for i in items])
    sessions.append([("rare_a", "catA")])  # seen once: below min_count, placed by its category
    return train_item_vectors(sessions, dim=16, epochs=10, seed=0, min_count=2, threads=1)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_groups_are_separated(vectors: ItemVectors) -> None:
    m = np.stack([vectors.vector(i) for i in GROUP_A + GROUP_B])
    sims = m @ m.T
    within = np.concatenate([sims[:10, :10][~np.eye(10, dtype=bool)], sims[10:, 10:][~np.eye(10, dtype=bool)]])
    across = sims[:10, 10:].ravel()
    assert within.mean() > across.mean() + 0.25
    assert within.min() > across.max()


def test_matrix_is_normalised_and_indexed(vectors: ItemVectors) -> None:
    assert vectors.matrix.dtype == np.float32
    assert vectors.dim == 16 and len(vectors) == 20
    np.testing.assert_allclose(np.linalg.norm(vectors.matrix, axis=1), 1.0, atol=1e-5)
    for item, row in vectors.index.items():
        assert vectors.ids[row] == item
    assert vectors.version.startswith("iv-")


def test_cold_items_get_their_category_centroid(vectors: ItemVectors) -> None:
    assert "rare_a" not in vectors.index
    np.testing.assert_array_equal(vectors.vector("rare_a"), vectors.centroids["catA"])
    np.testing.assert_array_equal(vectors.vector("never_seen", "catB"), vectors.centroids["catB"])
    assert vectors.vector("never_seen") is None
    assert vectors.vector("never_seen", "no_such_category") is None
    a_items = np.stack([vectors.vector(i) for i in GROUP_A])
    b_items = np.stack([vectors.vector(i) for i in GROUP_B])
    assert (a_items @ vectors.centroids["catA"]).mean() > (b_items @ vectors.centroids["catA"]).mean()
    assert np.isclose(np.linalg.norm(vectors.centroids["catA"]), 1.0, atol=1e-5)


def test_save_load_round_trip(vectors: ItemVectors, tmp_path) -> None:
    vectors.save(tmp_path / "v")
    loaded = ItemVectors.load(tmp_path / "v")
    assert loaded.ids == vectors.ids and loaded.version == vectors.version
    np.testing.assert_array_equal(loaded.matrix, vectors.matrix)
    assert loaded.categories == vectors.categories
    assert set(loaded.centroids) == set(vectors.centroids)
    for c, v in vectors.centroids.items():
        np.testing.assert_array_equal(loaded.centroids[c], v)
    np.testing.assert_array_equal(loaded.vector("rare_a"), vectors.vector("rare_a"))


def test_training_is_deterministic_for_a_seed() -> None:
    sessions = [[("x", "c"), ("y", "c"), ("z", "d")]] * 20
    a = train_item_vectors(sessions, dim=8, epochs=2, seed=3, threads=1)
    b = train_item_vectors(sessions, dim=8, epochs=2, seed=3, threads=1)
    np.testing.assert_array_equal(a.matrix, b.matrix)
