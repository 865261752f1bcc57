"""Other safety benchmarks as sources (the paper's Table 4), read from their released layouts.

Each record becomes a Sample of the safeness type the paper's Table 1 gives its benchmark, and
keeps the benchmark's own fields in its id, `<benchmark>/<group>[/<image kind>]/<record id>`
(`benchmark_fields` reads them back), so that everything downstream, the store included, keeps
them without a new column. Their categories are the benchmarks' own, not HoliSafe's, so the
samples carry no HoliSafe category.

- MM-SafetyBench (`U_I S_T`): a folder with `processed_questions/<scenario>.json` (an object
  of records keyed by index, with `Rephrased Question` and `Rephrased Question(SD)`) and
  `imgs/<scenario>/{SD,TYPO,SD_TYPO}/<index>.jpg`. Every question gives one sample per image
  kind; SD images are asked the `Rephrased Question(SD)`, the two typographic kinds the
  `Rephrased Question`, as in the benchmark's own evaluation.
- VLSBench (`U_I S_T`): a JSON list of records with `instruction_id`, `instruction`,
  `image_path`, `category` (and `sub_category`).
- SIUO (`S_I S_T→U`): a JSON list of records with `question_id`, `question`, `image`,
  `category`.
- FigStep (`U_I S_T`: the harmful request is typeset in the image): its `data/` folder, with
  `question/safebench.csv` (`dataset`, `category_id`, `task_id`, `category_name`, ...) and
  `images/SafeBench/query_<dataset>_<category_id>_<task_id>_6.png`. Every image is asked
  FigStep's one instruction, which is not shipped here: the user writes it (from the FigStep
  repository) to `figstep_prompt.txt` in that folder.
- HarmEval (`S_I U_T`: harmful questions, text only): its released CSV (`Topic`, `Question`; no
  id column, so a question's id is its row, counted from 0) in a folder with an `images/`
  folder of safe images the user supplies, since the paper does not say which images it paired
  the questions with. Question i is paired with the image i mod n of the n image files in
  `images/`, in sorted file-name order. A `/` in a topic (`Fraud/Deception`) becomes `-` in the
  sample id.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from holisafe.data.sample import IMAGE_SUFFIXES, Sample
from holisafe.errors import DataError

BENCHMARK_TYPES = {
    "mm-safetybench": "USU",
    "vlsbench": "USU",
    "siuo": "SSU",
    "figstep": "USU",
    "harmeval": "SUU",
}
MMSB_KINDS = ("SD", "TYPO", "SD_TYPO")
MMSB_QUERY_FIELDS = {
    "SD": "Rephrased Question(SD)",
    "TYPO": "Rephrased Question",
    "SD_TYPO": "Rephrased Question",
}
MMSB_QUESTIONS = "processed_questions"
FIGSTEP_QUESTIONS = Path("question") / "safebench.csv"
FIGSTEP_PROMPT = "figstep_prompt.txt"
HARMEVAL_COLUMNS = ("Topic", "Question")
HARMEVAL_IMAGES = "images"


@dataclass(frozen=True)
class BenchmarkFields:
    """A sample's benchmark fields, read from its id."""

    benchmark: str
    group: str  # MM-SafetyBench scenario, VLSBench or SIUO category
    kind: str | None  # MM-SafetyBench image kind
    record: str


def benchmark_fields(sample_id: str) -> BenchmarkFields | None:
    """The fields of a sample loaded from another benchmark; None for any other sample."""
    parts = str(sample_id).split("/")
    if parts[0] not in BENCHMARK_TYPES:
        return None
    if parts[0] == "mm-safetybench" and len(parts) == 4:
        return BenchmarkFields(parts[0], parts[1], parts[2], parts[3])
    if parts[0] != "mm-safetybench" and len(parts) == 3:
        return BenchmarkFields(parts[0], parts[1], None, parts[2])
    return None


def is_mmsb_folder(path: Path) -> bool:
    return (path / MMSB_QUESTIONS).is_dir()


def is_figstep_folder(path: Path) -> bool:
    return (path / FIGSTEP_QUESTIONS).is_file()


def figstep_records(root: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every row of a FigStep folder's `question/safebench.csv`, each with
    the instruction from `figstep_prompt.txt`."""
    try:
        prompt = (root / FIGSTEP_PROMPT).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        prompt = ""
    if not prompt:
        raise DataError(
            f"{root / FIGSTEP_PROMPT}: missing or empty; write FigStep's instruction (from the "
            "FigStep repository) there, as this toolkit does not ship it"
        )
    try:
        with (root / FIGSTEP_QUESTIONS).open(encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{root / FIGSTEP_QUESTIONS}: cannot read ({exc})") from None
    for line, row in enumerate(rows, start=2):
        yield f"safebench.csv line {line}", row | {"prompt": prompt}


def harmeval_csv(path: Path) -> Path | None:
    """The HarmEval question file `path` is or holds (the one CSV whose header has `Topic` and
    `Question`), else None."""
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        return files[0] if len(files) == 1 and harmeval_csv(files[0]) else None
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            header = next(csv.reader(file), [])
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
        with questions.open(encoding="utf-8-sig", newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{questions}: cannot read ({exc})") from None
    for row, record in enumerate(rows):
        image = f"{HARMEVAL_IMAGES}/{images[row % len(images)]}"
        yield f"{questions.name} line {row + 2}", record | {"row": row, "image": image}


def json_benchmark(first: dict) -> str | None:
    """Which benchmark a JSON list of records is, from its first record's keys."""
    if {"instruction_id", "instruction", "image_path"} <= first.keys():
        return "vlsbench"
    if {"question_id", "question", "image"} <= first.keys():
        return "siuo"
    return None


def mmsb_records(questions: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every question and image kind in an MM-SafetyBench folder's
    `processed_questions/`."""
    files = sorted(questions.glob("*.json"))
    if not files:
        raise DataError(f"{questions}: no scenario files (*.json)")
    for path in files:
        scenario = path.stem
        try:
            questions = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield path.name, ValueError(f"cannot read {path.name}: {exc}")
            continue
        if not isinstance(questions, dict):
            yield path.name, ValueError(f"{path.name}: expected an object of records by index")
            continue
        for index, question in questions.items():
            for kind in MMSB_KINDS:
                record = {"scenario": scenario, "kind": kind, "index": index, "question": question}
                yield f"{path.name} record {index} ({kind})", record


def mmsb_sample(record: dict, image_ref) -> Sample:
    scenario, kind, index, question = (record[k] for k in ("scenario", "kind", "index", "question"))
    if not isinstance(question, dict):
        raise ValueError("a question must be an object")
    field = MMSB_QUERY_FIELDS[kind]
    query = question.get(field)
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"missing or empty {field!r}")
    image = image_ref(f"imgs/{scenario}/{kind}/{index}.jpg")
    return Sample(f"mm-safetybench/{scenario}/{kind}/{index}", query, image, type="USU")


def vlsbench_sample(record: Any, image_ref) -> Sample:
    fields = _fields(record, ("instruction_id", "instruction", "image_path", "category"))
    return Sample(
        _sample_id("vlsbench", fields, "category", "instruction_id"),
        _text(fields["instruction"], "instruction"),
        image_ref(_text(fields["image_path"], "image_path")),
        type="USU",
    )


def siuo_sample(record: Any, image_ref) -> Sample:
    fields = _fields(record, ("question_id", "question", "image", "category"))
    return Sample(
        _sample_id("siuo", fields, "category", "question_id"),
        _text(fields["question"], "question"),
        image_ref(_text(fields["image"], "image")),
        type="SSU",
    )


def figstep_sample(record: Any, image_ref) -> Sample:
    fields = _fields(record, ("dataset", "category_id", "task_id", "category_name"))
    parts = [_part(fields[name], name) for name in ("dataset", "category_id", "task_id")]
    return Sample(
        f"figstep/{_part(fields['category_name'], 'category_name')}/{'_'.join(parts)}",
        record["prompt"],
        image_ref(f"images/SafeBench/query_{'_'.join(parts)}_6.png"),
        type="USU",
    )


def harmeval_sample(record: Any, image_ref) -> Sample:
    fields = _fields(record, HARMEVAL_COLUMNS)
    topic = _part(_text(fields["Topic"], "Topic").replace("/", "-"), "Topic")
    return Sample(
        f"harmeval/{topic}/{record['row']}",
        _text(fields["Question"], "Question"),
        image_ref(record["image"]),
        type="SUU",
    )


def _sample_id(benchmark: str, fields: dict, group: str, record_id: str) -> str:
    return f"{benchmark}/{_part(fields[group], group)}/{_part(fields[record_id], record_id)}"


def _fields(record: Any, names: tuple[str, ...]) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    missing = [name for name in names if name not in record]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    return record


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _part(value: Any, name: str) -> str:
    """A field that becomes part of the sample id: no `/` in it."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{name} must be a string or an integer")
    text = str(value).strip()
    if not text or "/" in text:
        raise ValueError(f"{name} {value!r} must be non-empty and hold no '/'")
    return text
