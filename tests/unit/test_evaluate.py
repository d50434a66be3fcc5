"""The evaluation protocol: time split, replay order, scoring rules, JSON and report output."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.evaluation.baselines import baseline_factories
from app.evaluation.command import evaluate_command
from app.evaluation.evaluate import (
    DAY_MS,
    choose_boundary,
    evaluate_streams,
    event_kind,
    run_evaluation,
    split_at,
    split_events,
    write_json,
    write_report,
)
from app.runtime.settings import default_dataset
from app.tools.replay import read_events
from models.ranking import Ranked, RankedList, Ranker, Request
from schemas.events import Browse, CatalogItem, Click, OrderItem, Purchase, UserEvent
from schemas.validation import encode_event

T0 = 1_700_000_000_000
MIN = 60 * 1000


def view(user: str, item: str, ts: int, category: str | None = None) -> Browse:
    return Browse(
        event_id=f"{user}-{item}-{ts}", user_id=user, ts=ts, page="product", item_id=item, category=category
    )


def home(user: str, ts: int) -> Browse:
    return Browse(event_id=f"{user}-home-{ts}", user_id=user, ts=ts, page="home")


def buy(user: str, items: list[str], ts: int) -> Purchase:
    return Purchase(
        event_id=f"{user}-buy-{ts}",
        user_id=user,
        ts=ts,
        order_id=f"o{ts}",
        items=[OrderItem(item_id=item) for item in items],
    )


class Spy(Ranker):
    """Records every call, and serves the user's last observed item (a repeat-view guesser)."""

    def __init__(self, name: str = "spy", scene: str | None = None) -> None:
        self.name = name
        self.scene = scene
        self.fitted: list[UserEvent] = []
        self.calls: list[tuple[str, str, int]] = []
        self.last_item: dict[str, str] = {}

    def fit(self, train: Sequence[UserEvent]) -> None:
        self.fitted = list(train)
        for event in train:
            self._remember(event)

    def _remember(self, event: UserEvent) -> None:
        item = getattr(event, "item_id", None) or (
            event.items[0].item_id if isinstance(event, Purchase) else None
        )
        if item is not None:
            self.last_item[event.user_id] = item

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        self.calls.append(("recommend", request.user_id, now_ms))
        last = self.last_item.get(request.user_id)
        items = (Ranked(last, 1.0, "your last item"),) if last else ()
        return RankedList(request.user_id, items, scene=self.scene, cold_start=last is None)

    def observe_one(self, event: UserEvent) -> None:
        self.calls.append(("observe", event.user_id, event.ts))
        self._remember(event)


def test_split_at_puts_the_boundary_in_the_future() -> None:
    events = [view("u", "a", T0), view("u", "b", T0 + 5), view("u", "c", T0 + 5), view("u", "d", T0 + 9)]
    train, test = split_at(events, T0 + 5)
    assert [e.item_id for e in train] == ["a"]
    assert [e.item_id for e in test] == ["b", "c", "d"]


def test_long_data_evaluates_its_last_days_and_short_data_splits_by_fraction() -> None:
    long = [view("s", "x", T0 - 60 * DAY_MS)] + [view("u", f"i{d}", T0 + d * DAY_MS) for d in range(9)]
    assert choose_boundary(long) == T0 + 8 * DAY_MS - 2 * DAY_MS
    train, test = split_events(long)
    assert [e.item_id for e in test] == ["i6", "i7", "i8"]
    short = [view("u", f"i{m}", T0 + m * MIN) for m in range(10)]
    assert choose_boundary(short) is None
    train, test = split_events(short)
    assert len(train) == 5 and len(test) == 5
    assert max(e.ts for e in train) < min(e.ts for e in test)
    train, test = split_events(short, train_fraction=0.8)
    assert len(test) == 2


def test_fit_sees_only_the_past_and_each_list_is_served_before_its_event() -> None:
    events = [view(f"u{n % 4}", f"i{n % 5}", T0 + n * MIN) for n in range(20)]
    events.insert(15, home("u1", T0 + 14 * MIN + 1))
    train, test = split_at(events, T0 + 10 * MIN)
    spy = Spy()
    evaluate_streams(train, test, {"spy": lambda: spy}, progress=False)
    assert spy.fitted == train
    assert all(e.ts < T0 + 10 * MIN for e in spy.fitted)
    expected: list[tuple[str, str, int]] = []
    for event in test:
        if not (isinstance(event, Browse) and event.item_id is None):
            expected.append(("recommend", event.user_id, event.ts))
        expected.append(("observe", event.user_id, event.ts))
    assert spy.calls == expected


def test_training_on_the_future_is_refused() -> None:
    with pytest.raises(ValueError, match="precede"):
        evaluate_streams([view("u", "a", T0 + 10)], [view("u", "b", T0)], {"spy": Spy}, progress=False)


def test_scores_are_hand_computable_warm_and_all() -> None:
    train = [view("u1", "a", T0)]
    test = [
        view("u1", "a", T0 + 1),  # warm, served (a): hit at rank 1
        view("u1", "b", T0 + 2),  # warm, served (a): miss
        view("u2", "c", T0 + 3),  # cold (no earlier event), served (): miss
        view("u2", "c", T0 + 4),  # warm now, served (c): hit
        home("u3", T0 + 5),  # no item: fed in, not scored, but makes u3 warm
        buy("u3", ["d", "e"], T0 + 6),  # warm; two lines scored against the empty list
    ]
    result = evaluate_streams(train, test, {"spy": Spy}, dataset="tiny", progress=False)
    assert result.events_scored == 6
    assert result.warm_events_scored == 5
    warm = result.systems["spy"].warm
    assert warm["hr@20"] == pytest.approx(2 / 5)
    assert warm["mrr@20"] == pytest.approx(2 / 5)
    assert warm["ndcg@20"] == pytest.approx(2 / 5)
    assert warm["events"] == 5
    everything = result.systems["spy"].all_events
    assert everything["hr@20"] == pytest.approx(2 / 6)
    # b, c, d, e were never seen in training; a was
    assert result.unknown_item_share == pytest.approx(5 / 6)
    # lists: (a), (a), (), (c), () -> items a, c of catalog a..e
    assert everything["coverage"] == pytest.approx(2 / 5)
    assert everything["cold_start_share"] == pytest.approx(2 / 5)  # u2 first, u3 (no item yet)
    assert result.systems["spy"].by_event_type["purchase"]["events"] == 2
    assert result.systems["spy"].by_event_type["browse"]["hr@20"] == pytest.approx(2 / 3)
    assert result.systems["spy"].hr_curve_warm[:2] == pytest.approx([2 / 5, 2 / 5])


def test_scene_groups_follow_the_reference_system_for_every_system() -> None:
    train = [view("u", "a", T0)]
    test = [view("u", "a", T0 + 1), view("u", "a", T0 + 2)]
    systems = {"streamrec": lambda: Spy("streamrec", scene="shopping"), "other": lambda: Spy("other")}
    result = evaluate_streams(train, test, systems, progress=False)
    assert set(result.systems["other"].by_scene) == {"shopping"}
    assert result.systems["other"].by_scene["shopping"]["hr@20"] == 1.0


def test_targets_are_grouped_by_what_the_item_was_to_its_user() -> None:
    train = [view("u1", "a", T0), buy("u1", ["b"], T0 + 1)]
    test = [
        view("u1", "b", T0 + 2),  # bought before; the spy serves (b): hit
        view("u1", "a", T0 + 3),  # seen before; serves (b): miss
        view("u1", "c", T0 + 4),  # new; serves (a): miss
        view("u1", "c", T0 + 5),  # seen in the replay itself; serves (c): hit
    ]
    result = evaluate_streams(train, test, {"spy": Spy}, progress=False)
    by_target = result.systems["spy"].by_target
    assert {group: m["events"] for group, m in by_target.items()} == {"bought": 1, "seen": 2, "new": 1}
    assert by_target["bought"]["mrr@20"] == 1.0
    assert by_target["seen"]["hr@20"] == pytest.approx(1 / 2)
    assert by_target["new"]["hr@20"] == 0.0
    # the report's "MRR points" of the groups add up to the warm MRR (2 hits at rank 1 of 4)
    points = sum(m["mrr@20"] * m["events"] / 4 for m in by_target.values())
    assert points == pytest.approx(result.systems["spy"].warm["mrr@20"]) == pytest.approx(0.5)
    assert result.to_json()["systems"]["spy"]["by_target"]["seen"]["events"] == 2


def test_scored_users_limit_scoring_but_every_event_is_observed() -> None:
    train = [view("u1", "a", T0), view("u2", "a", T0 + 1)]
    test = [view("u1", "b", T0 + 2), view("u2", "c", T0 + 3), view("u1", "d", T0 + 4)]
    spy = Spy()
    result = evaluate_streams(train, test, {"spy": lambda: spy}, progress=False, scored_users=lambda u: u == "u1")
    assert result.events_scored == 2
    assert [call for call in spy.calls if call[0] == "recommend"] == [("recommend", "u1", T0 + 2),
                                                                      ("recommend", "u1", T0 + 4)]
    assert [call[1] for call in spy.calls if call[0] == "observe"] == ["u1", "u2", "u1"]


def test_event_kind_separates_click_actions() -> None:
    assert event_kind(view("u", "a", T0)) == "browse"
    assert (
        event_kind(Click(event_id="c", user_id="u", ts=T0, item_id="a", action="wishlist"))
        == "click:wishlist"
    )
    assert event_kind(buy("u", ["a"], T0)) == "purchase"


def _taobao_rows() -> list[str]:
    base = T0 // 1000
    rows = []
    for minute in range(60):
        user = f"{minute % 6}"
        item = f"{100 + minute % 9}"
        behavior = ("pv", "pv", "pv", "cart", "fav", "buy")[minute % 6]
        rows.append(f"{user},{item},{minute % 3},{behavior},{base + minute * 60}")
    return rows


def test_taobao_csv_and_jsonl_give_the_same_result(tmp_path: Path) -> None:
    csv_path = tmp_path / "events.csv.gz"
    with gzip.open(csv_path, "wt") as fh:
        fh.write("user_id,item_id,category_id,behavior_type,timestamp\n" + "\n".join(_taobao_rows()) + "\n")
    jsonl = tmp_path / "events.jsonl"
    events = list(read_events(csv_path))
    catalog = CatalogItem(item_id="100", category="0", price=1.0, available=True)
    jsonl.write_bytes(b"".join(encode_event(e) + b"\n" for e in [catalog, *events]))
    from_csv = run_evaluation(csv_path, progress=False)
    from_jsonl = run_evaluation(jsonl, progress=False)
    assert from_csv.events_scored == from_jsonl.events_scored == 30
    for name in baseline_factories():
        assert from_csv.systems[name].warm == from_jsonl.systems[name].warm


def test_command_writes_the_json_contract_and_a_report_with_plot(tmp_path: Path) -> None:
    data = tmp_path / "events.csv"
    data.write_text(
        "user_id,item_id,category_id,behavior_type,timestamp\n" + "\n".join(_taobao_rows()) + "\n"
    )
    out, report = tmp_path / "out" / "eval.json", tmp_path / "docs" / "EVALUATION.md"
    result = evaluate_command(data, out, report, baselines_only=True, progress=False)
    payload = json.loads(out.read_text())
    assert payload["dataset"].endswith("events.csv")
    assert payload["events_scored"] == result.events_scored
    assert set(payload["systems"]) == set(baseline_factories())
    for metrics in payload["systems"].values():
        for key in ("hr@20", "mrr@20", "ndcg@20", "coverage"):
            assert 0.0 <= metrics[key] <= 1.0
            assert 0.0 <= metrics["all_events"][key] <= 1.0
        assert len(metrics["hr_curve"]) == 50
    text = report.read_text()
    assert "streamrec evaluate --data" in text and "--baselines-only" in text
    assert "| user_pop |" in text and "| session_knn |" in text
    plots = list(report.parent.glob("*.png"))
    assert len(plots) == 1 and plots[0].name in text
    assert plots[0].read_bytes()[:4] == b"\x89PNG"
    write_json(result, tmp_path / "again.json")
    write_report(result, tmp_path / "again.md")
    assert (tmp_path / "again.md").exists()


@pytest.mark.dataset
def test_baselines_on_the_real_two_hour_file() -> None:
    path = default_dataset()
    if not path.exists():
        pytest.skip(f"shared data set not found at {path}")
    result = run_evaluation(path, progress=False)
    assert result.test_events > 40_000 and result.events_scored == result.test_events
    hr = {name: system.warm["hr@20"] for name, system in result.systems.items()}
    assert hr["user_pop"] > hr["popularity"]
    assert hr["item_knn"] > hr["popularity"]
    assert hr["session_knn"] > hr["popularity"]


def test_command_runs_only_the_systems_named(tmp_path: Path) -> None:
    """`--systems`: a few systems measured without replaying the others; unknown names are refused."""
    from typer.testing import CliRunner

    from app.cli import cli

    data = tmp_path / "events.csv"
    data.write_text(
        "user_id,item_id,category_id,behavior_type,timestamp\n" + "\n".join(_taobao_rows()) + "\n"
    )
    out = tmp_path / "eval.json"
    result = evaluate_command(data, out, None, systems=["user_pop", "popularity"], progress=False)
    payload = json.loads(out.read_text())
    assert list(payload["systems"]) == ["popularity", "user_pop"]  # report order
    assert payload["command"].endswith("--systems user_pop,popularity")
    assert result.systems["user_pop"].warm == run_evaluation(data, progress=False).systems["user_pop"].warm
    with pytest.raises(ValueError, match="nonesuch"):
        evaluate_command(data, None, None, systems=["nonesuch"], progress=False)
    refused = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--systems", "user_pop,nonesuch"])
    assert refused.exit_code == 2 and "nonesuch" in refused.output
    assert "streamrec_never_relist_bought" in refused.output  # the known names are listed
