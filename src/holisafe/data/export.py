"""Write Samples in any of the forms the loaders read, copying or embedding images as needed."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from holisafe.core import taxonomy
from holisafe.core.errors import DataError
from holisafe.core.sample import Sample

EXPORT_FORMATS = ("json", "jsonl", "parquet", "llava")
DEFAULT_FILE_NAMES = {
    "json": "holisafe_bench.json",
    "jsonl": "holisafe_bench.jsonl",
    "parquet": "holisafe_bench.parquet",
    "llava": "holisafe_llava.json",
}


def holisafe_record(sample: Sample, image: str | dict) -> dict:
    """The official record form of a benchmark sample (`response` added when present)."""
    if sample.type is None or sample.category is None or sample.subcategory is None:
        raise DataError(
            f"id {sample.id!r}: the HoliSafe form needs type, category and subcategory; "
            "export it with --to llava instead"
        )
    record = {
        "id": sample.id,
        "image": image,
        "query": sample.query,
        "category": sample.category,
        "subcategory": sample.subcategory,
        "type": sample.type,
        "image_safe": taxonomy.TYPES[sample.type].image_safe,
        "image_safety_label": sample.image_safety_label,
    }
    if sample.response is not None:
        record["response"] = sample.response
    return record


def llava_record(sample: Sample, image: str) -> dict:
    """A LLaVA conversation record; HoliSafe fields that are known ride along."""
    turns = [{"from": "human", "value": "<image>\n" + sample.query}]
    if sample.response is not None:
        turns.append({"from": "gpt", "value": sample.response})
    for query, answer in sample.follow_up:
        turns += [{"from": "human", "value": query}, {"from": "gpt", "value": answer}]
    record = {"id": sample.id, "image": image, "conversations": turns}
    for name in ("type", "category", "subcategory", "image_safety_label"):
        if getattr(sample, name) is not None:
            record[name] = getattr(sample, name)
    return record


class _ImageWriter:
    """Copies each distinct image once into `images/`, keeping its name where it is safe."""

    def __init__(self, root: Path):
        self.folder = root / "images"
        self.names: dict[str, str] = {}  # image key → file name under images/
        self.used: set[str] = set()

    def write(self, sample: Sample) -> str:
        key = sample.image.key
        if key not in self.names:
            data = sample.image.read_bytes()
            name = _file_name(sample.image.name, data)
            if name in self.used:
                digest = hashlib.sha1(data).hexdigest()[:12]
                name = str(PurePosixPath(name).with_name(f"{digest}_{PurePosixPath(name).name}"))
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.names[key] = name
            self.used.add(name)
        return self.names[key]


def _file_name(name: str, data: bytes) -> str:
    path = PurePosixPath(name)
    if path.parts and path.parts[0] == "images":
        path = PurePosixPath(*path.parts[1:])
    if path.is_absolute() or ".." in path.parts or not path.parts:
        path = PurePosixPath(hashlib.sha1(data).hexdigest()[:16])
    if not path.suffix:
        fmt = (Image.open(io.BytesIO(data)).format or "bin").lower()
        path = path.with_name(f"{path.name}.{fmt}")
    return path.as_posix()


def export_samples(
    samples: Iterable[Sample], out: str | Path, to: str, file_name: str | None = None
) -> Path:
    """Write samples under `out` in form `to`; return the data file written."""
    if to not in EXPORT_FORMATS:
        raise DataError(
            f"unknown export format {to!r}; expected one of {', '.join(EXPORT_FORMATS)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / (file_name or DEFAULT_FILE_NAMES[to])
    samples = list(samples)
    if to == "parquet":
        _write_parquet(samples, target)
        return target
    images = _ImageWriter(out)
    if to == "llava":
        records = [llava_record(s, images.write(s)) for s in samples]
    else:
        records = [holisafe_record(s, images.write(s)) for s in samples]
    if to == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


def _write_parquet(samples: list[Sample], target: Path) -> None:
    import datasets

    rows = []
    for sample in samples:
        data = sample.image.read_bytes()
        image = {"bytes": data, "path": _file_name(sample.image.name, data)}
        row = holisafe_record(sample, image)
        row.setdefault("response", None)
        rows.append(row)
    features = datasets.Features(
        {
            "id": datasets.Value(
                "string" if any(isinstance(s.id, str) for s in samples) else "int64"
            ),
            "image": datasets.Image(),
            "query": datasets.Value("string"),
            "category": datasets.Value("string"),
            "subcategory": datasets.Value("string"),
            "type": datasets.Value("string"),
            "image_safe": datasets.Value("bool"),
            "image_safety_label": datasets.Value("int64"),
            "response": datasets.Value("string"),
        }
    )
    write_parquet(rows, features, target)


def write_parquet(rows: list[dict[str, Any]], features, path: Path) -> None:
    """The toolkit's one parquet writer: `rows` typed by their `datasets.Features`, so that
    `datasets`, pandas and pyarrow all read the file back the same."""
    import datasets

    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
