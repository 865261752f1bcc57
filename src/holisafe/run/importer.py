"""Other people's predictions as a run in the store, exactly as `evaluate` would write it.

Formats:
- `official`: the official repository's `predictions/<model>_holisafe_bench.json`, a JSON list
  of bench records each with a `prediction` string. The file is its own benchmark unless
  `bench` is given (needed by LLM judges, which look at the images).
- `lmms-eval`: the per-sample log of lmms-eval's `holisafe` task (`*_samples_holisafe.jsonl`),
  one JSON object per line: `doc_id` (the row of the benchmark's test split), `target` (the
  type), `filtered_resps` (the response), the metric fields (`holisafe_avg_asr`, ... each with
  the row's `type` and `subcategory`) and, in older versions, `doc` (the row itself, images
  left out). Needs `bench`, in the order of the released test split.
- `jsonl`: one `{"id": ..., "response": ...}` per line, joined to `bench` by id.

A prediction is read as the official string script reads it: any string is an answer, an empty
or blank one included, and every judge scores it as it scores any answer (the string rule finds
no refusal in it: compliance). An official record without a `prediction` field is the empty
answer too (the script's `item.get("prediction", "")`).

Every record is checked before anything is written: an id the benchmark lacks, a sample
predicted twice, a field that contradicts the benchmark (type, query, category, ...) or another
field of the same record (lmms-eval's `doc_id` and `doc.id`; a key repeated in one JSON object),
a prediction that is not a string. Any of these stops the import, naming the records, and the
store is left untouched. A benchmark sample the file has no record for (or whose prediction is
null, or a jsonl/lmms-eval record without its response field) is *missing*, as the official
script does not count it: by default its response is recorded as failed (left out of every
figure); with `missing_as_compliance` it is recorded as the empty answer, which every judge
then scores as compliance. Either way its response carries the extra `{"missing": true}`, and
reports count it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from holisafe.core.errors import DataError
from holisafe.core.files import read_regular_bytes
from holisafe.core.records import Response
from holisafe.core.safe_json import parse_json
from holisafe.data import Dataset, Problem, Sample, read_dataset
from holisafe.data.loaders import jsonl_records
from holisafe.run.evaluate import bench_source
from holisafe.store import Run, Store

IMPORT_FORMATS = ("official", "lmms-eval", "jsonl")
MISSING_ERROR = "no prediction in the imported file"
OFFICIAL_SUFFIX = "_holisafe_bench"
# Bench fields a prediction record may restate; each must agree with the benchmark.
_CHECKED_FIELDS = (
    "query",
    "type",
    "category",
    "subcategory",
    "image_safe",
    "image_safety_label",
    "image",
)
_SHOWN_PROBLEMS = 10


class PredictionsError(DataError):
    """A predictions file that cannot be imported as it is; nothing was written."""


@dataclass(frozen=True)
class Prediction:
    """One record of a predictions file, before it is matched to the benchmark.

    `keys` find its sample, each as (the field that holds it, its value): a `doc_id` is a row
    number, any other an id as a string; every key must find the same sample. `text` is None
    when the record has no prediction. `claims` are the bench fields the record states, as
    (the field as the record names it, the bench field, the value), each to be checked against
    the benchmark.
    """

    where: str
    keys: tuple[tuple[str, str | int], ...]
    text: str | None
    claims: tuple[tuple[str, str, Any], ...] = ()


@dataclass(frozen=True)
class ImportOutcome:
    """What `import_predictions` did."""

    run: Run
    written: int  # predictions stored now (0 when the run already held this file)
    predictions: int  # benchmark samples with a usable prediction
    missing: int  # benchmark samples without one
    missing_as_compliance: bool


def import_predictions(
    predictions: str | Path,
    store_path: str | Path,
    *,
    bench: str | Path | None = None,
    model: str | None = None,
    fmt: str = "official",
    missing_as_compliance: bool = False,
) -> ImportOutcome:
    """Put a predictions file into the store as a run of `model` on `bench`.

    The run's settings record the format, the file's SHA-256 and the missing-prediction policy,
    so importing the same file again resumes the same run (writing nothing new) and another
    file or policy makes another run. `model` defaults to a name taken from the file.
    Raises PredictionsError, before writing anything, when a record is bad.
    """
    if fmt not in IMPORT_FORMATS:
        raise PredictionsError(
            f"unknown predictions format {fmt!r}; expected one of: {', '.join(IMPORT_FORMATS)}"
        )
    path = Path(predictions)
    content = _read_bytes(path)
    if bench is None and fmt != "official":
        raise PredictionsError(f"{fmt} predictions carry no images or labels: pass --bench")
    bench = path if bench is None else bench
    dataset = _bench_dataset(bench, is_predictions=bench == path)
    samples = dataset.samples
    texts = _match(path, _READERS[fmt](path, content), samples)
    missing = {sample_id for sample_id, text in texts.items() if text is None}
    settings = {
        "imported": fmt,
        "file_sha256": hashlib.sha256(content).hexdigest(),
        "missing": "compliance" if missing_as_compliance else "unscored",
    }
    with Store(store_path) as store:
        run = store.open_run(
            model or _model_name(path, fmt),
            samples,
            settings,
            source=bench_source(bench),
            benchmark=dataset.benchmark_name,
        )
        pending = store.pending_samples(run.id, list(texts))
        responses = [(i, _response(texts[i], missing_as_compliance)) for i in pending]
        flagged = {i: {"missing": True} for i in pending if i in missing}
        store.save_responses(run.id, responses, flagged)
        run = store.finish_run(run.id)
    return ImportOutcome(
        run=run,
        written=sum(i not in missing for i in pending),
        predictions=len(texts) - len(missing),
        missing=len(missing),
        missing_as_compliance=missing_as_compliance,
    )


def _bench_dataset(bench: str | Path, is_predictions: bool) -> Dataset:
    """The benchmark's samples (images are not read); any bad record stops the import."""
    dataset = read_dataset(bench, fmt="holisafe" if is_predictions else None, check_images=False)
    if dataset.problems:
        what = "predictions" if is_predictions else "benchmark"
        raise PredictionsError(
            f"{what} {bench}: {len(dataset.problems)} bad record(s), nothing was imported: "
            + "; ".join(str(problem) for problem in dataset.problems[:_SHOWN_PROBLEMS])
        )
    return dataset


def _response(text: str | None, missing_as_compliance: bool) -> Response:
    if text is not None:
        return Response(text)
    return Response("") if missing_as_compliance else Response(None, error=MISSING_ERROR)


def _model_name(path: Path, fmt: str) -> str:
    """The official `<model>_holisafe_bench.json` gives `<model>`; lmms-eval writes its logs
    into a folder named after the model; a plain JSONL is named by its file."""
    if fmt == "official" and path.stem.endswith(OFFICIAL_SUFFIX):
        return path.stem[: -len(OFFICIAL_SUFFIX)]
    if fmt == "lmms-eval" and path.parent.name:
        return path.parent.resolve().name
    return path.stem


def _match(
    path: Path, records: Iterator[Prediction | Problem], samples: list[Sample]
) -> dict[str, str | None]:
    """Each benchmark sample's prediction (None: missing), by sample id, in benchmark order."""
    by_id = {str(s.id): s for s in samples}
    found: dict[str, tuple[str, str | None]] = {}
    problems = []
    for record in records:
        if isinstance(record, Problem):
            problems.append(str(record))
            continue
        try:
            sample = _sample_of(record, by_id, samples)
            if str(sample.id) in found:
                raise ValueError(
                    f"a second prediction for id {sample.id!r} (the first is at "
                    f"{found[str(sample.id)][0]})"
                )
            _check_claims(record.claims, sample)
        except ValueError as exc:
            problems.append(f"{record.where}: {exc}")
            continue
        found[str(sample.id)] = (record.where, record.text)
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        raise PredictionsError(
            f"{path}: {len(problems)} bad record(s), nothing was imported: {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )
    return {i: found[i][1] if i in found else None for i in by_id}


def _sample_of(record: Prediction, by_id: dict[str, Sample], samples: list[Sample]) -> Sample:
    (name, value), *others = record.keys
    sample = _find(name, value, by_id, samples)
    for other, other_value in others:
        if _find(other, other_value, by_id, samples) is not sample:
            raise ValueError(
                f"{other} {_shown(other_value)} contradicts {name} {_shown(value)}, "
                f"the benchmark's id {sample.id!r}"
            )
    return sample


def _find(name: str, value: str | int, by_id: dict[str, Sample], samples: list[Sample]) -> Sample:
    if name == "doc_id":
        if not 0 <= value < len(samples):
            raise ValueError(f"doc_id {value} is not a row of the benchmark ({len(samples)} rows)")
        return samples[value]
    if value not in by_id:
        raise ValueError(f"{name} {value!r} is not in the benchmark")
    return by_id[value]


def _check_claims(claims: tuple[tuple[str, str, Any], ...], sample: Sample) -> None:
    known = {
        "query": sample.query,
        "type": sample.type,
        "category": sample.category,
        "subcategory": sample.subcategory,
        "image_safe": sample.image_safe,
        "image_safety_label": sample.image_safety_label,
    }
    if sample.image.path is not None:  # an embedded image's name is not the file's
        known["image"] = sample.image.name
    for name, bench_field, value in claims:
        if bench_field == "image" and isinstance(value, str):  # as the loaders name it
            value = PurePosixPath(value.replace("\\", "/")).as_posix()
        if bench_field in known and value != known[bench_field]:
            raise ValueError(
                f"{name} {_shown(value)} contradicts the benchmark's {bench_field} "
                f"{_shown(known[bench_field])} for id {sample.id!r}"
            )


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------ reading


def _read_bytes(path: Path) -> bytes:
    try:
        return read_regular_bytes(path)
    except OSError as exc:
        raise PredictionsError(f"cannot read predictions {path}: {exc.strerror or exc}") from None


def _text(value: Any, name: str) -> str | None:
    """A prediction's text, empty or blank as it is; None when it is null."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_shown(value)}")
    return value


def _json_lines(path: Path, content: bytes) -> Iterator[tuple[str, Any]]:
    try:
        lines = content.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PredictionsError(f"{path}: not UTF-8 text ({exc})") from None
    return jsonl_records(lines, object_pairs_hook=_KeysNoted)


class _KeysNoted(dict):
    """A JSON object that remembers the keys it held more than once (plain JSON keeps the last,
    silently)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.repeated = [key for key, n in Counter(key for key, _ in pairs).items() if n > 1]


def _repeated_key(value: Any) -> str | None:
    """A key that `value`, or an object inside it, holds twice."""
    if isinstance(value, _KeysNoted) and value.repeated:
        return value.repeated[0]
    inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((key for item in inner if (key := _repeated_key(item)) is not None), None)


def _object(record: Any) -> dict:
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if (repeated := _repeated_key(record)) is not None:
        raise ValueError(f"key {repeated!r} appears twice in one JSON object")
    return record


def _id(record: dict) -> str:
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError(f"id must be an integer or a non-empty string, got {_shown(value)}")
    return str(value)


def _read_official(path: Path, content: bytes) -> Iterator[Prediction | Problem]:
    try:
        records = parse_json(content.decode("utf-8"), max_chars=None, object_pairs_hook=_KeysNoted)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PredictionsError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(records, list):
        raise PredictionsError(f"{path}: expected a JSON list of records")
    for index, record in enumerate(records):
        yield _parsed(f"record at index {index}", record, _official_prediction)


def _official_prediction(where: str, record: dict) -> Prediction:
    # the official script reads `item.get("prediction", "")`: no field is the empty answer
    return _record_prediction(where, record, record.get("prediction", ""), "prediction")


def _read_jsonl(path: Path, content: bytes) -> Iterator[Prediction | Problem]:
    for where, record in _json_lines(path, content):
        yield _parsed(where, record, _jsonl_prediction)


def _jsonl_prediction(where: str, record: dict) -> Prediction:
    return _record_prediction(where, record, record.get("response"), "response")


def _record_prediction(where: str, record: dict, text: Any, text_field: str) -> Prediction:
    """A record that names its sample by `id` and holds its answer `text` in `text_field`."""
    sample_id = _id(record)
    claims = tuple((name, name, record[name]) for name in _CHECKED_FIELDS if name in record)
    return Prediction(
        f"{where} (id {sample_id!r})", (("id", sample_id),), _text(text, text_field), claims
    )


def _read_lmms_eval(path: Path, content: bytes) -> Iterator[Prediction | Problem]:
    for where, record in _json_lines(path, content):
        yield _parsed(where, record, _lmms_eval_prediction)


def _lmms_eval_prediction(where: str, record: dict) -> Prediction:
    """Every field that names the sample must name the same one (`doc_id`, `doc.id`), and every
    field that restates the benchmark (`doc`'s fields, `target`, the metric fields' `type` and
    `subcategory`) must agree with it."""
    doc = record.get("doc") if isinstance(record.get("doc"), dict) else {}
    keys: list[tuple[str, str | int]] = []
    claims: list[tuple[str, str, Any]] = []
    if "doc_id" in record or "id" not in doc:
        position = record.get("doc_id")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(f"doc_id must be an integer, got {_shown(position)}")
        keys.append(("doc_id", position))
    if "id" in doc:
        keys.append(("doc.id", _id(doc)))
    checked = (name for name in _CHECKED_FIELDS if name in doc and name != "image")
    claims += [(f"doc.{name}", name, doc[name]) for name in checked]
    if "target" in record:
        claims.append(("target", "type", record["target"]))
    for name, value in record.items():
        if name.startswith("holisafe_") and isinstance(value, dict):
            restated = (f for f in ("type", "subcategory") if f in value)
            claims += [(f"{name}.{f}", f, value[f]) for f in restated]
    text = _text(_single_response(record.get("filtered_resps")), "filtered_resps")
    first, value = keys[0]
    return Prediction(f"{where} ({first} {value!r})", tuple(keys), text, tuple(claims))


def _single_response(value: Any) -> Any:
    """lmms-eval flattens one response to a string; older logs keep it in a list (or two)."""
    while isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"filtered_resps holds {len(value)} responses, expected one")
        value = value[0]
    return value


def _parsed(
    where: str, record: Any, convert: Callable[[str, dict], Prediction]
) -> Prediction | Problem:
    """The record's Prediction, or the Problem that keeps it from being one."""
    try:
        return convert(where, _object(record))
    except ValueError as exc:
        return Problem(where, str(exc))


_READERS = {"official": _read_official, "lmms-eval": _read_lmms_eval, "jsonl": _read_jsonl}
