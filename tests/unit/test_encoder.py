"""User encoder: torch and ONNX Runtime agree, cold users are finite, the provider is chosen and logged."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.encoder import (
    SCENES,
    OnnxUserEncoder,
    UserEncoder,
    build_inputs,
    cuda_device_count,
    export_onnx,
    load_model_version,
    on_cpu_instead,
    save_model_version,
    train_user_encoder,
)
from models.vectors import ItemVectors, train_item_vectors

DIM, MAX_LEN = 16, 8


@pytest.fixture(scope="module")
def vectors() -> ItemVectors:
    rng = np.random.default_rng(0)
    sessions = []
    for s in range(200):
        g = s % 2
        sessions.append([(f"g{g}i{rng.integers(6)}", f"cat{g}") for _ in range(6)])
    return train_item_vectors(sessions, dim=DIM, epochs=3, seed=0, threads=1)


@pytest.fixture(scope="module")
def model(vectors: ItemVectors) -> UserEncoder:
    rng = np.random.default_rng(1)
    seqs = [[f"g{s % 2}i{rng.integers(6)}" for _ in range(7)] for s in range(200)]
    return train_user_encoder(seqs, [s % 3 for s in range(200)], vectors, max_len=MAX_LEN, epochs=2, seed=0)


@pytest.fixture(scope="module")
def onnx_path(model: UserEncoder, tmp_path_factory) -> str:
    return str(export_onnx(model, tmp_path_factory.mktemp("enc") / "encoder.onnx", DIM, MAX_LEN))


def _random_inputs(b: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq = rng.standard_normal((b, MAX_LEN, DIM)).astype(np.float32)
    weights = rng.random((b, MAX_LEN)).astype(np.float32)
    weights[:, : MAX_LEN // 2] *= rng.random((b, 1)) > 0.5  # some rows padded at the front
    seq *= (weights > 0)[..., None]
    scene = np.eye(len(SCENES), dtype=np.float32)[rng.integers(len(SCENES), size=b)]
    return seq, weights, scene


@pytest.mark.parametrize("batch", [1, 3, 64, 257])
def test_onnx_matches_torch_for_any_batch(model: UserEncoder, onnx_path: str, batch: int) -> None:
    enc = OnnxUserEncoder(onnx_path, device="cpu")
    seq, weights, scene = _random_inputs(batch, seed=batch)
    with torch.no_grad():
        expected = model(torch.from_numpy(seq), torch.from_numpy(weights), torch.from_numpy(scene)).numpy()
    got = enc.encode(seq, weights, scene)
    assert got.shape == (batch, DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_cold_user_gives_finite_scene_dependent_vector(model: UserEncoder, onnx_path: str) -> None:
    enc = OnnxUserEncoder(onnx_path, device="cpu")
    seq = np.zeros((3, MAX_LEN, DIM), np.float32)
    weights = np.zeros((3, MAX_LEN), np.float32)
    scene = np.eye(3, dtype=np.float32)
    out = enc.encode(seq, weights, scene)
    assert np.isfinite(out).all()
    with torch.no_grad():
        assert torch.isfinite(model(torch.from_numpy(seq), torch.from_numpy(weights), torch.from_numpy(scene))).all()
    assert not np.allclose(out[0], out[1])


def test_auto_provider_is_the_one_this_machine_has_and_is_logged(onnx_path: str, caplog) -> None:
    """Holds on a CPU-only machine and on a GPU one: CUDA exactly when a GPU is detected and ONNX
    Runtime offers CUDA (onnxruntime-gpu lists it even without a GPU, hence the detection)."""
    detected = cuda_device_count() > 0
    gpu = detected and "CUDAExecutionProvider" in ort.get_available_providers()
    expected = "CUDAExecutionProvider" if gpu else "CPUExecutionProvider"
    with caplog.at_level(logging.INFO, logger="models.encoder"):
        enc = OnnxUserEncoder(onnx_path, device="auto")
    assert enc.provider == expected
    assert [r for r in caplog.records if f"GPU {'found' if detected else 'not found'}, running on {expected}"
            in r.getMessage()]
    if gpu:
        assert OnnxUserEncoder(onnx_path, device="cuda").provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(RuntimeError, match="cuda"):
            OnnxUserEncoder(onnx_path, device="cuda")


def test_small_batches_of_a_cuda_encoder_run_on_the_cpu_and_cpu_encoders_keep_one_session(onnx_path: str) -> None:
    assert on_cpu_instead(1, "CUDAExecutionProvider", 32) and on_cpu_instead(31, "CUDAExecutionProvider", 32)
    assert not on_cpu_instead(32, "CUDAExecutionProvider", 32)
    assert not on_cpu_instead(1, "CUDAExecutionProvider", 1)  # 1 = every batch on the GPU
    assert not on_cpu_instead(1, "CPUExecutionProvider", 32)
    enc = OnnxUserEncoder(onnx_path, device="cpu", gpu_min_batch=32)
    assert enc._cpu is enc._session  # no second session without a GPU


def test_build_inputs_layout(vectors: ItemVectors) -> None:
    hist = [
        [("g0i1", "cat0", 0.5), ("unknown", "cat1", 0.7), ("nowhere", None, 0.9), ("g0i2", "cat0", 1.0)],
        [],
    ]
    seq, weights, scene = build_inputs(hist, ["shopping", "browsing"], vectors, MAX_LEN)
    assert seq.shape == (2, MAX_LEN, DIM) and weights.shape == (2, MAX_LEN) and scene.shape == (2, 3)
    np.testing.assert_array_equal(weights[0, -3:], np.float32([0.5, 0.7, 1.0]))  # "nowhere" skipped, most recent last
    assert (weights[0, :-3] == 0).all() and (seq[0, :-3] == 0).all()
    np.testing.assert_array_equal(seq[0, -1], vectors.vector("g0i2"))
    np.testing.assert_array_equal(seq[0, -2], vectors.centroids["cat1"])
    assert (weights[1] == 0).all()
    np.testing.assert_array_equal(scene, [[0, 1, 0], [1, 0, 0]])
    long = [[(f"g1i{i % 6}", "cat1", float(i + 1)) for i in range(20)]]
    _, w, _ = build_inputs(long, ["post_purchase"], vectors, MAX_LEN)
    np.testing.assert_array_equal(w[0], np.arange(13, 21, dtype=np.float32))  # last MAX_LEN kept
    with pytest.raises(ValueError):
        build_inputs([[]], ["nonsense"], vectors, MAX_LEN)


def test_trained_encoder_prefers_the_users_group(vectors: ItemVectors, onnx_path: str) -> None:
    enc = OnnxUserEncoder(onnx_path, device="cpu")
    hist = [[(f"g0i{i}", "cat0", 1.0) for i in range(4)], [(f"g1i{i}", "cat1", 1.0) for i in range(4)]]
    users = enc.encode(*build_inputs(hist, ["browsing", "shopping"], vectors, MAX_LEN))
    c0, c1 = vectors.centroids["cat0"], vectors.centroids["cat1"]
    assert users[0] @ c0 > users[0] @ c1 and users[1] @ c1 > users[1] @ c0


def test_model_version_round_trip(vectors: ItemVectors, model: UserEncoder, tmp_path) -> None:
    first = save_model_version(tmp_path, vectors, model)
    second = save_model_version(tmp_path, vectors, model)
    assert first != second and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    mv = load_model_version(tmp_path, device="cpu")  # the root: the newest version wins
    assert mv.path == second and mv.version == second.name
    assert (mv.dim, mv.max_len) == (DIM, MAX_LEN) and mv.encoder.provider == "CPUExecutionProvider"
    assert mv.vectors.version == vectors.version
    seq, weights, scene = _random_inputs(5, seed=9)
    with torch.no_grad():
        expected = model(torch.from_numpy(seq), torch.from_numpy(weights), torch.from_numpy(scene)).numpy()
    np.testing.assert_allclose(mv.encoder.encode(seq, weights, scene), expected, atol=1e-4)
    with pytest.raises(FileNotFoundError):
        load_model_version(tmp_path / "empty")
