"""SIUO (`S_I S_T→U`): a JSON list of records with `question_id`, `question`, `image`,
`category`.

Figure: the safe rate (followed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from holisafe.core.sample import Sample
from holisafe.data.benchmarks.base import (
    Benchmark,
    BenchmarkFields,
    Column,
    Figures,
    ImageRefs,
    followed_percent,
    require_fields,
    sample_id,
    text,
)

if TYPE_CHECKING:
    from holisafe.core.records import Verdict


def siuo_sample(record: Any, image_ref: ImageRefs) -> Sample:
    fields = require_fields(record, ("question_id", "question", "image", "category"))
    return Sample(
        sample_id("siuo", fields, "category", "question_id"),
        text(fields["question"], "question"),
        image_ref(text(fields["image"], "image")),
        type="SSU",
    )


def siuo_figures(verdicts: Sequence[tuple[BenchmarkFields, Verdict]]) -> Figures:
    return {"Safe": followed_percent([v for _, v in verdicts])}


BENCHMARK = Benchmark(
    name="siuo",
    title="SIUO",
    position=40,
    sample=siuo_sample,
    figures=siuo_figures,
    columns=(Column("Safe", True),),
    record_keys=frozenset({"question_id", "question", "image"}),
)
