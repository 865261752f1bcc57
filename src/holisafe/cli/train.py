"""`holisafe train`: safety-tune a VLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from holisafe.cli.options import MetaTokenPlacementOpt
from holisafe.cli.output import console, report_skipped_lines

app = typer.Typer(rich_markup_mode=None)


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
    meta_token_placement: MetaTokenPlacementOpt = "llm",
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
    end_process_group()
    if result.is_main_process:
        report_skipped_lines(result.skipped)
        what = "a LoRA adapter; holisafe.train.merge_lora(OUT, MERGED) makes a full model"
        if not lora or merge:
            what = "the model; use it as hf/" + str(out)
        console.print(f"trained {result.global_step} steps; {out} holds {what}")


def end_process_group() -> None:
    """Under `accelerate launch`, close the processes' group before exiting: a gloo group left
    open can abort the process at exit ("terminate called without an active exception")."""
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


ACCELERATE_CONFIGS = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")


@app.command("accelerate-config")
def accelerate_config_command(
    name: Annotated[str, typer.Argument(help=f"One of {', '.join(ACCELERATE_CONFIGS)}.")],
) -> None:
    """Print the path of a shipped accelerate config for sharded training, for
    `accelerate launch --config_file PATH -m holisafe train ...`."""
    from importlib.resources import files

    from holisafe.core.errors import HolisafeError

    if name not in ACCELERATE_CONFIGS:
        raise HolisafeError(
            f"unknown accelerate config {name!r}; expected one of {', '.join(ACCELERATE_CONFIGS)}"
        )
    print(files("holisafe.resources").joinpath("accelerate").joinpath(f"{name}.yaml"))
