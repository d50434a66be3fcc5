"""User encoder: recent item vectors + decayed weights + scene -> one unit user vector.

Trained in torch (next-item prediction, in-batch sampled softmax), exported to ONNX and served by
ONNX Runtime so the stream workers need no torch graph at run time and can use CUDA when present.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from models.vectors import ItemVectors

log = logging.getLogger(__name__)

SCENES: tuple[str, ...] = ("browsing", "shopping", "post_purchase")
Device = Literal["auto", "cuda", "cpu"]
INPUT_NAMES = ("seq", "weights", "scene")
OUTPUT_NAME = "user_vec"


class UserEncoder(nn.Module):
    """Weights-aware attention pooling over recent items plus a residual MLP, conditioned on scene.

    The output starts from the interest-weighted mean of the item vectors (a strong untrained
    baseline) and the network learns a correction, so a cold user (all weights 0) still gets a finite,
    scene-dependent vector.
    """

    def __init__(self, dim: int = 64, max_len: int = 20, hidden: int = 128, n_scenes: int = len(SCENES)):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.zeros(dim))
        self.scene_query = nn.Linear(n_scenes, dim, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim + n_scenes, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, seq: torch.Tensor, weights: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        mask = (weights > 0).to(seq.dtype)  # [B, L]
        keys = self.key(seq + self.pos)  # [B, L, D]
        q = self.query + self.scene_query(scene)  # [B, D]
        logits = (keys * q.unsqueeze(1)).sum(-1) * self.scale + torch.log(weights.clamp_min(0.0) + 1e-6)
        logits = logits.masked_fill(mask == 0, -1e4)  # finite: an all-padding row gives uniform attention
        attn = torch.softmax(logits, dim=-1) * mask
        pooled = (attn.unsqueeze(-1) * seq).sum(1)
        wsum = weights.clamp_min(0.0).sum(-1, keepdim=True)
        wmean = (weights.clamp_min(0.0).unsqueeze(-1) * seq).sum(1) / (wsum + 1e-6)
        h = self.mlp(torch.cat([pooled, wmean, scene], dim=-1))
        return F.normalize(wmean + pooled + h, dim=-1, eps=1e-6)


def _item_rows(vectors: ItemVectors) -> tuple[np.ndarray, dict[str, int]]:
    """A lookup table of every known item's vector (own or centroid); row 0 is padding."""
    rows: dict[str, int] = {}
    table = [np.zeros(vectors.dim, np.float32)]
    for item in vectors.index:
        rows[item] = len(table)
        table.append(vectors.matrix[vectors.index[item]])
    for item, cat in vectors.categories.items():
        if item not in rows and cat in vectors.centroids:
            rows[item] = len(table)
            table.append(vectors.centroids[cat])
    return np.stack(table).astype(np.float32), rows


def train_user_encoder(
    sequences: Sequence[Sequence[str]],
    scenes: Sequence[int] | None,
    vectors: ItemVectors,
    max_len: int = 20,
    epochs: int = 3,
    seed: int = 0,
    *,
    batch_size: int = 512,
    lr: float = 2e-3,
    temperature: float = 0.1,
    decay: float = 0.85,
    threads: int | None = None,
) -> UserEncoder:
    """Next-item prediction: encode the items before position t, score against in-batch targets.

    Training weights are ``decay ** age`` (most recent = 1), the shape of the profile's decayed
    interest at serving time. Items with no vector (not even a category centroid) are dropped.
    """
    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    table_np, rows = _item_rows(vectors)
    ctx_rows: list[np.ndarray] = []
    targets: list[int] = []
    scene_ids: list[int] = []
    for s, seq in enumerate(sequences):
        r = [rows[i] for i in seq if i in rows]
        r = [x for k, x in enumerate(r) if k == 0 or x != r[k - 1]]  # repeats are not "next" items
        for t in range(1, len(r)):
            ctx = np.zeros(max_len, np.int64)
            hist = r[max(0, t - max_len) : t]
            ctx[max_len - len(hist) :] = hist
            ctx_rows.append(ctx)
            targets.append(r[t])
            scene_ids.append(int(scenes[s]) if scenes is not None else 0)
    model = UserEncoder(vectors.dim, max_len)
    if not targets:
        log.warning("user encoder: no training examples; returning the untrained model")
        return model.eval()
    table = torch.from_numpy(table_np)
    ctx_t = torch.from_numpy(np.stack(ctx_rows))
    tgt_t = torch.tensor(targets, dtype=torch.int64)
    scene_t = F.one_hot(torch.tensor(scene_ids), len(SCENES)).float()
    age = torch.arange(max_len - 1, -1, -1, dtype=torch.float32)
    base_w = decay**age  # [L]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    loss_v = float("nan")
    n = len(targets)
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            ctx = ctx_t[idx]
            seq = table[ctx]
            w = base_w * (ctx > 0).float()
            user = model(seq, w, scene_t[idx])
            tgt = tgt_t[idx]
            logits = user @ table[tgt].T / temperature
            dup = (tgt.unsqueeze(0) == tgt.unsqueeze(1)) & ~torch.eye(len(idx), dtype=torch.bool)
            logits = logits.masked_fill(dup, -1e4)  # same target elsewhere in the batch is no negative
            loss = F.cross_entropy(logits, torch.arange(len(idx)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_v = float(loss.detach())
    log.info("user encoder: %d examples, %d epochs, loss %.4f in %.1fs",
             n, epochs, loss_v, time.perf_counter() - started)
    return model.eval()


def export_onnx(model: UserEncoder, path: str | Path, dim: int, max_len: int, opset: int = 17) -> Path:
    """TorchScript-based export (dynamo=False, DESIGN.md §5a) with a dynamic batch axis."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = (torch.zeros(2, max_len, dim), torch.zeros(2, max_len), torch.zeros(2, len(SCENES)))
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is chosen on purpose (no onnxscript dependency); its deprecation is noise
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, dummy, str(p), dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes={name: batch for name in (*INPUT_NAMES, OUTPUT_NAME)},
        )
    return p


def cuda_device_count() -> int:
    """GPUs visible to the CUDA driver (0 without driver/GPU); cheap, and independent of torch's build."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0
        except AttributeError:
            return 0
    return 0


GPU_MIN_BATCH = 64  # below this a CUDA encoder runs the batch on the CPU (docs/BENCHMARKS.md, on an H200)


def on_cpu_instead(batch: int, provider: str, gpu_min_batch: int) -> bool:
    """Whether a batch of `batch` users is faster on the CPU than on the GPU session.

    Measured on an H200 (docs/BENCHMARKS.md, "The encoder on a GPU"): a CUDA call costs ~350-400 us of
    launches and copies whatever its size, so one user takes ~6x longer there than on the CPU, while
    from a few dozen users up the GPU wins. Refresh batches are often that small."""
    return provider == "CUDAExecutionProvider" and batch < gpu_min_batch


class OnnxUserEncoder:
    """ONNX Runtime session for the exported encoder, on CUDA only where a GPU really is.

    On CUDA it also keeps a CPU session for batches under `gpu_min_batch` users (see on_cpu_instead)."""

    def __init__(self, path: str | Path, device: Device = "auto", gpu_min_batch: int = GPU_MIN_BATCH):
        self.path = Path(path)
        self.gpu_min_batch = gpu_min_batch
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no provider-fallback warnings on CPU hosts
        gpu = device == "cuda" or (device == "auto" and cuda_device_count() > 0)
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        running = self._session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in running:
            raise RuntimeError(f"encoder_device=cuda but ONNX Runtime runs {running} (no usable GPU)")
        self.provider: str = running[0]
        self._cpu = self._session
        if self.provider == "CUDAExecutionProvider" and gpu_min_batch > 1:
            self._cpu = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0].shape
        self.max_len, self.dim = int(inp[1]), int(inp[2])
        log.info("user encoder %s: requested %s, GPU %s, running on %s%s",
                 self.path.name, device, "found" if gpu else "not found", self.provider,
                 f" (batches under {gpu_min_batch} users on the CPU)" if self._cpu is not self._session else "")

    def encode(self, seq: np.ndarray, weights: np.ndarray, scene: np.ndarray) -> np.ndarray:
        """[B, L, D], [B, L], [B, 3] float32 -> unit user vectors [B, D] float32."""
        feeds = {
            "seq": np.ascontiguousarray(seq, dtype=np.float32),
            "weights": np.ascontiguousarray(weights, dtype=np.float32),
            "scene": np.ascontiguousarray(scene, dtype=np.float32),
        }
        small = on_cpu_instead(len(feeds["seq"]), self.provider, self.gpu_min_batch)
        return (self._cpu if small else self._session).run([OUTPUT_NAME], feeds)[0]


def scene_index(scene: str) -> int:
    try:
        return SCENES.index(scene)
    except ValueError:
        raise ValueError(f"unknown scene {scene!r}; expected one of {SCENES}") from None


def build_inputs(
    histories: Sequence[Sequence[tuple[str, str | None, float]]],
    scenes: Sequence[str],
    vectors: ItemVectors,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (item, category, weight) histories, oldest first -> encoder inputs, most recent last.

    Unknown items fall back to their category centroid, else are skipped; rows are left-padded with
    zeros (weight 0 = padding).
    """
    if len(histories) != len(scenes):
        raise ValueError("histories and scenes differ in length")
    b = len(histories)
    seq = np.zeros((b, max_len, vectors.dim), np.float32)
    weights = np.zeros((b, max_len), np.float32)
    scene = np.zeros((b, len(SCENES)), np.float32)
    for u, hist in enumerate(histories):
        scene[u, scene_index(scenes[u])] = 1.0
        pos = max_len - 1
        for item, cat, w in reversed(hist):
            if pos < 0:
                break
            if w <= 0:
                continue
            vec = vectors.vector(item, cat)
            if vec is None:
                continue
            seq[u, pos] = vec
            weights[u, pos] = w
            pos -= 1
    return seq, weights, scene


@dataclass(frozen=True, slots=True, eq=False)
class ModelVersion:
    """A loaded, servable model version."""

    version: str
    path: Path
    dim: int
    max_len: int
    created_at: str
    vectors: ItemVectors
    encoder: OnnxUserEncoder


def save_model_version(root: str | Path, vectors: ItemVectors, encoder: UserEncoder) -> Path:
    """Write ``root/<version>/`` (vectors/, encoder.onnx, meta.json) atomically via a rename."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        vectors.save(tmp / "vectors")
        export_onnx(encoder, tmp / "encoder.onnx", encoder.dim, encoder.max_len)
        digest = hashlib.sha256((tmp / "encoder.onnx").read_bytes() + vectors.version.encode()).hexdigest()
        created = datetime.now(UTC)
        version = f"m-{created.strftime('%Y%m%dT%H%M%S%fZ')}-{digest[:10]}"
        meta = {
            "version": version, "dim": encoder.dim, "max_len": encoder.max_len,
            "created_at": created.isoformat(), "vectors_version": vectors.version,
            "scenes": list(SCENES), "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        final = root / version
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved model version %s (vectors %s)", version, vectors.version)
    return final


def latest_model_version(root: str | Path) -> Path | None:
    """The newest complete version folder under ``root`` (by created_at), or None."""
    best: tuple[str, Path] | None = None
    for meta in Path(root).glob("*/meta.json"):
        if meta.parent.name.startswith("."):
            continue
        created = json.loads(meta.read_text())["created_at"]
        if best is None or created > best[0]:
            best = (created, meta.parent)
    return best[1] if best else None


def load_model_version(path: str | Path, device: Device = "auto", gpu_min_batch: int = GPU_MIN_BATCH) -> ModelVersion:
    """Load a version folder, or the latest version when given the root that holds them."""
    p = Path(path)
    if not (p / "meta.json").exists():
        latest = latest_model_version(p)
        if latest is None:
            raise FileNotFoundError(f"no model version under {p}")
        p = latest
    meta = json.loads((p / "meta.json").read_text())
    vectors = ItemVectors.load(p / "vectors")
    encoder = OnnxUserEncoder(p / "encoder.onnx", device, gpu_min_batch)
    if vectors.dim != meta["dim"] or encoder.dim != meta["dim"]:
        raise ValueError(f"model version {p} is inconsistent (dims {vectors.dim}/{encoder.dim}/{meta['dim']})")
    return ModelVersion(meta["version"], p, meta["dim"], meta["max_len"], meta["created_at"], vectors, encoder)
