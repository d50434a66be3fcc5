"""The README's demo command runs the real pipeline to its summary (short run, both data sources)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.runtime.settings import default_dataset

pytestmark = pytest.mark.integration


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "app.cli", "demo", *args], capture_output=True, text=True, check=False,
                          env=env, timeout=600, cwd=Path(__file__).resolve().parents[2])


def summary_value(output: str, label: str) -> str:
    line = next(line for line in output.splitlines() if label in line)
    return line.split("│")[-2].strip()


def test_demo_on_the_simulator_reaches_its_summary(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--events", "3000", "--simulate")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "built-in simulator" in result.stdout
    assert int(summary_value(result.stdout, "recommendations published").replace(",", "")) > 0
    consumed = int(summary_value(result.stdout, "events consumed").replace(",", ""))
    parts = [int(summary_value(result.stdout, label).replace(",", ""))
             for label in ("│ accepted", "│ duplicates", "│ dead-lettered")]
    assert consumed == sum(parts) and parts[1] > 0 and parts[2] > 0


@pytest.mark.skipif(not default_dataset().exists(), reason="the shared Taobao data set is not beside this clone")
def test_demo_replays_the_shared_data_set(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--events", "3000")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "events.csv.gz" in result.stdout and "freshness p50 / p99" in result.stdout
