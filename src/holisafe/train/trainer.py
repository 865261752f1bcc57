"""Safety tuning on transformers' Trainer, so `accelerate launch` scales it with no code change.

One process or many (DDP, FSDP, DeepSpeed through an accelerate config); mixed precision on
a GPU; checkpoints every N steps and resume; evaluation on a held-out set after each epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env
from rich.progress import TextColumn
from transformers import (
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from holisafe.core.progress import progress_bar
from holisafe.data import Sample, first, load_samples
from holisafe.models.convert import native_base
from holisafe.models.hf import gpu_half_dtype
from holisafe.train.collate import IGNORE, collator_for, require_responses
from holisafe.train.model import load_processor, merge_lora, source_of, trainable_model
from holisafe.train.record import TrainRecord, write_record
from holisafe.train.settings import TrainError, TrainSettings

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
RELEASED_BASE = "released-base"  # a released checkpoint converted to the toolkit's classes
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What the checkpoints in `out/checkpoints` were made with, written before the first step.
CHECKPOINT_SETTINGS = "holisafe_run.json"
# Settings a resumed run may change: where and how often it writes and logs, nothing it learns.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "resume",
        "overwrite",
        "save_steps",
        "keep_checkpoints",
        "log_steps",
        "report_to",
        "merge",
    }
)
MODEL_FILES = ("config.json", *ADAPTER_FILES)


class SafetyTrainer(Trainer):
    """Trainer that logs the LM loss, the safety loss and the head's accuracy beside the loss.

    The loss is the model's own (LM loss + λ · safety loss, each a mean over its batch); the
    batch carries `safety_labels` to the model untouched.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Both losses are batch means, so Trainer scales them for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        self._figures = {"train": None, "eval": None}

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if (
            parse_flag_from_env("ACCELERATE_USE_FSDP")
            and self.accelerator.distributed_type == DistributedType.MULTI_CPU
        ):
            shard_on_cpu(self.accelerator)
            self.is_fsdp_enabled = True

    def _save_checkpoint(self, model, trial) -> None:
        with _parameter_names_kept(self.accelerator.unwrap_model(self.model)):
            super()._save_checkpoint(model, trial)

    def _issue_warnings_after_load(self, load_result) -> None:
        """A resumed run must get back every weight it saved: a partial load is an error.
        Tied weights (an output layer that is the input embedding) are saved once."""
        tied = getattr(self.model, "all_tied_weights_keys", None) or {}
        ignored = set(self.model._keys_to_ignore_on_save or ()) | set(tied)
        missing = set(load_result.missing_keys) - ignored
        if missing or load_result.unexpected_keys:
            raise TrainError(
                f"the checkpoint's weights do not match the model (missing: "
                f"{', '.join(sorted(missing)[:5]) or 'none'}; unexpected: "
                f"{', '.join(sorted(load_result.unexpected_keys)[:5]) or 'none'}); it was not "
                "written by this run's model and cannot be resumed"
            )
        super()._issue_warnings_after_load(load_result)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if outputs.get("safety_loss") is not None:
            self._add_figures(
                outputs, inputs["safety_labels"], "train" if model.training else "eval"
            )
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def _add_figures(self, outputs, safety_labels: torch.Tensor, mode: str) -> None:
        labelled = safety_labels != IGNORE
        predicted = outputs["img_safety_logits"].argmax(-1)
        # Summed between two log lines: LM loss, safety loss, batches, correct, labelled images.
        batch = torch.stack(
            [
                outputs["lm_loss"].detach().float(),
                outputs["safety_loss"].detach().float(),
                torch.ones((), device=predicted.device),
                (predicted == safety_labels)[labelled].sum().float(),
                labelled.sum().float(),
            ]
        )
        total = self._figures[mode]
        self._figures[mode] = batch if total is None else total + batch

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process logs at the same points, so the figures are summed over processes here.
        mode = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
        if mode is not None and self._figures[mode] is not None:
            total = self.accelerator.reduce(self._figures[mode], reduction="sum").tolist()
            self._figures[mode] = None
            prefix = "eval_" if mode == "eval" else ""
            logs[f"{prefix}lm_loss"] = total[0] / total[2]
            logs[f"{prefix}safety_loss"] = total[1] / total[2]
            if total[4]:
                logs[f"{prefix}head_accuracy"] = total[3] / total[4]
        super().log(logs, start_time)


def shard_on_cpu(accelerator) -> None:
    """Shard an FSDP run of CPU processes with FSDP2 (`fully_shard`) over gloo: accelerate picks
    FSDP only on accelerators and would run the config unsharded, as plain data parallelism.
    Both shared states change, as accelerate's own do on GPUs: a new AcceleratorState copies
    PartialState's."""
    plugin = FullyShardedDataParallelPlugin()  # from the config's FSDP_* variables
    if plugin.fsdp_version != 2:
        raise TrainError(
            "FSDP on CPU needs fsdp_version: 2 in the accelerate config (torch's fully_shard); "
            "the shipped one is `holisafe accelerate-config fsdp`"
        )
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


@contextlib.contextmanager
def _parameter_names_kept(model):
    """Checkpoints keep the parameters' own names. save_pretrained writes some families'
    weights under their original checkpoint names (LLaVA's `language_model.model.*`), which
    Trainer's resume loads by name and silently skips, leaving the language model at its base."""
    if not isinstance(model, PreTrainedModel):  # PEFT saves its adapter under its own names
        yield
        return
    model.save_pretrained = functools.partial(model.save_pretrained, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained


@dataclass(frozen=True)
class TrainResult:
    """What a run wrote: `out` loads as `hf/<out>` unless it holds an unmerged LoRA adapter.

    Under `accelerate launch` every process gets one; `is_main_process` tells which wrote.
    """

    out: Path
    adapter_dir: Path | None
    global_step: int
    metrics: dict[str, float]
    log_history: list[dict] = field(default_factory=list)
    is_main_process: bool = True
    skipped: list[str] = field(default_factory=list)  # invalid records left out, described


def train(settings: TrainSettings, *, progress: bool = True) -> TrainResult:
    """Safety-tune `settings.base` on `settings.data` and write the model to `settings.out`.

    Run it as it is (one process) or under `accelerate launch` (many). Without LoRA, `out` is a
    full model folder (a Safe-VLM unless `vgm` is `none`); with LoRA it holds the adapter, or,
    with `merge`, the merged model beside the adapter in `out/adapter`.
    """
    out = Path(settings.out)
    checkpoints = out / CHECKPOINTS
    if settings.overwrite:
        shutil.rmtree(checkpoints, ignore_errors=True)
    resume_from = _checkpoint_to_resume(checkpoints, settings.resume)
    if not (settings.resume or settings.overwrite):
        _refuse_existing_model(out)
    source = native_base(
        source_of(settings), out / RELEASED_BASE, trust_remote_code=settings.trust_remote_code
    )
    settings = dataclasses.replace(settings, base=f"hf/{source}")
    samples, skipped = _samples(
        settings.data, settings, "train on", split="train", limit=settings.limit
    )
    eval_samples = None
    if settings.eval_data:
        eval_samples, skipped_eval = _samples(settings.eval_data, settings, "evaluate on")
        skipped += [f"{settings.eval_data}: {problem}" for problem in skipped_eval]
    _check_or_record_run(checkpoints, settings, samples)
    processor = load_processor(source)
    model = trainable_model(settings, source, processor)
    trainer = SafetyTrainer(
        model=model,
        args=training_arguments(settings, checkpoints, has_eval=bool(eval_samples)),
        data_collator=collator_for(model, processor),
        train_dataset=samples,
        eval_dataset=eval_samples,
        processing_class=processor,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    if progress:
        trainer.add_callback(TrainingProgress())
    output = trainer.train(resume_from_checkpoint=resume_from)
    target = out / ADAPTER if settings.merge else out
    trainer.save_model(str(target))
    record = TrainRecord(settings, output.global_step, output.metrics, trainer.state.log_history)
    if trainer.is_world_process_zero():
        write_record(target, record)
        if settings.merge:
            # ZeRO-3 would partition the base merge_lora loads, over processes not taking part
            unset_hf_deepspeed_config()
            merge_lora(target, out)
            for stale in ADAPTER_FILES:  # from an earlier, unmerged run into the same folder
                (out / stale).unlink(missing_ok=True)
            write_record(out, record)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(
        out=out,
        adapter_dir=target if settings.lora else None,
        global_step=output.global_step,
        metrics=output.metrics,
        log_history=trainer.state.log_history,
        is_main_process=trainer.is_world_process_zero(),
        skipped=skipped,
    )


def training_arguments(
    settings: TrainSettings, checkpoints: Path, *, has_eval: bool
) -> TrainingArguments:
    half = gpu_half_dtype() if torch.cuda.is_available() else None
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,
        logging_steps=settings.log_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.keep_checkpoints,
        eval_strategy="epoch" if has_eval else "no",
        prediction_loss_only=True,
        seed=settings.seed,
        use_cpu=half is None,
        bf16=half == torch.bfloat16,
        fp16=half == torch.float16,
        remove_unused_columns=False,
        # With the vision encoder frozen every trained parameter takes part in each step (the
        # safety loss keeps the head in the graph even without labels), so DDP need not search
        # for unused ones; a trained encoder may have unused layers (LLaVA reads the last but one).
        ddp_find_unused_parameters=not settings.freeze_vision,
        label_names=["labels", "safety_labels"] if settings.vgm != "none" else ["labels"],
        report_to=settings.report_to,
        disable_tqdm=True,  # progress goes to the toolkit's own display (TrainingProgress)
    )


class TrainingProgress(TrainerCallback):
    """Training steps and the latest loss on the toolkit's progress display: a bar on a
    terminal, a line at every tenth of the way when the output is redirected."""

    def __init__(self):
        self.bar = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress_bar(True, TextColumn("{task.fields[loss]}"))
            self.bar.start()
            self.task = self.bar.add_task(
                "training", total=state.max_steps, completed=state.global_step, loss=""
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar and logs and "loss" in logs:
            self.bar.update(self.task, loss=f"loss {logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.stop()
            self.bar = None


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The latest checkpoint whose saving finished (Trainer writes trainer_state.json last), so
    that a run killed while saving resumes from the one before."""
    finished = [state.parent for state in checkpoints.glob("checkpoint-*/trainer_state.json")]
    return max(finished, key=lambda folder: int(folder.name.split("-")[-1]), default=None)


def _checkpoint_to_resume(checkpoints: Path, resume: bool) -> str | None:
    last = last_checkpoint(checkpoints)
    if resume and last is None:
        raise TrainError(f"nothing to resume: no checkpoint in {checkpoints}")
    if not resume and last is not None:
        raise TrainError(
            f"{checkpoints} holds checkpoints of an earlier run; pass --resume to continue it, "
            "--overwrite to start afresh, or choose another --out"
        )
    return str(last) if last else None


def _data_fingerprint(samples: list[Sample]) -> str:
    """A hash of the training data in its order: every field the model learns from."""
    digest = hashlib.sha256()
    for s in samples:
        fields = [s.id, s.query, s.response, s.follow_up, s.image.key, s.image_safety_label]
        digest.update(json.dumps(fields, default=str).encode() + b"\n")
    return digest.hexdigest()[:16]


def _check_or_record_run(checkpoints: Path, settings: TrainSettings, samples: list[Sample]) -> None:
    """A fresh run records its settings and data beside its checkpoints; a resumed run must
    match them, since its optimizer, scheduler and data order continue the saved ones."""
    path = checkpoints / CHECKPOINT_SETTINGS
    effective = dataclasses.replace(settings, learning_rate=settings.lr)
    current = dataclasses.asdict(effective) | {"data content": _data_fingerprint(samples)}
    if not settings.resume:
        checkpoints.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=1))
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise TrainError(
            f"cannot resume: {path} (the settings the checkpoints were made with) is missing or "
            "unreadable; start again with another --out"
        ) from None
    changed = [
        f"{name} {saved.get(name)!r} (now {value!r})"
        for name, value in current.items()
        if name not in RESUMABLE_CHANGES and saved.get(name) != _jsonable(value)
    ]
    if changed:
        raise TrainError(
            f"cannot resume: the checkpoints in {checkpoints} were made with other settings: "
            f"{'; '.join(changed)}. Rerun with the same settings, or choose another --out"
        )


def _jsonable(value):
    return json.loads(json.dumps(value))


def _refuse_existing_model(out: Path) -> None:
    written = [name for name in MODEL_FILES if (out / name).exists()]
    if written:
        raise TrainError(
            f"{out} already holds a trained model ({', '.join(written)}); pass --overwrite to "
            "replace it, or choose another --out"
        )


def _samples(
    source: str,
    settings: TrainSettings,
    use: str,
    split: str = "test",
    limit: int | None = None,
) -> tuple[list[Sample], list[str]]:
    """The samples of `source`, each with a response (`use` says what for, in messages), and
    the invalid records `skip_invalid` left out, described."""
    dataset = load_samples(source, skip_invalid=settings.skip_invalid, split=split)
    samples = first(dataset.samples, limit)
    if not samples:
        raise TrainError(f"{source}: no samples to {use}")
    require_responses(samples, source, use)
    return samples, [str(problem) for problem in dataset.problems]
