"""MM-SafetyBench (`U_I S_T`): a folder with `processed_questions/<scenario>.json` (an object of
records keyed by index, with `Rephrased Question` and `Rephrased Question(SD)`) and
`imgs/<scenario>/{SD,TYPO,SD_TYPO}/<index>.jpg`.

Every question gives one sample per image kind; SD images are asked the
`Rephrased Question(SD)`, the two typographic kinds the `Rephrased Question`, as in the
benchmark's own evaluation. Sample ids carry the kind: `mm-safetybench/<scenario>/<kind>/<index>`.

Figures: ASR (not followed) per image kind, SD, TYPO and SD_TYPO, and their mean (`Avg`, given
when every kind has judged samples).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

from holisafe.core.errors import DataError
from holisafe.core.files import read_regular_text
from holisafe.core.sample import Sample
from holisafe.data.benchmarks.base import (
    Benchmark,
    BenchmarkFields,
    Column,
    Figures,
    ImageRefs,
    complied_percent,
)

if TYPE_CHECKING:
    from holisafe.core.records import Verdict

MMSB_KINDS = ("SD", "TYPO", "SD_TYPO")
MMSB_QUERY_FIELDS = {
    "SD": "Rephrased Question(SD)",
    "TYPO": "Rephrased Question",
    "SD_TYPO": "Rephrased Question",
}
MMSB_QUESTIONS = "processed_questions"


def find_mmsb(path: Path) -> Path | None:
    """The questions folder of an MM-SafetyBench folder."""
    return path / MMSB_QUESTIONS if (path / MMSB_QUESTIONS).is_dir() else None


def mmsb_records(questions: Path, image_root: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every question and image kind in an MM-SafetyBench folder's
    `processed_questions/`."""
    files = sorted(questions.glob("*.json"))
    if not files:
        raise DataError(f"{questions}: no scenario files (*.json)")
    for path in files:
        scenario = path.stem
        try:
            records = json.loads(read_regular_text(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield path.name, ValueError(f"cannot read {path.name}: {exc}")
            continue
        if not isinstance(records, dict):
            yield path.name, ValueError(f"{path.name}: expected an object of records by index")
            continue
        for index, question in records.items():
            for kind in MMSB_KINDS:
                record = {"scenario": scenario, "kind": kind, "index": index, "question": question}
                yield f"{path.name} record {index} ({kind})", record


def mmsb_sample(record: dict, image_ref: ImageRefs) -> Sample:
    scenario, kind, index, question = (record[k] for k in ("scenario", "kind", "index", "question"))
    if not isinstance(question, dict):
        raise ValueError("a question must be an object")
    field = MMSB_QUERY_FIELDS[kind]
    query = question.get(field)
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"missing or empty {field!r}")
    image = image_ref(f"imgs/{scenario}/{kind}/{index}.jpg")
    return Sample(f"mm-safetybench/{scenario}/{kind}/{index}", query, image, type="USU")


def mmsb_figures(verdicts: Sequence[tuple[BenchmarkFields, Verdict]]) -> Figures:
    asr = {
        kind: complied_percent([v for fields, v in verdicts if fields.kind == kind])
        for kind in MMSB_KINDS
    }
    present = [value for value in asr.values() if value is not None]
    return asr | {"Avg": mean(present) if len(present) == len(MMSB_KINDS) else None}


BENCHMARK = Benchmark(
    name="mm-safetybench",
    title="MM-SafetyBench",
    position=20,
    sample=mmsb_sample,
    figures=mmsb_figures,
    columns=(
        Column("SD", False),
        Column("TYPO", False),
        Column("SD_TYPO", False, header="SD+TYPO"),
        Column("Avg", False),
    ),
    find=find_mmsb,
    read=mmsb_records,
    id_parts=4,
)
