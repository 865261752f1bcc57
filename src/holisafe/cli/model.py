"""`holisafe model`: build model folders (tiny models, converted and plain checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from holisafe.cli.options import MetaTokenPlacementOpt, OverwriteOpt
from holisafe.cli.output import console

app = typer.Typer(help="Build model folders.", no_args_is_help=True, rich_markup_mode=None)


@app.command("tiny")
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
    meta_token_placement: MetaTokenPlacementOpt = "llm",
    pretrain_vision: Annotated[
        int,
        typer.Option(
            help="LLaVA: first teach the vision tower to name pictograms on this many rendered "
            "images (0: leave it random)."
        ),
    ] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a tiny, randomly initialised model of a real VLM class, loadable as hf/OUT."""
    import tempfile

    from holisafe.core.folders import new_folder
    from holisafe.synthetic.tiny import build_tiny_model
    from holisafe.synthetic.vision_pretrain import pretrain_vision_tower
    from holisafe.vgm import VGMError, VGMSettings, convert_folder

    settings = None
    if vgm:
        settings = VGMSettings(head_input=vgm, meta_token_placement=meta_token_placement)
    elif meta_token_placement != "llm":
        raise VGMError("--meta-token-placement places the meta token of --vgm meta_token")
    with new_folder(out, overwrite) as building, tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) if vgm else building
        build_tiny_model(plain, family, seed=seed)
        if pretrain_vision:
            stats = pretrain_vision_tower(plain, seed=seed, images=pretrain_vision, progress=True)
            console.print(
                f"vision tower pretrained on {stats.images} images in {stats.seconds:.0f} s: its "
                f"top pictogram is on {stats.naming_accuracy:.1%} of held-out images (always "
                f"naming the most common one: {stats.chance:.1%})"
            )
        if settings:
            convert_folder(str(plain), str(building), settings, seed=seed)
    kind = f"Safe-VLM (head input {settings.describe()})" if settings else "model"
    console.print(f"wrote a tiny {family} {kind} to {out}; use it as hf/{out}")


@app.command("convert")
def model_convert(
    source: Annotated[str, typer.Argument(help="Released Safe-VLM: folder or Hub id.")],
    out: Annotated[Path, typer.Argument(help="New folder for the converted model.")],
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            help="Run the release's own code: to verify the conversion, and for SafeLLaVA to "
            "convert it."
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            help="Compare the converted model with the release's own code on probe images "
            "(needs --trust-remote-code); --no-verify converts unverified."
        ),
    ] = True,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert a released Safe-VLM (SafeLLaVA, SafeQwen2.5-VL, SafeGem) to the toolkit's own
    classes, so that it loads as hf/OUT without remote code; the conversion is refused when
    the converted model disagrees with the release's own code (see OUT/conversion.json)."""
    from holisafe.models.convert import UNVERIFIED, convert_released

    family = convert_released(
        source.removeprefix("hf/"),
        out,
        trust_remote_code=trust_remote_code,
        verify=verify,
        overwrite=overwrite,
    )
    checked = "verified against its own code" if verify else f"unverified: {UNVERIFIED}"
    console.print(f"wrote a {family} Safe-VLM to {out} ({checked}); use it as hf/{out}")


@app.command("export-plain")
def model_export_plain(
    source: Annotated[Path, typer.Argument(help="A Safe-VLM folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the plain checkpoint to.")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a Safe-VLM as a plain checkpoint of its base class (no safety head), loadable by
    stock transformers and evaluation suites such as lmms-eval."""
    from holisafe.core.folders import new_folder
    from holisafe.vgm.export import export_plain

    with new_folder(out, overwrite) as building:
        export_plain(source, building)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    console.print(f"wrote {', '.join(config['architectures'])} to {out}", markup=False)
