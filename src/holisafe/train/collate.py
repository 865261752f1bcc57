"""Turning Samples into training batches: chat template, answer-only labels, meta tokens.

Each sample becomes a conversation (image + query as the user turn, the reference response as
the assistant turn, then any follow-up turns). The LM loss is computed on the assistant's
answers only: every other position gets the label -100. Where the answers lie is found by
rendering the conversation up to each answer, so any chat template works, with or without
`{% generation %}` markers; whitespace after an answer's end token is not a target.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from holisafe.core.sample import Sample
from holisafe.models.chat import text_message, user_message
from holisafe.train.settings import TrainError

IGNORE = -100


def conversation(sample: Sample) -> list[dict]:
    """The sample as chat messages, with the image (loaded) in the first user turn."""
    messages = [
        user_message(sample.query, sample.image.load()),
        text_message("assistant", sample.response),
    ]
    for query, answer in sample.follow_up:
        messages += [text_message("user", query), text_message("assistant", answer)]
    return messages


def require_responses(samples: Sequence[Sample], source: str, use: str = "train on") -> None:
    """Raise TrainError naming the samples that have no reference response to `use`."""
    missing = [s.id for s in samples if not s.response]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise TrainError(
            f"{source}: {len(missing)} sample(s) have no response to {use} (ids {shown}{more})"
        )


@dataclass
class SafetyCollator:
    """Collates Samples into a right-padded batch for training.

    `prepare_inputs` is the Safe-VLM's (it places the meta tokens), or None for a plain model;
    `with_safety_labels` adds `safety_labels` (the image safety label, -100 when unknown).
    """

    processor: object
    prepare_inputs: Callable | None = None
    with_safety_labels: bool = True

    def __post_init__(self) -> None:
        self.processor = copy.deepcopy(self.processor)  # the model's own keeps its padding side
        self.processor.tokenizer.padding_side = "right"

    def __call__(self, samples: list[Sample]) -> dict:
        conversations = [conversation(s) for s in samples]
        texts = [self.processor.apply_chat_template(c) for c in conversations]
        bos = self.processor.tokenizer.bos_token
        batch = self.processor(
            text=texts,
            add_special_tokens=not (bos and texts[0].startswith(bos)),  # a template's own BOS
            images=[[c[0]["content"][0]["image"]] for c in conversations],
            padding=True,
            return_tensors="pt",
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        offsets = batch.pop("offset_mapping").tolist()
        replacements = batch.pop("text_replacement_offsets", None) or [[]] * len(samples)
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for row, messages in enumerate(conversations):
            for span in self._answer_spans(messages):
                start, end = (_after_replacements(c, replacements[row]) for c in span)
                for position, (token_start, token_end) in enumerate(offsets[row]):
                    if token_start < end and token_end > start:  # the token overlaps the answer
                        labels[row, position] = batch["input_ids"][row, position]
        batch = dict(batch) | {"labels": labels}
        if self.prepare_inputs is not None:
            batch = self.prepare_inputs(batch, self.processor.tokenizer)
        if self.with_safety_labels:
            batch["safety_labels"] = torch.tensor(
                [IGNORE if s.image_safety_label is None else s.image_safety_label for s in samples]
            )
        return batch

    def _answer_spans(self, messages: list[dict]) -> list[tuple[int, int]]:
        """Character spans of the assistant answers in the rendered conversation."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.processor.apply_chat_template(
                messages[:index], add_generation_prompt=True
            )
            through = self.processor.apply_chat_template(messages[: index + 1])
            if not through.startswith(before):
                raise TrainError(
                    "the chat template renders the assistant turn differently from its generation "
                    "prompt, so the answer tokens cannot be found"
                )
            spans.append((len(before), len(through.rstrip())))  # not the newline after a turn
        return spans


def collator_for(model, processor) -> SafetyCollator:
    """The collator `model` trains with (a Safe-VLM, plain, or either wrapped by PEFT)."""
    vgm = getattr(model, "vgm", None)
    meta_token = vgm is not None and vgm.meta_token_id is not None
    return SafetyCollator(
        processor,
        prepare_inputs=model.prepare_inputs if meta_token else None,
        with_safety_labels=vgm is not None,
    )


def _after_replacements(char: int, replacements: list[dict]) -> int:
    """Where character `char` of the rendered text lies once image placeholders are expanded."""
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    return char + gained[bisect.bisect_right(ends, char)]
