"""`streamrec evaluate`: every system (StreamRec, its configurations, the baselines) in one replay."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from app.evaluation.baselines import baseline_factories
from app.evaluation.evaluate import EvaluationResult, load_events, run_evaluation, write_json, write_report
from app.evaluation.scenes import scene_notes
from app.evaluation.systems import VARIANTS, SharedModel, all_systems


def system_names() -> list[str]:
    """Every system `streamrec evaluate` can run: StreamRec's configurations, then the baselines."""
    return [*(variant.name for variant in VARIANTS), *baseline_factories()]


def evaluate_command(
    data: Path,
    json_out: Path | None,
    report: Path | None,
    *,
    baselines_only: bool = False,
    systems: Sequence[str] | None = None,
    train_fraction: float | None = None,
    eval_days: float | None = None,
    progress: bool = True,
    retrain_every_hours: float | None = None,
) -> EvaluationResult:
    """Evaluate, then write the JSON and the report when asked; the report adds the scene-model comparison.

    ``systems``: only these (names from ``system_names``), e.g. to measure a few StreamRec
    configurations without replaying every baseline again; None: all (or the baselines only)."""
    command = f"streamrec evaluate --data {data}"
    command += f" --json {json_out}" if json_out is not None else ""
    command += f" --report {report}" if report is not None else ""
    command += " --baselines-only" if baselines_only else ""
    command += f" --systems {','.join(systems)}" if systems is not None else ""
    command += f" --retrain-every-hours {retrain_every_hours:g}" if retrain_every_hours else ""
    retrain_ms = int(retrain_every_hours * 3_600_000) if retrain_every_hours else None
    shared = SharedModel()
    try:
        chosen = baseline_factories() if baselines_only else all_systems(shared)
        if not retrain_every_hours and systems is None:  # the same as streamrec when nothing retrains
            chosen.pop("streamrec_no_retrain", None)
        if systems is not None:
            unknown = [name for name in systems if name not in chosen]
            if unknown:
                raise ValueError(f"unknown systems {', '.join(unknown)}; known: {', '.join(chosen)}")
            chosen = {name: chosen[name] for name in systems}
        result = run_evaluation(Path(data), chosen, train_fraction=train_fraction, eval_days=eval_days,
                                progress=progress, command=command, retrain_every_ms=retrain_ms)
    finally:
        shared.close()
    if any(name.startswith("streamrec") for name in result.systems):
        events, _ = load_events(Path(data))
        notes = [*scene_notes(events),
                 f"StreamRec model training (item2vec + encoder + Milvus load): {shared.train_seconds:.1f} s "
                 f"for {shared.trainings} model version(s)"
                 + (f", retrained every {retrain_every_hours:g} h of the replay." if retrain_every_hours else ".")]
        result = dataclasses.replace(result, notes=tuple(notes))
    if json_out is not None:
        write_json(result, Path(json_out))
    if report is not None:
        write_report(result, Path(report))
    return result
