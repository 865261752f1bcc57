"""`holisafe demo --quick`: the whole pipeline from data to report, as CI runs it."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core.threads import torch_threads
from holisafe.store import Store
from holisafe.synthetic.demo import (
    MARKER,
    MODELS,
    QUICK,
    DemoError,
    run_demo,
    tower_cache_key,
    write_helpful_subset,
)

pytestmark = pytest.mark.slow  # every test here runs a whole demo


@pytest.fixture(scope="module")
def tower_cache(tmp_path_factory):
    """The demos of this module cache their pretrained towers here, not in the user's cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOLISAFE_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, tower_cache):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    return out, result.output


def _masr(output: str, model: str) -> float:
    row = next(line for line in output.splitlines() if f"models/{model} |" in line)
    cells = [cell.strip() for cell in row.split("|")]
    return float(cells[9])  # | Run | Model | Judge | five types | mASR | ...


def test_demo_trains_evaluates_and_reports_three_models(quick_demo):
    out, output = quick_demo
    assert "pictogram-scale" in output
    with Store(out / "demo.sqlite", create=False) as store:
        runs = store.runs()
        assert [run.model.rsplit("/", 1)[-1] for run in runs] == [m.name for m in MODELS]
        for run in runs:
            assert len(store.results(run.id, "string")) == 190
    assert (out / "report" / "index.html").is_file()
    # the plain model never learned to refuse; safety tuning taught it to
    assert _masr(output, "plain-vlm") > _masr(output, "safety-tuned") + 30
    assert re.search(r"guard on 76 images", output)


def test_demo_prints_the_safe_vlms_gating_curve_and_its_chosen_gate(quick_demo):
    _, output = quick_demo
    assert "gating the safe-vlm at the prefill (string judge)" in output
    target = re.search(r"the threshold for RR ≤ ([\d.]+), the ungated RR \+ 5", output)
    chosen = next(line for line in output.splitlines() if "(chosen)" in line)
    as_run = next(line for line in output.splitlines() if "(as run)" in line)
    ungated_rr = float(as_run.split("│")[-2])
    assert float(chosen.split("│")[-2]) <= float(target.group(1))
    assert float(target.group(1)) == pytest.approx(ungated_rr + 5, abs=0.01)


def test_demo_reruns_into_its_own_folder_but_not_a_foreign_one(quick_demo, tmp_path):
    out, _ = quick_demo
    assert (out / MARKER).exists()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="did not write"):
        run_demo(tmp_path, quick=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_helpful_subset_keeps_only_helpful_answers(quick_demo):
    out, _ = quick_demo
    subset = json.loads(write_helpful_subset(out / "mini" / "train").read_text())
    assert subset and {record["type"] for record in subset} == {"SSS"}


def _outcome(out) -> tuple[dict[str, bytes], list]:
    """What a demo produced: its models' weights, its data files, and every stored answer."""
    files = [*out.glob("models/*/model.safetensors"), *out.glob("mini/*/holisafe_*.json")]
    with Store(out / "demo.sqlite", create=False) as store:
        answers = [
            (record.sample.id, record.response.text, record.extra)
            for run in store.runs()
            for record in store.records(run.id)
        ]
    return {str(path.relative_to(out)): path.read_bytes() for path in files}, answers


def test_the_same_seed_gives_the_same_demo(quick_demo, tmp_path):
    first, first_output = quick_demo
    said = []
    run_demo(tmp_path, quick=True, progress=False, say=said.append)
    # the first demo pretrained the tower and cached it; the second copies it
    assert "reusing" not in first_output
    assert any(line.strip().startswith("reusing the tower") for line in said)
    first_files, first_answers = _outcome(first)
    second_files, second_answers = _outcome(tmp_path)
    assert len(first_files) == 4 + 4  # base and three models; bench and three train files
    assert first_files.keys() == second_files.keys()
    assert [n for n in first_files if first_files[n] != second_files[n]] == []
    assert first_answers == second_answers


def test_a_cached_tower_is_reused_only_for_the_same_start(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    key = tower_cache_key(tmp_path, 0, QUICK)
    assert tower_cache_key(tmp_path, 0, QUICK) == key
    assert tower_cache_key(tmp_path, 1, QUICK) != key
    assert tower_cache_key(tmp_path, 0, replace(QUICK, pretrain_images=999)) != key
    with torch_threads(torch.get_num_threads() + 1):
        assert tower_cache_key(tmp_path, 0, QUICK) != key
    (tmp_path / "config.json").write_text('{"model_type": "llava", "x": 1}')
    assert tower_cache_key(tmp_path, 0, QUICK) != key
