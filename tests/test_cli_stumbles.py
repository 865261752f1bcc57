"""The first hour's stumbles (issue 27): help, option names, errors that name the next step,
output folders."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import holisafe
from holisafe.cli import app
from holisafe.models.endpoints import Endpoint


def _commands(command, path: list[str]):
    if hasattr(command, "commands"):  # a group
        for name, sub in command.commands.items():
            yield from _commands(sub, [*path, name])
    else:
        yield path, command


COMMANDS = list(_commands(typer.main.get_command(app), []))


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_at_80_columns_shows_every_option_name_whole(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    shown = [p for p in command.params if not getattr(p, "hidden", False)]
    names = [name for p in shown for name in (*p.opts, *p.secondary_opts) if name.startswith("-")]
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), name
    assert "…" not in result.output
    assert max(map(len, result.output.splitlines())) <= 80


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_judges_server_is_judge_base_url_everywhere_and_judge_keeps_base_url_hidden():
    for path in (["eval"], ["judge"], ["compare"], ["data", "build"]):
        assert "--judge-base-url" in invoke(*path, "--help").output, path
    assert "--base-url" not in invoke("judge", "--help").output


def test_judges_old_base_url_still_reaches_the_judge(monkeypatch, tmp_path):
    seen = {}

    def judge_stored(store, judges, *, options, **kwargs):
        seen["base_url"] = options.base_url
        raise SystemExit(0)

    monkeypatch.setattr("holisafe.run.evaluate.judge_stored", judge_stored)
    for name in ("--base-url", "--judge-base-url"):
        invoke("judge", "--store", tmp_path / "s.sqlite", "--judge", "x/y", name, "http://j:1")
        assert seen.pop("base_url") == (Endpoint("http://j:1"),)


def test_report_format_html_points_at_html_dir():
    result = invoke("report", "--reference", "paper", "--format", "html")
    assert "--html DIR" in str(result.exception)


def test_report_after_import_names_the_judge_command(tmp_path):
    from tests.predictionfixtures import (
        official_prediction_records,
        write_bench_of,
        write_official_predictions,
    )

    records = official_prediction_records(count=10, seed=1)
    bench = write_bench_of(tmp_path / "bench", records)
    predictions = write_official_predictions(tmp_path / "predictions", records)
    store = tmp_path / "store.sqlite"
    assert invoke("import", predictions, "--store", store, "--bench", bench).exit_code == 0
    message = str(invoke("report", "--store", store, "--run", 1).exception)
    assert f"holisafe judge --store {store} --run 1 --judge string" in message
    command = message.split("first: ")[1].split(" (or")[0].split()[1:]
    assert invoke(*command).exit_code == 0
    assert invoke("report", "--store", store).exit_code == 0


@pytest.mark.parametrize(
    "command",
    [
        ["model", "tiny", "{out}", "--family", "llava"],
        ["model", "convert", "somewhere", "{out}"],
        ["model", "export-plain", "somewhere", "{out}"],
        ["data", "export", "{source}", "{out}", "--to", "json"],
        ["report", "--store", "{store}", "--html", "{out}"],
        ["report", "--store", "{store}", "--plots", "{out}"],
        ["analyze", "attention", "--model", "m", "--bench", "b", "--out", "{out}"],
    ],
    ids=" ".join,
)
def test_every_folder_writer_refuses_an_existing_folder_with_the_same_words(tmp_path, command):
    from holisafe.core.folders import FolderExistsError
    from tests.datafixtures import write_official

    if command[0] in ("model", "analyze"):
        pytest.importorskip("transformers")  # these commands load it before anything else
    out = tmp_path / "out"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("mine")
    places = {"out": out, "source": write_official(tmp_path / "data"), "store": tmp_path / "s"}
    result = invoke(*(part.format(**places) for part in command))
    assert isinstance(result.exception, FolderExistsError)
    assert str(result.exception) == f"{out} already exists; pass --overwrite to replace it"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_data_export_replaces_a_folder_whole_with_overwrite(tmp_path):
    from tests.datafixtures import write_official

    source = write_official(tmp_path / "data")
    out = tmp_path / "out"
    assert invoke("data", "export", source, out, "--to", "jsonl").exit_code == 0
    (out / "stale.txt").write_text("old")
    result = invoke("data", "export", source, out, "--to", "json", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists()
    assert f"to {out}" in result.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _holisafe_process(*args: str) -> subprocess.CompletedProcess:
    """A fresh process running this checkout's holisafe (transformers not yet imported)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = str(Path(holisafe.__file__).parents[1])
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.slow  # starts a process
def test_loading_and_saving_a_model_prints_no_transformers_bars(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "model"
    # Saving, loading and saving again: the Safe-VLM is converted from a plain tiny model.
    args = ["-m", "holisafe", "model", "tiny", str(out), "--family", "llava", "--vgm", "image_mean"]
    done = _holisafe_process(*args)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr


def test_the_hubs_download_bars_stay():
    pytest.importorskip("transformers")
    check = (
        "from holisafe.core.progress import hide_library_bars\n"
        "hide_library_bars()\n"
        "import transformers.utils.logging as hf_logging\n"
        "from huggingface_hub.utils import are_progress_bars_disabled as off\n"
        "print(hf_logging.is_progress_bar_enabled(), off('huggingface_hub.http_get'))\n"
    )
    done = _holisafe_process("-c", check)
    assert done.stdout.split() == ["False", "False"], done.stderr
