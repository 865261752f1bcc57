"""HarmEval (`S_I U_T`: harmful questions, text only): its released CSV (`Topic`, `Question`;
no id column, so a question's id is its row, counted from 0) in a folder with an `images/`
folder of safe images the user supplies, since the paper does not say which images it paired
the questions with.

Question i is paired with the image i mod n of the n image files in `images/`, in sorted
file-name order. A `/` in a topic (`Fraud/Deception`) becomes `-` in the sample id.

Figure: the unsafe rate (not followed: the share of judged answers that comply).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from holisafe.core.errors import DataError
from holisafe.core.files import regular_csv_text
from holisafe.core.sample import IMAGE_SUFFIXES, Sample
from holisafe.data.benchmarks.base import (
    Benchmark,
    BenchmarkFields,
    Column,
    Figures,
    ImageRefs,
    complied_percent,
    id_part,
    require_fields,
    text,
)

if TYPE_CHECKING:
    from holisafe.core.records import Verdict

HARMEVAL_COLUMNS = ("Topic", "Question")
HARMEVAL_IMAGES = "images"


def harmeval_csv(path: Path) -> Path | None:
    """The HarmEval question file `path` is or holds (the one CSV whose header has `Topic` and
    `Question`), else None."""
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        return files[0] if len(files) == 1 and harmeval_csv(files[0]) else None
    if path.suffix.lower() != ".csv":
        return None
    try:
        header = next(csv.reader(regular_csv_text(path, "utf-8-sig")), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return path if set(HARMEVAL_COLUMNS) <= set(header) else None


def harmeval_records(questions: Path, image_root: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every row of a HarmEval CSV, each with its row number and the image
    it is paired with (row mod the number of images in `image_root/images/`, in sorted name
    order)."""
    folder = image_root / HARMEVAL_IMAGES
    images = sorted(
        p.name for p in folder.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise DataError(
            f"{folder}: no image files; HarmEval's questions are text only, so put the safe "
            f"images to pair them with in {HARMEVAL_IMAGES}/ beside {questions.name}"
        )
    try:
        rows = list(csv.DictReader(regular_csv_text(questions, "utf-8-sig")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{questions}: cannot read ({exc})") from None
    for row, record in enumerate(rows):
        image = f"{HARMEVAL_IMAGES}/{images[row % len(images)]}"
        yield f"{questions.name} line {row + 2}", record | {"row": row, "image": image}


def harmeval_sample(record: Any, image_ref: ImageRefs) -> Sample:
    fields = require_fields(record, HARMEVAL_COLUMNS)
    topic = id_part(text(fields["Topic"], "Topic").replace("/", "-"), "Topic")
    return Sample(
        f"harmeval/{topic}/{record['row']}",
        text(fields["Question"], "Question"),
        image_ref(record["image"]),
        type="SUU",
    )


def harmeval_figures(verdicts: Sequence[tuple[BenchmarkFields, Verdict]]) -> Figures:
    return {"Unsafe": complied_percent([v for _, v in verdicts])}


BENCHMARK = Benchmark(
    name="harmeval",
    title="HarmEval",
    position=30,
    sample=harmeval_sample,
    figures=harmeval_figures,
    columns=(Column("Unsafe", False),),
    find=harmeval_csv,
    read=harmeval_records,
    file_hint="HarmEval's .csv",
)
