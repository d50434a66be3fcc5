"""Online experiments, pure parts: the user split, the definitions' registry, per-arm feedback, the statistics."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.evaluation.abtest import (
    MIN_PER_ARM,
    FeedbackRecord,
    build_report,
    compare_mrr,
    compare_proportions,
    format_report,
    sample_ratio,
    sum_arms,
)
from app.runtime.services import Services
from app.runtime.settings import Settings, get_settings
from models.encoder import ModelVersion
from models.experiments import (
    Registry,
    assign_arm,
    bucket,
    known_versions,
    optout_key,
    running_experiment,
    version_path,
)
from models.feedback import RANK_K, FeedbackParams, FeedbackWindows, UserFeedback, ab_arm
from models.popularity import Trending
from models.recommender import Recommender
from models.vectors import ItemVectors
from schemas.events import Browse, CatalogItem, Click, RecItem, Recommendation
from schemas.experiments import CONTROL, TREATMENT, Experiment, encode_experiment

MIN = 60_000


def definition(name: str = "exp1", share: float = 0.5, *, active: bool = True, started_at: int = 1) -> Experiment:
    return Experiment(name=name, control="m-a", treatment="m-b", share=share, started_at=started_at, active=active)


# --- the split -------------------------------------------------------------------------------------------------


def test_the_split_is_stable_and_follows_the_share() -> None:
    users = [f"user{i}" for i in range(20_000)]
    exp = definition(share=0.3)
    arms = [assign_arm(exp, u) for u in users]
    assert arms == [assign_arm(definition(share=0.3), u) for u in users]  # same on every worker and restart
    assert 0.28 < arms.count(TREATMENT) / len(arms) < 0.32
    assert set(arms) == {CONTROL, TREATMENT}


def test_the_name_salts_the_split() -> None:
    users = [f"user{i}" for i in range(5_000)]
    first = [assign_arm(definition("exp1"), u) for u in users]
    second = [assign_arm(definition("exp2"), u) for u in users]
    agreement = sum(a == b for a, b in zip(first, second, strict=True)) / len(users)
    assert 0.45 < agreement < 0.55  # independent splits: a new experiment reshuffles users
    assert 0.0 <= bucket("exp1", "u") < 1.0


def test_the_optout_marker_does_not_hold_the_user_id() -> None:
    key = optout_key("alice@example.com")
    assert b"alice" not in key and key == optout_key("alice@example.com") != optout_key("bob")


# --- definitions ------------------------------------------------------------------------------------------------


def test_the_registry_keeps_the_latest_definition_per_name() -> None:
    registry = Registry()
    started = definition()
    assert registry.apply(b"exp1", encode_experiment(started)) is True
    assert registry.apply(b"exp1", encode_experiment(started)) is False  # redelivered: no change
    assert registry.running() == started
    stopped = msgspec.structs.replace(started, active=False, stopped_at=5)
    assert registry.apply(b"exp1", encode_experiment(stopped)) is True
    assert registry.running() is None and registry.definitions["exp1"] == stopped  # still reportable
    assert registry.apply(b"exp1", None) is True and registry.definitions == {}  # a tombstone deletes


def test_the_registry_ignores_malformed_and_misfiled_records() -> None:
    registry = Registry()
    assert registry.apply(b"exp1", b"{not json") is False
    assert registry.apply(b"other", encode_experiment(definition("exp1"))) is False
    assert registry.apply(None, encode_experiment(definition())) is False
    assert registry.definitions == {}


def test_every_worker_runs_the_same_one_of_two_active_experiments() -> None:
    early, late = definition("zeta", started_at=10), definition("alpha", started_at=20)
    assert running_experiment([late, early]) == early == running_experiment([early, late])
    assert running_experiment([definition("b", started_at=5), definition("a", started_at=5)]).name == "a"
    assert running_experiment([definition(active=False)]) is None


def test_a_version_is_a_folder_with_its_meta(tmp_path: Path) -> None:
    (tmp_path / "m-1").mkdir()
    (tmp_path / "m-1" / "meta.json").write_text("{}")
    (tmp_path / "m-2").mkdir()  # no meta.json: an unfinished write
    assert version_path(tmp_path, "m-1") == tmp_path / "m-1"
    assert version_path(tmp_path, "m-2") is None and version_path(tmp_path, "../m-1") is None
    assert version_path(tmp_path, "") is None
    assert known_versions(tmp_path) == ["m-1"]


# --- per-arm feedback -------------------------------------------------------------------------------------------


def rec(rec_id: str, ts: int, items: list[str], user: str, *, experiment: str | None = "exp1",
        arm: str | None = CONTROL, model: str = "m-a") -> Recommendation:
    return Recommendation(rec_id=rec_id, user_id=user, version=1, generated_at=ts + 50, source_ts=ts,
                          scene="browsing", model_version=model,
                          items=[RecItem(item_id=i, score=1.0, reason="r") for i in items],
                          experiment=experiment, arm=arm)


def browse(eid: str, ts: int, item: str, user: str) -> Browse:
    return Browse(event_id=eid, user_id=user, ts=ts, page="product", item_id=item)


def test_feedback_counts_each_list_in_its_own_arm_with_a_rank_histogram() -> None:
    fw = FeedbackWindows(FeedbackParams(window_ms=MIN, grace_ms=0, k=10))
    t0 = 10 * MIN
    items = [f"i{n}" for n in range(25)]
    # the arm comes from the list, never from a hash of the user: u1's hash arm is beside the point here
    s1, s2 = UserFeedback(), UserFeedback()
    fw.on_list(s1, rec("r1", t0, items[:20], "u1", arm=TREATMENT, model="m-b"))
    fw.on_event(s1, browse("e1", t0 + 1_000, "i2", "u1"))  # rank 3 of the treatment's list, and a click
    fw.on_list(s1, rec("r2", t0 + 2_000, items[5:25], "u1", arm=TREATMENT, model="m-b"))
    fw.on_event(s1, browse("e2", t0 + 3_000, "zz", "u1"))  # a miss
    fw.on_list(s2, rec("r3", t0 + 1_000, items[:20], "u2"))
    fw.on_event(s2, Click(event_id="e3", user_id="u2", ts=t0 + 4_000, item_id="i0", rec_id="r3"))  # rank 1
    fw.on_event(s2, browse("e4", t0 + MIN + 1_000, "zz", "u2"))  # moves the watermark past the window
    by_arm = {w.arm: w for w in fw.close()}
    treatment, control = by_arm[TREATMENT], by_arm[CONTROL]
    assert (treatment.experiment, treatment.model_version, treatment.users, treatment.lists) == ("exp1", "m-b", 1, 2)
    assert treatment.scored == 2 and treatment.clicks == 1
    assert treatment.rank_hist == [0, 0, 1] + [0] * (RANK_K - 3) + [1]
    assert treatment.hit_rate_20 == 0.5 and treatment.mrr_20 == pytest.approx((1 / 3 + 0) / 2)
    assert (control.users, control.lists, control.clicks, control.mrr_20) == (1, 1, 1, 1.0)


def test_a_user_counts_once_per_experiment_across_windows() -> None:
    fw = FeedbackWindows(FeedbackParams(window_ms=MIN, grace_ms=0))
    state = UserFeedback()
    for n in range(3):
        fw.on_list(state, rec(f"r{n}", n * MIN, ["a"], "u1"))
    fw.on_event(state, browse("late", 5 * MIN, "a", "u1"))
    closed = [w for w in fw.close() if w.experiment == "exp1"]
    assert [w.lists for w in closed] == [1, 1, 1] and sum(w.users for w in closed) == 1
    restored = UserFeedback.from_dict(state.to_dict())  # the table row keeps who was counted
    assert restored.experiments == ["exp1"] and restored.lists[-1].arm == CONTROL


def test_lists_outside_experiments_keep_the_hash_arm() -> None:
    fw = FeedbackWindows(FeedbackParams(window_ms=MIN, grace_ms=0, ab_split=0.5))
    state = UserFeedback()
    fw.on_list(state, rec("r1", 0, ["a"], "u7", experiment=None, arm=None))
    fw.on_event(state, browse("e", 2 * MIN, "b", "u7"))
    (w,) = [w for w in fw.close() if w.lists]
    assert (w.experiment, w.arm, w.users) == (None, ab_arm("u7", 0.5), 0)


# --- statistics ---------------------------------------------------------------------------------------------


def test_a_clear_difference_in_proportions_is_significant_and_an_equal_one_is_not() -> None:
    clear = compare_proportions("ctr", (500, 1000), (400, 1000))
    assert clear.p_value < 1e-4 and clear.winner == CONTROL and clear.lift == pytest.approx(-0.2)
    assert clear.lift_ci_low < -0.2 < clear.lift_ci_high < 0
    same = compare_proportions("ctr", (300, 1000), (301, 1000))
    assert same.p_value > 0.5 and same.winner is None and same.lift_ci_low < 0 < same.lift_ci_high
    assert compare_proportions("ctr", (0, 0), (5, 10)).p_value is None


def test_the_mrr_bootstrap_sees_a_shift_in_ranks_and_not_noise() -> None:
    def arm(hist: list[int]) -> object:
        totals = sum_arms([FeedbackRecord(metric="feedback", window_start=0, scene="browsing", model_version="m",
                                          arm=CONTROL, experiment="x", scored=sum(hist), rank_hist=hist)], "x")[0]
        return totals[CONTROL]

    good = arm([300, 100, 50] + [0] * (RANK_K - 3) + [550])
    worse = arm([150, 100, 50] + [0] * (RANK_K - 3) + [700])
    shifted = compare_mrr(good, worse, resamples=500)
    assert shifted.winner == CONTROL and shifted.p_value < 0.01 and shifted.lift_ci_high < 0
    assert shifted.test.startswith("bootstrap")
    noise = compare_mrr(good, arm([300, 100, 50] + [0] * (RANK_K - 3) + [550]), resamples=500)
    assert noise.p_value > 0.5 and noise.lift_ci_low < 0 < noise.lift_ci_high and noise.winner is None


def test_sample_ratio_mismatch_is_flagged_only_when_the_split_is_off() -> None:
    assert sample_ratio(600, 400, 0.5).mismatch
    assert not sample_ratio(510, 490, 0.5).mismatch
    assert not sample_ratio(700, 300, 0.3).mismatch and sample_ratio(500, 500, 0.3).mismatch


def window(arm: str, users: int, lists: int, clicks: int, hist: list[int]) -> FeedbackRecord:
    return FeedbackRecord(metric="feedback", window_start=0, scene="browsing", model_version=f"m-{arm}", arm=arm,
                          experiment="exp1", users=users, lists=lists, clicks=clicks, scored=sum(hist),
                          rank_hist=hist)


def test_the_report_warns_about_a_small_sample_and_a_skewed_split() -> None:
    exp = Experiment(name="exp1", control="m-control", treatment="m-treatment", share=0.5, started_at=0)
    hist = [5, 5] + [0] * (RANK_K - 2) + [20]
    report = build_report(exp, [window(CONTROL, 80, 30, 10, hist), window(TREATMENT, 20, 30, 9, hist)],
                          resamples=200)
    text = " ".join(report.warnings)
    assert "sample too small" in text and f"under {MIN_PER_ARM}" in text and "sample-ratio mismatch" in text
    assert report.arms[CONTROL].users == 80 and report.arms[TREATMENT].lists == 30
    assert "warning: sample too small" in format_report(report)


def test_the_report_reads_only_its_experiment() -> None:
    exp = Experiment(name="exp1", control="m-control", treatment="m-treatment", share=0.5, started_at=0)
    hist = [300] + [0] * (RANK_K - 1) + [700]
    other = msgspec.structs.replace(window(CONTROL, 999, 999, 999, hist), experiment="exp2")
    report = build_report(exp, [window(CONTROL, 500, 1000, 300, hist), window(TREATMENT, 500, 1000, 300, hist), other],
                          resamples=200)
    assert report.arms[CONTROL].lists == 1000 and report.arms[CONTROL].users == 500
    assert {t.metric for t in report.tests} == {"ctr", "conversion_rate", "hit_rate_20", "mrr_20"}
    assert all(not t.significant for t in report.tests)
    # no difference, with too few lists to see a 10% change of a 30% CTR (~3,760 per arm): said so, once
    (warning,) = report.warnings
    assert warning.startswith("underpowered") and "it has 1000" in warning


# --- the command line: what is checked before Kafka ----------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--control", "m-1", "--treatment", "m-missing"], "unknown treatment version 'm-missing'"),
    (["--control", "m-1", "--treatment", "m-2", "--share", "0"], "--share must be strictly between 0 and 1"),
    (["--control", "m-1", "--treatment", "m-1"], "control and treatment are the same version"),
])
def test_start_refuses_bad_input_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                             message: str) -> None:
    for version in ("m-1", "m-2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "meta.json").write_text("{}")
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached: the checks come first
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["experiment", "start", "exp1", *args])
    finally:
        get_settings.cache_clear()
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.output


# --- one worker serving both arms ----------------------------------------------------------------------------


class RecordingRecall:
    """A vector index that remembers the catalog changes it was given (the worker's recall is Milvus)."""

    def __init__(self) -> None:
        self.upserts: list[tuple[str, bool]] = []

    def search(self, queries, k, categories=None, exclude=None):
        return [[] for _ in queries]

    def upsert_item(self, item_id: str, vector, category: str, available: bool) -> None:
        self.upserts.append((item_id, available))

    def set_available(self, item_id: str, available: bool) -> bool:
        self.upserts.append((item_id, available))
        return True


def model_version(version: str) -> ModelVersion:
    vectors = ItemVectors(ids=("i1",), matrix=np.ones((1, 4), np.float32) / 2, index={"i1": 0},
                          categories={"i1": "c1"}, centroids={"c1": np.ones(4, np.float32) / 2}, version="v")
    return ModelVersion(version, Path(version), 4, 20, "2026-01-01", vectors, encoder=None)  # type: ignore[arg-type]


def test_services_serve_each_arm_with_its_version_and_keep_every_version_current() -> None:
    default_recall, other_recall = RecordingRecall(), RecordingRecall()
    default = Recommender(model_version("m-a"), default_recall, Trending())
    services = Services(settings=Settings(kafka_bootstrap="x:1"), limits=None, params=None,  # type: ignore[arg-type]
                        scene_model=None, trending=default.trending, recommender=default)  # type: ignore[arg-type]
    exp = definition(share=0.5)
    services.install_experiment(exp, {"m-a": (default.model, default_recall),
                                      "m-b": (model_version("m-b"), other_recall)})
    running = services.experiment
    assert running is not None
    assert running.arms[CONTROL].model_version == "m-a" and running.arms[TREATMENT].model_version == "m-b"
    assert running.arms[TREATMENT].trending is services.trending  # what is learnt online is shared
    assert [running.arm_of(f"u{i}") for i in range(50)] == [assign_arm(exp, f"u{i}") for i in range(50)]

    services.apply_catalog([CatalogItem(item_id="i9", category="c1", price=1.0, available=True)])
    assert default_recall.upserts == [("i9", True)] and other_recall.upserts == [("i9", True)]  # once each
    services.end_experiment()
    services.apply_catalog([CatalogItem(item_id="i9", category="c1", price=1.0, available=False)])
    assert other_recall.upserts == [("i9", True)] and default_recall.upserts[-1] == ("i9", False)
    assert services.unavailable == {"i9"} and services.experiment is None
