"""`streamrec bench --smoke` end to end: real brokers, real workers, every phase; no timing assertions.

The numbers of a smoke run mean nothing (tiny sizes, a busy CI machine); what is checked is that every
phase ran and reported what the JSON contract of issue 6 promises, with values that make sense.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("raw_consume_eps", "faust_bare_eps", "pipeline_eps", "naive_eps", "freshness_ms", "freshness_rate_eps",
            "encoder_users_per_s", "recall_users_per_s", "peak_rss_mb", "users")


def test_bench_smoke_writes_the_promised_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--smoke", "--json", str(out),
                          "--workdir", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| raw aiokafka consume |" in run.stdout  # the Markdown table is printed
    result = json.loads(out.read_text())

    assert set(REQUIRED) <= set(result)
    # written after every phase (a failing late phase keeps the earlier numbers); this is the last write
    assert result["phases_done"] == ["model", "throughput", "freshness", "memory@1000", "memory", "naive",
                                     "stages"]  # smoke: no two-worker phase
    for key in ("raw_consume_eps", "faust_bare_eps", "faust_bare_stock_eps", "pipeline_eps", "naive_eps",
                "recall_users_per_s", "peak_rss_mb"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert set(result["encoder_users_per_s"]) == {"1", "64", "512"}
    assert all(v > 0 for v in result["encoder_users_per_s"].values())
    fresh = result["freshness_ms"]
    assert fresh["lists"] > 0
    assert 0 <= fresh["p50"] <= fresh["p95"] <= fresh["p99"]  # event time to published list: never negative
    assert result["freshness_rate_eps"] == 300.0
    assert result["users"] == 1000 and [g["users"] for g in result["rss_by_users"]] == [1000]
    assert result["pipeline_totals"]["profile.accepted"] == 3000  # every event profiled exactly once
    recall = result["stages"]["recall"]
    assert recall["milvus_lite_FLAT_b512"]["recall@200"] > 0.99  # FLAT is exact
    assert recall["milvus_lite_FLAT_b512_pymilvus_parse"]["recall@200"] == recall["milvus_lite_FLAT_b512"]["recall@200"]
    assert 0 < recall["faiss_hnsw"]["recall@200"] <= 1


def test_bench_memory_only_measures_rss_per_user_count(tmp_path: Path) -> None:
    """`--memory-only` (the long 1e6-user step run on its own): a fresh worker, one new user per event,
    RSS recorded after each user count, every user profiled."""
    out = tmp_path / "mem.json"
    run = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--smoke", "--memory-only", "--users", "300,600",
                          "--json", str(out), "--workdir", str(tmp_path / "work")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| worker RSS at 600 users |" in run.stdout and "pipeline_eps" not in run.stdout
    result = json.loads(out.read_text())
    assert result["phases_done"] == ["model", "memory@300", "memory@600", "memory"]
    assert [g["users"] for g in result["rss_by_users"]] == [300, 600] and result["users"] == 600
    assert all(g["rss_mb"] > 50 for g in result["rss_by_users"]) and result["peak_rss_mb"] > 50
    assert "pipeline_eps" not in result
