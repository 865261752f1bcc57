"""CI: the lean core (`pip install holisafe`, no extras) answers a benchmark with an API model
and reports it, with no torch installed.

    make lean     # installs .venv-lean (the core alone), then runs this with its python

A loopback OpenAI-compatible stub answers; `holisafe eval` and `holisafe report` run as a user
runs them, from the lean environment's own `holisafe` command.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from tests.datafixtures import write_official
from tests.stub_servers import openai_stub

ABSENT = ("torch", "transformers", "matplotlib", "fastapi")


def run(*command: object) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def main() -> None:
    present = [name for name in ABSENT if importlib.util.find_spec(name) is not None]
    if present:
        raise SystemExit(f"the lean environment has {', '.join(present)}; it must not")
    holisafe = Path(sys.executable).with_name("holisafe")
    with tempfile.TemporaryDirectory() as tmp, openai_stub(api_key=None) as stub:
        bench = write_official(Path(tmp) / "bench")
        store = Path(tmp) / "runs.db"
        run(holisafe, "eval", "--model", "openai/stub-model", "--base-url", stub.url,
            "--bench", bench, "--store", store)  # fmt: skip
        shown = run(holisafe, "report", "--store", store, "--provenance")
        plots = subprocess.run(
            [str(holisafe), "report", "--store", str(store), "--plots", f"{tmp}/plots"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if plots.returncode != 2 or "pip install 'holisafe[plots]'" not in plots.stderr:
        raise SystemExit(f"plots without matplotlib should name the extra:\n{plots.stderr}")
    if "openai/stub-model" not in shown or "torch absent" not in shown:
        raise SystemExit(f"the report does not show the run as expected:\n{shown}")
    print(f"lean core ({', '.join(ABSENT)} absent): holisafe eval and report ran")


if __name__ == "__main__":
    main()
