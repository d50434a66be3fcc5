"""The user encoder's speed per execution provider: CPU, CUDA, and CUDA with IO binding, side by side.

`streamrec bench` measures the encoder on whatever provider the worker would pick; this module puts the
providers next to each other on one model and one machine, which is what a GPU box is for. It needs
only numpy, onnxruntime and models/encoder.py (no broker, no settings), so it also runs on a lent GPU
machine that has none of the worker's other dependencies:

    python -m app.benchmarks.bench_encoder --model var/models/<version>/encoder.onnx --json encoder.json

Inputs start on the host, as they do in the worker (numpy arrays built from profiles), so every
number includes the host-to-device copy of the inputs and the copy of the user vectors back.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.encoder import GPU_MIN_BATCH, INPUT_NAMES, OUTPUT_NAME, OnnxUserEncoder, cuda_device_count

logger = logging.getLogger(__name__)

BATCHES = (1, 8, 16, 32, 64, 512, 4096)
ROUTED = f"StreamRec encoder (CUDA, under {GPU_MIN_BATCH} users on CPU)"  # what a GPU worker runs


def per_s(n: int, fn: Callable[[], Any], min_s: float = 0.3, warmup: int = 1) -> float:
    """Items per second of `fn` (which handles n items), after warm-up calls, repeated for at least min_s."""
    for _ in range(warmup):
        fn()
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_s:
            return n * runs / elapsed


def inputs(batch: int, max_len: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "seq": rng.standard_normal((batch, max_len, dim), dtype=np.float32),
        "weights": rng.random((batch, max_len), dtype=np.float32),
        "scene": np.tile(np.eye(3, dtype=np.float32)[0], (batch, 1)),
    }


def session(model: Path, provider: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(model), sess_options=opts, providers=providers)
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} asked for, ONNX Runtime runs {sess.get_providers()}")
    return sess


def with_io_binding(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    """One run: copy the host inputs into device buffers bound once, run, copy the vectors back."""
    bound = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name], "cuda", 0) for name in INPUT_NAMES}
    binding = sess.io_binding()
    for name in INPUT_NAMES:
        binding.bind_ortvalue_input(name, bound[name])
    binding.bind_output(OUTPUT_NAME, "cuda", 0)

    def run() -> np.ndarray:
        for name in INPUT_NAMES:
            bound[name].update_inplace(feeds[name])  # host -> device, as a new batch would be
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def measure(model: Path, batches: tuple[int, ...] = BATCHES, min_s: float = 1.0) -> dict[str, Any]:
    available = ort.get_available_providers()
    probe = session(model, "CPUExecutionProvider")
    shape = probe.get_inputs()[0].shape
    max_len, dim = int(shape[1]), int(shape[2])
    modes: dict[str, Callable[[ort.InferenceSession | None, dict[str, np.ndarray]], Callable[[], Any]]] = {
        "CPUExecutionProvider": lambda s, f: (lambda: s.run([OUTPUT_NAME], f)[0]),
    }
    # ONNX Runtime lists CUDA whenever the GPU build is installed, GPU or not (DESIGN.md §5a).
    if "CUDAExecutionProvider" in available and cuda_device_count() > 0:
        modes["CUDAExecutionProvider"] = lambda s, f: (lambda: s.run([OUTPUT_NAME], f)[0])
        modes["CUDAExecutionProvider+iobinding"] = with_io_binding
        routed = OnnxUserEncoder(model, "cuda")
        modes[ROUTED] = lambda s, f: (lambda: routed.encode(f["seq"], f["weights"], f["scene"]))
    result: dict[str, Any] = {"model": model.name, "max_len": max_len, "dim": dim, "users_per_s": {},
                              "max_abs_diff_vs_cpu": {}, "available_providers": available,
                              "ort_version": ort.__version__, "host": platform.node(),
                              "processor": platform.processor() or platform.machine()}
    reference = {b: probe.run([OUTPUT_NAME], inputs(b, max_len, dim))[0] for b in batches}
    for mode, make in modes.items():
        sess = None if mode == ROUTED else session(model, mode.split("+")[0])  # the routed encoder has its own
        rates: dict[str, float] = {}
        for batch in batches:
            run = make(sess, inputs(batch, max_len, dim))
            out = run()
            result["max_abs_diff_vs_cpu"][f"{mode} {batch}"] = float(np.abs(out - reference[batch]).max())
            rates[str(batch)] = per_s(batch, run, min_s=min_s)
            logger.info("%s batch %d: %.0f users/s", mode, batch, rates[str(batch)])
        result["users_per_s"][mode] = rates
    return result


def table(result: dict[str, Any]) -> str:
    modes = list(result["users_per_s"])
    batches = list(next(iter(result["users_per_s"].values())))
    lines = ["| batch | " + " | ".join(f"{m} users/s" for m in modes) + " |",
             "|---|" + "---|" * len(modes)]
    for b in batches:
        lines.append(f"| {b} | " + " | ".join(f"{result['users_per_s'][m][b]:,.0f}" for m in modes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an encoder.onnx of a model version")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--min-s", type=float, default=1.0, help="seconds timed per cell")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--device-name", default="", help="recorded as-is (e.g. from nvidia-smi)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = measure(args.model, tuple(int(b) for b in args.batches.split(",")), min_s=args.min_s)
    result["device"] = args.device_name
    logger.info("%s", table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
