"""Reports: pure functions of the store, from leaderboards to formatted tables."""

import shlex

from holisafe.report.reference import (
    Reference,
    load_reference,
    place_runs,
    published_tables,
    reference_rank_agreement,
)
from holisafe.report.tables import (
    FORMATS,
    BoardEntry,
    Report,
    ReportError,
    breakdown_table,
    leaderboard_json,
    leaderboard_table,
    render,
    render_report,
)
from holisafe.scoring.agreement import store_agreement
from holisafe.scoring.benchmark_metrics import table4_rows
from holisafe.scoring.guard_metrics import store_guard_metrics
from holisafe.scoring.metrics import Bootstrap, leaderboard
from holisafe.store import Store


def store_leaderboards(
    store: Store,
    run_id: int | None = None,
    judge_id: str | None = None,
    bootstrap: Bootstrap | None = None,
) -> list[BoardEntry]:
    """The figures of every (run, judge) pair in the store, or of the one run / judge named;
    with `bootstrap`, with confidence intervals.

    Raises ReportError when there is nothing to report.
    """
    runs = [store.get_run(run_id)] if run_id is not None else store.runs()
    entries = [
        BoardEntry(
            run.id,
            run.model,
            judge,
            leaderboard(store.results(run.id, judge), bootstrap, store.missing_predictions(run.id)),
            run.samples,
        )
        for run in runs
        for judge in store.judges(run.id)
        if judge_id in (None, judge)
    ]
    if not entries:
        what = "" if judge_id is None else f" of judge {judge_id!r}"
        where = "" if run_id is None else f" for run {run_id}"
        next_command = f"holisafe judge --store {shlex.quote(str(store.path))}"
        next_command += "" if run_id is None else f" --run {run_id}"
        raise ReportError(
            f"no verdicts{what}{where} in {store.path}; judge the answers first: "
            f"{next_command} --judge string (or an LLM judge's model spec)"
        )
    return entries


def build_report(
    store: Store | None,
    *,
    run_id: int | None = None,
    bootstrap: Bootstrap | None = None,
    agreement: bool = False,
    reference: Reference | None = None,
) -> Report:
    """Everything `holisafe report` shows, for `render`.

    The store's leaderboards (with confidence intervals if `bootstrap`), its figures on the other
    safety benchmarks (Table 4), the agreement of its judges if `agreement`, and with
    `reference` its runs placed among the published models of the matching judges (plus the
    published judges' rank agreement if `agreement`). Without a store: the published tables
    alone.
    """
    wanted = agreement and reference is not None
    published = reference_rank_agreement(reference) if wanted else ()
    if store is None:
        if reference is None:
            raise ReportError("nothing to report: name a store, a reference, or both")
        return Report(placements=published_tables(reference), published_agreement=published)
    entries = store_leaderboards(store, run_id=run_id, bootstrap=bootstrap)
    comparison = place_runs(entries, reference) if reference is not None else None
    guard = {e.run_id: store_guard_metrics(store, e.run_id) for e in entries}
    return Report(
        entries,
        guard={run_id: metrics for run_id, metrics in guard.items() if metrics is not None},
        table4=table4_rows(store, run_id),
        agreement=store_agreement(store, run_id=run_id) if agreement else None,
        placements=comparison.placements if comparison else (),
        published_agreement=published,
        warnings=comparison.warnings if comparison else (),
    )


__all__ = [
    "FORMATS",
    "BoardEntry",
    "Report",
    "ReportError",
    "breakdown_table",
    "build_report",
    "leaderboard_json",
    "leaderboard_table",
    "load_reference",
    "render",
    "render_report",
    "store_leaderboards",
]
