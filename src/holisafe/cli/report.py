"""`holisafe report`, `compare` and `gate-curve`: what a store holds, as tables, files, win
rates and a Safe-VLM run's gating trade-off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from holisafe.cli.options import (
    ConcurrencyOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    JudgeBaseUrlOpt,
    JudgeBatchSizeOpt,
    JudgeEndpointsOpt,
    MasrReadingOpt,
    MaxRetriesOpt,
    TargetMasrOpt,
    TargetRrOpt,
    TimeoutOpt,
    endpoints,
    model_options,
)
from holisafe.cli.output import console, err_console, named_run, print_gate_curve

app = typer.Typer(rich_markup_mode=None)


@app.command("report")
def report_command(
    store: Annotated[
        Path | None,
        typer.Option(help="SQLite store written by holisafe eval (optional with --reference)."),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="Only this run id, or `audit`: the served traffic's run.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, csv, json or latex.")] = "md",
    subcategories: Annotated[bool, typer.Option(help="Add per-subcategory tables.")] = False,
    ci: Annotated[
        bool, typer.Option("--ci", help="Add bootstrap 95% confidence intervals to every figure.")
    ] = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples (--ci, --html).")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (--ci, --html).")] = 0,
    agreement: Annotated[
        bool,
        typer.Option(
            "--agreement",
            help="Add the judges' agreement: per sample (percent, Cohen's kappa) and across "
            "runs (Spearman's rho of mASR).",
        ),
    ] = False,
    reference: Annotated[
        str | None,
        typer.Option(help="Published leaderboard to show, with the runs placed in it: paper."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Write the HTML report (index.html, assets/) here.")
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Write the plots alone (PNG and SVG) to this folder.")
    ] = None,
    images: Annotated[
        bool, typer.Option(help="Copy the benchmark's images into the HTML report.")
    ] = True,
    provenance: Annotated[
        bool,
        typer.Option(
            "--provenance", help="Show what produced each run (versions, revision, devices)."
        ),
    ] = False,
    allow_mixed: Annotated[
        bool,
        typer.Option(
            "--allow-mixed", help="Report runs whose parts were made under different conditions."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the --html and --plots folders if they exist.")
    ] = False,
) -> None:
    """The leaderboard (the paper's columns) and per-category tables of every run and judge."""
    from holisafe.core.folders import refuse_existing
    from holisafe.report import ReportError, build_report, load_reference, render
    from holisafe.run import provenance as runs_provenance
    from holisafe.scoring.metrics import Bootstrap
    from holisafe.store import Store

    if fmt == "html":
        raise ReportError("the HTML report is a folder: write it with --html DIR (and --store)")
    if store is None and (run is not None or html or plots):
        raise ReportError("--run, --html and --plots need --store")
    for folder in (html, plots):
        if folder is not None:
            refuse_existing(folder, overwrite)
    published = load_reference(reference) if reference else None
    bootstrap = Bootstrap(resamples=resamples, seed=seed)
    run = None if run is None else named_run(store, run)
    if run is not None and _print_audit(store, run, fmt, html or plots):
        return
    if store is None:
        content = build_report(None, agreement=agreement, reference=published)
    else:
        with Store(store, create=False) as opened:
            run_ids = [run] if run is not None else [r.id for r in opened.runs()]
            if not allow_mixed:
                runs_provenance.check_unmixed(store, run_ids)
            content = build_report(
                opened,
                run_id=run,
                bootstrap=bootstrap if ci else None,
                agreement=agreement,
                reference=published,
            )
            _write_report_files(opened, run, published, bootstrap, html, plots, images, overwrite)
    for warning in content.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    print(render(content, fmt, subcategories=subcategories), end="")
    if provenance and store is not None:
        for run_id in run_ids:
            found = runs_provenance.records(store, run_id)
            print(f"\nrun {run_id} provenance:\n{runs_provenance.summary(found)}")


def _print_audit(store: Path, run: int, fmt: str, files: Path | None) -> bool:
    """Print the audit report when `run` is an audit run; False when it is a benchmark run."""
    from holisafe.report import ReportError
    from holisafe.report.audit import audit_report, render_audit
    from holisafe.store import AUDIT_BENCHMARK, Store

    with Store(store, create=False) as opened:
        if opened.get_run(run).benchmark != AUDIT_BENCHMARK:
            return False
        if files is not None:
            raise ReportError(f"run {run} is an audit run: its report has no --html or --plots")
        print(render_audit(audit_report(opened, run), fmt), end="")
    return True


def _write_report_files(store, run, reference, bootstrap, html, plots, images, overwrite) -> None:
    """The HTML report and the plots of `holisafe report`, where asked for."""
    from holisafe.core.folders import new_folder
    from holisafe.report import build_report
    from holisafe.scoring.compare import store_comparisons

    if html is not None:
        from holisafe.report.html import write_html_report

        with new_folder(html, overwrite) as building:
            written = write_html_report(
                store, building, run_id=run, reference=reference, bootstrap=bootstrap, images=images
            )
        for note in written.image_notes:
            err_console.print(f"note: {note}", markup=False, highlight=False)
        index = html / written.index.name
        err_console.print(f"HTML report: {index}", markup=False, highlight=False)
    if plots is not None:
        from holisafe.report.pairwise import write_win_rate_plots
        from holisafe.report.plots import write_plots

        made = build_report(
            store, run_id=run, bootstrap=bootstrap, agreement=True, reference=reference
        )
        with new_folder(plots, overwrite) as building:
            charts = write_plots(made.entries, building, made.agreement, made.published_agreement)
            charts += write_win_rate_plots(store_comparisons(store, run, bootstrap), building)
        for plot in charts:
            png, svg = (plots / path.name for path in (plot.png, plot.svg))
            err_console.print(f"plot: {png} {svg}", markup=False, highlight=False)


@app.command("compare")
def compare_command(
    store: Annotated[Path, typer.Option(help="SQLite store holding both runs.")],
    run: Annotated[list[int], typer.Option(help="The two run ids to compare: --run A --run B.")],
    judge: Annotated[str, typer.Option(help="The pairwise judge: a model spec (openai/gpt-4o).")],
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_endpoints: JudgeEndpointsOpt = None,
    api_key: Annotated[
        str | None, typer.Option(help="Key of the judge's API (default: the provider's variable).")
    ] = None,
    bench: Annotated[
        str | None, typer.Option(help="Benchmark, when it moved since the runs recorded it.")
    ] = None,
    as_json: JsonOpt = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    concurrency: ConcurrencyOpt = 8,
    batch_size: JudgeBatchSizeOpt = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
) -> None:
    """Judge two runs' answers to the same samples pairwise, in both orders: A's win rates."""
    options = model_options(locals(), base_url=endpoints(judge_base_url, judge_endpoints))
    from holisafe.scoring.compare import CompareError, compare_runs
    from holisafe.scoring.metrics import Bootstrap

    if len(run) != 2:
        raise CompareError(f"compare takes exactly two runs (--run A --run B), got {len(run)}")
    outcome = compare_runs(
        store,
        run[0],
        run[1],
        judge,
        options=options,
        bench=bench,
        bootstrap=Bootstrap(resamples=resamples, seed=seed),
        progress=not as_json,
    )
    for where, error in outcome.errors[:20]:
        err_console.print(f"failed comparison for id {where}: {error}", markup=False)
    if outcome.errors:
        err_console.print(
            f"{len(outcome.errors)} failure(s) kept in the store; rerun the same command to retry"
        )
    if as_json:
        print(json.dumps(outcome.comparison.as_dict(), indent=1))
    else:
        _print_win_rates(outcome.comparison)
    if outcome.errors:
        raise typer.Exit(1)


def _print_win_rates(comparison) -> None:
    a, b = comparison.run_a, comparison.run_b
    title = f"{a.model} (run {a.id}) vs {b.model} (run {b.id}), judge {comparison.judge}"
    table = Table(title=title)
    for name in ("scope", "wins", "ties", "losses", "n", "win rate (%)", "unjudged"):
        table.add_column(name, justify="left" if name == "scope" else "right")
    for scope, rate in [("all", comparison.overall), *comparison.by_type.items()]:
        share = "–" if rate.win_rate is None else f"{rate.win_rate:.2f}"
        if rate.interval is not None:
            share += f" [{rate.interval.low:.2f}, {rate.interval.high:.2f}]"
        counts = (rate.wins, rate.ties, rate.losses, rate.n)
        table.add_row(scope, *map(str, counts), share, str(rate.unjudged))
    console.print(table)


@app.command("gate-curve")
def gate_curve_command(
    store: Annotated[Path, typer.Option(help="SQLite store holding a Safe-VLM's run.")],
    run: Annotated[int, typer.Option(help="The run: a Safe-VLM's, with its head scores stored.")],
    judge: Annotated[
        str | None,
        typer.Option(help="Whose verdicts score ungated answers (default: the run's only one)."),
    ] = None,
    target_rr: TargetRrOpt = None,
    target_masr: TargetMasrOpt = None,
    reading: MasrReadingOpt = "pooled",
    points: Annotated[
        int, typer.Option(help="Rows of the printed curve, spread along it (--csv has all).")
    ] = 11,
    plot: Annotated[
        Path | None, typer.Option(help="Write the curve as a PNG here (and an SVG beside it).")
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Write every point of the curve as CSV.")] = None,
) -> None:
    """What gating at the prefill would give at every threshold of the head's unsafe score:
    ASR, mASR and RR from one run, a gated sample counting as refused."""
    from holisafe.report.plots import gate_curve_plot
    from holisafe.report.tables import write_gate_curve_csv
    from holisafe.scoring.gate_curve import (
        GateCurveError,
        check_reading,
        choose_threshold,
        gate_curve,
        store_gate_items,
    )
    from holisafe.store import Store

    check_reading(reading)
    if points < 2:
        raise GateCurveError(f"--points must be at least 2, got {points}")
    with Store(store, create=False) as opened:
        model = opened.get_run(run).model
        judge, items = store_gate_items(opened, run, judge)
    curve = gate_curve(items)
    chosen, target = None, ""
    if target_rr is not None or target_masr is not None:
        chosen = choose_threshold(
            curve, target_rr=target_rr, target_masr=target_masr, reading=reading
        )
        target = _target_text(target_rr, target_masr, reading)
    title = f"gating run {run} ({model}), judge {judge}"
    print_gate_curve(curve, title, points, chosen, target)
    if csv is not None:
        written = write_gate_curve_csv(curve, csv)
        err_console.print(f"curve: {written}", markup=False, highlight=False)
    if plot is not None:
        drawn = gate_curve_plot(curve, plot.with_suffix(""), title, chosen=chosen, reading=reading)
        err_console.print(f"plot: {drawn.png} {drawn.svg}", markup=False, highlight=False)


def _target_text(target_rr: float | None, target_masr: float | None, reading: str) -> str:
    from holisafe.scoring.metrics import MASR_READINGS

    name = MASR_READINGS[reading]
    if target_rr is not None:
        return f"RR ≤ {target_rr:g} (lowest {name})"
    return f"{name} ≤ {target_masr:g} (lowest RR)"
