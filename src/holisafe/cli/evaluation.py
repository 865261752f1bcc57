"""`holisafe eval`, `judge`, `fetch-judge-template` and `import`: runs into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from holisafe.cli.options import (
    BaseUrlOpt,
    BenchOpt,
    ConcurrencyOpt,
    DeviceOpt,
    DtypeOpt,
    EndpointsOpt,
    GateOpt,
    GateRefusalOpt,
    HeadInputOpt,
    JudgeBaseUrlOpt,
    JudgeBatchOpt,
    JudgeBatchSizeOpt,
    JudgeEndpointsOpt,
    JudgeProtocolOpt,
    JudgeTemplateOpt,
    LimitOpt,
    MaxRetriesOpt,
    ModelSpecOpt,
    OldJudgeBaseUrlOpt,
    SkipInvalidOpt,
    TimeoutOpt,
    TrustRemoteCodeOpt,
    endpoints,
    model_options,
)
from holisafe.cli.output import (
    console,
    named_run,
    print_leaderboard,
    print_notes,
    report_failures,
    report_skipped_lines,
)

app = typer.Typer(rich_markup_mode=None)


@app.command("eval")
def eval_command(
    model: ModelSpecOpt,
    bench: BenchOpt,
    store: Annotated[Path, typer.Option(help="SQLite store; rerunning resumes the run.")],
    judge: Annotated[
        list[str] | None,
        typer.Option(
            help="string, or an LLM judge's model spec (openai/gpt-4o, ...); repeat for several "
            "(default: string)."
        ),
    ] = None,
    limit: LimitOpt = None,
    batch_size: Annotated[int, typer.Option(help="Samples per batch (hf backend).")] = 8,
    concurrency: ConcurrencyOpt = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 means greedy decoding.")] = 0.0,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    base_url: BaseUrlOpt = None,
    endpoints_file: EndpointsOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="Key of the model's API (default: the provider's variable)."),
    ] = None,
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
    run: Annotated[int | None, typer.Option(help="Resume this run id explicitly.")] = None,
    skip_invalid: SkipInvalidOpt = False,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_endpoints: JudgeEndpointsOpt = None,
    judge_template: JudgeTemplateOpt = None,
    judge_protocol: JudgeProtocolOpt = "toolkit",
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
    gate: GateOpt = None,
    gate_refusal: GateRefusalOpt = None,
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
    options = model_options(locals(), base_url=endpoints(base_url, endpoints_file))
    from dataclasses import replace

    from holisafe.models import GenerationSettings
    from holisafe.run.evaluate import evaluate
    from holisafe.run.workers import evaluate_in_workers

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
        judge_options=replace(
            options, base_url=endpoints(judge_base_url, judge_endpoints), api_key=None
        ),
        judge_template=judge_template,
        judge_protocol=judge_protocol,
        judge_batch=judge_batch,
    )
    outcome = evaluate(**arguments) if workers == 1 else evaluate_in_workers(workers, **arguments)
    report_skipped_lines(outcome.skipped)
    print_notes(outcome.notes)
    console.print(
        f"run {outcome.run.id}: {outcome.generated} new responses"
        + (f" ({outcome.reused} reused from earlier runs), " if outcome.reused else ", ")
        + ", ".join(f"{n} new {j} verdicts" for j, n in outcome.judged.items())
    )
    report_failures(outcome)
    print_leaderboard(store, outcome.run.id)
    if outcome.response_errors or any(outcome.verdict_errors.values()):
        raise typer.Exit(1)


@app.command("judge")
def judge_command(
    store: Annotated[Path, typer.Option(help="SQLite store written by holisafe eval.")],
    judge: Annotated[
        list[str],
        typer.Option(help="string, or an LLM judge's model spec (openai/gpt-4o, ...); repeat."),
    ],
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_endpoints: JudgeEndpointsOpt = None,
    api_key: Annotated[
        str | None, typer.Option(help="Key of the judges' API (default: the provider's variable).")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(help="Only this run id, or `audit` (default: every benchmark run)."),
    ] = None,
    bench: Annotated[
        str | None, typer.Option(help="Benchmark, when it moved since the run recorded it.")
    ] = None,
    judge_template: JudgeTemplateOpt = None,
    judge_protocol: JudgeProtocolOpt = "toolkit",
    concurrency: ConcurrencyOpt = 8,
    batch_size: JudgeBatchSizeOpt = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 5,
    judge_batch: JudgeBatchOpt = False,
    base_url: OldJudgeBaseUrlOpt = None,
) -> None:
    """Judge the responses already in a store (no generation); print the leaderboard."""
    servers = endpoints(judge_base_url or base_url, judge_endpoints)
    options = model_options(locals(), base_url=servers)  # the judges' options
    from holisafe.run.evaluate import judge_stored

    run_id = None if run is None else named_run(store, run)
    outcomes = judge_stored(
        store,
        judge,
        run_id=run_id,
        bench=bench,
        options=options,
        judge_template=judge_template,
        judge_protocol=judge_protocol,
        progress=True,
        judge_batch=judge_batch,
    )
    print_notes(outcomes[0].notes)
    for outcome in outcomes:
        judged = ", ".join(f"{n} new {j} verdicts" for j, n in outcome.judged.items())
        console.print(f"run {outcome.run.id} ({outcome.run.model}): {judged}", markup=False)
        report_failures(outcome)
    print_leaderboard(store, run_id)
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
            help="Score a benchmark sample the file has no prediction for as compliance "
            "instead of leaving it unscored (empty predictions are answers either way)."
        ),
    ] = False,
) -> None:
    """Put another tool's predictions into a store as a run, for judge and report."""
    from holisafe.run.importer import import_predictions

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
