"""app/benchmarks/bench_encoder.py on a real exported encoder: every usable provider measured, same vectors as CPU."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from app.benchmarks.bench_encoder import ROUTED, main, measure, table
from models.encoder import UserEncoder, cuda_device_count, export_onnx


def test_measures_each_usable_provider_on_a_real_model(tmp_path: Path) -> None:
    model = export_onnx(UserEncoder(dim=16, max_len=5), tmp_path / "encoder.onnx", dim=16, max_len=5)
    result = measure(model, batches=(1, 8), min_s=0.01)
    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0
    expected = {"CPUExecutionProvider"} | ({"CUDAExecutionProvider", "CUDAExecutionProvider+iobinding", ROUTED} if gpu else set())
    assert set(result["users_per_s"]) == expected
    assert (result["max_len"], result["dim"]) == (5, 16)
    for rates in result["users_per_s"].values():
        assert set(rates) == {"1", "8"} and all(v > 0 for v in rates.values())
    assert all(diff < 1e-3 for diff in result["max_abs_diff_vs_cpu"].values())
    lines = table(result).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1 |")


def test_cli_writes_json(tmp_path: Path) -> None:
    model = export_onnx(UserEncoder(dim=8, max_len=4), tmp_path / "encoder.onnx", dim=8, max_len=4)
    assert main(["--model", str(model), "--json", str(tmp_path / "out.json"), "--min-s", "0.01"]) == 0
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["users_per_s"]["CPUExecutionProvider"]["512"] > 0
