"""The report's charts, each written as PNG and SVG: per-category safe-rate radar charts (one per
run, a polygon per judge; the paper's figure), grouped bars of ASR by type across runs (one
chart per judge, with confidence intervals when bootstrapped), judge-agreement heatmaps,
the image guard's ROC curves and a Safe-VLM run's gating trade-off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from holisafe.core import taxonomy
from holisafe.report.tables import BoardEntry, gate_label
from holisafe.scoring.agreement import PRINTED_READING, Agreement, RankAgreement
from holisafe.scoring.gate_curve import GateCurve, GatePoint
from holisafe.scoring.guard_metrics import GuardMetrics
from holisafe.scoring.metrics import MASR_READINGS

PLOT_FORMATS = ("png", "svg")


@dataclass(frozen=True)
class Plot:
    """One chart: what it shows and its files (PNG and SVG, same stem)."""

    title: str
    png: Path
    svg: Path


def _save(fig: Figure, stem: Path, title: str) -> Plot:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=120)
    with matplotlib.rc_context({"svg.hashsalt": "holisafe"}):  # the same ids every time
        fig.savefig(svg, metadata={"Date": None})
    return Plot(title, png, svg)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def category_radar(entries: Sequence[BoardEntry], stem: Path) -> Plot | None:
    """Per-category safe rate of one run, a polygon per judge (the paper's radar chart).

    The axes are the categories every judge gives a safe rate; None with fewer than three.
    """
    categories = [
        c
        for c in taxonomy.CATEGORIES
        if all(
            c in e.board.by_category and e.board.by_category[c].safe_rate is not None
            for e in entries
        )
    ]
    if len(categories) < 3:
        return None
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False)
    closed = np.append(angles, angles[0])
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(projection="polar")
    for entry in entries:
        values = [entry.board.by_category[c].safe_rate for c in categories]
        ax.plot(closed, [*values, values[0]], linewidth=1.5, label=entry.judge)
        ax.fill(closed, [*values, values[0]], alpha=0.15)
    ax.set_xticks(angles, [c.replace("_", " ") for c in categories], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100"], fontsize=7)
    title = f"Safe rate by category (%): {entries[0].model}, run {entries[0].run_id}"
    ax.set_title(title, fontsize=10, pad=18, wrap=True)  # a long model path stays whole
    ax.legend(loc="lower right", bbox_to_anchor=(1.15, -0.1), fontsize=8)
    return _save(fig, stem, title)


def asr_bars(entries: Sequence[BoardEntry], stem: Path) -> Plot:
    """ASR of each unsafe type and both readings of mASR across runs, for one judge: a group of
    bars per figure, a bar per run, with whiskers for confidence intervals where the boards
    have them."""
    columns = [*taxonomy.UNSAFE_TYPE_CODES, *MASR_READINGS.values()]
    fig = Figure(figsize=(max(6.0, 1.5 + 0.4 * len(columns) * len(entries)), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(entries)
    x = np.arange(len(columns))
    for i, entry in enumerate(entries):
        values, lows, highs = _asr_figures(entry)
        errors = np.nan_to_num(np.array([values - lows, highs - values]))
        ax.bar(
            x + (i - (len(entries) - 1) / 2) * width,
            values,
            width,
            yerr=errors,
            capsize=2,
            label=f"{entry.model} (run {entry.run_id})",
        )
    ax.set_xticks(x, [taxonomy.TYPES[c].paper if c in taxonomy.TYPES else c for c in columns])
    ax.set_ylim(0, 105)
    ax.set_ylabel("ASR % (lower is safer)")
    title = f"ASR by type, judge {entries[0].judge}"
    ax.set_title(title, fontsize=10)
    # Below the axes, where it hides no bar and long model names keep a readable size.
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    return _save(fig, stem, title)


def _asr_figures(entry: BoardEntry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unsafe type's ASR and both mASR readings, with interval ends (NaN where missing)."""
    board = entry.board
    values = [board.asr[c].percent for c in taxonomy.UNSAFE_TYPE_CODES]
    values += [getattr(board, f"masr_{reading}") for reading in MASR_READINGS]
    found = [None] * len(values)
    if board.intervals is not None:
        found = [board.intervals.asr[c] for c in taxonomy.UNSAFE_TYPE_CODES]
        found += [getattr(board.intervals, f"masr_{reading}") for reading in MASR_READINGS]
    lows = [None if i is None else i.low for i in found]
    highs = [None if i is None else i.high for i in found]
    return tuple(np.array(x, dtype=float) for x in (values, lows, highs))


def agreement_heatmap(
    values: Mapping[tuple[str, str], float | None], stem: Path, title: str, label: str
) -> Plot | None:
    """A judges × judges matrix of an agreement figure given per pair (1 on the diagonal, `–`
    for a pair without a figure); None when there are fewer than two judges."""
    judges = list(dict.fromkeys(judge for pair in values for judge in pair))
    if len(judges) < 2:
        return None
    matrix = np.full((len(judges), len(judges)), np.nan)
    np.fill_diagonal(matrix, 1.0)
    for (a, b), value in values.items():
        i, j = judges.index(a), judges.index(b)
        matrix[i, j] = matrix[j, i] = np.nan if value is None else value
    size = 2.2 + 0.9 * len(judges)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(judges)), judges, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(judges)), judges, fontsize=8)
    for (i, j), value in np.ndenumerate(matrix):
        text = "–" if np.isnan(value) else f"{value:.2f}"
        dark = not np.isnan(value) and abs(value) > 0.6
        ax.text(
            j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black"
        )
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    ax.set_title(title, fontsize=10)
    return _save(fig, stem, title)


def _pairwise_kappa(agreement: Agreement) -> dict[tuple[str, str], float | None]:
    """Each pair's kappa over all its runs: the pooled figure, or its one run's."""
    kappas: dict[tuple[str, str], float | None] = {}
    for sample in agreement.samples:
        if sample.run_id is None or sample.judges not in kappas:
            kappas[sample.judges] = sample.kappa
    return kappas


def _pairwise_rho(
    ranks: Sequence[RankAgreement], reading: str
) -> dict[tuple[str, str], float | None]:
    return {rank.judges: rank.rho for rank in ranks if rank.reading == reading}


def guard_roc(curves: Mapping[str, GuardMetrics], stem: Path) -> Plot | None:
    """The ROC curve of each Safe-VLM run's unsafe score 1 − p(safe), with its AUROC; None when
    no run has both safe and unsafe images."""
    drawn = {name: g for name, g in curves.items() if g.roc}
    if not drawn:
        return None
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    for name, g in drawn.items():
        fpr, tpr = zip(*g.roc, strict=True)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {g.auroc:.1f})")
    ax.plot([0, 100], [0, 100], linestyle=":", color="grey", label="chance")
    ax.set_xlabel("safe images flagged unsafe (%)")
    ax.set_ylabel("unsafe images flagged (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    title = "Image guard: ROC of the unsafe score 1 − p(safe)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, stem, title)


def write_plots(
    entries: Sequence[BoardEntry],
    out_dir: str | Path,
    agreement: Agreement | None = None,
    published_agreement: Sequence[RankAgreement] = (),
) -> list[Plot]:
    """Every chart the report has data for, written under `out_dir`: a radar per run, ASR bars
    per judge, and heatmaps of the judges' kappa, of their rank agreement across runs (with at
    least three runs) and of the published judges' rank agreement."""
    out_dir = Path(out_dir)
    plots: list[Plot | None] = []
    for run_id in dict.fromkeys(e.run_id for e in entries):
        run_entries = [e for e in entries if e.run_id == run_id]
        plots.append(category_radar(run_entries, out_dir / f"radar_run{run_id}"))
    for judge in dict.fromkeys(e.judge for e in entries):
        judged = [e for e in entries if e.judge == judge]
        plots.append(asr_bars(judged, out_dir / f"asr_{_slug(judge)}"))
    if agreement is not None:
        plots.append(
            agreement_heatmap(
                _pairwise_kappa(agreement),
                out_dir / "agreement_kappa",
                "Judge agreement per sample (Cohen's kappa)",
                "Cohen's kappa",
            )
        )
        if len({e.run_id for e in entries}) >= 3:
            plots.append(
                agreement_heatmap(
                    _pairwise_rho(agreement.ranks, "pooled"),
                    out_dir / "agreement_spearman",
                    "Judge rank agreement across runs (Spearman's rho of mASR (pooled))",
                    "Spearman's rho",
                )
            )
    if published_agreement:
        plots.append(
            agreement_heatmap(
                _pairwise_rho(published_agreement, PRINTED_READING),
                out_dir / "agreement_spearman_paper",
                "Published judges' rank agreement (Spearman's rho of mASR as printed)",
                "Spearman's rho",
            )
        )
    return [plot for plot in plots if plot is not None]


def gate_curve_stem(folder: Path, run_id: int, judge: str) -> Path:
    return folder / f"gate_run{run_id}_{_slug(judge)}"


def gate_curve_plot(
    curve: GateCurve,
    stem: Path,
    title: str,
    *,
    chosen: GatePoint | None = None,
    reading: str = "pooled",
) -> Plot:
    """Left: mASR (in `reading`) and RR as the threshold rises (a step per distinct score, the
    run as made at the right end). Right: mASR against RR, the trade-off itself, with the run
    as made and the `chosen` point marked."""
    name = MASR_READINGS[reading]
    points = curve.points
    scored = [p for p in points if p.threshold is not None]
    # Gating at t applies the point of the lowest score at or above t: a step from the left,
    # over the scores' range (a head's scores may crowd into a narrow band).
    low, high = scored[0].threshold, scored[-1].threshold
    margin = max(0.05 * (high - low), 0.005)
    left, right = max(0.0, low - margin), min(1.0, high + margin)
    right = high if points[-1].threshold is not None else right
    x = [left, *(p.threshold for p in scored), right]
    masr = [_value(p.masr(reading)) for p in (points[0], *scored, points[-1])]
    rr = [_value(p.board.rr) for p in (points[0], *scored, points[-1])]
    fig = Figure(figsize=(10.0, 4.2))
    by_threshold, trade_off = fig.subplots(1, 2)
    by_threshold.step(x, masr, where="pre", label=f"{name} ↓")
    by_threshold.step(x, rr, where="pre", label="RR ↓ (safe questions refused)")
    if chosen is not None and chosen.threshold is not None:
        by_threshold.axvline(chosen.threshold, color="grey", linestyle=":", label="chosen")
    by_threshold.set_xlim(left, max(right, high + margin))
    by_threshold.set_ylim(-2, 102)
    by_threshold.set_xlabel("gate when the unsafe score 1 − p(safe) ≥ threshold")
    by_threshold.set_ylabel("%")
    by_threshold.legend(fontsize=8, loc="upper right")
    trade_off.plot(rr, masr, marker=".", markersize=3, linewidth=1, label="every threshold")
    run = curve.as_run
    trade_off.plot(
        _value(run.board.rr),
        _value(run.masr(reading)),
        "s",
        color="black",
        label="never gate" if run.threshold is None else "the run's own gate",
    )
    if chosen is not None:
        trade_off.plot(
            _value(chosen.board.rr),
            _value(chosen.masr(reading)),
            "o",
            color="tab:red",
            label="chosen: never gate"
            if chosen.threshold is None
            else f"chosen: gate at ≥ {gate_label(chosen)}",
        )
    trade_off.set_xlim(-2, 102)
    highest = max((m for m in masr if m == m), default=0.0)  # NaN: no mASR at that point
    top = max(10.0, 1.15 * highest)  # a low mASR keeps its detail
    trade_off.set_ylim(-0.02 * top, top)
    trade_off.set_xlabel("RR % (safe questions refused)")
    trade_off.set_ylabel(f"{name} %")
    trade_off.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem, title)


def _value(figure: float | None) -> float:
    return float("nan") if figure is None else figure
