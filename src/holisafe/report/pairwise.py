"""Pairwise win rates in reports: a table, and the paper's Figure 6 as stacked bars (win, tie,
loss of run A against run B), one chart per judge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from holisafe.report.plots import Plot, _save, _slug
from holisafe.report.tables import Estimate, Table
from holisafe.scoring.compare import Comparison

_COLOURS = {"win": "#2e7d32", "tie": "#9e9e9e", "loss": "#c62828"}


def win_rate_grid(comparisons: Sequence[Comparison]) -> Table:
    """One row per comparison and scope (`all`, then each safeness type)."""
    header = [
        ("Run A", None),
        ("Model A", None),
        ("Run B", None),
        ("Model B", None),
        ("Judge", None),
        ("Scope", None),
        ("Wins", None),
        ("Ties", None),
        ("Losses", None),
        ("n", None),
        ("Win rate", True),
        ("unjudged", None),
    ]
    rows = [
        [
            c.run_a.id,
            c.run_a.model,
            c.run_b.id,
            c.run_b.model,
            c.judge,
            scope,
            rate.wins,
            rate.ties,
            rate.losses,
            rate.n,
            Estimate(rate.win_rate, rate.interval),
            rate.unjudged,
        ]
        for c in comparisons
        for scope, rate in [("all", c.overall), *c.by_type.items()]
    ]
    return Table(header, rows)


def win_rate_chart(comparisons: Sequence[Comparison], stem: Path) -> Plot:
    """Run A's win, tie and loss shares against each run B under one judge, as stacked bars."""
    fig = Figure(figsize=(7.0, 1.2 + 0.55 * len(comparisons)))
    ax = fig.add_subplot()
    y = np.arange(len(comparisons))
    left = np.zeros(len(comparisons))
    for outcome, count in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
        shares = np.array(
            [
                100.0 * getattr(c.overall, count) / c.overall.n if c.overall.n else 0.0
                for c in comparisons
            ]
        )
        ax.barh(y, shares, left=left, color=_COLOURS[outcome], label=outcome)
        for row, (start, share) in enumerate(zip(left, shares, strict=True)):
            if share >= 6:
                ax.text(start + share / 2, row, f"{share:.1f}", ha="center", va="center",
                        color="white", fontsize=8)  # fmt: skip
        left += shares
    labels = [
        f"{c.run_a.model} (run {c.run_a.id})\nvs {c.run_b.model} (run {c.run_b.id})"
        for c in comparisons
    ]
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of samples (n per bar: both orders decided)")
    title = f"Pairwise win rate, judge {comparisons[0].judge}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncols=3, loc="lower right")
    return _save(fig, stem, title)


def write_win_rate_plots(comparisons: Sequence[Comparison], out_dir: str | Path) -> list[Plot]:
    """A win-rate chart per judge that has comparisons, under `out_dir`."""
    out_dir = Path(out_dir)
    judges = dict.fromkeys(c.judge for c in comparisons)
    return [
        win_rate_chart(
            [c for c in comparisons if c.judge == judge], out_dir / f"winrate_{_slug(judge)}"
        )
        for judge in judges
    ]
