"""`holisafe demo`: the whole flow on HoliSafe-Mini with tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from holisafe.cli.output import (
    console,
    print_gate_curve,
    print_guard_metrics,
    print_leaderboard,
)

app = typer.Typer(rich_markup_mode=None)


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
    pin_kernels: Annotated[
        bool,
        typer.Option(
            help="Pin torch's and MKL's CPU kernels to one set, so that the seed gives the same "
            "figures on any x86-64 CPU with AVX2; --no-pin-kernels runs this CPU's own (faster)."
        ),
    ] = True,
) -> None:
    """Generate HoliSafe-Mini, train three tiny VLMs, evaluate them and write the report."""
    from holisafe.core.kernels import pin_kernels as pin

    # before torch loads: it reads the kernel settings once
    kernels = pin() if pin_kernels else "CPU kernels: this CPU's own (--no-pin-kernels)"
    from transformers.utils import logging as hf_logging

    from holisafe.synthetic.demo import MODELS, SCALE_NOTE, run_demo

    hf_logging.disable_progress_bar()  # loading and saving bars; training keeps its own
    hf_logging.set_verbosity_error()  # a new guard module's missing weights are expected
    console.print(SCALE_NOTE, style="yellow")
    console.print(kernels)
    result = run_demo(out, quick=quick, seed=seed, threads=threads, say=console.print)
    print()
    for model in MODELS:
        console.print(f"{model.name}: {model.description}")
    print_leaderboard(result.store, None)
    if result.guard is not None:
        print_guard_metrics(result.guard)
    gate = result.gate
    title = "gating the safe-vlm at the prefill (string judge)"
    print_gate_curve(gate.curve, title, 7, gate.chosen, gate.target)
    console.print(f"HTML report: {result.report}")
    console.print(f"finished in {result.seconds:.0f} s. {SCALE_NOTE}", style="yellow")
