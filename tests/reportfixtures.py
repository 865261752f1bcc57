"""A store for report tests: HoliSafe-Mini's benchmark answered by two scripted models, judged
by the string judge and by a stand-in for an LLM judge (verdicts written straight to the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from holisafe.core import taxonomy
from holisafe.core.records import Response
from holisafe.core.sample import Sample
from holisafe.data import load_samples
from holisafe.judges import StringJudge, Verdict
from holisafe.store import Store
from holisafe.synthetic.mini import generate_mini

REFUSAL = "I'm sorry, but I can't help with that."
ANSWER = "Sure, here is how."
LLM_JUDGE = "openai/gpt-4o"
# model spec → how often it refuses an unsafe pair, and a safe one.
MODELS = {"hf/cautious-vlm": (0.8, 0.1), "hf/careless-vlm": (0.25, 0.02)}
FAILED_SAMPLE = "3"  # the careless model's answer to this sample fails: no verdict


@dataclass(frozen=True)
class ReportStore:
    path: Path
    bench: Path
    samples: list[Sample]


def scripted_text(sample: Sample, refuse_unsafe: float, refuse_safe: float, draw: float) -> str:
    refuse = refuse_safe if sample.type == "SSS" else refuse_unsafe
    return REFUSAL if draw < refuse else ANSWER


def llm_verdict(string_verdict: Verdict, sample_id: str) -> Verdict:
    """The stand-in LLM judge: the string verdict, overruled on every fifth sample."""
    followed = string_verdict.followed
    if int(sample_id) % 5 == 0:
        followed = not followed
    return Verdict(followed, raw="stand-in")


def scripted_safety(sample: Sample, draw: float) -> dict:
    """A stand-in safety head's prediction (as stored): right more often than not."""
    unsafe_image = sample.image_safety_label != taxonomy.SAFE_LABEL
    unsafe = 0.3 + 0.7 * draw if unsafe_image else 0.7 * draw
    named = sample.subcategory if unsafe_image else "terrorism"
    probs = {label: 0.2 * unsafe / 18 for label in taxonomy.IMAGE_SAFETY_LABELS}
    probs |= {"safe": 1 - unsafe, named: 0.8 * unsafe}
    label = max(probs, key=probs.get)
    return {"safety": {"label": label, "prob": probs[label], "probs": probs}}


def build_store(folder: Path, bench_pairs: int = 95, safety: bool = False) -> ReportStore:
    """With `safety`, the first model is a Safe-VLM: a prediction is stored with each answer."""
    summary = generate_mini(folder / "mini", bench_pairs=bench_pairs, train_pairs=1, size=48)
    samples = load_samples(summary.bench_dir).samples
    by_id = {str(s.id): s for s in samples}
    rng = np.random.default_rng(7)
    path = folder / "runs.db"
    with Store(path) as store:
        for model, (refuse_unsafe, refuse_safe) in MODELS.items():
            run = store.open_run(
                model, samples, {"max_new_tokens": 8}, source=str(summary.bench_dir)
            )
            draws = rng.random(len(samples))
            responses = [
                (s.id, Response(scripted_text(s, refuse_unsafe, refuse_safe, d)))
                for s, d in zip(samples, draws, strict=True)
            ]
            if model == "hf/careless-vlm":
                responses = [
                    (i, Response(None, "out of memory") if str(i) == FAILED_SAMPLE else r)
                    for i, r in responses
                ]
            extras = None
            if safety and model == next(iter(MODELS)):
                draws = np.random.default_rng(11).random(len(samples))
                extras = {s.id: scripted_safety(s, d) for s, d in zip(samples, draws, strict=True)}
            store.save_responses(run.id, responses, extras)
            pending = store.pending_verdicts(run.id, "string")
            verdicts = StringJudge().judge([(by_id[i], text) for i, text in pending])
            ids = [i for i, _ in pending]
            store.save_verdicts(run.id, "string", zip(ids, verdicts, strict=True))
            llm = [llm_verdict(v, i) for i, v in zip(ids, verdicts, strict=True)]
            store.save_verdicts(run.id, LLM_JUDGE, zip(ids, llm, strict=True))
    return ReportStore(path, summary.bench_dir, samples)
