"""Safety tuning on tiny models: collation, losses and gradients, outputs, resume, accelerate."""

import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoProcessor
from transformers.utils import logging as hf_logging

from holisafe.core.records import GenerationSettings, Request
from holisafe.data import load_samples
from holisafe.guards.safety_head import evaluate_guard, load_guard
from holisafe.models import ModelOptions
from holisafe.models.hf import HFModel
from holisafe.run.evaluate import evaluate
from holisafe.synthetic.mini import PAIRS_PER_ROUND, generate_mini
from holisafe.train import (
    SafetyCollator,
    TrainError,
    TrainSettings,
    read_record,
    train,
    trainable_model,
)
from holisafe.train.model import base_model
from holisafe.vgm import VGMSettings, attach_visual_guard, is_safe_vlm, load_safe_vlm
from tests.datafixtures import official_records, write_image, write_official
from tests.modelfixtures import FAMILIES, no_network, picture, tiny_model_dir

REFUSAL = "I'm sorry, but I can't help with that."


def records_with_responses() -> list[dict]:
    records = official_records()
    for record in records:
        helpful = record["type"] == "SSS"
        record["response"] = (
            f"Here is a helpful answer about {record['id']}." if helpful else REFUSAL
        )
    return records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("data"), records_with_responses())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: tiny_model_dir(root, family) for family in FAMILIES}


def settings(base, data, out, **overrides) -> TrainSettings:
    """A few fast steps; checkpoints only where a test asks for them."""
    defaults = dict(batch_size=4, max_steps=3, learning_rate=1e-3, save_steps=1000, log_steps=1)
    return TrainSettings(base=f"hf/{base}", data=str(data), out=str(out), **defaults | overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_cover_exactly_the_assistant_answers(tiny, data_dir, family):
    """Checked against the processor's own assistant mask (the tiny templates mark answers)."""
    processor = AutoProcessor.from_pretrained(tiny[family])
    samples = load_samples(data_dir).samples[:3]
    batch = SafetyCollator(processor)(samples)
    conversations = [
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.query}]},
            {"role": "assistant", "content": [{"type": "text", "text": s.response}]},
        ]
        for s in samples
    ]
    processor.tokenizer.padding_side = "right"
    reference = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True, "images": [[s.image.load()] for s in samples]},
    )
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["labels"] != -100, reference["assistant_masks"].bool())
    for row, sample in zip(batch["labels"], samples, strict=True):
        answer = processor.tokenizer.decode(row[row != -100], skip_special_tokens=True)
        assert answer.strip() == sample.response
    assert batch["safety_labels"].tolist() == [s.image_safety_label for s in samples]


def test_every_answer_of_a_llava_conversation_is_a_target(tiny, tmp_path):
    write_image(tmp_path / "a.png", (200, 40, 40))
    turns = ["<image>\nWhat is this?", "A red square.", "Is it safe?", "Yes, it is harmless."]
    record = {
        "id": "c1",
        "image": "a.png",
        "conversations": [
            {"from": "human" if i % 2 == 0 else "gpt", "value": text}
            for i, text in enumerate(turns)
        ],
    }
    (tmp_path / "train.json").write_text(json.dumps([record]))
    (sample,) = load_samples(tmp_path / "train.json").samples
    processor = AutoProcessor.from_pretrained(tiny["llava"])
    labels = SafetyCollator(processor, with_safety_labels=False)([sample])["labels"][0]
    answers = processor.tokenizer.decode(labels[labels != -100], skip_special_tokens=True)
    assert " ".join(answers.split()) == "A red square. Yes, it is harmless."


def test_meta_tokens_are_placed_and_never_targets(tiny, data_dir):
    processor = AutoProcessor.from_pretrained(tiny["llava"])
    model = attach_visual_guard(str(tiny["llava"]), VGMSettings(), processor)
    batch = SafetyCollator(processor, prepare_inputs=model.prepare_inputs)(
        load_samples(data_dir).samples
    )
    meta = batch["input_ids"] == model.vgm.meta_token_id
    assert meta.sum(1).tolist() == [1] * len(batch["input_ids"])
    assert (batch["labels"][meta] == -100).all()
    assert (batch["attention_mask"][:, 0] == 1).all()  # padded on the right


def test_samples_without_a_response_are_named(tiny, tmp_path):
    records = records_with_responses()
    del records[2]["response"], records[4]["response"]
    data = write_official(tmp_path / "data", records)
    with pytest.raises(TrainError, match=r"2 sample\(s\) have no response .*ids 3, 5"):
        train(settings(tiny["llava"], data, tmp_path / "out"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vgm": "max"}, "unknown --vgm"),
        ({"meta_token_placement": "encoder"}, "unknown --meta-token-placement"),
        ({"vgm": "image_mean", "meta_token_placement": "vision"}, "needs --vgm meta_token"),
        ({"merge": True}, "--merge applies to --lora"),
        ({"lora": True, "freeze_vision": False}, "language model only"),
        ({"batch_size": 0}, "batch size must be positive"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(TrainError, match=message):
        TrainSettings(base="hf/x", data="d", out="o", **overrides)


@pytest.mark.parametrize("lora", [False, True])
def test_loss_falls_and_gradients_reach_head_meta_token_and_lora(tiny, data_dir, lora):
    run = settings(tiny["llava"], data_dir, "unused", lora=lora)
    processor = AutoProcessor.from_pretrained(tiny["llava"])
    model = trainable_model(run, str(tiny["llava"]), processor)
    safe = model.get_base_model() if lora else model
    batch = SafetyCollator(processor, prepare_inputs=safe.prepare_inputs)(
        load_samples(data_dir).samples
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        output = model(**batch)
        optimizer.zero_grad()
        output.loss.backward()
        if not losses:
            check_gradients(model, safe, lora)
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert output.safety_loss.item() > 0 and output.lm_loss.item() > 0


def check_gradients(model, safe, lora: bool) -> None:
    named = dict(model.named_parameters())
    head = [p for n, p in named.items() if "img_safety_head" in n and p.requires_grad]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    vision = [p for n, p in named.items() if "vision_tower" in n]
    assert all(not p.requires_grad for p in vision)
    meta_id = safe.vgm.meta_token_id
    if lora:
        adapters = [p for n, p in named.items() if "lora_B" in n]
        assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
        (delta,) = [p for n, p in named.items() if "trainable_tokens_delta" in n]
        assert delta.grad.abs().sum() > 0
        embeddings = [p for n, p in named.items() if "embed_tokens" in n and "delta" not in n]
        assert embeddings and not any(p.requires_grad for p in embeddings)
    else:
        row = safe.get_input_embeddings().weight.grad[meta_id]
        assert row.abs().sum() > 0


def test_full_tuning_writes_a_safe_vlm_that_loads_and_answers(tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    result = train(settings(tiny["llava"], data_dir, out, eval_data=str(data_dir)), progress=False)
    assert result.global_step == 3 and result.adapter_dir is None
    assert any("safety_loss" in e and "head_accuracy" in e for e in result.log_history)
    # 7 samples in batches of 4: the held-out set is scored after each epoch's 2 steps and at
    # the end of the run's partial second epoch
    scored = [e for e in result.log_history if "eval_loss" in e]
    assert [e["step"] for e in scored] == [2, 3]
    assert all(0 <= e["eval_head_accuracy"] <= 1 and e["eval_safety_loss"] > 0 for e in scored)
    record = read_record(out)
    assert record.settings.base == f"hf/{tiny['llava']}" and record.global_step == 3
    trained = load_safe_vlm(str(out))
    untrained = AutoConfig.from_pretrained(tiny["llava"])
    assert not is_safe_vlm(untrained) and trained.vgm.head_input == "meta_token"
    with no_network():
        model = HFModel(f"hf/{out}", device="cpu")
    (response,) = model.generate(
        [Request("What is shown?", picture(40, 40, (200, 0, 0)))],
        GenerationSettings(max_new_tokens=5),
    )
    assert response.text is not None and response.safety is not None


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    generate_mini(out, seed=3, bench_pairs=PAIRS_PER_ROUND, train_pairs=PAIRS_PER_ROUND, size=48)
    return out


@pytest.mark.parametrize(
    ("placement", "lora"), [("llm", False), ("vision", False), ("vision", True)]
)
def test_both_meta_token_placements_train_on_mini_save_load_and_classify(
    tiny, mini, tmp_path, placement, lora
):
    out = tmp_path / "out"
    run = settings(
        tiny["llava"],
        mini / "train",
        out,
        meta_token_placement=placement,
        lora=lora,
        merge=lora,
        limit=16,
    )
    train(run, progress=False)
    trained = load_safe_vlm(str(out))
    assert trained.vgm.meta_token_placement == placement
    processor = AutoProcessor.from_pretrained(tiny["llava"])
    plain = dataclasses.replace(run, lora=False, merge=False)
    untrained = base_model(plain, str(tiny["llava"]), processor)
    meta = trained.vgm.meta_token_id
    if placement == "vision":
        learnt, start = trained.vision_meta_token.embedding, untrained.vision_meta_token.embedding
    else:
        learnt = trained.get_input_embeddings().weight[meta]
        start = untrained.get_input_embeddings().weight[meta]
    assert not torch.equal(learnt, start)
    frozen = "model.vision_tower.embeddings.patch_embedding.weight"
    assert torch.equal(trained.state_dict()[frozen], untrained.state_dict()[frozen])
    with no_network():
        guard = load_guard(f"hf/{out}", ModelOptions(device="cpu", batch_size=4))
    metrics = evaluate_guard(guard, mini / "bench", limit=6)
    assert metrics.n == 6 and sum(metrics.label_counts.values()) == 6


def test_a_safe_vlm_trains_only_with_its_own_placement(tiny, data_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny["llava"])
    attach_visual_guard(str(tiny["llava"]), VGMSettings(), processor).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    run = settings(tmp_path, data_dir, "unused", meta_token_placement="vision")
    with pytest.raises(TrainError, match="--vgm meta_token --meta-token-placement llm"):
        base_model(run, str(tmp_path), processor)


def test_vgm_none_writes_a_plain_model(tiny, data_dir, tmp_path):
    train(settings(tiny["qwen2_5_vl"], data_dir, tmp_path / "out", vgm="none"), progress=False)
    assert not is_safe_vlm(AutoConfig.from_pretrained(tmp_path / "out"))


def test_lora_merge_equals_base_plus_adapter(tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    run = settings(tiny["gemma3"], data_dir, out, lora=True, merge=True)
    result = train(run, progress=False)
    assert result.adapter_dir == out / "adapter"
    assert not (out / "adapter_config.json").exists()
    merged = load_safe_vlm(str(out)).eval()
    processor = AutoProcessor.from_pretrained(result.adapter_dir)
    adapted = PeftModel.from_pretrained(
        base_model(read_record(result.adapter_dir).settings, str(tiny["gemma3"]), processor),
        str(result.adapter_dir),
    ).eval()
    batch = SafetyCollator(processor, prepare_inputs=merged.prepare_inputs)(
        load_samples(data_dir).samples[:2]
    )
    with torch.no_grad():
        expected, got = adapted(**batch), merged(**batch)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.img_safety_probs, expected.img_safety_probs)
    untouched = base_model(read_record(out).settings, str(tiny["gemma3"]), processor)
    meta = merged.vgm.meta_token_id
    assert not torch.equal(
        merged.get_input_embeddings().weight[meta], untouched.get_input_embeddings().weight[meta]
    )


def test_an_out_folder_with_checkpoints_needs_resume(tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainError, match="nothing to resume"):
        train(settings(tiny["llava"], data_dir, out, resume=True))
    train(settings(tiny["llava"], data_dir, out, max_steps=1), progress=False)
    with pytest.raises(TrainError, match="pass --resume"):
        train(settings(tiny["llava"], data_dir, out))


def cli_env() -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return env | {"TRANSFORMERS_VERBOSITY": "info", "PYTHONUNBUFFERED": "1"}


def train_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("train", "--base", f"hf/{base}", "--data", str(data), "--out", str(out)),
        *("--batch-size", "1", "--lr", "1e-3", "--log-steps", "1", *extra),
    ]


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "holisafe", *train_args(tiny["llava"], data_dir, out)]
    command += ["--max-steps", "120", "--save-steps", "5"]
    first = subprocess.Popen(
        command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = out / "checkpoints"
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")) and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = max(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("*/trainer_state.json"))
    assert 0 < saved < 120
    resumed = subprocess.run(
        [*command, "--resume"], env=cli_env(), capture_output=True, text=True, check=True
    )
    step = re.search(
        r"Resuming training from checkpoint with epoch \d+ and global step (\d+)",
        resumed.stdout + resumed.stderr,
    )
    assert step and int(step.group(1)) == saved
    record = read_record(out)
    assert record.global_step == 120
    assert load_safe_vlm(str(out)).vgm.head_input == "meta_token"
    # the same run without the kill ends with the same weights and the same loss curve
    whole = tmp_path / "whole"
    train(dataclasses.replace(record.settings, out=str(whole), resume=False), progress=False)
    assert_same_weights(whole / "model.safetensors", out / "model.safetensors")
    assert losses(read_record(whole).log_history) == pytest.approx(
        losses(record.log_history), rel=1e-5
    )


def assert_same_weights(expected: Path, got: Path) -> None:
    expected, got = load_file(expected), load_file(got)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def losses(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def interrupted_copy(uninterrupted: Path, step: int, out: Path) -> None:
    """`out` as a run killed right after saving checkpoint `step` of `uninterrupted` left it."""
    (out / "checkpoints").mkdir(parents=True)
    checkpoint = f"checkpoints/checkpoint-{step}"
    shutil.copytree(uninterrupted / checkpoint, out / checkpoint)
    shutil.copy(uninterrupted / "checkpoints" / "holisafe_run.json", out / "checkpoints")


@pytest.mark.parametrize(
    ("family", "options", "weights"),
    [
        ("llava", {}, "model.safetensors"),
        ("llava", {"freeze_vision": False}, "model.safetensors"),
        ("llava", {"lora": True}, "adapter_model.safetensors"),
        ("gemma3", {}, "model.safetensors"),  # its output layer is tied to the embeddings
        ("qwen2_5_vl", {"vgm": "image_mean"}, "model.safetensors"),
    ],
    ids=["full", "vision-trained", "lora", "gemma3", "qwen2_5_vl"],
)
def test_a_resumed_run_ends_as_the_uninterrupted_one(
    tiny, data_dir, tmp_path, family, options, weights
):
    """Every trained weight (language model, vision tower, LoRA, meta-token row, head), the
    optimizer, scheduler, RNG (dropout) and data order come back from the checkpoint."""
    run = functools.partial(
        settings, tiny[family], data_dir, batch_size=2, max_steps=6, save_steps=3, **options
    )
    whole = train(run(tmp_path / "whole"), progress=False)
    interrupted_copy(tmp_path / "whole", 3, tmp_path / "resumed")
    resumed = train(run(tmp_path / "resumed", resume=True), progress=False)
    assert_same_weights(tmp_path / "whole" / weights, tmp_path / "resumed" / weights)
    assert losses(resumed.log_history) == pytest.approx(losses(whole.log_history), rel=1e-6)
    assert len(losses(resumed.log_history)) == 6


def test_resuming_with_other_settings_is_refused_with_the_list(tiny, data_dir, tmp_path):
    run = functools.partial(settings, tiny["llava"], max_steps=1, save_steps=1)
    train(run(data_dir, tmp_path / "out"), progress=False)
    other_data = write_official(tmp_path / "other", records_with_responses()[::-1])
    changed = run(
        other_data, tmp_path / "out", resume=True, learning_rate=5e-4, batch_size=2,
        safety_lambda=0.5, log_steps=5,
    )  # fmt: skip
    with pytest.raises(TrainError) as refused:
        train(changed, progress=False)
    message = str(refused.value)
    for name in ("data ", "data content", "learning_rate", "batch_size", "safety_lambda"):
        assert name in message
    assert "log_steps" not in message  # how often it logs is not what it learns


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("vision", [(), ("--no-freeze-vision",)], ids=["frozen", "trained"])
def test_accelerate_launch_trains_on_two_processes(tiny, data_dir, tmp_path, vision):
    """Trained vision makes DDP search for unused parameters and rebuild the model's output,
    which must keep the safety fields."""
    out = tmp_path / "out"
    launcher = Path(sys.executable).with_name("accelerate")
    command = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "holisafe",
        *train_args(tiny["llava"], data_dir, out, "--max-steps", "2", "--save-steps", "1", *vision),
    ]  # fmt: skip
    subprocess.run(command, env=cli_env(), capture_output=True, check=True, timeout=300)
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # two processes, one sample each per step: 7 samples make an epoch of 4 steps, not 7
    assert state["log_history"][0]["epoch"] == pytest.approx(1 / 4)
    assert sorted(p.name for p in (out / "checkpoints" / "checkpoint-2").glob("rng_state_*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    with no_network():
        outcome = evaluate(
            f"hf/{out}",
            data_dir,
            tmp_path / "store.sqlite",
            settings=GenerationSettings(max_new_tokens=4),
        )
    assert outcome.generated == len(records_with_responses()) and not outcome.response_errors


def test_skipped_training_records_are_reported(tiny, tmp_path):
    records = records_with_responses()
    records[2]["type"] = "bad"
    data = write_official(tmp_path / "data", records)
    run = settings(tiny["llava"], data, tmp_path / "out", max_steps=1, skip_invalid=True)
    result = train(run, progress=False)
    assert len(result.skipped) == 1
    assert result.skipped[0].startswith("id 3: unknown safeness type 'bad'")


def test_a_model_in_out_is_replaced_only_with_overwrite(tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(TrainError, match=r"already holds a trained model .*--overwrite"):
        train(settings(tiny["llava"], data_dir, out))
    assert (out / "config.json").read_text() == "{}"
    train(settings(tiny["llava"], data_dir, out, max_steps=1, overwrite=True), progress=False)
    assert is_safe_vlm(AutoConfig.from_pretrained(out))
    # The finished run left a checkpoint; --overwrite starts afresh all the same.
    train(settings(tiny["llava"], data_dir, out, max_steps=1, overwrite=True), progress=False)


def test_held_out_data_errors_say_evaluate(tiny, data_dir, tmp_path):
    records = records_with_responses()
    del records[0]["response"]
    held_out = write_official(tmp_path / "held-out", records)
    with pytest.raises(TrainError, match="no response to evaluate on"):
        train(settings(tiny["llava"], data_dir, tmp_path / "out", eval_data=str(held_out)))


def test_redirected_training_prints_progress_lines_and_keeps_stdout_clean(
    tiny, data_dir, tmp_path, capfd
):
    hf_logging.disable_progress_bar()  # loading and saving bars, as the CLI does
    try:
        train(settings(tiny["llava"], data_dir, tmp_path / "out", max_steps=4, log_steps=1))
    finally:
        hf_logging.enable_progress_bar()
    out, err = capfd.readouterr()
    assert "loss" not in out  # Trainer's own printer would put every log dict here
    lines = [line for line in err.splitlines() if line.startswith("training: ")]
    assert lines[0].startswith("training: 0/4 (") and lines[-1].startswith("training: 4/4 loss ")
    assert "it/s" not in err  # no tqdm bar
