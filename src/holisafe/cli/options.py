"""The options several commands share, declared once; and the model options they add up to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from holisafe.models import ModelOptions
    from holisafe.models.endpoints import Endpoint

# Data sets
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
BenchOpt = Annotated[str, typer.Option(help="Benchmark: folder, file or Hub dataset id.")]
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N samples.")]
SkipInvalidOpt = Annotated[bool, typer.Option(help="Skip invalid benchmark records.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

# Output folders: written beside their place and moved in when complete
OverwriteOpt = Annotated[bool, typer.Option(help="Replace the output folder if it exists.")]

# Models: the spec, and how a local (hf) model runs
ModelSpecOpt = Annotated[str, typer.Option(help="Model spec: hf/<id or dir>, openai/<name>, ...")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (hf models).")]
DeviceOpt = Annotated[
    str, typer.Option(help="auto, cpu, cuda, cuda:N or map (spread over all GPUs; hf models).")
]
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

# API models
ConcurrencyOpt = Annotated[int, typer.Option(help="Requests at once (API models).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds per API request.")]
MaxRetriesOpt = Annotated[
    int, typer.Option(help="Retries of an API request (rate limits, 5xx, timeouts).")
]

# Servers of an API model: --base-url repeated, or a file of them (holisafe.models.endpoints)
BaseUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        help="Server of an OpenAI-compatible (or other) API; repeat to spread the requests "
        "over several.",
    ),
]
EndpointsOpt = Annotated[
    Path | None,
    typer.Option(
        "--endpoints",
        help="File of the model's servers: one URL a line, optionally followed by "
        "concurrency=N (else --concurrency); adds to --base-url.",
    ),
]

# LLM judges
JudgeBaseUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--judge-base-url",
        help="Server of the LLM judges' API (default: the provider's); repeat for several.",
    ),
]
JudgeEndpointsOpt = Annotated[
    Path | None,
    typer.Option(
        "--judge-endpoints",
        help="File of the LLM judges' servers, as --endpoints; adds to --judge-base-url.",
    ),
]
# `holisafe judge`'s first name for --judge-base-url, still accepted.
OldJudgeBaseUrlOpt = Annotated[list[str] | None, typer.Option("--base-url", hidden=True)]
GateOpt = Annotated[
    float | None,
    typer.Option(
        help="Safe-VLMs: refuse without decoding an answer when the safety head's unsafe score "
        "(1 - p(safe)) is at least this (0 < P <= 1)."
    ),
]
GateRefusalOpt = Annotated[
    str | None,
    typer.Option(
        help="With --gate: the refusal text, or `generate` for a refusal the model words itself "
        "(default: a fixed sentence)."
    ),
]
JudgeBatchSizeOpt = Annotated[int, typer.Option(help="Samples per batch (hf judges).")]
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
JudgeBatchOpt = Annotated[
    bool,
    typer.Option(
        "--judge-batch",
        help="Send openai/, anthropic/ and google/ judges' requests through their batch APIs "
        "(about half the price, within 24 h; rerun to collect).",
    ),
]

# Image guards
GuardPolicyOpt = Annotated[
    Path | None,
    typer.Option(help="LlavaGuard: a text file holding its safety policy prompt."),
]
ImageBatchSizeOpt = Annotated[int, typer.Option(help="Images per forward pass.")]

# Safety tuning
MetaTokenPlacementOpt = Annotated[
    str, typer.Option(help="With --vgm meta_token: llm, or vision (LLaVA; the paper's).")
]

# The gating trade-off of a Safe-VLM run (holisafe gate-curve)
TargetRrOpt = Annotated[
    float | None,
    typer.Option(help="Choose the threshold with the lowest mASR whose RR is at most this (%)."),
]
TargetMasrOpt = Annotated[
    float | None,
    typer.Option(help="Choose the threshold with the lowest RR whose mASR is at most this (%)."),
]
MasrReadingOpt = Annotated[
    str,
    typer.Option(
        help="mASR reading the targets and the plot use: pooled (the published tables') or "
        "type_mean (the official scripts' avg_ASR)."
    ),
]


def endpoints(urls: list[str] | None, file: Path | None) -> tuple[Endpoint, ...] | None:
    """The servers that a repeated URL option and an endpoints file name together, as a
    ModelOptions `base_url`; None (the provider's own) when neither names any."""
    from holisafe.models.endpoints import Endpoint, read_endpoints_file

    listed = [Endpoint(url) for url in urls or ()]
    listed += read_endpoints_file(file) if file is not None else ()
    return tuple(listed) or None


# A command's argument that carries a ModelOptions field under another name.
FIELD_OF_ARGUMENT = {"timeout": "timeout_s"}


def model_options(arguments: Mapping[str, object], **overrides: object) -> ModelOptions:
    """The ModelOptions a command's arguments add up to: each argument named as a field (or as
    FIELD_OF_ARGUMENT maps it), then `overrides`. A command passes `locals()` as its first
    statement, so that `arguments` holds its parameters alone."""
    from holisafe.models import ModelOptions

    known = {f.name for f in fields(ModelOptions)}
    given = {FIELD_OF_ARGUMENT.get(name, name): value for name, value in arguments.items()}
    return ModelOptions(**{name: v for name, v in given.items() if name in known} | overrides)
