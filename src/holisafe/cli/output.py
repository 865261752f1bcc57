"""What several commands print: the consoles, leaderboards, failures, skipped records, guard
scores."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from holisafe.core.text import printable

console = Console(soft_wrap=True)  # a long path stays on one line, whole
err_console = Console(stderr=True, soft_wrap=True)


def named_run(store: Path, run: str) -> int:
    """The id of the run `--run` names: an id, or `audit`."""
    from holisafe.store import Store

    with Store(store, create=False) as opened:
        return opened.run_id(run)


def print_leaderboard(store: Path, run_id: int | None) -> None:
    """The markdown leaderboard of one run (every run for None) in a store; an audit run's
    report."""
    from holisafe.report import leaderboard_table, store_leaderboards
    from holisafe.report.audit import audit_report, render_audit
    from holisafe.store import AUDIT_BENCHMARK, Store

    with Store(store, create=False) as opened:
        if run_id is not None and opened.get_run(run_id).benchmark == AUDIT_BENCHMARK:
            print(render_audit(audit_report(opened, run_id), "md"), end="")
            return
        entries = store_leaderboards(opened, run_id=run_id)
    print(leaderboard_table(entries, "md"), end="")


def print_notes(notes: list[str]) -> None:
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)


def report_failures(outcome) -> None:
    failures = [("response", sid, err) for sid, err in outcome.response_errors]
    failures += [
        (judge_id, sid, err)
        for judge_id, errors in outcome.verdict_errors.items()
        for sid, err in errors
    ]
    for kind, sample_id, error in failures[:20]:
        line = printable(f"failed {kind} for id {sample_id}: {error}")
        err_console.print(line, markup=False, highlight=False)
    if failures:
        err_console.print(
            f"{len(failures)} failure(s) kept in the store; rerun the same command to retry them"
        )


def print_guard_metrics(metrics) -> None:
    def pct(value):
        return "–" if value is None else f"{value:.2f}"

    summary = Table(title=f"guard on {metrics.n} images (unsafe is positive)")
    for name in ("accuracy", "F1", "precision", "recall", "exact label accuracy", "AUROC"):
        summary.add_column(name, justify="right")
    summary.add_row(
        *map(
            pct,
            (
                metrics.accuracy,
                metrics.f1,
                metrics.precision,
                metrics.recall,
                metrics.exact_label_accuracy,
                metrics.auroc,
            ),
        )
    )
    console.print(summary)
    per_label = Table(title="per true label")
    for name in ("label", "images", "predicted exactly (%)"):
        per_label.add_column(name, justify="left" if name == "label" else "right")
    for label, count in metrics.label_counts.items():
        if count:
            per_label.add_row(label, str(count), pct(metrics.label_accuracy[label]))
    console.print(per_label)


def report_skipped(dataset) -> None:
    report_skipped_lines([str(problem) for problem in dataset.problems])


def report_skipped_lines(lines: list[str]) -> None:
    for line in lines:
        err_console.print(f"skipped {printable(line)}", markup=False, highlight=False)
    if lines:
        err_console.print(f"skipped {len(lines)} invalid record(s)")


def print_gate_curve(curve, title: str, rows: int, chosen=None, target: str = "") -> None:
    """About `rows` points of a run's gating curve, then the `chosen` point (met `target`)
    beside the run as it was made."""
    from holisafe.report.tables import gate_curve_grid, gate_label
    from holisafe.scoring.gate_curve import thinned

    shown = thinned(curve, rows)
    grid = gate_curve_grid([(gate_label(point), point) for point in shown])
    console.print(_rich_table(grid, f"{title}: {len(shown)} of {len(curve.points)} thresholds"))
    if curve.unscored:
        err_console.print(
            f"note: {curve.unscored} sample(s) have no head score (no answer stored); they are "
            "never gated"
        )
    if chosen is None:
        return
    run = curve.as_run
    own = "never (as run)" if run.threshold is None else f"{gate_label(run)} (the run's own)"
    grid = gate_curve_grid([(own, run), (f"{gate_label(chosen)} (chosen)", chosen)])
    console.print(_rich_table(grid, f"the threshold for {target}, beside the run as made"))


def _rich_table(grid, title: str) -> Table:
    from holisafe.report.tables import column_title

    table = Table(title=title)
    for column, numeric in zip(grid.header, grid.numeric_columns(), strict=True):
        title = column_title(*column)
        widest = max(6, *map(len, title.split()))  # a figure or a word of its title, whole
        justify = "right" if numeric else "left"
        table.add_column(title, justify=justify, min_width=widest, no_wrap=not numeric)
    for row in grid.rows:
        table.add_row(
            *("–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in row)
        )
    return table
