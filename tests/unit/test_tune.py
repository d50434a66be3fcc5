"""`streamrec tune`: configurations scored on a validation slice of the training period, from a real file."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.evaluation.evaluate import DAY_MS, split_events
from app.evaluation.tune import validation_split
from schemas.events import Browse

T0_S = 1_700_000_000
USERS = 40
ROUNDS = 20


def _write_events(path: Path) -> None:
    """Every minute one user views the one item they always view: user 1000+n at minutes m, m % 40 == n."""
    rows = ["user_id,item_id,category_id,behavior_type,timestamp"]
    for minute in range(USERS * ROUNDS):
        n = minute % USERS
        rows.append(f"{1000 + n},{5000 + n},{n % 4},pv,{T0_S + minute * 60}")
    path.write_text("\n".join(rows) + "\n")


def test_validation_slice_is_the_end_of_the_training_period_and_never_the_evaluated_one() -> None:
    start = 1_700_000_000_000
    events = [Browse(event_id=f"e{h}", user_id=f"u{h % 7}", ts=start + h * 3_600_000, page="product",
                     item_id=f"i{h % 11}") for h in range(24 * 9)]  # 9 days: the last 2 are evaluated
    train, evaluated = split_events(events)
    fit, validation = validation_split(events)
    assert fit + validation == train
    assert max(e.ts for e in fit) < min(e.ts for e in validation)
    assert max(e.ts for e in validation) < min(e.ts for e in evaluated) == events[-1].ts - 2 * DAY_MS
    # hours 0-166 train (167 events); the last quarter from index int(167 * 0.75) = 125 validates
    assert (len(train), len(validation)) == (167, 42) and validation[0] is train[125]


def test_tune_command_scores_each_configuration_on_the_validation_slice(tmp_path: Path) -> None:
    data, out, plot = tmp_path / "events.csv", tmp_path / "tune.json", tmp_path / "tradeoff.png"
    _write_events(data)
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--configs", "user_pop,popularity,shipped",
                                      "--user-mod", "2", "--json", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    # 800 events, one a minute: minutes 0-399 train (the rest is evaluated and never read), of which
    # 300-399 validate: users 1000-1019 view twice there, 1020-1039 three times.
    sampled = [n for n in range(USERS) if zlib.crc32(str(1000 + n).encode()) % 2 == 0]
    targets = sum(2 if n < 20 else 3 for n in sampled)
    payload = json.loads(out.read_text())
    assert (payload["fit_events"], payload["validation_events"], payload["user_mod"]) == (300, 100, 2)
    assert payload["validation_from_ts"] == (T0_S + 300 * 60) * 1000
    assert payload["validation_to_ts"] == (T0_S + 399 * 60) * 1000
    configs = payload["configs"]
    assert list(configs) == ["user_pop", "popularity", "shipped"]
    assert {name: row["targets"] for name, row in configs.items()} == dict.fromkeys(configs, targets)
    # Each user only ever views their own item: ranking it first is right every time.
    assert configs["user_pop"]["hr@20"] == configs["user_pop"]["mrr@20"] == 1.0
    assert configs["shipped"]["hr@20"] == configs["shipped"]["mrr@20"] == 1.0
    # One list for everyone holds 20 of the 40 items.
    assert configs["popularity"]["hr@20"] < 0.75
    lines = result.output.splitlines()  # logs and the progress bar (stderr) come first
    assert any("fit 300 events, validation 100" in line and "1 user in 2 scored" in line for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("config "))
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert rows[0][:5] == ["user_pop", "100.00", "100.00", "100.00", str(targets)]
    assert [row[0] for row in rows] == ["user_pop", "popularity", "shipped"]
    assert rows[1][1] == f"{100 * configs['popularity']['hr@20']:.2f}"
    # The trade-off columns: diversity and coverage in %, novelty in bits, as in the JSON.
    assert rows[1][5:] == [f"{100 * configs['popularity']['diversity']:.2f}",
                           f"{100 * configs['popularity']['coverage']:.2f}", f"{configs['popularity']['novelty']:.2f}"]
    assert all(0.0 <= row["diversity"] <= 1.0 and 0.0 < row["coverage"] <= 1.0 for row in configs.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tradeoff_plot_skips_points_without_a_diversity(tmp_path: Path) -> None:
    from app.evaluation.tradeoff import plot_tradeoff
    from app.evaluation.tune import TuneResult, TuneRow

    rows = (TuneRow("user_pop", 0.05, 0.04, 0.04, 100, 0.9, 0.4, 14.0),
            TuneRow("shipped", 0.055, 0.041, 0.045, 100, 0.6, 0.38, 14.3),
            TuneRow("empty", 0.0, 0.0, 0.0, 0, None, None, None))
    result = TuneResult("events.csv.gz", 20, 1, 10, 5, 0, 1, rows)
    path = plot_tradeoff(result, tmp_path / "sub" / "plot.png", references=["user_pop"])
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_tune_refuses_an_unknown_configuration(tmp_path: Path) -> None:
    data = tmp_path / "events.csv"
    _write_events(data)
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--configs", "user_pop,nonesuch"])
    assert result.exit_code != 0
    assert "nonesuch" in result.output


@pytest.mark.parametrize("name", ["designed", "AD_p075", "session_knn", "streamrec_never_relist_bought"])
def test_grid_entries_build_rankers(name: str) -> None:
    from app.evaluation.grid import GRID
    from app.evaluation.systems import SharedModel
    from models.ranking import Ranker

    shared = SharedModel()
    try:
        ranker = GRID[name](shared)
        assert isinstance(ranker, Ranker) and ranker.name == name
    finally:
        shared.close()


def test_tune_json_reads_back_and_the_shipped_scene_strategies_are_a_grid_point(tmp_path: Path) -> None:
    """The trade-off plot can be redrawn from a saved run; the defaults are the grid point chosen in
    docs/EVALUATION.md ("Scene strategies and diversity"), so its measured row describes them."""
    from app.evaluation.grid import SCENE_BLENDS
    from app.evaluation.tune import TuneResult, TuneRow, read_json, write_json
    from models.rerank import RerankParams

    result = TuneResult("f.csv", 20, 2, 10, 5, 1, 2, (TuneRow("a", 0.1, 0.05, 0.06, 7, 0.5, 0.3, 13.0),
                                                      TuneRow("b", 0.2, 0.1, 0.12, 7, None, None, None)))
    write_json(result, tmp_path / "t.json")
    assert read_json(tmp_path / "t.json") == result
    assert SCENE_BLENDS["cov_d0.6_h5"] == RerankParams()
