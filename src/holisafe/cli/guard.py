"""`holisafe guard` and `guard-eval`: image guards on image files and on a benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from holisafe.cli.options import (
    BenchOpt,
    DeviceOpt,
    DtypeOpt,
    GuardPolicyOpt,
    HeadInputOpt,
    ImageBatchSizeOpt,
    JsonOpt,
    SkipInvalidOpt,
    TrustRemoteCodeOpt,
    model_options,
)
from holisafe.cli.output import err_console, print_guard_metrics
from holisafe.core.text import printable

app = typer.Typer(rich_markup_mode=None)


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
    batch_size: ImageBatchSizeOpt = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
) -> None:
    """Classify images: a Safe-VLM's head (label, probability, unsafe = 1 - p(safe)) or a
    generative guard's verdict."""
    options = model_options(locals())
    from holisafe.core.sample import image_files
    from holisafe.guards import SAFETY_HEAD, guard_kind
    from holisafe.guards.safety_head import guard_files, load_guard

    files = image_files(images)
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
    bench: BenchOpt,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per model.")
    ] = False,
    guard_policy: GuardPolicyOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N distinct images.")] = None,
    batch_size: ImageBatchSizeOpt = 8,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    skip_invalid: SkipInvalidOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
) -> None:
    """Score image guards on a benchmark's images side by side, as the paper's Table 6 does."""
    options = model_options(locals())
    from holisafe.guards import evaluate_guards, read_policy

    scores = evaluate_guards(
        model,
        bench,
        options=options,
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
            print_guard_metrics(score.head)


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
