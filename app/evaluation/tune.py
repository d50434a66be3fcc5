"""`streamrec tune`: score configurations of any system on a validation slice of the TRAINING period.

The evaluated period (``split_events``, as `streamrec evaluate` splits) is dropped first and never
read; the last ``validation_share`` of the rest (by event count, cut at a timestamp) is the
validation slice, everything before it the fit slice (model training, profiles, trending, baselines'
state). Each configuration is a ``models.ranking.Ranker`` (``app.evaluation.grid.GRID``), fitted on
the fit slice and replayed over the validation slice by the evaluator's own protocol; users with
crc32(user_id) % ``user_mod`` == 0 are scored (every user is replayed), and the numbers are on warm
targets, as in `streamrec evaluate`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import orjson

from app.evaluation.evaluate import evaluate_streams, load_events, split_events
from app.evaluation.grid import DEFAULT_CONFIGS, GRID
from app.evaluation.systems import SharedModel
from schemas.events import UserEvent

log = logging.getLogger(__name__)

VALIDATION_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class TuneRow:
    name: str
    hit_rate: float
    mrr: float
    ndcg: float
    targets: int
    # What the lists promise besides hits (the accuracy-diversity trade-off, docs/EVALUATION.md):
    # intra-list category diversity, catalog coverage and novelty of the scored lists, top k.
    diversity: float | None = None
    coverage: float | None = None
    novelty: float | None = None


@dataclass(frozen=True, slots=True)
class TuneResult:
    dataset: str
    k: int
    user_mod: int
    fit_events: int
    validation_events: int
    validation_from_ts: int  # first ts of the validation slice
    validation_to_ts: int  # last ts of the validation slice: before the evaluated period
    rows: tuple[TuneRow, ...]

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset, "k": self.k, "user_mod": self.user_mod, "fit_events": self.fit_events,
            "validation_events": self.validation_events, "validation_from_ts": self.validation_from_ts,
            "validation_to_ts": self.validation_to_ts,
            "configs": {row.name: {f"hr@{self.k}": row.hit_rate, f"mrr@{self.k}": row.mrr,
                                   f"ndcg@{self.k}": row.ndcg, "targets": row.targets,
                                   "diversity": row.diversity, "coverage": row.coverage, "novelty": row.novelty}
                        for row in self.rows},
        }


def validation_split(
    events: Sequence[UserEvent], *, validation_share: float = VALIDATION_SHARE,
) -> tuple[list[UserEvent], list[UserEvent]]:
    """(fit, validation) from the training period of ``events``; the evaluated period is dropped."""
    train, _evaluated = split_events(events)
    if len(train) < 2:
        raise ValueError(f"{len(train)} training events: too few to hold out a validation slice")
    cut = train[min(int(len(train) * (1.0 - validation_share)), len(train) - 1)].ts
    return [e for e in train if e.ts < cut], [e for e in train if e.ts >= cut]


def sampled_users(user_mod: int) -> Callable[[str], bool]:
    """Every ``user_mod``-th user by a stable hash (crc32), the same in every run."""
    return lambda user_id: zlib.crc32(user_id.encode()) % user_mod == 0


def run_tune(data: Path, configs: Sequence[str] = DEFAULT_CONFIGS, *, user_mod: int = 1, k: int = 20,
             progress: bool = False) -> TuneResult:
    unknown = [name for name in configs if name not in GRID]
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; known: {', '.join(GRID)}")
    events, categories = load_events(Path(data))
    fit, validation = validation_split(events)
    log.info("%s: %d fit events, %d validation events", data, len(fit), len(validation))
    shared = SharedModel()
    try:
        result = evaluate_streams(fit, validation, {name: partial(GRID[name], shared) for name in configs},
                                  dataset=Path(data).name, k=k, progress=progress, categories=categories,
                                  scored_users=sampled_users(user_mod))
    finally:
        shared.close()
    rows = tuple(
        TuneRow(name, float(m[f"hr@{k}"] or 0.0), float(m[f"mrr@{k}"] or 0.0), float(m[f"ndcg@{k}"] or 0.0),
                int(m["events"] or 0), _optional(m["diversity"]), _optional(m["coverage"]), _optional(m["novelty"]))
        for name in configs for m in [result.systems[name].warm])
    return TuneResult(Path(data).name, k, user_mod, len(fit), len(validation), validation[0].ts if validation else 0,
                      validation[-1].ts if validation else 0, rows)


def _optional(value: float | None) -> float | None:
    return None if value is None else float(value)


def _pct(value: float | None, width: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{100 * value:{width}.2f}"


def format_rows(result: TuneResult) -> str:
    """One line per configuration, in the order asked: HR, MRR and NDCG @k in %, scored targets,
    then intra-list diversity and coverage in % and novelty in bits."""
    width = max((len(row.name) for row in result.rows), default=4)
    k = result.k
    lines = [f"{'config':{width}s}  HR@{k}   MRR@{k}  NDCG@{k}  targets  div(%)  cov(%)  nov(bits)"]
    lines += [f"{row.name:{width}s} {100 * row.hit_rate:6.2f} {100 * row.mrr:7.2f} {100 * row.ndcg:7.2f} "
              f"{row.targets:8d} {_pct(row.diversity, 7)} {_pct(row.coverage, 7)} "
              f"{'-' if row.novelty is None else f'{row.novelty:.2f}':>10s}" for row in result.rows]
    return "\n".join(lines)


def read_json(path: Path) -> TuneResult:
    """A result ``write_json`` wrote (e.g. to plot it again without replaying)."""
    data = orjson.loads(Path(path).read_bytes())
    k = int(data["k"])
    rows = tuple(
        TuneRow(name, m[f"hr@{k}"], m[f"mrr@{k}"], m[f"ndcg@{k}"], m["targets"], m.get("diversity"),
                m.get("coverage"), m.get("novelty"))
        for name, m in data["configs"].items())
    return TuneResult(data["dataset"], k, data["user_mod"], data["fit_events"], data["validation_events"],
                      data["validation_from_ts"], data["validation_to_ts"], rows)


def write_json(result: TuneResult, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
