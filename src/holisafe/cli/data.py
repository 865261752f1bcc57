"""`holisafe data`: read, check, summarise, convert, generate and build data sets."""

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
    EndpointsOpt,
    FormatOpt,
    ImageRootOpt,
    JsonOpt,
    JudgeBaseUrlOpt,
    JudgeEndpointsOpt,
    JudgeTemplateOpt,
    MaxRetriesOpt,
    OverwriteOpt,
    SourceArg,
    TimeoutOpt,
    endpoints,
    model_options,
)
from holisafe.cli.output import console, err_console, report_skipped
from holisafe.core.text import printable

app = typer.Typer(
    help="Read, check, summarise and convert data sets.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("validate")
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


@app.command("stats")
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
    report_skipped(dataset)
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


@app.command("export")
def data_export(
    source: SourceArg,
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    to: Annotated[str, typer.Option(help="Target form: json, jsonl, parquet or llava.")],
    fmt: FormatOpt = None,
    image_root: ImageRootOpt = None,
    skip_invalid: Annotated[bool, typer.Option(help="Export only the valid records.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert a data set to another form, copying or embedding its images."""
    from holisafe.core.folders import new_folder, refuse_existing
    from holisafe.data import export_samples, load_samples

    refuse_existing(out, overwrite)  # before reading the source, which may take long
    dataset = load_samples(
        source, fmt=fmt, image_root=image_root, skip_invalid=skip_invalid, progress=True
    )
    report_skipped(dataset)
    with new_folder(out, overwrite) as building:
        written = export_samples(dataset.samples, building, to)
    console.print(f"wrote {len(dataset.samples)} samples to {out / written.name}")


@app.command("mini")
def data_mini(
    out: Annotated[Path, typer.Argument(help="Output folder: bench/ and train/ go here.")],
    seed: Annotated[int, typer.Option(help="Random seed; a seed always gives the same files.")] = 0,
    train_pairs: Annotated[int, typer.Option(help="Training image-query pairs.")] = 2850,
    bench_pairs: Annotated[int, typer.Option(help="Benchmark pairs (at least 95).")] = 570,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 96,
    overwrite: Annotated[bool, typer.Option(help="Replace existing bench/ and train/.")] = False,
) -> None:
    """Generate HoliSafe-Mini, the offline pictogram benchmark and training set."""
    from holisafe.synthetic.mini import generate_mini, write_sample_grid

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


@app.command("build")
def data_build(
    source: Annotated[
        Path, typer.Argument(help="Manifest (.jsonl/.csv) of labelled images, or an image folder.")
    ],
    out: Annotated[Path, typer.Argument(help="Output folder: train/, test/, provenance.json.")],
    generator: Annotated[str, typer.Option(help="Model that writes the pairs (any model spec).")],
    base_url: Annotated[
        list[str] | None,
        typer.Option(help="Server of the generator's API; repeat to spread the requests."),
    ] = None,
    endpoints_file: EndpointsOpt = None,
    judge: Annotated[
        str | None, typer.Option(help="Model that checks each pair's type and response.")
    ] = None,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_endpoints: JudgeEndpointsOpt = None,
    judge_template: JudgeTemplateOpt = None,
    label_model: Annotated[
        str | None, typer.Option(help="Model that labels the images of an unlabelled folder.")
    ] = None,
    label_by: Annotated[
        str, typer.Option(help="llm (any model, asked) or head (a Safe-VLM's safety head).")
    ] = "llm",
    label_base_url: Annotated[
        list[str] | None, typer.Option(help="Server of the labeller; repeat for several.")
    ] = None,
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
    # its base URL is the generator's
    options = model_options(locals(), base_url=endpoints(base_url, endpoints_file))
    from dataclasses import replace

    from holisafe.build import BuildSettings, build_dataset
    from holisafe.models import GenerationSettings

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
        generator_options=options,
        judge_options=replace(options, base_url=endpoints(judge_base_url, judge_endpoints)),
        label_options=replace(options, base_url=endpoints(label_base_url, None)),
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
