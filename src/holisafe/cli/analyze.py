"""`holisafe analyze`: analyse models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from holisafe.cli.options import (
    BenchOpt,
    DeviceOpt,
    DtypeOpt,
    HeadInputOpt,
    LimitOpt,
    OverwriteOpt,
    SkipInvalidOpt,
    TrustRemoteCodeOpt,
    model_options,
)
from holisafe.cli.output import console

app = typer.Typer(help="Analyse models.", no_args_is_help=True, rich_markup_mode=None)


@app.command("attention")
def analyze_attention(
    model: Annotated[str, typer.Option(help="Model spec: hf/<id or dir>.")],
    bench: BenchOpt,
    out: Annotated[Path, typer.Option(help="Folder for the CSV and PNG files.")],
    limit: LimitOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per sample.")] = 32,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    skip_invalid: SkipInvalidOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    head_input: HeadInputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Attention of generated tokens to the safety meta token and the visual tokens, per layer."""
    options = model_options(locals(), batch_size=1)
    from holisafe.analysis import attention_analysis
    from holisafe.core.folders import new_folder

    with new_folder(out, overwrite) as building:
        report = attention_analysis(
            model,
            bench,
            building,
            limit=limit,
            max_new_tokens=max_new_tokens,
            options=options,
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
    console.print("wrote " + ", ".join(str(out / path.name) for path in report.files))
