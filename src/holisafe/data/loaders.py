"""Loaders: every data source becomes a list of Samples, with every bad record reported.

Sources, picked by `read_dataset` from what it is given:
- `holisafe`: the official layout, a JSON list of records beside an `images/` folder;
- `jsonl`: the same records, one JSON object per line;
- `parquet`: a parquet file or a folder of shards with embedded images (the `datasets` form);
- `llava`: LLaVA conversation JSON (`image`, `conversations` of `human`/`gpt` turns);
- `vlguard`: VLGuard's released JSON (`safe`, `harmful_category`, `instr-resp`);
- `hub`: a Hugging Face Hub dataset id, fetched with `datasets.load_dataset`;
- every other safety benchmark in the registry (`holisafe.data.benchmarks`), by its name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from holisafe.core import taxonomy
from holisafe.core.errors import DataError, RecordError
from holisafe.core.files import read_regular_text, require_regular_file
from holisafe.core.hub import is_hub_id, local_or_hub
from holisafe.core.progress import track
from holisafe.core.safe_json import JSONLimitError, parse_json
from holisafe.core.sample import ImageError, ImageRef, Sample
from holisafe.core.text import lone_surrogate
from holisafe.data import benchmarks
from holisafe.data.benchmarks import BENCHMARKS, Benchmark

FORMATS = ("holisafe", "jsonl", "parquet", "llava", "vlguard", "hub", *BENCHMARKS)
OFFICIAL_JSON_NAMES = ("holisafe_bench.json", "holisafe_train.json")
HOLISAFE_FIELDS = (
    "id",
    "image",
    "query",
    "category",
    "subcategory",
    "type",
    "image_safe",
    "image_safety_label",
)
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One bad record: where it is (id, index or line) and what is wrong with it."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Dataset:
    """The valid samples of a source, and the problems found in the rest."""

    source: str
    format: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    records: int = 0  # records read, valid or not

    @property
    def benchmark(self) -> Benchmark | None:
        """The other safety benchmark the source is (None: HoliSafe's or a training format)."""
        return BENCHMARKS.get(self.format)

    @property
    def benchmark_name(self) -> str:
        """The name a store records for it: the other benchmark's, or `holisafe`."""
        return self.benchmark.name if self.benchmark else "holisafe"


class ImageFolder:
    """Resolves the image paths of records inside one root folder, never outside it.

    A path is looked up at `root/images/<path>` (the official layout) and at `root/<path>`;
    a path that already starts with `images/` is taken from `root`.
    """

    def __init__(self, root: Path):
        self.root = root.resolve()

    def ref(self, name: Any) -> ImageRef:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"image must be a non-empty path string, got {name!r}")
        relative = PurePosixPath(name.replace("\\", "/"))
        if not relative.parts:
            raise ValueError(f"image path {name!r} names no file")
        if relative.is_absolute() or re.match(r"[A-Za-z]:", name):
            raise ValueError(f"image path {name!r} is absolute; it must be relative to {self.root}")
        official = (
            self.root / relative
            if relative.parts[0] == "images"
            else (self.root / "images" / relative)
        )
        candidates = [official, self.root / relative]
        for candidate in candidates:
            try:
                resolved = candidate.resolve()
            except (OSError, RuntimeError) as exc:  # a link loop: RuntimeError before 3.13
                raise ValueError(f"image path {name!r} cannot be followed: {exc}") from None
            if not resolved.is_relative_to(self.root):
                raise ValueError(
                    f"image path {name!r} escapes the image root {self.root}"
                    + self._through_link(candidate)
                )
        chosen = next((c for c in candidates if c.exists()), official)
        return ImageRef(name=relative.as_posix(), path=chosen)

    def _through_link(self, path: Path) -> str:
        """Which folder on the way is a symbolic link, said so: `images/` often is one."""
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            if (self.root / parent).is_symlink():
                return (
                    f" through the symbolic link {self.root / parent} (to "
                    f"{(self.root / parent).resolve()}); pass --image-root with the real folder"
                )
        return ""


# ---------------------------------------------------------------- record conversion


def _where(record: Any, fallback: str) -> str:
    if isinstance(record, dict):
        rid = record.get("id")
        if (isinstance(rid, int) and not isinstance(rid, bool)) or (
            isinstance(rid, str) and rid.strip()
        ):
            return f"id {rid!r}"
    return fallback


def _require(record: Any, names: Iterable[str]) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
    missing = [n for n in names if n not in record]
    if missing:
        raise ValueError("missing field(s): " + ", ".join(missing))
    return record


def _checked_id(value: Any) -> int | str:
    blank = isinstance(value, str) and not value.strip()
    if isinstance(value, bool) or not isinstance(value, int | str) or blank:
        raise ValueError(f"id must be an integer or a non-blank string, got {value!r}")
    return value


def _check_unicode(value: Any, name: str = "") -> None:
    """Raise ValueError naming the first text in a record that holds a lone surrogate (a JSON
    `\\ud800` escape with no partner): no file or store can keep it as UTF-8."""
    if isinstance(value, str):
        position = lone_surrogate(value)
        if position is not None:
            raise ValueError(
                f"{name or 'record'} is not valid Unicode: lone surrogate "
                f"U+{ord(value[position]):04X} at character {position}"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, "a field name")
            _check_unicode(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{name}[{index}]")


def _text(record: dict, name: str, optional: bool = False) -> str | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _label(value: Any, required: bool = False) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"image_safety_label must be an integer, got {value!r}")
    taxonomy.label_name(value)
    return value


def _image(value: Any, images: ImageFolder | None, record_id: int | str) -> ImageRef:
    if isinstance(value, dict):  # embedded, as `datasets` stores an Image feature
        data = value.get("bytes")
        if not isinstance(data, bytes | bytearray) or not data:
            raise ValueError("embedded image has no bytes")
        return ImageRef(name=value.get("path") or str(record_id), data=bytes(data))
    if images is None:
        raise ValueError(f"image must be embedded in this source, got {value!r}")
    return images.ref(value)


def holisafe_sample(record: Any, images: ImageFolder | None) -> Sample:
    """A Sample from a record in the official HoliSafe form."""
    record = _require(record, HOLISAFE_FIELDS)
    sample_id = _checked_id(record["id"])
    safeness = taxonomy.parse_type(record["type"])
    image_safe = record["image_safe"]
    if not isinstance(image_safe, bool):
        raise ValueError(f"image_safe must be true or false, got {image_safe!r}")
    if image_safe != safeness.image_safe:
        raise ValueError(
            f"image_safe={str(image_safe).lower()} contradicts type {safeness.code}, "
            f"whose image is {'safe' if safeness.image_safe else 'unsafe'}"
        )
    return Sample(
        id=sample_id,
        query=_text(record, "query"),
        image=_image(record["image"], images, sample_id),
        type=safeness.code,
        category=_text(record, "category"),
        subcategory=_text(record, "subcategory"),
        image_safety_label=_label(record["image_safety_label"], required=True),
        response=_text(record, "response", optional=True),
    )


def llava_sample(record: Any, images: ImageFolder) -> Sample:
    """A Sample from a LLaVA conversation record; HoliSafe fields, where present, are kept."""
    record = _require(record, ("id", "image", "conversations"))
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversations must be a non-empty list of turns")
    pairs: list[list[str | None]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {i} must be an object with a string 'value'")
        expected = "human" if i % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise ValueError(f"turn {i} is from {turn.get('from')!r}, expected {expected!r}")
        if expected == "human":
            pairs.append([turn["value"], None])
        else:
            pairs[-1][1] = turn["value"]
    query = pairs[0][0].replace("<image>", "").strip()
    if not query:
        raise ValueError("the first human turn has no text besides <image>")
    if any(answer is None for _, answer in pairs[1:]):
        raise ValueError("only the first turn may be left without an answer")
    type_code = record.get("type")
    return Sample(
        id=_checked_id(record["id"]),
        query=query,
        image=images.ref(record["image"]),
        type=taxonomy.parse_type(type_code).code if type_code is not None else None,
        category=_text(record, "category", optional=True),
        subcategory=_text(record, "subcategory", optional=True),
        image_safety_label=_label(record.get("image_safety_label")),
        response=pairs[0][1],
        follow_up=tuple((q.strip(), a) for q, a in pairs[1:]),
    )


# VLGuard (harmful_category, harmful_subcategory) → HoliSafe (category, subcategory); None where
# HoliSafe has no counterpart. Documented in the README.
VLGUARD_CATEGORIES: dict[tuple[str, str], tuple[str | None, str | None]] = {
    ("privacy", "personal data"): ("privacy", "identity_data_exposure"),
    ("risky behavior", "sexually explicit"): ("sexual_content", "sexual_content"),
    ("risky behavior", "violence"): ("violence", None),
    ("risky behavior", "professional advice"): ("specialized_advice", None),
    ("risky behavior", "political"): (None, None),
    ("deception", "disinformation"): (None, None),
    ("discrimination", "sex"): ("hate", "gender"),
    ("discrimination", "race"): ("hate", "race"),
    ("discrimination", "other"): ("hate", None),
}


def _vlguard_category(record: dict) -> tuple[str | None, str | None]:
    category = str(record.get("harmful_category") or "").strip().lower()
    subcategory = str(record.get("harmful_subcategory") or "").strip().lower()
    category = "discrimination" if category == "hateful speech" else category
    subcategory = subcategory.removeprefix("discrimination by ").strip()
    if (category, subcategory) not in VLGUARD_CATEGORIES:
        raise ValueError(f"unknown VLGuard category {category!r} / {subcategory!r}")
    return VLGUARD_CATEGORIES[(category, subcategory)]


def vlguard_samples(record: Any, images: ImageFolder) -> list[Sample]:
    """Samples from one VLGuard record: one per instruction-response pair.

    Unsafe image + instruction → USU; safe image + safe_instruction → SSS; safe image +
    unsafe_instruction → SUU. Sample ids are `<record id>/<pair index>`.
    """
    record = _require(record, ("id", "image", "safe", "instr-resp"))
    record_id = _checked_id(record["id"])
    if not isinstance(record["safe"], bool):
        raise ValueError(f"safe must be true or false, got {record['safe']!r}")
    pairs = record["instr-resp"]
    if not isinstance(pairs, list) or not pairs:
        raise ValueError("instr-resp must be a non-empty list")
    image = images.ref(record["image"])
    category = subcategory = label = None
    if record["safe"]:
        label = taxonomy.SAFE_LABEL
    else:
        category, subcategory = _vlguard_category(record)
        label = taxonomy.label_index(subcategory) if subcategory else None
    samples = []
    for k, pair in enumerate(pairs):
        keys = ("safe_instruction", "unsafe_instruction") if record["safe"] else ("instruction",)
        key = next((name for name in keys if isinstance(pair, dict) and name in pair), None)
        if key is None:
            raise ValueError(f"instr-resp[{k}] has none of the fields {', '.join(keys)}")
        type_code = {"safe_instruction": "SSS", "unsafe_instruction": "SUU"}.get(key, "USU")
        samples.append(
            Sample(
                id=f"{record_id}/{k}",
                query=_text(pair, key),
                image=image,
                type=type_code,
                category=category if type_code == "USU" else None,
                subcategory=subcategory if type_code == "USU" else None,
                image_safety_label=label,
                response=_text(pair, "response", optional=True),
            )
        )
    return samples


# ---------------------------------------------------------------- sources


def _read_json(path: Path) -> list:
    try:
        text = read_regular_text(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        records = parse_json(text, max_chars=None)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except JSONLimitError as exc:
        raise DataError(f"{path}: {exc}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _json_format(records: list) -> str:
    first = next((r for r in records if isinstance(r, dict)), {})
    if "conversations" in first:
        return "llava"
    if "instr-resp" in first:
        return "vlguard"
    benchmark = benchmarks.json_benchmark(first)
    return benchmark.name if benchmark else "holisafe"


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        lines = read_regular_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    return jsonl_records(lines)


def jsonl_records(
    lines: list[str], object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Iterator[tuple[str, Any]]:
    """(`line N`, the parsed value, or a ValueError saying why it is not JSON) for each
    non-blank line; `object_pairs_hook` as for `json.loads`."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield (
                f"line {number}",
                parse_json(line, max_chars=None, object_pairs_hook=object_pairs_hook),
            )
        except json.JSONDecodeError as exc:
            yield f"line {number}", ValueError(f"malformed JSON at column {exc.colno}: {exc.msg}")
        except JSONLimitError as exc:
            yield f"line {number}", exc


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    shards = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not shards:
        raise DataError(f"{path}: no parquet files found")
    for shard in shards:
        try:
            table = pq.read_table(require_regular_file(shard))
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{shard}: not a readable parquet file ({exc})") from None
        for row, record in enumerate(table.to_pylist()):
            yield f"{shard.name} row {row}", record


def _hub_records(dataset_id: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    source = local_or_hub(dataset_id, "data set", repo_type="dataset", error=DataError)
    try:
        data = datasets.load_dataset(source, split=split)
    except Exception as exc:  # a missing data set or split, authentication, gating
        raise DataError(
            f"cannot load {dataset_id!r} (split {split!r}) from the Hugging Face Hub, and no "
            f"local file or folder has that name: {exc}. A gated data set needs "
            "`huggingface-cli login` or HF_TOKEN."
        ) from None
    if isinstance(data.features.get("image"), datasets.Image):
        data = data.cast_column("image", datasets.Image(decode=False))
    for row, record in enumerate(data):
        yield f"row {row}", record


def _detect(source: Path) -> tuple[str, Path]:
    """The format of a local source and the file (or shard folder) to read."""
    if source.is_dir():
        for name in OFFICIAL_JSON_NAMES:  # HoliSafe's own file wins over another's layout
            if (source / name).is_file():
                return "json", source / name
        if found := benchmarks.find_layout(source):
            return found
        if any(source.rglob("*.parquet")):
            return "parquet", source
        candidates = sorted(source.glob("*.jsonl")) + sorted(source.glob("*.json"))
        if len(candidates) == 1:
            return _detect(candidates[0])
        raise DataError(
            f"{source}: cannot tell which data file to read: expected "
            f"{' or '.join(OFFICIAL_JSON_NAMES)}, parquet shards, or a single .json/.jsonl file"
        )
    suffix = source.suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet"):
        return suffix[1:], source
    if found := benchmarks.find_layout(source):
        return found
    *others, last = (".json", ".jsonl", ".parquet", *benchmarks.file_hints())
    raise DataError(
        f"{source}: unsupported file type {suffix!r} (expected {', '.join(others)}, or {last})"
    )


def read_dataset(
    source: str | Path,
    *,
    fmt: str | None = None,
    image_root: str | Path | None = None,
    split: str = "test",
    check_images: bool = True,
    progress: bool = False,
) -> Dataset:
    """Read every record of a source, keeping valid samples and reporting the rest as problems.

    `fmt` forces one of FORMATS; otherwise it is detected. `image_root` overrides the folder
    image paths are resolved in (default: the data file's folder). With `check_images`, every
    distinct image is decoded once and samples whose image fails are reported.
    """
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    path = Path(source)
    if fmt == "hub" or (fmt is None and not path.exists() and is_hub_id(str(source))):
        fmt, records = "hub", _hub_records(str(source), split)
        images = None
    else:
        if not path.exists():
            raise DataError(f"{source}: no such file or directory")
        kind, data_file = _detect(path)
        images = ImageFolder(Path(image_root) if image_root else data_file.parent)
        if kind == "parquet":
            fmt, records = fmt or "parquet", _parquet_records(data_file)
            images = None
        elif kind in BENCHMARKS:  # a benchmark with a layout of its own
            fmt, records = kind, BENCHMARKS[kind].read(data_file, images.root)
        elif kind == "jsonl":
            fmt, records = fmt or "jsonl", _jsonl_records(data_file)
        else:
            raw = _read_json(data_file)
            fmt = fmt or _json_format(raw)
            records = ((f"record at index {i}", r) for i, r in enumerate(raw))
    convert = _converter(fmt, images)
    dataset = Dataset(source=str(source), format=fmt)
    seen: dict[str, str] = {}  # ids as text, as the store keeps them: 1 and "1" are one id
    for fallback, record in records:
        dataset.records += 1
        where = _where(record, fallback)
        try:
            if isinstance(record, Exception):
                raise record
            _check_unicode(record)
            for sample in convert(record):
                if str(sample.id) in seen:
                    raise ValueError(
                        f"duplicate id (first seen at {seen[str(sample.id)]}; ids are compared "
                        "as text)"
                    )
                seen[str(sample.id)] = fallback
                dataset.samples.append(sample)
        except (ValueError, TypeError) as exc:
            dataset.problems.append(Problem(where, str(exc)))
    if check_images:
        _check_images(dataset, progress)
    return dataset


def _converter(fmt: str, images: ImageFolder | None) -> Callable[[Any], list[Sample]]:
    if fmt == "llava":
        if images is None:
            raise DataError("LLaVA conversations need image files, not embedded images")
        return lambda record: [llava_sample(record, images)]
    if fmt == "vlguard":
        if images is None:
            raise DataError("VLGuard records need image files, not embedded images")
        return lambda record: vlguard_samples(record, images)
    if fmt in BENCHMARKS:
        if images is None:
            raise DataError(f"{fmt} records need image files, not embedded images")
        to_sample = BENCHMARKS[fmt].sample
        return lambda record: [to_sample(record, images.ref)]
    return lambda record: [holisafe_sample(record, images)]


def _check_images(dataset: Dataset, progress: bool) -> None:
    verdicts: dict[str, str | None] = {}
    kept = []
    for sample in track(dataset.samples, "checking images", progress):
        key = sample.image.key
        if key not in verdicts:
            try:
                sample.image.load()
                verdicts[key] = None
            except ImageError as exc:
                verdicts[key] = str(exc)
        if verdicts[key] is None:
            kept.append(sample)
        else:
            dataset.problems.append(Problem(f"id {sample.id!r}", verdicts[key]))
    dataset.samples = kept


def first(items: list[T], limit: int | None) -> list[T]:
    """The first `limit` items (all of them for None). A negative limit is refused: a slice
    would quietly read it as "all but the last N"."""
    if limit is None:
        return items
    if limit < 0:
        raise DataError(f"limit must be 0 or more, got {limit}")
    return items[:limit]


def load_samples(source: str | Path, *, skip_invalid: bool = False, **options: Any) -> Dataset:
    """Read a source for use: stop at the first bad record unless `skip_invalid`.

    With `skip_invalid` the returned Dataset still lists what was skipped in `problems`.
    """
    dataset = read_dataset(source, **options)
    if dataset.problems and not skip_invalid:
        first = dataset.problems[0]
        more = len(dataset.problems) - 1
        hint = (
            f" ({more} more problem(s); --skip-invalid keeps the valid records)"
            if more
            else (" (--skip-invalid keeps the valid records)")
        )
        raise RecordError(first.where, first.reason + hint)
    return dataset
