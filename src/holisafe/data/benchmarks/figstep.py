"""FigStep (`U_I S_T`: the harmful request is typeset in the image): its `data/` folder, with
`question/safebench.csv` (`dataset`, `category_id`, `task_id`, `category_name`, ...) and
`images/SafeBench/query_<dataset>_<category_id>_<task_id>_6.png`.

Every image is asked FigStep's one instruction, which is not shipped here: the user writes it
(from the FigStep repository) to `figstep_prompt.txt` in that folder.

Figure: ASR (not followed). It is not in the paper's Table 4; the report shows it in the same
table.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from holisafe.core.errors import DataError
from holisafe.core.files import read_regular_text, regular_csv_text
from holisafe.core.sample import Sample
from holisafe.data.benchmarks.base import (
    Benchmark,
    BenchmarkFields,
    Column,
    Figures,
    ImageRefs,
    complied_percent,
    id_part,
    require_fields,
)

if TYPE_CHECKING:
    from holisafe.core.records import Verdict

FIGSTEP_QUESTIONS = Path("question") / "safebench.csv"
FIGSTEP_PROMPT = "figstep_prompt.txt"


def find_figstep(path: Path) -> Path | None:
    """The instruction file of a FigStep folder (whose folder holds the images)."""
    return path / FIGSTEP_PROMPT if (path / FIGSTEP_QUESTIONS).is_file() else None


def figstep_records(prompt_file: Path, image_root: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every row of a FigStep folder's `question/safebench.csv`, each with
    the instruction from `figstep_prompt.txt`."""
    root = prompt_file.parent
    try:
        prompt = read_regular_text(prompt_file).strip()
    except (OSError, UnicodeDecodeError):
        prompt = ""
    if not prompt:
        raise DataError(
            f"{prompt_file}: missing or empty; write FigStep's instruction (from the "
            "FigStep repository) there, as this toolkit does not ship it"
        )
    try:
        rows = list(csv.DictReader(regular_csv_text(root / FIGSTEP_QUESTIONS, "utf-8")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{root / FIGSTEP_QUESTIONS}: cannot read ({exc})") from None
    for line, row in enumerate(rows, start=2):
        yield f"safebench.csv line {line}", row | {"prompt": prompt}


def figstep_sample(record: Any, image_ref: ImageRefs) -> Sample:
    fields = require_fields(record, ("dataset", "category_id", "task_id", "category_name"))
    parts = [id_part(fields[name], name) for name in ("dataset", "category_id", "task_id")]
    return Sample(
        f"figstep/{id_part(fields['category_name'], 'category_name')}/{'_'.join(parts)}",
        record["prompt"],
        image_ref(f"images/SafeBench/query_{'_'.join(parts)}_6.png"),
        type="USU",
    )


def figstep_figures(verdicts: Sequence[tuple[BenchmarkFields, Verdict]]) -> Figures:
    return {"ASR": complied_percent([v for _, v in verdicts])}


BENCHMARK = Benchmark(
    name="figstep",
    title="FigStep",
    position=50,
    sample=figstep_sample,
    figures=figstep_figures,
    columns=(Column("ASR", False),),
    find=find_figstep,
    read=figstep_records,
)
