"""The images a build starts from: a folder, or a manifest of labelled images."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from holisafe.build.common import IMAGE_TYPES, MANIFEST_FIELDS, BuildError
from holisafe.core import taxonomy
from holisafe.core.errors import HolisafeError
from holisafe.core.files import read_regular_text
from holisafe.core.safe_json import parse_json
from holisafe.core.sample import ImageRef, decode_image
from holisafe.data.loaders import ImageFolder


@dataclass(frozen=True)
class SourceImage:
    """One input image and its label; `image_safe` is None until a labeller has named it."""

    image: ImageRef
    digest: str  # sha1 of the file's bytes
    image_safe: bool | None
    subcategory: str | None  # the harm shown (unsafe) or the harm queries are to be about (safe)
    label_source: str  # `manifest`, `head:<spec>` or `llm:<spec>`

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def category(self) -> str | None:
        return taxonomy.category_of(self.subcategory) if self.subcategory else None

    @property
    def types(self) -> tuple[str, ...]:
        return IMAGE_TYPES[self.image_safe]

    @property
    def label(self) -> int:
        return taxonomy.SAFE_LABEL if self.image_safe else taxonomy.label_index(self.subcategory)

    @property
    def key(self) -> str:
        """What a generation depends on: the file, its name and its label."""
        return f"{self.name}|{self.digest}|{self.image_safe}|{self.subcategory or ''}"

    def describe(self) -> str:
        if self.image_safe:
            return "safe (it shows nothing harmful)"
        return f"unsafe (it shows {self.category} / {self.subcategory})"


def read_source(source: str | Path) -> list[SourceImage]:
    """A manifest (`.jsonl` or `.csv`) of labelled images, or a folder of unlabelled ones."""
    path = Path(source)
    if path.is_dir():
        from holisafe.core.sample import image_files

        files = image_files([path])
        return [_source_image(path, f.relative_to(path).as_posix(), None, None, "") for f in files]
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise BuildError(f"{path}: expected a .jsonl or .csv manifest, or a folder of images")
    try:
        rows = _manifest_rows(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: cannot read ({exc})") from None
    images, problems, seen = [], [], set()
    for where, row in rows:
        try:
            image = _manifest_image(path.parent, row)
            if image.name in seen:
                raise ValueError(f"image {image.name} is listed twice")
            seen.add(image.name)
            images.append(image)
        except (ValueError, HolisafeError) as exc:
            problems.append(f"{path.name} {where}: {exc}")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise BuildError(f"{len(problems)} bad manifest row(s): {shown}{more}")
    if not images:
        raise BuildError(f"{path}: the manifest lists no images")
    return images


def _manifest_rows(path: Path) -> list[tuple[str, Any]]:
    text = read_regular_text(path)
    if path.suffix.lower() == ".csv":
        return [(f"line {i + 2}", row) for i, row in enumerate(csv.DictReader(text.splitlines()))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((f"line {number}", parse_json(line, max_chars=None)))
            except ValueError as exc:
                rows.append((f"line {number}", ValueError(f"malformed JSON: {exc}")))
    return rows


def _manifest_image(root: Path, row: Any) -> SourceImage:
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    missing = [name for name in MANIFEST_FIELDS if name not in row]
    if missing:
        raise ValueError("missing field(s): " + ", ".join(missing))
    image_safe = _boolean(row["image_safe"])
    category, subcategory = _name(row, "category"), _name(row, "subcategory")
    if subcategory is not None and taxonomy.category_of(subcategory) != category:
        raise ValueError(f"subcategory {subcategory!r} does not belong to category {category!r}")
    if subcategory is None and not image_safe:
        raise ValueError("an unsafe image needs its category and subcategory")
    if subcategory is None and category is not None:
        raise ValueError("a category needs its subcategory (leave both empty for a safe image)")
    return _source_image(root, row["image"], image_safe, subcategory, "manifest")


def _name(row: dict, field_name: str) -> str | None:
    """A category or subcategory of a manifest row; None when empty."""
    value = row[field_name]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field_name} must be a string, got {value!r}")
    return (value or "").strip() or None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"image_safe must be true or false, got {value!r}")


def _source_image(
    root: Path, name: str, image_safe: bool | None, subcategory: str | None, label_source: str
) -> SourceImage:
    ref = ImageFolder(root).ref(name)
    data = ref.read_bytes()
    decode_image(data, ref.name)  # a broken image is refused before any request is paid for
    digest = hashlib.sha1(data).hexdigest()
    return SourceImage(ref, digest, image_safe, subcategory, label_source)
