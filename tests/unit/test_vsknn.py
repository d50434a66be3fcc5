"""V-SKNN against scores worked out by hand, following session-rec's VMContextKNN step by step."""

from __future__ import annotations

import math

import pytest

from app.evaluation.baselines import VSKNN, baseline_factories
from app.evaluation.baselines.vsknn import position_weight, step_decay
from models.ranking import RankedList, RankRequest
from schemas.events import Browse, UserEvent

MIN = 60 * 1000
T0 = 1_700_000_000_000
NOW = T0 + 242 * MIN


def view(user: str, item: str, minute: float) -> Browse:
    return Browse(event_id=f"{user}-{item}-{minute}", user_id=user, ts=T0 + int(minute * MIN), page="product",
                  item_id=item)


def past_and_current(current: tuple[str, ...] = ("A", "B")) -> list[UserEvent]:
    """Four past sessions (one user each, an hour apart) and user u's ongoing session.

    S1 (a): A B C A   S2 (b): B D   S3 (c): A E   S4 (d): F G   current (u): ``current``
    """
    events = [view("a", "A", 0), view("a", "B", 1), view("a", "C", 2), view("a", "A", 3),
              view("b", "B", 60), view("b", "D", 61),
              view("c", "A", 120), view("c", "E", 121),
              view("d", "F", 180), view("d", "G", 181)]
    return events + [view("u", item, 240 + n * 0.5) for n, item in enumerate(current)]


def fitted(events: list[UserEvent], **options) -> VSKNN:
    model = VSKNN(**options)
    model.fit(events)
    return model


def listed(model: VSKNN, user: str = "u", k: int = 10, now: int = NOW) -> RankedList:
    (out,) = model.recommend([RankRequest(user)], now, k=k)
    return out


def sims(model: VSKNN, user: str = "u", now: int = NOW) -> dict[str, float]:
    """Neighbour similarity by the neighbour's user (each past session has its own user)."""
    return {n.key[0]: n.similarity for n in model.neighbours(user, now)}


def test_linear_weighting_without_idf_matches_the_hand_computation() -> None:
    model = fitted(past_and_current(), weighting="linear", weighting_score="div", normalize=False)
    # Current session [A, B], L = 2. linear: w(i) = 1 - 0.1 * (L - i): A (i=1) 0.9, B (i=2) 1.0.
    # vec similarity = sum of the shared items' weights / 2 distinct items:
    #   S1 {A,B,C}: (0.9 + 1.0) / 2 = 0.95;  S2 {B,D}: 1.0 / 2 = 0.5;  S3 {A,E}: 0.9 / 2 = 0.45;
    #   S4 {F,G} shares nothing: no candidate.
    assert sims(model) == pytest.approx({"a": 0.95, "b": 0.5, "c": 0.45})
    # div step decay, walking [B, A] back: S1 and S2 hold B (step 1: 1/1), S3 only A (step 2: 1/2).
    # Each neighbour adds sim * decay to each of its items:
    #   A = S1 0.95 + S3 0.45 * 0.5 = 1.175;  B = S1 0.95 + S2 0.5 = 1.45;  C = S1 0.95;
    #   D = S2 0.5;  E = S3 0.225.
    expected = {"A": 1.175, "B": 1.45, "C": 0.95, "D": 0.5, "E": 0.225}
    assert model.scores("u", NOW) == pytest.approx(expected)
    out = listed(model)
    # Best first, then popular items nobody scored (F before G: same count, F came first).
    assert out.item_ids == ("B", "A", "C", "D", "E", "F", "G")
    assert [r.score for r in out.items[:5]] == pytest.approx([1.45, 1.175, 0.95, 0.5, 0.225])
    assert out.items[0].reason == "in your current session" and out.items[2].reason == "viewed in sessions like yours"
    assert out.items[5].score == 0.0 and out.cold_start is False


def test_div_weighting_with_idf_and_remind_matches_the_hand_computation() -> None:
    model = fitted(past_and_current(), weighting="div", weighting_score="div", idf_weighting=1.0, remind=True)
    # div: w(i) = i / L: A 1/2 = 0.5, B 2/2 = 1.0.
    #   S1: (0.5 + 1.0) / 2 = 0.75;  S2: 1.0 / 2 = 0.5;  S3: 0.5 / 2 = 0.25.
    assert sims(model) == pytest.approx({"a": 0.75, "b": 0.5, "c": 0.25})
    # IDF = ln(indexed sessions / events of the item): 5 sessions (S1-S4 and u's), A has 4 events
    # (twice in S1, S3, u), B 3 (S1, S2, u), C, D, E 1 each.
    idf = {"A": math.log(5 / 4), "B": math.log(5 / 3), "C": math.log(5), "D": math.log(5), "E": math.log(5)}
    assert {item: model.idf(item) for item in idf} == pytest.approx(idf)
    # Each neighbour adds sim * (1 + idf(item) * 1) * decay; decays as before: S1 1, S2 1, S3 1/2.
    raw = {
        "A": (0.75 * 1 + 0.25 * 0.5) * (1 + idf["A"]),  # S1 + S3: 0.875 * 1.2231 = 1.0703
        "B": (0.75 * 1 + 0.5 * 1) * (1 + idf["B"]),  # S1 + S2: 1.25 * 1.5108 = 1.8885
        "C": 0.75 * (1 + idf["C"]),  # S1: 0.75 * 2.6094 = 1.9571
        "D": 0.5 * (1 + idf["D"]),  # S2: 1.3047
        "E": 0.25 * 0.5 * (1 + idf["E"]),  # S3: 0.3262
    }
    # remind on: A and B (the current session's own items) are scored like any other item.
    # Normalised by the best (C).
    best = raw["C"]
    assert model.scores("u", NOW) == pytest.approx({item: score / best for item, score in raw.items()})
    assert listed(model).item_ids[:5] == ("C", "B", "D", "A", "E")


def test_remind_off_never_lists_the_current_sessions_items() -> None:
    model = fitted(past_and_current(), weighting="linear", remind=False, normalize=False)
    # The linear case without A and B: C 0.95, D 0.5, E 0.225; A and B not even as popular fill.
    assert model.scores("u", NOW) == pytest.approx({"C": 0.95, "D": 0.5, "E": 0.225})
    assert listed(model).item_ids == ("C", "D", "E", "F", "G")


def test_push_reminders_multiplies_the_session_items_by_their_clicks_plus_one() -> None:
    model = fitted(past_and_current(("A", "B", "A")), weighting="div", push_reminders=True, normalize=False)
    # Current [A, B, A], L = 3, div: A at i=1 gets 1/3 but its later click (i=3) overwrites it: A 1.0,
    # B 2/3; 2 distinct items.
    #   S1 {A,B,C}: (1 + 2/3) / 2 = 0.8333;  S2 {B,D}: (2/3) / 2 = 0.3333;  S3 {A,E}: 1 / 2 = 0.5.
    assert sims(model) == pytest.approx({"a": 5 / 6, "b": 1 / 3, "c": 0.5})
    # Walking [A, B, A] back: S1 and S3 hold A (step 1), S2 only B (step 2: 1/2).
    #   A = 5/6 + 0.5 = 1.3333;  B = 5/6 + 1/3 * 1/2 = 1.0;  C = 5/6;  D = 1/6;  E = 0.5.
    # push_reminders: A clicked twice -> x3, B once -> x2.
    expected = {"A": (5 / 6 + 0.5) * 3, "B": (5 / 6 + 1 / 6) * 2, "C": 5 / 6, "D": 1 / 6, "E": 0.5}
    assert model.scores("u", NOW) == pytest.approx(expected)


def test_add_reminders_lifts_a_session_item_to_just_above_the_17th_score() -> None:
    # Three sessions [B, X1..X20] and one [A, Y]; u's session [A, B], weighting "same" (both 1).
    events: list[UserEvent] = []
    for n in range(3):
        events += [view(f"x{n}", "B", n * 60)] + [view(f"x{n}", f"X{j}", n * 60 + 1 + j * 0.1) for j in range(20)]
    events += [view("y", "A", 200), view("y", "Y", 201), view("u", "A", 240), view("u", "B", 240.5)]
    plain = fitted(events, weighting="same", normalize=False)
    # x-sessions share B: sim 1/2, reached at step 1 (decay 1): B and X1..X20 get 3 * 0.5 = 1.5 each.
    # y shares A: sim 1/2, reached at step 2 (decay 1/2): A and Y get 0.25.
    before = plain.scores("u", NOW)
    assert before["A"] == pytest.approx(0.25) and before["B"] == pytest.approx(1.5)
    lifted = fitted(events, weighting="same", add_reminders=True, normalize=False).scores("u", NOW)
    # The first three session items with a score > 0 are A, B; the 17th best score is 1.5: A (below)
    # becomes 1.5 + 1e-4, B (not below) stays; nothing else changes.
    assert lifted == pytest.approx({**before, "A": 1.5 + 1e-4}, abs=1e-9)
    # With fewer than 17 scored items there is nothing to beat: the first example is unchanged.
    few = fitted(past_and_current(), weighting="linear", add_reminders=True, normalize=False)
    assert few.scores("u", NOW) == pytest.approx({"A": 1.175, "B": 1.45, "C": 0.95, "D": 0.5, "E": 0.225})


def test_sampling_keeps_the_most_recently_active_sessions() -> None:
    # o1 started first but stays active (a click every 20 minutes) until minute 160; o2 ended at
    # minute 61, o3 at 121. All share A with u's session [A] at minute 180.
    events = [view("o1", "A", 0)] + [view("o1", "X", m) for m in range(20, 161, 20)]
    events += [view("o2", "A", 60), view("o2", "Y", 61), view("o3", "A", 120), view("o3", "Z", 121),
               view("u", "A", 180)]
    now = T0 + 181 * MIN
    everyone = fitted(events, sample_size=0)
    assert set(sims(everyone, now=now)) == {"o1", "o2", "o3"}
    sampled = fitted(events, sample_size=2)
    # The two with the latest last event: o1 (minute 160) and o3 (121), newest first; o2 is left out.
    assert [key[0] for key in sampled.candidates(("u", "1"), ["A"])] == ["o1", "o3"]
    assert set(sims(sampled, now=now)) == {"o1", "o3"}
    assert "Y" not in sampled.scores("u", now) and {"X", "Z"} <= set(sampled.scores("u", now))


def test_k_keeps_the_most_similar_neighbours() -> None:
    model = fitted(past_and_current(), weighting="linear", k=2, normalize=False)
    # S3 (0.45) is the least similar of the three and drops out: E is no longer scored, A loses S3's 0.225.
    assert sims(model) == pytest.approx({"a": 0.95, "b": 0.5})
    assert model.scores("u", NOW) == pytest.approx({"A": 0.95, "B": 1.45, "C": 0.95, "D": 0.5})


def test_observe_makes_a_new_session_findable() -> None:
    model = fitted([view("o", "A", 0), view("o", "X", 1), view("u", "A", 60)])
    assert set(model.scores("u", T0 + 61 * MIN)) == {"A", "X"}
    model.observe([view("n", "Q", 62), view("n", "A", 62.5)])  # a new session arrives online
    assert "n" in sims(model, now=T0 + 63 * MIN)
    assert "Q" in listed(model, now=T0 + 63 * MIN).item_ids[:3]
    model.observe([view("u", "B", 63.5)])  # the user's own click joins the current session
    assert model.current_session("u", T0 + 64 * MIN)[1] == ["A", "B"]


def test_previous_session_stands_in_when_none_is_ongoing() -> None:
    events = past_and_current()
    later = NOW + 120 * MIN  # u's session ended (30-minute gap)
    model = fitted(events, weighting="linear", normalize=False)
    assert model.scores("u", later) == pytest.approx({"A": 1.175, "B": 1.45, "C": 0.95, "D": 0.5, "E": 0.225})
    strict = fitted(events, previous_session=False)
    out = listed(strict, now=later)
    assert strict.scores("u", later) == {} and out.item_ids[0] == "A" and out.cold_start is False
    assert listed(strict, user="stranger", now=later).cold_start is True


@pytest.mark.parametrize(
    ("weighting", "i", "length", "expected"),
    [("linear", 12, 12, 1.0), ("linear", 3, 12, 0.1), ("linear", 2, 12, 0.0), ("linear", 1, 12, 0.0),
     ("same", 1, 5, 1.0), ("div", 2, 5, 0.4), ("log", 5, 5, 1 / math.log10(1.7)),
     ("log", 3, 5, 1 / math.log10(3.7)), ("quadratic", 2, 5, 0.16)],
)
def test_position_weights(weighting, i: int, length: int, expected: float) -> None:
    # linear is floored at 0: the newest click keeps weight 1 in a session of 12 clicks.
    assert position_weight(weighting, i, length) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("weighting", "step", "expected"),
    [("linear", 1, 0.9), ("linear", 12, 0.0), ("same", 7, 1.0), ("div", 4, 0.25),
     ("log", 1, 1 / math.log10(2.7)), ("quadratic", 3, 1 / 9)],
)
def test_step_decays(weighting, step: int, expected: float) -> None:
    assert step_decay(weighting, step) == pytest.approx(expected)


def test_unknown_weighting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown weighting"):
        VSKNN(weighting="exp")  # type: ignore[arg-type]


def test_registered_as_the_vsknn_baseline() -> None:
    model = baseline_factories()["vsknn"]()
    assert isinstance(model, VSKNN) and model.name == "vsknn"


def test_tune_grid_names_its_vsknn_configurations() -> None:
    from app.evaluation.grid import GRID, VSKNN_CONFIGS

    model = GRID["vsknn_w_linear"](None)  # type: ignore[arg-type]  # baselines ignore the shared model
    assert isinstance(model, VSKNN) and model.name == "vsknn_w_linear" and model.weighting == "linear"
    assert {"vsknn_k50", "vsknn_s500", "vsknn_idf5", "vsknn_noremind", "vsknn_ws_same"} <= set(VSKNN_CONFIGS)
