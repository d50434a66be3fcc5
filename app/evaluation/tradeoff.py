"""The accuracy-diversity trade-off of a `streamrec tune` run, as a plot (`streamrec tune --plot`).

Hit rate and MRR alone reward listing the user's own items over and over; the product promises
lists that explore in browsing (DESIGN.md §2.3). One figure per file puts every configuration of the
run on the plane of what it costs and what it buys: HR@k and MRR@k against intra-list category
diversity and against catalog coverage, so defaults are chosen from the measured front, not from
hit rate alone (docs/EVALUATION.md, "Scene strategies and diversity"). Grid points sit close
together, so each is drawn with a number and the key beside the panels names it with its values.

Plot a saved run again without replaying: ``python -m app.evaluation.tradeoff TUNE.json OUT.png``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from app.evaluation.tune import TuneResult, TuneRow, read_json

log = logging.getLogger(__name__)

_PANELS = (("diversity", "hit_rate"), ("diversity", "mrr"), ("coverage", "hit_rate"), ("coverage", "mrr"))
_LABELS = {"diversity": "intra-list category diversity (%)", "coverage": "catalog coverage (%)"}


def _value(row: TuneRow, field: str) -> float | None:
    value = getattr(row, field)
    return None if value is None else 100.0 * value


def _key_line(number: int, row: TuneRow, k: int) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    return (f"{number:2d} {row.name}\n    HR@{k} {100 * row.hit_rate:.2f}  MRR@{k} {100 * row.mrr:.2f}  "
            f"div {pct(row.diversity)}  cov {pct(row.coverage)}")


def plot_tradeoff(result: TuneResult, path: Path, *, chosen: str | None = "shipped",
                  references: Collection[str] = ()) -> Path:
    """Write the figure (HR and MRR against diversity and coverage, and the key) to ``path`` (PNG).

    ``chosen`` is drawn as a red star, ``references`` (e.g. baselines) as grey squares, every other
    configuration as a blue dot; each point carries its number in the key."""
    from matplotlib.figure import Figure  # object API: no pyplot global state, no display needed

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = result.k
    figure = Figure(figsize=(16, 10), dpi=100)
    grid = figure.add_gridspec(2, 3, width_ratios=(1.0, 1.0, 0.62))
    for panel, (x_field, y_field) in enumerate(_PANELS):
        axes = figure.add_subplot(grid[panel // 2, panel % 2])
        for number, row in enumerate(result.rows, start=1):
            x, y = _value(row, x_field), _value(row, y_field)
            if x is None or y is None:
                continue
            if row.name == chosen:
                axes.scatter([x], [y], marker="*", s=220, color="tab:red", zorder=3)
            elif row.name in references:
                axes.scatter([x], [y], marker="s", s=40, color="0.5", zorder=2)
            else:
                axes.scatter([x], [y], marker="o", s=30, color="tab:blue", zorder=2)
            axes.annotate(str(number), (x, y), fontsize=7, xytext=(3, 2 + 5 * (number % 3)),
                          textcoords="offset points")
        axes.set_xlabel(_LABELS[x_field])
        axes.set_ylabel(f"{'HR' if y_field == 'hit_rate' else 'MRR'}@{k} (%, warm)")
        axes.grid(alpha=0.3)
    key = figure.add_subplot(grid[:, 2])
    key.axis("off")
    key.text(0.0, 1.0, "\n".join(_key_line(n, row, k) for n, row in enumerate(result.rows, start=1)),
             va="top", ha="left", family="monospace", fontsize=7.5, transform=key.transAxes)
    scored = "every user" if result.user_mod == 1 else f"1 user in {result.user_mod}"
    figure.suptitle(f"Accuracy vs diversity, {result.dataset}: validation slice of the training period "
                    f"({result.validation_events:,} events, {scored} scored; axes zoomed to the points)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    log.info("wrote the trade-off plot %s (%d configurations)", path, len(result.rows))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Plot a saved `streamrec tune --json` result again (no replay)."""
    from app.evaluation.baselines import BASELINES

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("tune_json", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--chosen", default="shipped", help="configuration drawn as the chosen default")
    args = parser.parse_args(argv)
    result = read_json(args.tune_json)
    plot_tradeoff(result, args.png, chosen=args.chosen,
                  references=[row.name for row in result.rows if row.name in BASELINES])


if __name__ == "__main__":
    main()
