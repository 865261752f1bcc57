"""Sharded training: FSDP (and DeepSpeed ZeRO, where it runs) against one process.

The sharded run has two processes with one sample each per step, the reference one process with
both, so every step sees the same two samples (one seed, one shuffled order). Every answer has the
same length, so the mean of the two processes' per-token LM losses is the one process's. Dropout
is off in both (tests/train_without_dropout.py), since each process draws its own masks.
Tolerance: losses equal to a relative 1e-5, weights to 1e-6 absolute plus 1e-5 relative (the
sums of a reduce-scatter come in another order than one process's).
"""

import importlib.util
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core.errors import HolisafeError
from holisafe.core.records import GenerationSettings
from holisafe.models import ModelOptions
from holisafe.run.evaluate import evaluate
from holisafe.train import TrainError, read_record
from holisafe.train.trainer import shard_on_cpu
from tests.datafixtures import official_records, write_official
from tests.modelfixtures import no_network, tiny_model_dir
from tests.test_train import REFUSAL, assert_same_weights, cli_env, free_port

STEPS = 3
SAFETY_FIELDS = (
    "safety_categories",
    "num_safety_categories",
    "safety_head_hidden_scale",
    "safety_num_hidden_layers",
    "safety_loss_lambda",
)
HEAD_WEIGHTS = [f"img_safety_head.mlp.{i}.{kind}" for i in (0, 3) for kind in ("weight", "bias")]
RUNNER = Path(__file__).with_name("train_without_dropout.py")


def shipped_config(name: str) -> str:
    return str(files("holisafe.resources").joinpath("accelerate").joinpath(f"{name}.yaml"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"), "llava")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    records = official_records()
    for record in records:
        record["response"] = REFUSAL
    return write_official(tmp_path_factory.mktemp("data"), records)


RUNS = {
    "full": ("--meta-token-placement", "llm"),
    # LoRA with the vision-side meta token and the head as modules_to_save, merged at the end
    "lora": ("--meta-token-placement", "vision", "--lora", "--merge"),
}


def options(base: Path, data: Path, out: Path, batch_size: int, run: str) -> list[str]:
    return [
        *("train", "--base", f"hf/{base}", "--data", str(data), "--out", str(out)),
        *("--lr", "1e-3", "--log-steps", "1", "--max-steps", str(STEPS), "--limit", "6"),
        *("--save-steps", str(STEPS), "--batch-size", str(batch_size), *RUNS[run]),
    ]


@pytest.fixture(scope="module")
def one_process(tiny, data, tmp_path_factory):
    """The reference run of each kind, made once."""
    made = {}

    def run(kind: str) -> Path:
        if kind not in made:
            out = tmp_path_factory.mktemp("single") / kind
            command = [sys.executable, str(RUNNER), *options(tiny, data, out, 2, kind)]
            subprocess.run(command, env=cli_env(), capture_output=True, check=True, timeout=300)
            made[kind] = out
        return made[kind]

    return run


def two_processes(config: str, base: Path, data: Path, out: Path, run: str) -> None:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", shipped_config(config),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        str(RUNNER), *options(base, data, out, 1, run),
    ]  # fmt: skip
    env = cli_env() | {"DS_ACCELERATOR": "cpu"}  # DeepSpeed's CPU accelerator, over gloo
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same_run(single: Path, sharded: Path, run: str) -> None:
    weights = "model.safetensors"
    for folder in (single, sharded):
        assert (folder / weights).exists() and not (folder / "adapter_config.json").exists()
    assert_same_weights(single / weights, sharded / weights)
    names = load_file(sharded / weights).keys()
    assert set(HEAD_WEIGHTS) <= names
    meta_token = "vision_meta_token.embedding" if run == "lora" else "embed_tokens.weight"
    assert any(name.endswith(meta_token) for name in names)
    config, expected = (json.loads((f / "config.json").read_text()) for f in (sharded, single))
    assert {k: config[k] for k in SAFETY_FIELDS} == {k: expected[k] for k in SAFETY_FIELDS}
    assert config["safety_meta_token_id"] == expected["safety_meta_token_id"] is not None
    history, reference = (read_record(folder).log_history for folder in (sharded, single))
    for figure in ("loss", "lm_loss", "safety_loss"):
        got, want = ([e[figure] for e in h if figure in e] for h in (history, reference))
        assert len(got) == STEPS and got == pytest.approx(want, rel=1e-5), figure
    if run == "lora":
        adapter = "adapter/adapter_model.safetensors"
        assert_same_weights(single / adapter, sharded / adapter)


def assert_loads_in_guard_and_eval(model: Path, data: Path, tmp_path: Path) -> None:
    """`holisafe guard` classifies with the head; `eval` (its library call) answers."""
    images = sorted((data / "images").iterdir())[:2]
    with no_network():
        guarded = CliRunner().invoke(
            app, ["guard", "--model", f"hf/{model}", *map(str, images), "--json", "--device", "cpu"]
        )
        assert guarded.exit_code == 0, guarded.output
        lines = [json.loads(line) for line in guarded.stdout.splitlines()]
        assert len(lines) == 2 and all(0 <= line["prob"] <= 1 for line in lines)
        outcome = evaluate(
            f"hf/{model}",
            data,
            tmp_path / "store.sqlite",
            settings=GenerationSettings(max_new_tokens=3),
            options=ModelOptions(device="cpu"),
            limit=2,
        )
    assert outcome.generated == 2 and not outcome.response_errors


def sharded_files(config: str) -> list[str]:
    """Files a checkpoint holds only when the run was sharded: FSDP's own model and optimizer
    state, or DeepSpeed ZeRO's optimizer-state partition of each process."""
    if config == "fsdp":
        return ["pytorch_model_fsdp.bin"]
    return [f"global_step{STEPS}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]


deepspeed_installed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
)
CONFIGS = [
    "fsdp",
    pytest.param("deepspeed-zero2", marks=deepspeed_installed),
    pytest.param("deepspeed-zero3", marks=deepspeed_installed),
]


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("config", CONFIGS)
def test_two_cpu_processes_sharded_equal_one_process(
    one_process, tiny, data, tmp_path, config, run
):
    sharded = tmp_path / config
    two_processes(config, tiny, data, sharded, run)
    checkpoint = sharded / "checkpoints" / f"checkpoint-{STEPS}"
    for name in sharded_files(config):
        assert (checkpoint / name).exists(), name
    assert_same_run(one_process(run), sharded, run)
    assert_loads_in_guard_and_eval(sharded, data, tmp_path)


def test_fsdp1_on_cpu_is_refused_not_run_unsharded(monkeypatch):
    """accelerate would run an FSDP config on CPUs as plain data parallelism; the trainer
    shards with FSDP2 there, and refuses FSDP1, which torch does not shard on CPU."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(TrainError, match="fsdp_version: 2"):
        shard_on_cpu(accelerator=None)


def test_accelerate_config_prints_a_shipped_config_and_names_the_choices():
    runner = CliRunner()
    for name in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        printed = runner.invoke(app, ["accelerate-config", name])
        assert printed.exit_code == 0 and Path(printed.stdout.strip()) == Path(shipped_config(name))
        assert Path(shipped_config(name)).is_file()
    refused = runner.invoke(app, ["accelerate-config", "zero"])  # main() prints it in one line
    assert isinstance(refused.exception, HolisafeError)
    assert "expected one of fsdp, deepspeed-zero2, deepspeed-zero3" in str(refused.exception)
