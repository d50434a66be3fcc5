"""The trainer role's pure parts (app/tools/retrain.py): which versions pruning removes and when the
health check says unhealthy. The role against a real broker and worker: tests/integration/test_retrain.py."""

from __future__ import annotations

import json
from pathlib import Path

from app.runtime.settings import Settings
from app.tools.retrain import STATUS_FILE, health_problem, prune_versions, write_status


def versions(model_dir: Path) -> list[str]:
    return sorted(m.parent.name for m in model_dir.glob("*/meta.json"))


def test_pruning_keeps_the_newest_and_the_versions_an_experiment_names(tmp_path: Path) -> None:
    for n in range(5):
        (tmp_path / f"m-{n}").mkdir()
        (tmp_path / f"m-{n}" / "meta.json").write_text(json.dumps({"created_at": f"2026-12-0{n + 1}T00:00:00"}))
    (tmp_path / ".tmp-half-written").mkdir()
    assert prune_versions(tmp_path, 2, protected={"m-0"}) == ["m-1", "m-2"]
    assert versions(tmp_path) == ["m-0", "m-3", "m-4"] and (tmp_path / ".tmp-half-written").exists()
    assert prune_versions(tmp_path, 0, protected=set()) == []  # 0: keep every version
    assert prune_versions(tmp_path, 1, protected=set()) == ["m-0", "m-3"]
    assert versions(tmp_path) == ["m-4"]


def test_the_health_check_wants_a_recent_successful_round(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path, retrain_every_s=600.0)
    assert "no round has finished" in (health_problem(settings) or "")
    write_status(settings, True, "m-1")
    assert health_problem(settings) is None
    finished = json.loads((tmp_path / STATUS_FILE).read_text())["finished_at"]
    assert health_problem(settings, now=finished + 2 * 600 + 599) is None
    assert "finished 1801 s ago" in (health_problem(settings, now=finished + 1801) or "")
    write_status(settings, False, None)
    assert "failed" in (health_problem(settings) or "")
    assert versions(tmp_path) == []  # the status file is never taken for a version
