"""The statistics of an online experiment, from the per-arm feedback windows on `reco.metrics`.

Per arm: counts, rates with 95% intervals, and for each metric the relative lift of the treatment over
the control (treatment / control - 1) with a 95% interval and a test chosen for the metric:

- CTR, conversion and HR@20 are proportions of lists: two-proportion z-test
  (`statsmodels.stats.proportion.proportions_ztest`), Wilson intervals per arm, and the interval of
  the ratio of the two proportions (`confint_proportions_2indep`, compare="ratio") for the lift;
- MRR@20 is a mean of reciprocal ranks, far from normal (mostly 0, a few 1): a bootstrap
  (`scipy.stats.bootstrap`, each arm resampled on its own) of the lift, resampling the lists rebuilt
  from the windows' rank histograms; its p-value is the two-sided share of bootstrap lifts on the
  other side of zero.

Checks: a sample-ratio mismatch (chi-square test of the arms' user counts against the configured
share; flagged under p < 0.001, the usual SRM threshold) and a sample too small to trust (fewer than
`MIN_PER_ARM` lists or scored lists in an arm; or, while CTR shows no significant difference, fewer
lists than a two-proportion test needs to see a `MDE` relative change of the control's CTR with 80%
power: "no difference" then says little).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import numpy as np
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import DescrStatsW

from models.feedback import RANK_K
from schemas.experiments import ARMS, CONTROL, TREATMENT, Experiment

ALPHA = 0.05
SRM_ALPHA = 0.001
MIN_PER_ARM = 100
MDE = 0.10  # relative change of the control's CTR the experiment should be able to see
POWER = 0.80
BOOTSTRAP_RESAMPLES = 2_000
RECIPROCAL_RANKS = np.array([1.0 / r for r in range(1, RANK_K + 1)] + [0.0])  # rank histogram slot -> 1/rank


class ArmWindow(Protocol):
    """What the report reads of one closed feedback window (models.feedback.WindowMetrics, or the
    record decoded from reco.metrics)."""

    scene: str
    model_version: str
    experiment: str | None
    arm: str
    users: int
    lists: int
    clicks: int
    conversions: int
    scored: int
    rank_hist: list[int] | None


class FeedbackRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A feedback record of reco.metrics as the report needs it; other fields are ignored."""

    metric: str
    window_start: int
    scene: str
    model_version: str
    arm: str
    lists: int = 0
    clicks: int = 0
    conversions: int = 0
    scored: int = 0
    experiment: str | None = None
    users: int = 0
    rank_hist: list[int] | None = None


@dataclass
class ArmTotals:
    """One arm's sums over windows."""

    users: int = 0
    lists: int = 0
    clicks: int = 0
    conversions: int = 0
    scored: int = 0
    rank_hist: list[int] = field(default_factory=lambda: [0] * (RANK_K + 1))
    model_versions: set[str] = field(default_factory=set)
    windows: int = 0

    def add(self, w: ArmWindow) -> None:
        self.users += w.users
        self.lists += w.lists
        self.clicks += w.clicks
        self.conversions += w.conversions
        self.scored += w.scored
        if w.rank_hist is not None and len(w.rank_hist) == RANK_K + 1:
            self.rank_hist = [a + b for a, b in zip(self.rank_hist, w.rank_hist, strict=True)]
        self.model_versions.add(w.model_version)
        self.windows += 1

    @property
    def hits_20(self) -> int:
        return sum(self.rank_hist[:RANK_K])

    @property
    def reciprocal_ranks(self) -> np.ndarray:
        """The scored lists' reciprocal ranks (0 for a miss), rebuilt from the histogram."""
        return np.repeat(RECIPROCAL_RANKS, self.rank_hist)


def sum_arms(windows: Iterable[ArmWindow], experiment: str) -> tuple[dict[str, ArmTotals], dict[str, dict[str, ArmTotals]]]:
    """The experiment's totals per arm, and per scene and arm."""
    arms = {arm: ArmTotals() for arm in ARMS}
    scenes: dict[str, dict[str, ArmTotals]] = {}
    for w in windows:
        if w.experiment != experiment:
            continue
        arms.setdefault(w.arm, ArmTotals()).add(w)
        scenes.setdefault(w.scene, {arm: ArmTotals() for arm in ARMS}).setdefault(w.arm, ArmTotals()).add(w)
    return arms, dict(sorted(scenes.items()))


# --- per-arm figures --------------------------------------------------------------------------------------


class Estimate(msgspec.Struct, frozen=True):
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def proportion(successes: int, n: int) -> Estimate:
    if n == 0:
        return Estimate(None, None, None, 0)
    low, high = proportion_confint(successes, n, alpha=ALPHA, method="wilson")
    return Estimate(successes / n, float(low), float(high), n)


def mean_reciprocal_rank(totals: ArmTotals) -> Estimate:
    n = sum(totals.rank_hist)  # the scored lists the histogram holds
    if n == 0:
        return Estimate(None, None, None, 0)
    described = DescrStatsW(RECIPROCAL_RANKS, weights=np.asarray(totals.rank_hist, dtype=float))
    if n < 2:
        return Estimate(float(described.mean), None, None, n)
    low, high = described.tconfint_mean(alpha=ALPHA)
    return Estimate(float(described.mean), float(low), float(high), n)


class ArmFigures(msgspec.Struct, frozen=True):
    model_versions: list[str]
    users: int
    lists: int
    clicks: int
    conversions: int
    scored: int
    ctr: Estimate
    conversion_rate: Estimate
    hit_rate_20: Estimate
    mrr_20: Estimate


def arm_figures(totals: ArmTotals) -> ArmFigures:
    return ArmFigures(model_versions=sorted(totals.model_versions), users=totals.users, lists=totals.lists,
                      clicks=totals.clicks, conversions=totals.conversions, scored=totals.scored,
                      ctr=proportion(totals.clicks, totals.lists),
                      conversion_rate=proportion(totals.conversions, totals.lists),
                      hit_rate_20=proportion(totals.hits_20, sum(totals.rank_hist)),
                      mrr_20=mean_reciprocal_rank(totals))


# --- comparisons ---------------------------------------------------------------------------------------------


class Comparison(msgspec.Struct, frozen=True):
    metric: str
    test: str
    control: float | None
    treatment: float | None
    lift: float | None  # treatment / control - 1
    lift_ci_low: float | None
    lift_ci_high: float | None
    p_value: float | None
    significant: bool
    winner: str | None  # the arm ahead when significant


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _comparison(metric: str, test: str, control: float | None, treatment: float | None, lift: float | None,
                low: float | None, high: float | None, p: float | None) -> Comparison:
    significant = p is not None and p < ALPHA
    winner = None
    if significant and control is not None and treatment is not None and control != treatment:
        winner = TREATMENT if treatment > control else CONTROL
    return Comparison(metric, test, control, treatment, _finite(lift) if lift is not None else None,
                      _finite(low) if low is not None else None, _finite(high) if high is not None else None,
                      _finite(p) if p is not None else None, significant, winner)


def compare_proportions(metric: str, control: tuple[int, int], treatment: tuple[int, int]) -> Comparison:
    """Two-proportion z-test of (successes, n) per arm, with the interval of the ratio as the lift's."""
    (cs, cn), (ts, tn) = control, treatment
    test = "two-proportion z-test"
    if cn == 0 or tn == 0:
        return _comparison(metric, test, cs / cn if cn else None, ts / tn if tn else None, None, None, None, None)
    pc, pt = cs / cn, ts / tn
    if cs + ts == 0 or cs + ts == cn + tn:  # no variance at all: nothing to test
        return _comparison(metric, test, pc, pt, None, None, None, None)
    _, p = proportions_ztest([ts, cs], [tn, cn])
    lift = low = high = None
    if cs > 0:
        lift = pt / pc - 1.0
        ratio_low, ratio_high = confint_proportions_2indep(ts, tn, cs, cn, compare="ratio", alpha=ALPHA)
        low, high = ratio_low - 1.0, ratio_high - 1.0
    return _comparison(metric, test, pc, pt, lift, low, high, float(p))


def _lift(t: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(t, axis=axis) / np.mean(c, axis=axis) - 1.0


def compare_mrr(control: ArmTotals, treatment: ArmTotals, resamples: int = BOOTSTRAP_RESAMPLES,
                seed: int = 0) -> Comparison:
    """Bootstrap of MRR@20's relative lift, each arm's scored lists resampled on their own."""
    c, t = control.reciprocal_ranks, treatment.reciprocal_ranks
    test = f"bootstrap ({resamples} resamples)"
    mc = float(c.mean()) if len(c) else None
    mt = float(t.mean()) if len(t) else None
    if len(c) < 2 or len(t) < 2 or not mc:
        return _comparison("mrr_20", test, mc, mt, None, None, None, None)
    result = stats.bootstrap((t, c), _lift, n_resamples=resamples, vectorized=True, paired=False,
                             confidence_level=1 - ALPHA, method="percentile", batch=100,
                             rng=np.random.default_rng(seed))
    lifts = result.bootstrap_distribution
    lifts = lifts[np.isfinite(lifts)]
    p = None
    if len(lifts):  # two-sided, with the +1 of a resampling p-value: never 0 from finitely many resamples
        beyond = min(int(np.sum(lifts <= 0.0)), int(np.sum(lifts >= 0.0)))
        p = min(1.0, 2.0 * (beyond + 1) / (len(lifts) + 1))
    assert mt is not None
    return _comparison("mrr_20", test, mc, mt, mt / mc - 1.0, result.confidence_interval.low,
                       result.confidence_interval.high, p)


# --- checks ------------------------------------------------------------------------------------------------------


class SampleRatio(msgspec.Struct, frozen=True):
    expected_share: float  # of users in the treatment arm
    observed_share: float | None
    chi2: float | None
    p_value: float | None
    mismatch: bool


def sample_ratio(control_users: int, treatment_users: int, share: float) -> SampleRatio:
    """Chi-square goodness of fit of the arms' user counts to the configured share."""
    total = control_users + treatment_users
    if total == 0:
        return SampleRatio(share, None, None, None, False)
    result = stats.chisquare([control_users, treatment_users], f_exp=[total * (1 - share), total * share])
    p = float(result.pvalue)
    return SampleRatio(share, treatment_users / total, float(result.statistic), p, p < SRM_ALPHA)


def lists_needed(control_ctr: float, share: float) -> int | None:
    """Lists per arm (the smaller arm) a two-proportion test needs to see an `MDE` relative change of
    the control's CTR at `ALPHA` with `POWER`."""
    if not 0.0 < control_ctr < 1.0:
        return None
    changed = min(control_ctr * (1.0 + MDE), 0.999)
    effect = abs(proportion_effectsize(changed, control_ctr))
    ratio = max(share, 1 - share) / min(share, 1 - share)
    return math.ceil(NormalIndPower().solve_power(effect_size=effect, alpha=ALPHA, power=POWER, ratio=ratio))


# --- the report ---------------------------------------------------------------------------------------------------


class SceneRow(msgspec.Struct, frozen=True):
    scene: str
    arm: str
    lists: int
    ctr: float | None
    conversion_rate: float | None
    hit_rate_20: float | None
    mrr_20: float | None


class Report(msgspec.Struct, frozen=True):
    experiment: Experiment
    windows: int
    arms: dict[str, ArmFigures]
    tests: list[Comparison]
    sample_ratio: SampleRatio
    by_scene: list[SceneRow]
    warnings: list[str]


def build_report(definition: Experiment, windows: Iterable[ArmWindow], resamples: int = BOOTSTRAP_RESAMPLES) -> Report:
    arms, scenes = sum_arms(windows, definition.name)
    control, treatment = arms[CONTROL], arms[TREATMENT]
    tests = [
        compare_proportions("ctr", (control.clicks, control.lists), (treatment.clicks, treatment.lists)),
        compare_proportions("conversion_rate", (control.conversions, control.lists),
                            (treatment.conversions, treatment.lists)),
        compare_proportions("hit_rate_20", (control.hits_20, sum(control.rank_hist)),
                            (treatment.hits_20, sum(treatment.rank_hist))),
        compare_mrr(control, treatment, resamples),
    ]
    srm = sample_ratio(control.users, treatment.users, definition.share)
    warnings = []
    for arm, totals in ((CONTROL, control), (TREATMENT, treatment)):
        if totals.lists < MIN_PER_ARM or totals.scored < MIN_PER_ARM:
            warnings.append(f"sample too small: the {arm} arm has {totals.lists} lists and {totals.scored} scored "
                            f"lists (under {MIN_PER_ARM}); tests and intervals are not reliable yet")
    needed = lists_needed(control.clicks / control.lists, definition.share) if control.lists else None
    if needed is not None and min(control.lists, treatment.lists) < needed and not tests[0].significant:
        warnings.append(f"underpowered: seeing a {MDE:.0%} relative change of CTR with {POWER:.0%} power needs about "
                        f"{needed} lists in the smaller arm, it has {min(control.lists, treatment.lists)}")
    if srm.mismatch:
        warnings.append(f"sample-ratio mismatch: {srm.observed_share:.3f} of users in the treatment arm against "
                        f"{definition.share:.3f} configured (chi-square p = {srm.p_value:.2g}); the assignment or "
                        "the logging is broken, so the comparison is not trustworthy")
    foreign = {v for arm in ARMS for v in arms[arm].model_versions} - {definition.control, definition.treatment}
    if foreign:
        warnings.append(f"lists served by versions outside the experiment: {sorted(foreign)}")
    rows = []
    for scene, by_arm in scenes.items():
        for arm in ARMS:
            t = by_arm[arm]
            rows.append(SceneRow(scene, arm, t.lists, proportion(t.clicks, t.lists).value,
                                 proportion(t.conversions, t.lists).value,
                                 proportion(t.hits_20, sum(t.rank_hist)).value, mean_reciprocal_rank(t).value))
    return Report(experiment=definition, windows=sum(arms[a].windows for a in arms),
                  arms={arm: arm_figures(arms[arm]) for arm in ARMS}, tests=tests, sample_ratio=srm,
                  by_scene=rows, warnings=warnings)


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.1%}" if signed else f"{x:.2%}"


def _ci(e: Estimate) -> str:
    return f"[{_pct(e.ci_low)}, {_pct(e.ci_high)}]" if e.ci_low is not None else ""


def format_report(report: Report) -> str:
    """The report as a person reads it in a terminal."""
    d = report.experiment
    state = "running" if d.active else "stopped"
    lines = [(f"experiment {d.name} ({state}): control {d.control}, treatment {d.treatment}, "
             f"treatment share {d.share:.2f}; {report.windows} closed windows"), ""]
    lines.append(f"{'arm':10s} {'users':>7s} {'lists':>7s} {'clicks':>7s} {'conv':>6s} {'scored':>7s}  "
                 f"{'CTR [95% CI]':26s} {'conversion [95% CI]':26s} {'HR@20 [95% CI]':26s} MRR@20 [95% CI]")
    for arm, f in report.arms.items():
        lines.append(f"{arm:10s} {f.users:7d} {f.lists:7d} {f.clicks:7d} {f.conversions:6d} {f.scored:7d}  "
                     f"{_pct(f.ctr.value) + ' ' + _ci(f.ctr):26s} "
                     f"{_pct(f.conversion_rate.value) + ' ' + _ci(f.conversion_rate):26s} "
                     f"{_pct(f.hit_rate_20.value) + ' ' + _ci(f.hit_rate_20):26s} "
                     f"{_pct(f.mrr_20.value)} {_ci(f.mrr_20)}")
    lines += ["", f"{'metric':16s} {'lift (treatment vs control) [95% CI]':40s} {'p':>9s}  test"]
    for t in report.tests:
        lift = f"{_pct(t.lift, signed=True)} [{_pct(t.lift_ci_low, signed=True)}, {_pct(t.lift_ci_high, signed=True)}]"
        p = f"{t.p_value:.2g}" if t.p_value is not None else "-"
        verdict = f"  {t.winner} ahead" if t.winner else ("  not significant" if t.p_value is not None else "")
        lines.append(f"{t.metric:16s} {lift:40s} {p:>9s}  {t.test}{verdict}")
    srm = report.sample_ratio
    if srm.p_value is not None:
        lines += ["", (f"sample ratio: {srm.observed_share:.3f} of users in treatment (configured {srm.expected_share:.3f}), "
                      f"chi-square p = {srm.p_value:.2g}{' MISMATCH' if srm.mismatch else ''}")]
    if report.by_scene:
        lines += ["", f"{'scene':14s} {'arm':10s} {'lists':>7s} {'CTR':>8s} {'conv':>8s} {'HR@20':>8s} {'MRR@20':>8s}"]
        for r in report.by_scene:
            lines.append(f"{r.scene:14s} {r.arm:10s} {r.lists:7d} {_pct(r.ctr):>8s} {_pct(r.conversion_rate):>8s} "
                         f"{_pct(r.hit_rate_20):>8s} {_pct(r.mrr_20):>8s}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
